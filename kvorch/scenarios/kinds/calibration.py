"""Calibration of a reuse-type scenario on the engines it uses, before anything is measured.

On the follow-up engine: cold TTFT at 2–3 prompt lengths (the longest twice, for the noise), and
the TTFT of one hit (the prefix sent to the base engine, its KV stored, then prefix + question on
the follow-up engine). From these: a line ``cold TTFT = a + b·tokens``, the relative noise of one
request's TTFT, the speedup to expect at the chosen prefix, and the smallest speedup the trials
can detect over each timing check's threshold (:func:`kvorch.stats.min_detectable_speedup`).
``prefix_tokens: auto`` picks the shortest prefix whose predicted speedup clears that (bounded
by the engine's max_model_len), else the longest that fits.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ... import stats
from ...client import RequestRecord
from ..prompts import text_of_tokens
from ..workbench import Workbench

#: the noise assumed at least (one request's TTFT never varies less than this on a real machine)
CV_FLOOR = 0.02
CAL_MAX_TOKENS = 4


def timing_thresholds(spec: Any) -> dict[str, float]:
    """metric → threshold of the scenario's failing timing checks (``speedup:`` / ``at_least:``)."""
    out: dict[str, float] = {}
    for ch in getattr(spec, "checks", []):
        if getattr(ch, "speedup", None) and ch.severity == "fail" and ch.at_least is not None:
            out[ch.speedup] = max(out.get(ch.speedup, 0.0), float(ch.at_least))
    return out


@dataclass
class Calibration:
    lengths: list[int]
    cold: list[tuple[int, float]]          # (prompt tokens, TTFT s)
    fit: stats.LinearFit
    cv: float
    hit_prompt_tokens: int
    hit_ttft_s: float
    cold_at_hit_s: float
    target_tokens: int
    expected: dict[str, float]
    detectable: dict[str, float]
    trials: int
    chosen_prefix_tokens: int
    choice: str
    records: list[RequestRecord] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "lengths": self.lengths, "cold_ttft_ms": [[n, round(t * 1000, 2)] for n, t in self.cold],
            "fit": {"intercept_ms": round(self.fit.intercept * 1000, 3), "ms_per_token": round(self.fit.slope * 1000, 5)},
            "cv": round(self.cv, 4), "hit_prompt_tokens": self.hit_prompt_tokens,
            "hit_ttft_ms": round(self.hit_ttft_s * 1000, 2), "cold_at_hit_ms": round(self.cold_at_hit_s * 1000, 2),
            "target_tokens": self.target_tokens,
            "expected": {k: round(v, 3) for k, v in self.expected.items()},
            "detectable": {k: round(v, 3) for k, v in self.detectable.items()},
            "trials": self.trials, "chosen_prefix_tokens": self.chosen_prefix_tokens, "choice": self.choice,
        }


