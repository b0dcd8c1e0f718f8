"""reuse (seed 000) and reuse-2node (seed 001): a base prompt, then a follow-up sharing its prefix,
on the same engine or on another one; proven by metrics deltas and per-request log evidence,
against a control request (different prefix, same length) on the follow-up engine."""

from __future__ import annotations

import random
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..prompts import text_of_tokens
from ..workbench import Workbench, record_view, summarize_delta
from ..outcome import Outcome


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prefix_tokens: int = Field(1024, ge=1, description="length of the shared prefix (≥ 2 chunks to prove reuse)")
    question: str = " Question: what were the key developments in AI research during the 1960s and 1970s?"
    max_tokens: int = Field(32, ge=1)
    wait_s: float = Field(2.0, ge=0, description="pause after the base request (after its KV is stored)")
    store_timeout_s: float = Field(30.0, ge=0, description="how long to wait for the base KV to be stored")
    settle_s: float = Field(0.5, ge=0, description="pause after warm-up so the machine is quiet")
    warmup: bool = Field(True, description="one unrelated request per engine first")
    control: bool = Field(True, description="also send a different prefix of the same length to the follow-up engine")
    seed: int | None = Field(None, description="prompt seed (default: a fresh one per run, so no cache is warm)")


def run(wb: Workbench, spec: Any, p: Params) -> Outcome:
    base_e = wb.engine(spec.engines.get("base", "role:prefill"))
    follow_e = wb.engine(spec.engines.get("follow_up", "role:prefill"))
    seed = p.seed if p.seed is not None else random.SystemRandom().randrange(1 << 30)
    count = lambda text: wb.tokens(base_e, text)  # noqa: E731

    if p.warmup:
        before = wb.snapshot()
        for e in {base_e.name: base_e, follow_e.name: follow_e}.values():
            wb.send(e, text_of_tokens(min(p.prefix_tokens, 2 * wb.chunk_size), seed + 7919, count), 4, tags={"phase": "warmup"})
        wb.wait_for_store(before, min(p.store_timeout_s, 10.0))
        time.sleep(p.settle_s)

    prefix = text_of_tokens(p.prefix_tokens, seed, count)
    mark = wb.mark_logs()
    s0 = wb.snapshot()
    base = wb.send(base_e, prefix, p.max_tokens, tags={"phase": "base"})
    stored_after = wb.wait_for_store(s0, p.store_timeout_s)
    time.sleep(p.wait_s)
    s1 = wb.snapshot()
    follow = wb.send(follow_e, prefix + p.question, p.max_tokens, tags={"phase": "follow_up"})
    s2 = wb.snapshot()
    records = [base, follow]
    control = None
    if p.control:
        time.sleep(p.settle_s)
        s2 = wb.snapshot()
        control_prefix = text_of_tokens(p.prefix_tokens, seed + 104729, count)
        control = wb.send(follow_e, control_prefix + p.question, p.max_tokens, tags={"phase": "control"})
        records.append(control)
    evidence, unattributed = wb.evidence(mark, records)

    d_base = wb.deltas({base_e.name: s0[base_e.name]} if base_e.name in s0 else {}, {k: v for k, v in s1.items() if k == base_e.name})
    d_follow = wb.deltas({k: v for k, v in s1.items() if k == follow_e.name}, {k: v for k, v in s2.items() if k == follow_e.name})
    fm = summarize_delta(d_follow.get(follow_e.name, {}))
    fm["cache_hit_tokens"] = (fm["prefix_cache_hit_tokens"] or 0) + (fm["external_hit_tokens"] or 0) if (
        fm["prefix_cache_hit_tokens"] is not None or fm["external_hit_tokens"] is not None) else None
    bm = summarize_delta(d_base.get(base_e.name, {}))
    services = [p.name for p in wb.plan.processes() if p.kind in ("lmcache_server", "controller")]
    d_services = wb.deltas({k: v for k, v in s1.items() if k in services}, {k: v for k, v in s2.items() if k in services})

    view_base = {**record_view(base, evidence.get(base.request_id)), "metrics": bm}
    view_follow = {**record_view(follow, evidence.get(follow.request_id)), "metrics": fm}
    results: dict[str, Any] = {
        "base_engine": base_e.name, "follow_up_engine": follow_e.name, "same_engine": base_e.name == follow_e.name,
        "chunk_size": wb.chunk_size, "seed": seed,
        "base": view_base, "follow_up": view_follow,
        "store_seen_after_s": stored_after,
        "expected_hit_tokens": (base.prompt_tokens // wb.chunk_size) * wb.chunk_size if base.prompt_tokens else None,
        "ttft_speedup": (base.ttft_s / follow.ttft_s) if (base.ttft_s and follow.ttft_s) else None,
        "outputs_differ": bool(base.output_text) and base.output_text != follow.output_text,
        "lmcache_server": {**{n: summarize_delta(d) for n, d in d_services.items()}, "log_totals": unattributed},
        "kv_store_hit_tokens": max([d.get("mp_lookup_hit_tokens", 0.0) for d in d_services.values()] or [0.0]),
    }
    if control is not None:
        results["control"] = record_view(control, evidence.get(control.request_id))
        results["ttft_speedup_vs_control"] = (control.ttft_s / follow.ttft_s) if (control.ttft_s and follow.ttft_s) else None
    headline = {
        "base TTFT (ms)": _ms(base.ttft_s), "follow-up TTFT (ms)": _ms(follow.ttft_s),
        "control TTFT (ms)": _ms(control.ttft_s) if control else None,
        "TTFT speedup": _r(results["ttft_speedup"]),
        "follow-up LMCache hit tokens (log)": view_follow["log"]["hit_tokens"],
        "follow-up external hit tokens (metrics)": fm["external_hit_tokens"],
        "follow-up prefix-cache hit tokens (metrics)": fm["prefix_cache_hit_tokens"],
        "base prompt tokens": base.prompt_tokens,
    }
    return Outcome(results=results, records=records, evidence={k: v.model_dump(mode="json") for k, v in evidence.items()},
                   headline=headline)


def _ms(s: float | None) -> float | None:
    return round(s * 1000, 1) if s is not None else None


def _r(x: float | None) -> float | None:
    return round(x, 2) if x is not None else None
