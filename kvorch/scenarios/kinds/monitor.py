"""monitor (seed 004): a workload whose requests share a few prefixes, while every engine's
``/metrics`` is sampled at an interval; reports how KV-cache usage and the hit rates progress.

Request ``i`` uses prefix group ``i % prefix_groups`` (a shared prefix of ``prefix_tokens``) and a
suffix of its own. With several engines the groups go round the engines (request ``i`` on engine
``(i // prefix_groups) % engines``), so the first requests of a group miss, its next ones on the same
engine hit vLLM's prefix cache, and those on another engine hit LMCache (external hits).

The series (every sample of every engine, with the cluster-wide cumulative hit rates since the
workload began) is written next to the result as ``monitor-samples.jsonl`` and ``.csv``.
"""

from __future__ import annotations

import csv
import json
import math
import random
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ... import client as oa
from ... import metrics as mx
from ..prompts import text_of_tokens, text_of_words
from ..workbench import Workbench, summarize_delta
from ..outcome import Outcome


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    requests: int = Field(48, ge=1, le=100_000)
    concurrency: int = Field(4, ge=1, le=1024)
    rate_rps: float | None = Field(16.0, gt=0, description="Poisson arrival rate (null: as fast as concurrency allows)")
    max_duration_s: float = Field(60.0, gt=0, description="bound of the workload")
    prefix_groups: int = Field(4, ge=1, description="distinct shared prefixes")
    prefix_tokens: int = Field(768, ge=1, description="length of each shared prefix (>= 1 chunk for LMCache hits)")
    suffix_tokens: int = Field(32, ge=1, description="length of each request's own part")
    max_tokens: int = Field(16, ge=1)
    interval_s: float = Field(0.2, gt=0, description="sampling interval")
    tail_s: float = Field(0.5, ge=0, description="keep sampling this long after the last request")
    spread: bool = Field(True, description="send the groups round the engines (else: only to the target engine)")
    seed: int | None = Field(None, description="prompt seed (default: a fresh one per run)")


