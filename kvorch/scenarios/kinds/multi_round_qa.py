"""multi-round-qa (production-stack's multi-round QA benchmark): N users × R rounds; every prompt
is a shared system prompt, the user's own context, and the user's conversation so far (the earlier
questions and the answers the engine gave), so the part a cache can serve grows round by round.
TTFT and hit tokens per round.

``lockstep: true`` (default) runs round r of every user before round r+1, so each round has its
own metrics delta (also where per-request log lines are missing, e.g. LMCache's MP connector);
``false`` lets every user go on as soon as its answer came (per-round hits then from the log lines).
Within a round users start ``1/qps`` apart; a user's next question follows its answer after
``users/qps`` seconds (the benchmark's per-user gap) unless lockstep.
"""

from __future__ import annotations

import random
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ... import client as oa
from ..measure import Measured, cache_totals, figure, ms, n, r2, run_measured, summary
from ..prompts import text_of_tokens
from ..workbench import Workbench
from ..workload import Session, Turn
from ..outcome import Outcome


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    users: int = Field(4, ge=1)
    rounds: int = Field(3, ge=1)
    system_prompt_tokens: int = Field(512, ge=0, description="shared by every user")
    user_info_tokens: int = Field(256, ge=0, description="each user's own context before the first question")
    question_tokens: int = Field(24, ge=1)
    answer_tokens: int = Field(32, ge=1, description="max_tokens of every answer")
    qps: float = Field(4.0, gt=0, description="request rate over all users")
    concurrency: int | None = Field(None, ge=1, description="requests in flight (default: users)")
    lockstep: bool = True
    max_duration_s: float = Field(300.0, gt=0)
    api: Literal["completions", "chat"] = "completions"
    spread: bool = Field(False, description="users round-robin over every engine (else all on the target)")
    seed: int | None = None