def _lengths(target: int, chunk: int) -> list[int]:
    cands = {target, max(2 * chunk, target // 2), max(2 * chunk, target // 4)}
    out = sorted(x for x in cands if 16 <= x <= target)
    if len(out) < 2:
        out = sorted({max(16, target // 2), target})
    return out


def calibrate(wb: Workbench, base_e: Any, follow_e: Any, *, target_tokens: int, question: str, seed: int,
              count: Callable[[str], int | None], store_timeout_s: float, settle_s: float,
              thresholds: dict[str, float], trials: int, auto: bool, bound: int) -> Calibration:
    records: list[RequestRecord] = []
    lengths = _lengths(target_tokens, wb.chunk_size)
    cold: list[tuple[int, float]] = []
    top: list[float] = []
    for j, n in enumerate(lengths + [lengths[-1]]):
        r = wb.send(follow_e, text_of_tokens(n, seed + 7 * (j + 1), count) + question, CAL_MAX_TOKENS,
                    tags={"phase": "calibration_cold"})
        records.append(r)
        if r.ok and r.ttft_s is not None:
            cold.append((r.prompt_tokens or n, r.ttft_s))
            if n == lengths[-1]:
                top.append(r.ttft_s)
    # one hit: the prefix on the base engine, stored, then the prefix + question on the follow-up engine
    prefix = text_of_tokens(target_tokens, seed + 99991, count)
    s0 = wb.snapshot()
    records.append(wb.send(base_e, prefix, CAL_MAX_TOKENS, tags={"phase": "calibration_base"}))
    wb.wait_for_store(s0, store_timeout_s)
    time.sleep(settle_s)
    hit = wb.send(follow_e, prefix + question, CAL_MAX_TOKENS, tags={"phase": "calibration_hit"})
    records.append(hit)

    xs = [float(n) for n, _ in cold]
    ys = [t for _, t in cold]
    try:
        fit = stats.linear_fit(xs, ys)
    except ValueError:
        fit = stats.LinearFit(statistics.fmean(ys) if ys else 0.0, 0.0)
    resid = [y - fit.at(x) for x, y in zip(xs, ys)]
    resid_cv = (statistics.pstdev(resid) / statistics.fmean(ys)) if len(ys) >= 3 and statistics.fmean(ys) > 0 else 0.0
    cv = max(CV_FLOOR, stats.relative_spread(top), resid_cv)
    hit_tokens = hit.prompt_tokens or target_tokens
    hit_s = hit.ttft_s if (hit.ok and hit.ttft_s) else float("nan")
    cold_at_hit = statistics.fmean(top) if top else fit.at(hit_tokens)
    expected_ratio = cold_at_hit / hit_s if hit_s == hit_s and hit_s > 0 else float("nan")
    expected = {"ttft_speedup_vs_control": expected_ratio,
                "ttft_speedup": fit.at(target_tokens + 1) / hit_s if hit_s == hit_s and hit_s > 0 else float("nan")}
    need = {k: stats.min_detectable_speedup(th, cv, trials) for k, th in thresholds.items()}

    chosen, choice = target_tokens, "as given"
    if auto:
        chosen, choice = _choose(fit, hit_s, target_tokens, hit_tokens - target_tokens, wb.chunk_size, bound,
                                 max(need.values()) if need else 1.0)
    return Calibration(lengths, cold, fit, cv, hit_tokens, hit_s, cold_at_hit, target_tokens,
                       {k: v for k, v in expected.items() if v == v}, need, trials, chosen, choice, records)


def predicted_speedup(fit: stats.LinearFit, hit_s: float, hit_prefix: int, q_tokens: int, n: int) -> float:
    """Cold over hit TTFT at a prefix of n tokens: cold from the line; the hit's cost scaled from the
    measured hit (a fixed part — the line's intercept — plus a part proportional to the prefix)."""
    fixed = min(max(fit.intercept, 0.0), hit_s)
    hit_n = fixed + (hit_s - fixed) * (n / hit_prefix if hit_prefix else 1.0)
    return fit.at(n + q_tokens) / hit_n if hit_n > 0 else float("nan")


def _choose(fit: stats.LinearFit, hit_s: float, hit_prefix: int, q_tokens: int, chunk: int, bound: int,
            need: float) -> tuple[int, str]:
    if not (hit_s == hit_s and hit_s > 0):
        return bound, f"auto: no hit measured; the longest prefix that fits ({bound})"
    n = 2 * chunk
    while n <= bound:
        sp = predicted_speedup(fit, hit_s, hit_prefix, q_tokens, n)
        if sp >= need:
            return n, f"auto: shortest prefix (whole chunks) predicted to show {sp:.2f}× ≥ the detectable {need:.2f}×"
        n += chunk
    sp = predicted_speedup(fit, hit_s, hit_prefix, q_tokens, bound)
    return bound, (f"auto: no prefix up to {bound} tokens is predicted to clear the detectable {need:.2f}× "
                   f"(predicted {sp:.2f}× at {bound}); using the longest that fits")