def _finite(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _progress(vals: list[float | None]) -> dict[str, Any]:
    xs = [v for v in vals if v is not None]
    return {"n": len(xs), "first": xs[0] if xs else None, "last": xs[-1] if xs else None,
            "min": min(xs) if xs else None, "max": max(xs) if xs else None,
            "rose": (xs[-1] > xs[0]) if len(xs) >= 2 else None}


def run(wb: Workbench, spec: Any, p: Params) -> Outcome:
    target = wb.engine(spec.engines.get("target", "role:prefill"))
    engines = [target] + ([e for e in wb.engines() if e.name != target.name] if p.spread else [])
    seed = p.seed if p.seed is not None else random.SystemRandom().randrange(1 << 30)
    count = lambda text: wb.tokens(target, text)
    prefixes = [text_of_tokens(p.prefix_tokens, seed + 7919 * g, count) for g in range(p.prefix_groups)]
    reqs = []
    for i in range(p.requests):
        g = i % p.prefix_groups
        e = engines[(i // p.prefix_groups) % len(engines)]
        prompt = prefixes[g] + " Request " + str(i) + ": " + text_of_words(max(1, int(p.suffix_tokens * 0.8)), seed + 104729 + i)
        reqs.append(wb.request(e, prompt, p.max_tokens, tags={"phase": "monitor", "group": str(g), "index": str(i)}))

    names = {e.name for e in engines}
    targets = {n: u for n, u in wb.metric_targets().items() if n in names}
    s0 = wb.snapshot(sorted(names))
    sampler = mx.Sampler(targets, interval_s=p.interval_s, max_duration_s=p.max_duration_s + p.tail_s + 30)
    sampler.start()
    try:
        t0 = time.monotonic()
        records = wb.load(reqs, concurrency=p.concurrency, rate_rps=p.rate_rps, max_duration_s=p.max_duration_s, seed=seed)
        took = time.monotonic() - t0
        time.sleep(p.tail_s)
    finally:
        samples = sampler.stop()
    s1 = wb.snapshot(sorted(names))

    # cluster-wide series: one round = one scrape of every engine (the sampler appends a round at
    # once); cumulative counters since the start (s0), so the hit rates are "so far" rates
    base = {n: s.values(mx.SAMPLE_COUNTERS) for n, s in s0.items()}
    latest: dict[str, dict[str, float | None]] = {}
    rounds: list[dict[str, Any]] = []
    per_engine: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    width = max(1, len(targets))
    for i in range(0, len(samples), width):
        chunk = [s for s in samples[i:i + width] if s.ok]
        for s in chunk:
            latest[s.target] = s.values
            per_engine.setdefault(s.target, []).append({"elapsed_s": round(s.elapsed_s, 3),
                                                        "kv_cache_usage": _finite(s.values.get("kv_cache_usage"))})
        if chunk:
            rounds.append(_round(max(s.elapsed_s for s in chunk), latest, base))

    def series(key: str) -> list[float | None]:
        return [r[key] for r in rounds]

    active = [r for r in rounds if r["prompt_tokens"]]
    hit = [r["cache_hit_rate"] for r in active]
    d_all = {n: mx.delta(s0.get(n), s1[n]) for n in s1}
    total = summarize_delta({k: sum(d.get(k, 0.0) for d in d_all.values()) for k in set().union(*d_all.values())}) if d_all else {}
    total.pop("all", None)
    summ = oa.summarize(records)
    results: dict[str, Any] = {
        "engines": sorted(names), "target": target.name, "seed": seed, "seconds": took,
        "requests": len(records), "ok": summ["ok"], "errors": summ["errors"] + summ["timeouts"],
        "samples": len(samples), "samples_failed": sum(1 for s in samples if not s.ok), "rounds": len(rounds),
        "interval_s": p.interval_s,
        "kv_cache_usage": _progress([_max(r["kv_cache_usage"]) for r in rounds]),
        "kv_cache_usage_by_engine": {n: _progress([x["kv_cache_usage"] for x in v]) for n, v in per_engine.items()},
        "requests_running": _progress([r["requests_running"] for r in rounds]),
        "requests_waiting": _progress([r["requests_waiting"] for r in rounds]),
        "cache_hit_rate": _progress(hit),
        "prefix_hit_rate": _progress([r["prefix_hit_rate"] for r in active]),
        "external_hit_rate": _progress([r["external_hit_rate"] for r in active]),
        "totals": total, "ttft_s": summ["ttft_s"], "e2e_s": summ["e2e_s"],
        "series": {"elapsed_s": series("elapsed_s"), "cache_hit_rate": series("cache_hit_rate"),
                   "prefix_hit_rate": series("prefix_hit_rate"), "external_hit_rate": series("external_hit_rate"),
                   "kv_cache_usage_max": [_max(r["kv_cache_usage"]) for r in rounds],
                   "requests_running": series("requests_running")},
    }
    _write(wb, samples, rounds)
    ch, kv = results["cache_hit_rate"], results["kv_cache_usage"]
    headline = {
        "samples (rounds x engines)": f"{len(samples)} ({len(rounds)} rounds every {p.interval_s:g} s, {len(names)} engines)",
        "cache hit rate, cumulative: first → last (max)": f"{_pct(ch['first'])} → {_pct(ch['last'])} ({_pct(ch['max'])})",
        "prefix-cache hit rate first → last": f"{_pct(results['prefix_hit_rate']['first'])} → {_pct(results['prefix_hit_rate']['last'])}",
        "external (LMCache) hit rate first → last": f"{_pct(results['external_hit_rate']['first'])} → {_pct(results['external_hit_rate']['last'])}",
        "KV cache usage first / max / last": f"{_pct(kv['first'])} / {_pct(kv['max'])} / {_pct(kv['last'])}",
        "running requests max": results["requests_running"]["max"],
        "requests ok": f"{summ['ok']} / {p.requests}",
        "TTFT p50 / p99 (ms)": f"{_ms(summ['ttft_s']['p50'])} / {_ms(summ['ttft_s']['p99'])}",
    }
    return Outcome(results=results, records=records, headline=headline)


def _round(elapsed: float, latest: dict[str, dict[str, float | None]], base: dict[str, dict[str, float]]) -> dict[str, Any]:
    def cum(key: str) -> float | None:
        vals = []
        for n, v in latest.items():
            x = _finite(v.get(key))
            if x is not None:
                b = base.get(n, {}).get(key, 0.0)
                vals.append(x - b if x >= b else x)  # a restarted engine counts from zero
        return sum(vals) if vals else None

    q, h = cum("prefix_cache_queries"), cum("prefix_cache_hits")
    eq, eh = cum("external_prefix_cache_queries"), cum("external_prefix_cache_hits")
    pt = cum("prompt_tokens")
    return {
        "elapsed_s": round(elapsed, 3), "prompt_tokens": pt,
        "prefix_hit_rate": (h / q) if (h is not None and q) else None,
        "external_hit_rate": (eh / eq) if (eh is not None and eq) else None,
        "cache_hit_rate": ((h or 0) + (eh or 0)) / q if q else None,
        "kv_cache_usage": {n: _finite(v.get("kv_cache_usage")) for n, v in latest.items()},
        "requests_running": sum(_finite(v.get("requests_running")) or 0 for v in latest.values()),
        "requests_waiting": sum(_finite(v.get("requests_waiting")) or 0 for v in latest.values()),
    }


def _max(d: dict[str, float | None]) -> float | None:
    xs = [v for v in d.values() if v is not None]
    return max(xs) if xs else None


def _write(wb: Workbench, samples: list[mx.Sample], rounds: list[dict[str, Any]]) -> None:
    try:
        wb.out_dir.mkdir(parents=True, exist_ok=True)
        mx.save_jsonl(samples, wb.out_dir / "monitor-samples.jsonl")
        mx.save_csv(samples, wb.out_dir / "monitor-samples.csv")
        with (wb.out_dir / "monitor-series.jsonl").open("w") as fh:
            for r in rounds:
                fh.write(json.dumps(r) + "\n")
        with (wb.out_dir / "monitor-series.csv").open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["elapsed_s", "cache_hit_rate", "prefix_hit_rate", "external_hit_rate", "kv_cache_usage_max",
                        "requests_running", "requests_waiting", "prompt_tokens"])
            for r in rounds:
                w.writerow([r["elapsed_s"], r["cache_hit_rate"], r["prefix_hit_rate"], r["external_hit_rate"],
                            _max(r["kv_cache_usage"]), r["requests_running"], r["requests_waiting"], r["prompt_tokens"]])
    except OSError as e:
        wb.notes.append(f"could not write the monitor series: {e}")


def _pct(x: float | None) -> str:
    return "?" if x is None else f"{x * 100:.1f}%"


def _ms(s: float | None) -> str:
    return "?" if s is None else f"{s * 1000:.1f}"
