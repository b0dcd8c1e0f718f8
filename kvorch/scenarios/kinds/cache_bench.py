"""cache-bench (seed 003): the same workload measured **cold** and **warm**, side by side.

1. warm-up: the workload's prompts (as a benchmark's warm-up sends them), and on every engine a
   probe prompt twice (its second send shows what a cache hit looks like on each tier);
2. reset every cache tier of every engine (``mode``):
   ``reset``: over the APIs (vLLM ``POST /reset_prefix_cache`` — needs ``VLLM_SERVER_DEV_MODE=1`` —
   and LMCache through the controller's ``/clear`` or the LMCache server's ``/cache/clear``);
   ``restart``: restart the engines (and the LMCache server), which empties what lives in them;
   ``auto``: ``reset``, and restart the engines whose reset was refused or is not possible;
   ``none``: nothing (to see what a benchmark without a reset measures);
3. proof of the reset: each engine's probe again — zero vLLM prefix-cache hits (metrics) and zero
   LMCache hit tokens (its log line) on every engine, else the tier is named as not reset;
4. **cold**: every prompt with a nonce at its START (``nonce``), so no prefix can match;
5. the prompts without nonce once (now they have been seen), then **warm**: the same again.

Both phases report TTFT p50/p90/p99, E2E, hit tokens (log and metrics), hit rate; and the speedup.
Steps 4–5 run ``trials`` times (cold with fresh nonces each time; the prompts are seen once): the
speedup is a timing check judged on the trials' median and its 95 % bootstrap interval (pass /
fail / inconclusive), the counter checks must hold in every trial.
"""

from __future__ import annotations

import random
import time
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field

from ... import client as oa
from ... import metrics as mx
from ...errors import UserError
from ... import stats
from .. import trials as tr
from ..prompts import nonce, text_of_tokens
from ..workbench import ScenarioCannotRun, Workbench, hit_tokens
from ..outcome import Outcome


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    requests: int = Field(8, ge=1, le=10_000, description="prompts in the workload (each measured cold and warm)")
    prompt_tokens: int = Field(1024, ge=1, description="prompt length (>= 1 chunk so that LMCache can hold it)")
    max_tokens: int = Field(32, ge=1)
    concurrency: int = Field(2, ge=1, le=1024)
    rate_rps: float | None = Field(None, gt=0, description="Poisson arrival rate (null: as fast as concurrency allows)")
    max_duration_s: float = Field(120.0, gt=0, description="bound of each phase")
    warmup: int | None = Field(None, ge=0, description="workload prompts sent as warm-up (default: all of them)")
    nonce: bool = Field(True, description="a nonce at the start of every cold prompt")
    mode: Literal["auto", "reset", "restart", "none"] = Field("auto", description="how caches are emptied between warm-up and measurement")
    probe: bool = Field(True, description="prove the reset with a probe prompt per engine")
    probe_tokens: int = Field(768, ge=1, description="probe length (>= 2 chunks)")
    restart_timeout_s: float = Field(180.0, gt=0, description="how long a restarted engine may take to be healthy")
    settle_s: float = Field(0.5, ge=0, description="pause between phases (KV stores finish)")
    seed: int | None = Field(None, description="prompt seed (default: a fresh one per run)")
    trials: int | None = Field(None, ge=1, le=100, description=f"cold/warm trials after the one reset (default "
                               f"{tr.SIM_TRIALS} on the simulated engine, {tr.REAL_TRIALS} on real engines)")


TIER_VLLM = "vLLM prefix cache"
TIER_LMCACHE = "LMCache"


def _has_lmcache(wb: Workbench, e: Any) -> bool:
    return bool(e.config_file) or wb.plan.topology == "mp"