def run(wb: Workbench, spec: Any, p: Params) -> Outcome:
    target = wb.engine(spec.engines.get("target", "role:prefill"))
    engines = wb.engines() if p.spread else [target]
    seed = p.seed if p.seed is not None else random.SystemRandom().randrange(1 << 30)
    count = lambda text: wb.tokens(target, text)  # noqa: E731
    system = text_of_tokens(p.system_prompt_tokens, seed, count) + "\n" if p.system_prompt_tokens else ""
    users = [{"engine": engines[u % len(engines)], "info": (text_of_tokens(p.user_info_tokens, seed + 101 * (u + 1), count) + "\n")
              if p.user_info_tokens else "",
              "questions": [text_of_tokens(p.question_tokens, seed + 100_003 * (u + 1) + 7 * r) + "?" for r in range(p.rounds)]}
             for u in range(p.users)]
    conc = p.concurrency or p.users
    gap = p.users / p.qps
    rounds: list[dict[str, Any]] = []
    records: list[oa.RequestRecord] = []
    evidence: dict[str, Any] = {}
    wall = 0.0

    def per_round(r: int, recs: list[oa.RequestRecord], m: Measured, lockstep: bool) -> dict[str, Any]:
        s = summary(recs)
        hits = [m.evidence[x.request_id].hit_tokens for x in recs if x.request_id in m.evidence and m.evidence[x.request_id].found]
        prompt = [x.prompt_tokens for x in recs if x.prompt_tokens]
        out = {"round": r + 1, "requests": len(recs), "ok": s["ok"], "ttft_s": s["ttft_s"],
               "prompt_tokens_mean": (sum(prompt) / len(prompt)) if prompt else None,
               "log_hit_tokens_mean": (sum(hits) / len(hits)) if hits else None}
        if lockstep:
            out.update(cache_totals(m.deltas, engines))
        out["hit_fraction"] = (out["log_hit_tokens_mean"] / out["prompt_tokens_mean"]) \
            if (out["log_hit_tokens_mean"] is not None and out["prompt_tokens_mean"]) else out.get("hit_rate")
        return out

    if p.lockstep:
        history: list[list[tuple[str, str]]] = [[] for _ in users]
        for r in range(p.rounds):
            sessions = [Session(engine=u["engine"], system=system + u["info"], past=list(history[i]),
                                turns=[Turn(text=u["questions"][r], max_tokens=p.answer_tokens,
                                            tags={"phase": f"round {r + 1}", "user": str(i), "round": str(r + 1)})],
                                at_s=i / p.qps, name=f"user{i}") for i, u in enumerate(users)]
            m = run_measured(wb, sessions, concurrency=conc, max_duration_s=p.max_duration_s, api=p.api)
            wall += m.replayed.wall_s
            by_user = {x.tags["user"]: x for x in m.records}
            for i, u in enumerate(users):
                rec = by_user.get(str(i))
                history[i].append((u["questions"][r], rec.output_text if rec is not None and rec.ok else ""))
            rounds.append(per_round(r, m.records, m, True))
            records += m.records
            evidence.update({k: v.model_dump(mode="json") for k, v in m.evidence.items()})
        deltas_all = None
    else:
        sessions = [Session(engine=u["engine"], system=system + u["info"], name=f"user{i}", at_s=i / p.qps,
                            turns=[Turn(text=q, max_tokens=p.answer_tokens, delay_s=gap if r else 0.0,
                                        tags={"phase": f"round {r + 1}", "user": str(i), "round": str(r + 1)})
                                   for r, q in enumerate(u["questions"])]) for i, u in enumerate(users)]
        m = run_measured(wb, sessions, concurrency=conc, max_duration_s=p.max_duration_s, api=p.api)
        wall = m.replayed.wall_s
        for r in range(p.rounds):
            rounds.append(per_round(r, [x for x in m.records if x.tags.get("round") == str(r + 1)], m, False))
        records = m.records
        evidence = {k: v.model_dump(mode="json") for k, v in m.evidence.items()}
        deltas_all = cache_totals(m.deltas, engines)

    s = summary(records)
    frac = [x["hit_fraction"] for x in rounds]
    first, last = rounds[0], rounds[-1]
    results: dict[str, Any] = {
        "target": target.name, "engines": [e.name for e in engines], "chunk_size": wb.chunk_size, "seed": seed,
        "users": p.users, "rounds_run": len(rounds), "lockstep": p.lockstep, **s, "wall_s": round(wall, 3),
        "rounds": rounds, "hit_fraction_per_round": frac,
        "first_round": first, "last_round": last,
        "reuse_grew": (frac[-1] is not None and frac[0] is not None and frac[-1] > frac[0]) if len(frac) > 1 else None,
        "ttft_ratio_first_to_last": (first["ttft_s"]["p50"] / last["ttft_s"]["p50"])
        if first["ttft_s"]["p50"] and last["ttft_s"]["p50"] else None,
        "totals": deltas_all if deltas_all is not None else
        {k: sum(x.get(k) or 0 for x in rounds) for k in ("cache_hit_tokens", "prompt_tokens")},
        "figures": [
            figure("ttft-per-round.png", "TTFT per round (p50, p90)", "round", "TTFT (ms)",
                   {q: [(x["round"], x["ttft_s"][q] * 1000 if x["ttft_s"][q] else None) for x in rounds] for q in ("p50", "p90")}),
            figure("hits-per-round.png", "prompt tokens and cache hit tokens per request, per round", "round", "tokens",
                   {"prompt tokens (mean)": [(x["round"], x["prompt_tokens_mean"]) for x in rounds],
                    "LMCache log hit tokens (mean)": [(x["round"], x["log_hit_tokens_mean"]) for x in rounds],
                    "cache hit tokens / request (metrics)": [(x["round"], (x["cache_hit_tokens"] / x["requests"])
                                                              if x.get("cache_hit_tokens") is not None and x["requests"] else None)
                                                             for x in rounds]}),
        ],
    }
    headline = {
        "requests ok": f"{s['ok']} / {p.users * p.rounds}",
        "TTFT p50 round 1 / last (ms)": f"{ms(first['ttft_s']['p50'])} / {ms(last['ttft_s']['p50'])}",
        "hit fraction per round": " → ".join("?" if f is None else f"{f:.2f}" for f in frac),
        "prompt tokens per request, round 1 / last": f"{n(first['prompt_tokens_mean'])} / {n(last['prompt_tokens_mean'])}",
        "req/s": r2(s.get("requests_per_s")),
        "TTFT p99 (ms)": ms(s["ttft_s"]["p99"]),
    }
    return Outcome(results=results, records=records, evidence=evidence, headline=headline)
