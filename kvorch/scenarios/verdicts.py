"""Judging a scenario's checks: exact checks in every trial, timing checks on intervals.

* An exact check (``expr:``) passes when it holds in every trial (a kind without trials: once);
  the first trial where it does not hold is shown.
* A timing check (``speedup:`` + ``at_least:``) takes the metric's value of each trial and is
  judged on the 95 % bootstrap interval of the median (:mod:`kvorch.stats`): pass when the lower
  bound clears the threshold, fail when the upper bound lies below it, inconclusive otherwise.
  A calibration (reuse kinds) says which speedup to expect and the smallest one these trials can
  detect; when the expected speedup is below that, a would-be fail is inconclusive with the reason.

The scenario's verdict: fail when a failing-severity check fails, else inconclusive when one is
inconclusive, else pass.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Sequence

from .. import stats
from .expr import evaluate

Verdict = Literal["pass", "fail", "inconclusive"]


def _env_of(common: dict[str, Any], trial: dict[str, Any] | None) -> dict[str, Any]:
    return {**common, **trial} if trial is not None else common


def exact(check: Any, common: dict[str, Any], trials: Sequence[dict[str, Any]] | None) -> dict[str, Any]:
    envs = [_env_of(common, t) for t in trials] if trials else [common]
    row = {"name": check.name, "expr": check.expr, "severity": check.severity, "type": "exact"}
    shown_first = None
    judged = 0
    for i, env in enumerate(envs):
        if check.when is not None and not evaluate(check.when, env).passed:
            continue
        judged += 1
        o = evaluate(check.expr, env)
        if shown_first is None:
            shown_first = o.shown
        if not o.passed:
            where = f"trial {i + 1} of {len(envs)}: " if len(envs) > 1 else ""
            return {**row, "passed": False, "verdict": "fail", "shown": where + o.shown}
    if judged == 0:
        return {**row, "passed": None, "verdict": "skip", "shown": f"skipped (only when {check.when})"}
    every = f"all {judged} trials; trial 1: " if judged > 1 else ""
    return {**row, "passed": True, "verdict": "pass", "shown": every + (shown_first or "")}


def timing(check: Any, common: dict[str, Any], trials: Sequence[dict[str, Any]] | None,
           calibration: dict[str, Any] | None) -> dict[str, Any]:
    metric, threshold = check.speedup, float(check.at_least)
    row: dict[str, Any] = {"name": check.name, "expr": f"{metric} ≥ {threshold:g} (95 % interval of the median)",
                           "severity": check.severity, "type": "timing", "metric": metric, "threshold": threshold}
    envs = [_env_of(common, t) for t in trials] if trials else [common]
    if check.when is not None and not any(evaluate(check.when, e).passed for e in envs):
        return {**row, "passed": None, "verdict": "skip", "shown": f"skipped (only when {check.when})"}
    values = [float(e[metric]) for e in envs if isinstance(e.get(metric), (int, float)) and math.isfinite(e[metric])]
    row["values"] = [round(v, 4) for v in values]
    if not values:
        return {**row, "passed": False, "verdict": "fail", "shown": f"{metric} is missing (not measured)"}
    iv = stats.bootstrap_ci(values)
    v = stats.judge(iv, threshold)
    row["interval"] = iv.as_dict()
    expected = (calibration or {}).get("expected", {}).get(metric)
    detectable = (calibration or {}).get("detectable", {}).get(metric)
    cv = (calibration or {}).get("cv")
    if cv is None and len(values) > 1:
        # no calibration (benchmark kinds): one request's noise from the trials' own spread (a
        # ratio of two TTFTs varies by about √2 times one TTFT's relative noise)
        cv = stats.relative_spread(values) / math.sqrt(2.0)
    longer = common.get("longer_hint") or "a longer prefix (--set prefix_tokens=auto)"
    row.update(expected=expected, detectable=detectable)
    shown = f"median {metric} = {iv.shown()} vs {threshold:g}"
    reason = None
    if v == "fail" and expected is not None and detectable is not None and expected < detectable:
        v = "inconclusive"
        reason = (f"the calibration expected {expected:.2f}×, below the smallest speedup these {iv.n} trials can "
                  f"detect over {threshold:g} ({detectable:.2f}× at {100 * (cv or 0):.0f} % TTFT noise): "
                  + _advice(threshold, expected, cv, iv.n, longer))
    elif v == "inconclusive":
        reason = ("the interval straddles the threshold: " if iv.n > 1 else "one trial cannot decide: ") + \
            _advice(threshold, expected if expected is not None else iv.estimate, cv, iv.n, longer)
    row["reason"] = reason
    passed = True if v == "pass" else False if v == "fail" else None
    return {**row, "passed": passed, "verdict": v, "shown": shown + (f" — {reason}" if reason else "")}


def _advice(threshold: float, expected: float | None, cv: float | None, n: int,
            longer: str = "a longer prefix (--set prefix_tokens=auto)") -> str:
    if expected is None or expected <= threshold * 1.01:
        return ("at this length the engine computes the prompt about as fast as it loads the cached KV, "
                f"so no number of trials shows the threshold: use {longer} or a larger model; "
                "the hit and correctness checks prove reuse either way")
    need = stats.trials_needed(threshold, expected, cv or 0.0)
    more = f"--set trials={need}" if need and need > n else f"more trials (--set trials={2 * n})"
    return f"{more} (for the expected {expected:.2f}×) or {longer}"


def judge_checks(checks: Sequence[Any], common: dict[str, Any], trials: Sequence[dict[str, Any]] | None,
                 calibration: dict[str, Any] | None) -> tuple[list[dict[str, Any]], Verdict]:
    rows = [timing(ch, common, trials, calibration) if ch.speedup else exact(ch, common, trials) for ch in checks]
    return rows, overall(rows)


def row_verdict(r: dict[str, Any]) -> str:
    """A check row's verdict; rows made elsewhere may carry only ``passed`` (True/False/None = skip)."""
    if r.get("verdict"):
        return str(r["verdict"])
    return "skip" if r.get("passed") is None else "pass" if r["passed"] else "fail"


def overall(rows: Sequence[dict[str, Any]]) -> Verdict:
    """fail when a failing-severity row failed, else inconclusive when one is, else pass (rows
    without ``verdict`` — e.g. a process check appended by the runner — count by ``passed``)."""
    gating = [row_verdict(r) for r in rows if r.get("severity", "fail") == "fail"]
    if "fail" in gating:
        return "fail"
    if "inconclusive" in gating:
        return "inconclusive"
    return "pass"
