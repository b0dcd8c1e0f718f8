"""long-doc-qa (LMCache's benchmarks/long_doc_qa): D documents of L tokens; a warm-up round sends
each document once (cold), then the query round sends them again ``repeat_count`` times, ordered
by ``repeat_mode`` — random (shuffled), tile (d0 d1 … d0 d1 …) or interleave (d0 d0 … d1 d1 …) —
with at most ``max_inflight`` requests in flight. TTFT warm vs cold, hit tokens per request."""

from __future__ import annotations

import random
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..measure import cache_totals, figure, ms, n, r2, request_rows, run_measured, summary
from ..prompts import text_of_tokens
from ..workbench import ScenarioCannotRun, Workbench
from ..workload import Session, Turn
from ..outcome import Outcome


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    documents: int = Field(4, ge=1)
    document_tokens: int = Field(1024, ge=1)
    question: str = "\nQuestion: summarise the document above in one sentence."
    output_tokens: int = Field(16, ge=1)
    repeat_count: int = Field(2, ge=1)
    repeat_mode: Literal["random", "tile", "interleave"] = "random"
    shuffle_seed: int = 0
    max_inflight: int = Field(2, ge=1)
    max_duration_s: float = Field(300.0, gt=0)
    settle_s: float = Field(0.5, ge=0, description="pause between the warm-up and the query round")
    api: Literal["completions", "chat"] = "completions"
    seed: int | None = Field(None, description="document text seed (default: fresh per run, so no cache is warm)")


def order(documents: int, repeat_count: int, mode: str, shuffle_seed: int) -> list[int]:
    """The query round's document indices, as LMCache's benchmark orders them."""
    if mode == "tile":
        return [d for _ in range(repeat_count) for d in range(documents)]
    if mode == "interleave":
        return [d for d in range(documents) for _ in range(repeat_count)]
    xs = [d for _ in range(repeat_count) for d in range(documents)]
    random.Random(shuffle_seed).shuffle(xs)
    return xs


def run(wb: Workbench, spec: Any, p: Params) -> Outcome:
    import time

    target = wb.engine(spec.engines.get("target", "role:prefill"))
    mml = wb.max_model_len(target)
    if mml is not None and p.document_tokens + p.output_tokens + 32 > mml:
        raise ScenarioCannotRun(f"documents of {p.document_tokens} tokens do not fit engine {target.name}'s max-model-len {mml}",
                                hint=f"--set document_tokens={max(1, mml - p.output_tokens - 64)} or less")
    seed = p.seed if p.seed is not None else random.SystemRandom().randrange(1 << 30)
    count = lambda text: wb.tokens(target, text)  # noqa: E731
    docs = [text_of_tokens(p.document_tokens, seed + 7919 * d, count) for d in range(p.documents)]

    def sessions(idx: list[int], phase: str) -> list[Session]:
        return [Session(engine=target, raw=True, history=False, name=f"{phase}-{k}",
                        turns=[Turn(text=docs[d] + p.question, max_tokens=p.output_tokens,
                                    tags={"phase": phase, "document": str(d), "index": str(k)})])
                for k, d in enumerate(idx)]

    warm_up = run_measured(wb, sessions(list(range(p.documents)), "warm-up"), concurrency=p.max_inflight,
                           max_duration_s=p.max_duration_s, api=p.api)
    time.sleep(p.settle_s)
    q_order = order(p.documents, p.repeat_count, p.repeat_mode, p.shuffle_seed)
    query = run_measured(wb, sessions(q_order, "query"), concurrency=p.max_inflight,
                         max_duration_s=p.max_duration_s, api=p.api)

    def phase(m: Any) -> dict[str, Any]:
        rows = request_rows(m)
        hits = [r["log_hit_tokens"] for r in rows if r["log_hit_tokens"] is not None]
        return {**summary(m.records), **cache_totals(m.deltas, [target]), "wall_s": round(m.replayed.wall_s, 3),
                "log_hit_tokens": sum(hits) if hits else None, "log_hit_tokens_min": min(hits) if hits else None,
                "requests_with_log_hits": sum(1 for h in hits if h), "per_request": rows}

    cold, warm = phase(warm_up), phase(query)
    cp, wp = cold["ttft_s"]["p50"], warm["ttft_s"]["p50"]
    rows = cold["per_request"] + warm["per_request"]
    results: dict[str, Any] = {
        "target": target.name, "chunk_size": wb.chunk_size, "seed": seed, "query_order": q_order,
        "warm_up": cold, "query": warm, "ttft_speedup_p50": (cp / wp) if cp and wp else None,
        "figures": [
            figure("ttft.png", "TTFT per request: warm-up (cold) then query round", "request (send order)", "TTFT (ms)",
                   {"warm-up": [(i, r["ttft_ms"]) for i, r in enumerate(cold["per_request"])],
                    "query": [(len(cold["per_request"]) + i, r["ttft_ms"]) for i, r in enumerate(warm["per_request"])]}, "bar"),
            figure("hits.png", "hit tokens per request (LMCache log)", "request (send order)", "hit tokens",
                   {"hit tokens": [(i, r["log_hit_tokens"]) for i, r in enumerate(rows)]}, "bar"),
        ],
    }
    headline = {
        "TTFT p50 cold (warm-up) / warm (query) (ms)": f"{ms(cp)} / {ms(wp)}",
        "TTFT speedup (p50)": r2(results["ttft_speedup_p50"]),
        "hit rate warm-up / query (metrics)": f"{r2(cold['hit_rate'])} / {r2(warm['hit_rate'])}",
        "LMCache hit tokens per query request (min, log)": n(warm["log_hit_tokens_min"]),
        "requests ok warm-up / query": f"{cold['ok']} / {warm['ok']}",
        "query round req/s": r2(warm.get("requests_per_s")),
    }
    return Outcome(results=results, records=warm_up.records + query.records,
                   evidence={k: v.model_dump(mode="json") for m in (warm_up, query) for k, v in m.evidence.items()},
                   headline=headline)
