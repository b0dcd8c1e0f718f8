"""blend (seed 002, CacheBlend serving): prompts built as ``system SEP chunk… SEP question`` with the
separator the engine's LMCache splits on (``blend_special_str``), sent with the chunks in one
order (A: cold), then reordered (B, C, …). CacheBlend reuses each chunk's KV whatever its position,
so the later requests' TTFT is lower; the seed expects a speedup above 1.5x.

It runs ``trials`` independent trials (fresh chunks each: first order, reorderings, control).
The speedups are timing checks judged on the trials' median and its 95 % bootstrap interval
(pass / fail / inconclusive, :mod:`..verdicts`); hit tokens and answers must hold in every trial.

The separator is read from the engine's effective LMCache configuration (its rendered config file,
then its ``LMCACHE_*`` environment, as LMCache 0.5.6 reads them); ``separator`` overrides it. The
scenario cannot run (exit 2) when blending is not enabled on the engine.
"""

from __future__ import annotations

import random
import time
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ... import lmcache_config as lc
from ... import stats
from .. import trials as tr
from ..prompts import blend_prompt, text_of_tokens
from ..workbench import ScenarioCannotRun, Workbench, record_view, summarize_delta
from ..outcome import Outcome


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    system_tokens: int = Field(128, ge=1, description="length of the system prompt (the first segment)")
    chunk_tokens: int = Field(512, ge=1, description="length of each reusable chunk (>= blend_min_tokens, 256 by default)")
    num_chunks: int = Field(3, ge=2, le=32, description="chunks per prompt")
    question: str = "Question: summarise what these passages say about caching attention keys and values."
    max_tokens: int = Field(32, ge=1)
    orders: list[list[int]] | None = Field(
        None, description="chunk order of each request (0-based); default: identity, rotated by one, reversed")
    separator: str | None = Field(None, description="segment separator (default: the engine's blend_special_str)")
    wait_s: float = Field(0.5, ge=0, description="pause between requests (the KV of the chunks is stored meanwhile)")
    warmup: bool = Field(True, description="one unrelated blended request first (not measured)")
    control: bool = Field(True, description="finally, fresh chunks in the first order: a cold TTFT of the same shape")
    trials: int | None = Field(None, ge=1, le=100, description=f"independent trials, fresh chunks each (default "
                               f"{tr.SIM_TRIALS} on the simulated engine, {tr.REAL_TRIALS} on real engines)")
    seed: int | None = Field(None, description="prompt seed (default: a fresh one per run, so no cache is warm)")

    @model_validator(mode="after")
    def _orders(self) -> Params:
        if self.orders is not None:
            if len(self.orders) < 2:
                raise ValueError("orders: give at least two orders (the first request, then reordered ones)")
            want = list(range(self.num_chunks))
            for o in self.orders:
                if sorted(o) != want:
                    raise ValueError(f"orders: {o} is not an order of the chunks 0..{self.num_chunks - 1}")
        return self

    def chunk_orders(self) -> list[list[int]]:
        if self.orders is not None:
            return [list(o) for o in self.orders]
        n = list(range(self.num_chunks))
        return [n, n[1:] + n[:1], n[::-1]]


def effective_lmcache_config(wb: Workbench, engine: Any) -> tuple[dict[str, Any], str]:
    """The LMCache settings the engine started with: defaults ← its config file ← LMCACHE_* env
    (the order LMCache 0.5.6 applies them), and where they came from."""
    cfg = lc.defaults()
    where = []
    if engine.config_file:
        host = wb.plan.host(engine.host)
        for f in host.files:
            if f.path == engine.config_file:
                data = yaml.safe_load(f.content) or {}
                if isinstance(data, dict):
                    vals, _ = lc.parse_file_values(data, lc.file_source(f.path))
                    cfg.update(vals)
                    where.append(f"{f.path} on host {engine.host}")
    env_vals = lc.parse_env(engine.env)
    if env_vals:
        cfg.update(env_vals)
        where.append("LMCACHE_* environment (" + ", ".join(f"LMCACHE_{k.upper()}" for k in env_vals) + ")")
    return cfg, " + ".join(where) or "LMCache defaults"


