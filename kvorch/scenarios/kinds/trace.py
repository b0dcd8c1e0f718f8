"""trace: replay a JSONL trace (seed 003's prompts, AIPerf single/multi-turn files, Mooncake traces
with hash_ids) against the engines, timestamps honoured or ignored; TTFT, throughput, and how much
of the prefix the trace shares was served from a cache (metrics and per-request log lines)."""

from __future__ import annotations

import random
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..measure import cache_totals, figure, ms, n, r2, request_rows, run_measured, summary
from ..prompts import nonce, text_of_tokens
from ..traces import Format, load_trace, resolve, shared_prefix_blocks
from ..workbench import ScenarioCannotRun, Workbench
from ..workload import Session, Turn
from ..outcome import Outcome


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    file: str = Field("traces/mooncake-sample.jsonl", description="the JSONL trace (relative paths: here, then scenarios/)")
    format: Format = "auto"
    timestamps: Literal["honour", "ignore"] = Field("honour", description="send at the trace's timestamps, or as fast as concurrency allows")
    speedup: float = Field(1.0, gt=0, description="divide the trace's timestamps and delays by this")
    nonce: bool = Field(False, description="seed 003: a nonce at the START of each session's first prompt (no cross-session reuse)")
    block_tokens: int = Field(512, ge=1, description="tokens per Mooncake hash block")
    max_tokens: int = Field(16, ge=1, description="answer length when the trace gives no output_length")
    max_output_tokens: int = Field(64, ge=1, description="cap on a trace's output_length (bounded runs)")
    concurrency: int = Field(4, ge=1)
    max_requests: int | None = Field(None, ge=1)
    max_duration_s: float = Field(300.0, gt=0)
    api: Literal["completions", "chat"] = "completions"
    spread: bool = Field(False, description="sessions round-robin over every engine (else all to the target)")
    seed: int | None = Field(None, description="seed of the synthetic hash-block texts (default: fresh per run)")


def run(wb: Workbench, spec: Any, p: Params) -> Outcome:
    base = getattr(spec, "source_dir", None)
    path = resolve(p.file, base)
    trace = load_trace(path, p.format)
    target = wb.engine(spec.engines.get("target", "role:prefill"))
    engines = wb.engines() if p.spread else [target]
    seed = p.seed if p.seed is not None else random.SystemRandom().randrange(1 << 30)
    blocks: dict[tuple[int, int], str] = {}
    count = lambda text: wb.tokens(target, text)  # noqa: E731

    def block(h: int, tokens: int) -> str:
        key = (h, tokens)
        if key not in blocks:
            blocks[key] = text_of_tokens(tokens, seed * 1_000_003 + h, count)
        return blocks[key]

    def synth(t: Any) -> str:
        if t.text is not None:
            return t.text
        if not t.hash_ids:
            return text_of_tokens(t.input_length or p.block_tokens, seed + 17 * t.line, count)
        left = t.input_length if t.input_length is not None else p.block_tokens * len(t.hash_ids)
        parts = []
        for h in t.hash_ids:
            if left <= 0:
                break
            take = min(p.block_tokens, left)
            parts.append(block(h, take))
            left -= take
        return " ".join(parts)

    mml = wb.max_model_len(target)
    sessions: list[Session] = []
    expected: dict[str, int] = {}
    for k, ts in enumerate(trace.sessions):
        turns = []
        for j, t in enumerate(ts.turns):
            text = synth(t)
            if p.nonce and j == 0:
                text = nonce() + text
            out = min(t.output_length or p.max_tokens, p.max_output_tokens)
            if mml is not None and t.input_length is not None and t.input_length + out > mml:
                raise ScenarioCannotRun(f"{path}:{t.line}: input_length {t.input_length} + {out} output tokens is more "
                                        f"than engine {target.name}'s max-model-len {mml}",
                                        hint="use a trace with shorter requests, or a lower --set block_tokens=")
            turns.append(Turn(text=text, max_tokens=out, delay_s=t.delay_s, tags={"line": str(t.line), "phase": "trace"}))
        sessions.append(Session(engine=engines[k % len(engines)], turns=turns, name=ts.name, history=ts.multi_turn,
                                raw=not ts.multi_turn, at_s=ts.at_s if p.timestamps == "honour" else None))

    shared = shared_prefix_blocks(trace.sessions, p.block_tokens) if trace.format == "mooncake" and not p.nonce else {}
    m = run_measured(wb, sessions, concurrency=p.concurrency, max_duration_s=p.max_duration_s, api=p.api,
                     speedup=p.speedup, max_requests=p.max_requests)
    for r in m.records:
        line = int(r.tags.get("line", 0))
        expected[r.request_id] = shared.get(line, 0) * p.block_tokens
    rows = request_rows(m, {rid: {"expected_shared_tokens": v} for rid, v in expected.items()})
    s = summary(m.records)
    cache = cache_totals(m.deltas, engines)
    log_hits = [row["log_hit_tokens"] for row in rows if row["log_hit_tokens"] is not None]
    exp_total = sum(expected.values())
    # a prefix cache serves whole chunks: what the trace shares, rounded down to chunks, per request
    exp_chunks = sum((v // wb.chunk_size) * wb.chunk_size for v in expected.values())
    lateness = m.replayed.lateness()
    results: dict[str, Any] = {
        "file": str(path), "format": trace.format, "sessions": len(trace.sessions), "trace_requests": trace.requests,
        "target": target.name, "engines": [e.name for e in engines], "chunk_size": wb.chunk_size, "seed": seed,
        "timestamps": p.timestamps, "nonce": p.nonce, **s, "not_sent": m.replayed.not_sent,
        "wall_s": round(m.replayed.wall_s, 3),
        "schedule": {"honoured": p.timestamps == "honour", "max_late_s": lateness["max_s"], "p50_late_s": lateness["p50_s"]},
        "reuse": {"expected_shared_tokens": exp_total, "expected_chunk_tokens": exp_chunks, **cache,
                  "log_hit_tokens": sum(log_hits) if log_hits else None,
                  "requests_with_log_hits": sum(1 for h in log_hits if h)},
        "output_tokens_each": [r.output_tokens for r in m.records if r.ok],
        "per_request": rows,
        "figures": [
            figure("ttft.png", "TTFT per request (trace order)", "request (send order)", "TTFT (ms)",
                   {"TTFT": [(i, row["ttft_ms"]) for i, row in enumerate(rows)]}, "bar"),
            figure("hits.png", "hit tokens per request: log vs what the trace shares", "request (send order)", "tokens",
                   {"LMCache log hit tokens": [(i, row["log_hit_tokens"]) for i, row in enumerate(rows)],
                    "shared by the trace": [(i, row["expected_shared_tokens"]) for i, row in enumerate(rows)]}, "line"),
        ],
    }
    headline = {
        "requests ok / in trace": f"{s['ok']} / {trace.requests}", "format": trace.format,
        "TTFT p50 / p99 (ms)": f"{ms(s['ttft_s']['p50'])} / {ms(s['ttft_s']['p99'])}",
        "ITL p50 / p99 (ms)": f"{ms(s['itl_s']['p50'])} / {ms(s['itl_s']['p99'])}",
        "req/s": r2(s.get("requests_per_s")), "output tok/s": r2(s.get("output_tokens_per_s")),
        "cache hit tokens (metrics) / shared by the trace": f"{n(cache['cache_hit_tokens'])} / {exp_total}",
        "schedule max lateness (s)": r2(lateness["max_s"]),
    }
    return Outcome(results=results, records=m.records,
                   evidence={k: v.model_dump(mode="json") for k, v in m.evidence.items()}, headline=headline)