def _reset(wb: Workbench, engines: list[Any], p: Params) -> dict[str, Any]:
    """Empty the caches the way ``p.mode`` says. Returns per engine per tier what was done."""
    actions: dict[str, dict[str, str]] = {e.name: {} for e in engines}
    has_server = any(x.kind == "lmcache_server" for x in wb.plan.processes())
    to_restart: list[str] = []
    if p.mode in ("reset", "auto"):
        rep = wb.reset_caches(engines)
        server = next((r["lmcache_server"] for r in rep.values() if "lmcache_server" in r), None)
        for e in engines:
            got = rep.get(e.name, {})
            actions[e.name][TIER_VLLM] = "reset over the API: " + got.get("engine_prefix_cache", "not attempted")
            if _has_lmcache(wb, e):
                if "lmcache" in got:
                    actions[e.name][TIER_LMCACHE] = "cleared through the controller: " + got["lmcache"]
                elif server is not None:
                    actions[e.name][TIER_LMCACHE] = "cleared on the LMCache server: " + server
                else:
                    actions[e.name][TIER_LMCACHE] = "no API to clear it (no controller, no LMCache server)"
        if p.mode == "auto":
            to_restart = [e.name for e in engines if any(not v.endswith(": ok") for v in actions[e.name].values())]
            if has_server and any(not actions[n].get(TIER_LMCACHE, ": ok").endswith(": ok") for n in to_restart):
                to_restart.append("lmcache-server")
    elif p.mode == "restart":
        to_restart = [e.name for e in engines] + (["lmcache-server"] if has_server else [])
    restarted: dict[str, Any] = {}
    if to_restart:
        from ...restart import restart_processes

        try:
            restarted = restart_processes(wb.plan, wb.nodes, to_restart, timeout=p.restart_timeout_s)
        except UserError as err:
            raise ScenarioCannotRun(f"restarting {', '.join(to_restart)} failed: {err.message}", hint=err.hint) from None
        for e in engines:
            if e.name in restarted:
                why = "; ".join(f"{t}: {v}" for t, v in actions[e.name].items() if not v.endswith(": ok"))
                for tier in [TIER_VLLM, TIER_LMCACHE] if _has_lmcache(wb, e) else [TIER_VLLM]:
                    actions[e.name][tier] = "engine restarted" + (f" (the API reset was not possible: {why})" if why else "")
        _wait_registered(wb, [e for e in engines if e.name in restarted])
    if p.mode == "none":
        for e in engines:
            actions[e.name][TIER_VLLM] = "not reset (mode none)"
            if _has_lmcache(wb, e):
                actions[e.name][TIER_LMCACHE] = "not reset (mode none)"
    return {"mode": p.mode, "actions": actions, "restarted": restarted}


def _wait_registered(wb: Workbench, engines: list[Any], timeout_s: float = 15.0) -> None:
    """A restarted LMCache worker registers with the controller asynchronously: wait for it."""
    ctl = [x for x in wb.plan.processes() if x.kind == "controller"]
    want = {e.instance_id for e in engines if e.instance_id}
    if not ctl or not want:
        return
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        try:
            r = wb.http.get(ctl[0].health_url, timeout=2.0)
            have = {w.get("instance_id") for w in r.json().get("workers", [])} if r.status_code == 200 else set()
        except (httpx.HTTPError, ValueError, AttributeError):
            have = set()
        if want <= have:
            return
        time.sleep(0.1)
    wb.notes.append(f"restarted LMCache workers not registered with the controller after {timeout_s:.0f} s: {', '.join(sorted(want))}")


def _probe(wb: Workbench, e: Any, prompt: str, phase: str) -> tuple[oa.RequestRecord, dict[str, float]]:
    s0 = wb.snapshot([e.name])
    r = wb.send(e, prompt, 1, tags={"phase": phase})
    s1 = wb.snapshot([e.name])
    return r, wb.deltas(s0, s1).get(e.name, {})


def _probe_view(r: oa.RequestRecord, d: dict[str, float], ev: Any) -> dict[str, Any]:
    return {"request_id": r.request_id, "status": r.status, "ttft_s": r.ttft_s, "prompt_tokens": r.prompt_tokens,
            "vllm_prefix_hit_tokens": d.get("prefix_cache_hits"), "external_hit_tokens": hit_tokens(d),
            "lmcache_log_hit_tokens": ev.hit_tokens if ev is not None else None,
            "log_found": bool(ev and ev.found)}