def run(wb: Workbench, spec: Any, p: Params) -> Outcome:
    ref = spec.engines.get("engine")
    e = wb.engine(ref) if ref else wb.engines()[0]
    cfg, where = effective_lmcache_config(wb, e)
    if wb.plan.topology == "mp":
        raise ScenarioCannotRun(f"engine {e.name} uses the LMCache multiprocess server (topology mp): CacheBlend is not available there")
    if not cfg.get("enable_blending"):
        raise ScenarioCannotRun(
            f"CacheBlend is not enabled on engine {e.name}: enable_blending is {cfg.get('enable_blending')} in {where}",
            hint="use an inventory with lmcache: {enable_blending: true, blend_special_str: \" # # \", use_layerwise: true, "
                 "blend_check_layers: 1, blend_recompute_ratios: 0.15} (e.g. inventories/local-blend.yaml)")
    engine_sep = cfg.get("blend_special_str") or " # # "
    sep = p.separator if p.separator is not None else engine_sep
    seed = p.seed if p.seed is not None else random.SystemRandom().randrange(1 << 30)
    count = lambda text: wb.tokens(e, text)
    trials = p.trials or tr.default_trials([e])

    def material(s: int) -> tuple[str, list[str]]:
        system = "System: you answer questions about the passages below. " + text_of_tokens(p.system_tokens, s, count)
        chunks = [text_of_tokens(p.chunk_tokens, s + 1000 + i, count) for i in range(p.num_chunks)]
        return system, chunks

    if p.warmup:
        ws, wc = material(seed + 77_777)
        wb.send(e, blend_prompt(ws, wc, "Warm-up question: what is this about?", sep), 4, tags={"phase": "warmup"})
        time.sleep(p.wait_s)

    system, chunks = material(seed)
    chunk_token_counts = [count(c) for c in chunks]
    chunks_tokens = sum(n for n in chunk_token_counts if n is not None) if all(n is not None for n in chunk_token_counts) else None
    orders = p.chunk_orders()
    limit = wb.max_model_len(e)
    longest = count(blend_prompt(system, chunks, p.question, sep))
    if limit is not None and longest is not None and longest + p.max_tokens > limit:
        over = longest + p.max_tokens - limit
        fit = max(1, p.chunk_tokens - -(-over // p.num_chunks))
        raise ScenarioCannotRun(
            f"the blend prompt has {longest} tokens + max_tokens {p.max_tokens}, more than engine {e.name}'s "
            f"max-model-len {limit}",
            hint=f"--set chunk_tokens={fit} (or fewer chunks: --set num_chunks={max(1, p.num_chunks - 1)}), "
                 f"or raise vllm.max_model_len in the inventory")
    per_trial, records, evidence_all = [], [], {}
    t0 = time.monotonic()
    for i in range(trials):
        if i:
            time.sleep(p.wait_s)
        view, recs, ev = _trial(wb, e, p, material, seed if i == 0 else seed + 1_000_003 * i, orders, sep, i)
        per_trial.append(view)
        records.extend(recs)
        evidence_all.update(ev)
    took = time.monotonic() - t0

    results: dict[str, Any] = {
        **per_trial[0],  # the first trial's requests in full; every trial's in `trials`
        "engine": e.name, "seed": seed,
        "separator": sep, "engine_separator": engine_sep, "separator_from": "params" if p.separator is not None else where,
        "blending_enabled": bool(cfg.get("enable_blending")),
        "blend_config": {k: cfg.get(k) for k in ("enable_blending", "blend_special_str", "use_layerwise", "blend_check_layers",
                                                 "blend_recompute_ratios", "blend_min_tokens", "chunk_size", "save_unfull_chunk")},
        "chunk_tokens": chunk_token_counts, "chunks_tokens": chunks_tokens,
        "trials": per_trial, "n_trials": trials,
        "wall_s": {"trials": round(took, 3), "per_trial": round(took / trials, 3)},
        "longer_hint": "longer chunks (--set chunk_tokens=N, within max_model_len) or more chunks (--set num_chunks=N)",
        "median": {k: tr.median(per_trial, k) for k in ("min_speedup", "mean_speedup", "speedup_vs_control")},
    }
    first = per_trial[0]
    headline = {
        "trials": trials,
        "separator": repr(sep) + ("" if sep == engine_sep else f" (engine: {engine_sep!r})"),
        "TTFT per request, trial 1 (ms)": " → ".join(_ms(v["ttft_s"]) for v in first["requests"]),
        "min speedup of the reordered requests vs the first": tr.median(per_trial, "min_speedup"),
        "min speedup (median, 95 % CI)": tr.interval_shown(per_trial, "min_speedup"),
        "speedup vs control": tr.median(per_trial, "speedup_vs_control") if p.control else None,
        "first TTFT (ms)": _med_ms(per_trial, "first"),
        "control (fresh chunks) TTFT (ms)": _med_ms(per_trial, "control") if p.control else None,
        "LMCache hit tokens, later requests (log), trial 1": ", ".join(str(h) for h in first["later_hit_tokens"]),
        "chunk tokens per prompt": chunks_tokens,
    }
    results["per_trial_values"] = {
        "min speedup of the reordered requests vs the first": tr.values(per_trial, "min_speedup"),
        "speedup vs control": tr.values(per_trial, "speedup_vs_control"),
        "first TTFT (ms)": [round(t["first"]["ttft_s"] * 1000, 1) for t in per_trial if t["first"]["ttft_s"]],
    }
    return Outcome(results=results, records=records, evidence=evidence_all, headline=headline)


def _trial(wb: Workbench, e: Any, p: Params, material: Any, seed: int, orders: list[list[int]], sep: str,
           i: int) -> tuple[dict[str, Any], list[Any], dict[str, Any]]:
    """One trial: fresh chunks in the first order (cold), the same chunks reordered, then a control
    (other fresh chunks, first order). Its speedups and hit tokens."""
    system, chunks = material(seed)
    tag = {"trial": str(i)}
    mark = wb.mark_logs()
    s_start = wb.snapshot([e.name])
    records, views = [], []
    for j, order in enumerate(orders):
        if j:
            time.sleep(p.wait_s)
        s0 = wb.snapshot([e.name])
        prompt = blend_prompt(system, [chunks[k] for k in order], p.question, sep)
        r = wb.send(e, prompt, p.max_tokens, tags={"phase": "first" if j == 0 else "reordered",
                                                    "order": ",".join(map(str, order)), **tag})
        s1 = wb.snapshot([e.name])
        records.append(r)
        views.append((r, order, wb.deltas(s0, s1).get(e.name, {})))
    control = None
    if p.control:
        time.sleep(p.wait_s)
        cs, cc = material(seed + 555_555)
        control = wb.send(e, blend_prompt(cs, [cc[k] for k in orders[0]], p.question, sep), p.max_tokens,
                          tags={"phase": "control", **tag})
        records.append(control)
    s_end = wb.snapshot([e.name])
    evidence, _ = wb.evidence(mark, records)

    reqs = []
    for r, order, d in views:
        v = record_view(r, evidence.get(r.request_id))
        v["order"] = order
        v["metrics"] = summarize_delta(d)
        reqs.append(v)
    first, later = reqs[0], reqs[1:]
    t_first = first["ttft_s"]
    speedups = [(t_first / v["ttft_s"]) if (t_first and v["ttft_s"]) else None for v in later]
    later_hits = [v["log"]["hit_tokens"] for v in later]
    later_ttfts = [v["ttft_s"] for v in later if v["ttft_s"] is not None]
    mean_later = sum(later_ttfts) / len(later_ttfts) if later_ttfts else None
    view: dict[str, Any] = {
        "trial": i, "seed": seed,
        "requests": reqs, "first": first, "later": later,
        "ttft_s": [v["ttft_s"] for v in reqs],
        "speedups": speedups,
        "min_speedup": min(speedups) if speedups and all(s is not None for s in speedups) else None,
        "mean_speedup": (sum(speedups) / len(speedups)) if speedups and all(s is not None for s in speedups) else None,
        "later_hit_tokens": later_hits,
        "later_min_hit_tokens": min(later_hits) if later_hits and all(h is not None for h in later_hits) else None,
        "first_hit_tokens": first["log"]["hit_tokens"],
        "outputs_ok": all(bool(v["output_text"]) and v["status"] == "ok" for v in reqs),
        "metrics": summarize_delta(wb.deltas(s_start, s_end).get(e.name, {})),
    }
    if control is not None:
        view["control"] = record_view(control, evidence.get(control.request_id))
        view["speedup_vs_control"] = (control.ttft_s / mean_later) if (control.ttft_s and mean_later) else None
    return view, records, {k: v.model_dump(mode="json") for k, v in evidence.items()}


def _med_ms(per_trial: list[dict[str, Any]], key: str) -> float | None:
    xs = tr.finite((t.get(key) or {}).get("ttft_s") for t in per_trial)
    return round(stats.median(xs) * 1000, 1) if xs else None


def _ms(s: float | None) -> str:
    return f"{s * 1000:.1f}" if s is not None else "?"