def _phase(wb: Workbench, target: Any, prompts: list[str], p: Params, phase: str, seed: int,
           trial: int = 0) -> dict[str, Any]:
    mark = wb.mark_logs()
    s0 = wb.snapshot()
    reqs = [wb.request(target, pr, p.max_tokens, tags={"phase": phase, "index": str(i), "trial": str(trial)})
            for i, pr in enumerate(prompts)]
    recs = wb.load(reqs, concurrency=p.concurrency, rate_rps=p.rate_rps, max_duration_s=p.max_duration_s, seed=seed)
    s1 = wb.snapshot()
    evidence, _ = wb.evidence(mark, recs, wait_s=0.2)
    s = oa.summarize(recs)
    d = mx.delta(s0.get(target.name), s1[target.name]) if target.name in s1 else {}
    log_hits = [evidence[r.request_id].hit_tokens for r in recs if r.request_id in evidence]
    # vLLM counts its own prefix-cache hits and the connector's (LMCache) hits without overlap;
    # lmcache:num_hit_tokens counts whole retrieved chunks, which may overlap vLLM's own hits
    prefix_hits = d.get("prefix_cache_hits")
    ext_hits = d.get("external_prefix_cache_hits", hit_tokens(d))
    cache_hits = (prefix_hits or 0) + (ext_hits or 0) if (prefix_hits is not None or ext_hits is not None) else None
    prompt_tokens = sum(r.prompt_tokens or 0 for r in recs if r.ok)
    queried = d.get("prefix_cache_queries") or prompt_tokens
    return {
        "requests": len(recs), "ok": s["ok"], "errors": s["errors"] + s["timeouts"],
        "not_started": len(prompts) - len(recs),
        "ttft_s": s["ttft_s"], "e2e_s": s["e2e_s"], "tpot_s": s["tpot_s"], "itl_s": s["itl_s"],
        "output_tokens_per_s": s.get("output_tokens_per_s"), "prompt_tokens": prompt_tokens,
        "lmcache_log_hit_tokens": sum(h or 0 for h in log_hits) if log_hits else None,
        "requests_with_log_hits": sum(1 for h in log_hits if h),
        "vllm_prefix_hit_tokens": prefix_hits, "external_hit_tokens": ext_hits,
        "cache_hit_tokens": cache_hits,
        "lmcache_retrieved_tokens": d.get("lmcache_hit_tokens"),
        "hit_rate": (cache_hits / queried) if (cache_hits is not None and queried) else None,
        "records": recs, "evidence": evidence,
    }


def run(wb: Workbench, spec: Any, p: Params) -> Outcome:
    target = wb.engine(spec.engines.get("target", "role:prefill"))
    engines = wb.engines()
    seed = p.seed if p.seed is not None else random.SystemRandom().randrange(1 << 30)
    count = lambda text: wb.tokens(target, text)
    trials = p.trials or tr.default_trials(engines)
    prompts = [text_of_tokens(p.prompt_tokens, seed + 7919 * i, count) for i in range(p.requests)]
    probes = {e.name: text_of_tokens(p.probe_tokens, seed + 900_001 + 31 * k, lambda t, e=e: wb.tokens(e, t))
              for k, e in enumerate(engines)} if p.probe else {}
    all_records: list[oa.RequestRecord] = []
    all_evidence: dict[str, Any] = {}

    # ---- 1. warm-up: the workload (as a benchmark tool would), and the probes twice
    n_warm = p.requests if p.warmup is None else min(p.warmup, p.requests)
    if n_warm:
        reqs = [wb.request(target, pr, p.max_tokens, tags={"phase": "warmup"}) for pr in prompts[:n_warm]]
        all_records += wb.load(reqs, concurrency=p.concurrency, rate_rps=None, max_duration_s=p.max_duration_s, seed=seed)
    before: dict[str, Any] = {}
    if probes:
        mark = wb.mark_logs()
        pairs = {}
        for e in engines:
            wb.send(e, probes[e.name], 1, tags={"phase": "probe-seed"})
            pairs[e.name] = _probe(wb, e, probes[e.name], "probe-before-reset")
        ev, _ = wb.evidence(mark, [r for r, _ in pairs.values()])
        for name, (r, d) in pairs.items():
            before[name] = _probe_view(r, d, ev.get(r.request_id))
            all_records.append(r)
        all_evidence.update({k: v.model_dump(mode="json") for k, v in ev.items()})
    time.sleep(p.settle_s)

    # ---- 2. reset (or restart) every tier, 3. prove it
    reset = _reset(wb, engines, p)
    after: dict[str, Any] = {}
    not_reset: list[str] = []
    if probes:
        mark = wb.mark_logs()
        pairs = {e.name: _probe(wb, e, probes[e.name], "probe-after-reset") for e in engines}
        ev, _ = wb.evidence(mark, [r for r, _ in pairs.values()])
        for e in engines:
            r, d = pairs[e.name]
            v = after[e.name] = _probe_view(r, d, ev.get(r.request_id))
            all_records.append(r)
            if v["status"] != "ok":
                not_reset.append(f"{e.name}: probe failed ({r.error})")
                continue
            if v["vllm_prefix_hit_tokens"]:
                not_reset.append(f"{e.name}: {TIER_VLLM} still held the probe ({v['vllm_prefix_hit_tokens']:.0f} tokens hit; "
                                 f"{reset['actions'][e.name].get(TIER_VLLM)})")
            lm = v["lmcache_log_hit_tokens"] or v["external_hit_tokens"]
            if _has_lmcache(wb, e) and lm:
                not_reset.append(f"{e.name}: {TIER_LMCACHE} still held the probe ({lm:.0f} tokens hit; "
                                 f"{reset['actions'][e.name].get(TIER_LMCACHE)})")
            if _has_lmcache(wb, e) and not v["log_found"] and v["external_hit_tokens"] is None:
                not_reset.append(f"{e.name}: {TIER_LMCACHE} unverified (no LMCache log line, no metrics for the probe)")
        all_evidence.update({k: v.model_dump(mode="json") for k, v in ev.items()})
    else:
        for e in engines:
            for tier, what in reset["actions"][e.name].items():
                if not (what.endswith(": ok") or what.startswith("engine restarted")):
                    not_reset.append(f"{e.name}: {tier}: {what}")
    sensitive = {n: bool(b["vllm_prefix_hit_tokens"] or b["lmcache_log_hit_tokens"]) for n, b in before.items()}
    reset.update({"probe_before": before, "probe_after": after, "tiers_not_reset": not_reset,
                  "every_tier_reset": not not_reset, "probe_sensitive": all(sensitive.values()) if sensitive else None})
    time.sleep(p.settle_s)

    # ---- 4./5. trials: cold (a fresh nonce at the start of every prompt), the prompts seen (first
    # trial only: later trials' prompts have been seen), warm
    per_trial: list[dict[str, Any]] = []
    t0 = time.monotonic()
    for i in range(trials):
        if i:
            time.sleep(p.settle_s)
        cold_prompts = [(nonce() + pr) if p.nonce else pr for pr in prompts]
        cold = _phase(wb, target, cold_prompts, p, "cold", seed + 1 + 10 * i, i)
        time.sleep(p.settle_s)
        seen = None
        if i == 0:
            seen = _phase(wb, target, prompts, p, "seen", seed + 2, i)
            time.sleep(p.settle_s)
        warm = _phase(wb, target, prompts, p, "warm", seed + 3 + 10 * i, i)
        for ph in (cold, seen, warm):
            if ph is None:
                continue
            all_records.extend(ph.pop("records"))
            all_evidence.update({k: v.model_dump(mode="json") for k, v in ph.pop("evidence").items()})

        def sp(q: str, cold: dict[str, Any] = cold, warm: dict[str, Any] = warm) -> float | None:
            a, b = cold["ttft_s"][q], warm["ttft_s"][q]
            return (a / b) if (a and b) else None

        view: dict[str, Any] = {"trial": i, "cold": cold, "warm": warm,
                                "ttft_speedup_p50": sp("p50"), "ttft_speedup_p90": sp("p90"), "ttft_speedup_p99": sp("p99")}
        if seen is not None:
            view["seen"] = {k: seen[k] for k in ("requests", "ok", "errors", "ttft_s", "cache_hit_tokens")}
        per_trial.append(view)
    took = time.monotonic() - t0

    results: dict[str, Any] = {
        **per_trial[0],  # the first trial in full; every trial in `trials`
        "target": target.name, "engines": [e.name for e in engines], "chunk_size": wb.chunk_size, "seed": seed,
        "nonce": p.nonce, "reset": reset, "trials": per_trial, "n_trials": trials,
        "wall_s": {"trials": round(took, 3), "per_trial": round(took / trials, 3)},
        "longer_hint": "longer prompts (--set prompt_tokens=N) or more requests per phase (--set requests=N)",
        "median": {k: tr.median(per_trial, k) for k in ("ttft_speedup_p50", "ttft_speedup_p90", "ttft_speedup_p99")},
    }
    first = per_trial[0]
    cold, warm = first["cold"], first["warm"]

    def med_ms(phase: str, q: str) -> str:
        xs = tr.finite(t[phase]["ttft_s"][q] for t in per_trial)
        return _ms(stats.median(xs) if xs else None)

    restarted = sorted(reset["restarted"])
    headline = {
        "trials": trials,
        "TTFT p50 cold / warm (ms)": f"{med_ms('cold', 'p50')} / {med_ms('warm', 'p50')}",
        "TTFT p90 cold / warm (ms)": f"{med_ms('cold', 'p90')} / {med_ms('warm', 'p90')}",
        "TTFT p99 cold / warm (ms)": f"{med_ms('cold', 'p99')} / {med_ms('warm', 'p99')}",
        "TTFT speedup (p50)": tr.median(per_trial, "ttft_speedup_p50", 2),
        "TTFT speedup (p50; median, 95 % CI)": tr.interval_shown(per_trial, "ttft_speedup_p50"),
        "cache hit tokens cold / warm (metrics), trial 1": f"{_n(cold['cache_hit_tokens'])} / {_n(warm['cache_hit_tokens'])}",
        "LMCache hit tokens cold / warm (log), trial 1": f"{_n(cold['lmcache_log_hit_tokens'])} / {_n(warm['lmcache_log_hit_tokens'])}",
        "hit rate cold / warm, trial 1": f"{_r(cold['hit_rate'])} / {_r(warm['hit_rate'])}",
        "reset": (f"{p.mode}: restarted {', '.join(restarted)}" if restarted else p.mode)
                 + ("; every tier verified empty" if not not_reset else f"; NOT reset: {'; '.join(not_reset)}"),
        "requests cold / warm ok, trial 1": f"{cold['ok']} / {warm['ok']} of {p.requests}",
    }
    results["per_trial_values"] = {
        "TTFT speedup (p50)": tr.values(per_trial, "ttft_speedup_p50"),
        "cold TTFT p50 (ms)": [round(x * 1000, 1) for x in tr.finite(t["cold"]["ttft_s"]["p50"] for t in per_trial)],
        "warm TTFT p50 (ms)": [round(x * 1000, 1) for x in tr.finite(t["warm"]["ttft_s"]["p50"] for t in per_trial)],
    }
    return Outcome(results=results, records=all_records, evidence=all_evidence, headline=headline)


def _ms(s: float | None) -> str:
    return f"{s * 1000:.1f}" if s is not None else "?"


def _r(x: float | None) -> float | None:
    return round(x, 2) if x is not None else None


def _n(x: float | None) -> str:
    return "?" if x is None else f"{x:.0f}"
