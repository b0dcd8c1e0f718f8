"""Repeated trials for the kinds whose timing checks are benchmarks (blend, cache-bench, pd-bench).

A kind runs ``trials`` independent trials and returns them as ``results["trials"]``: one dict per
trial with that trial's values (its timing ratios, its counters). The runner hands them to
:func:`kvorch.scenarios.verdicts.judge_checks`, so — as for reuse / reuse-2node — an exact check
(``expr:``) must hold in every trial and a timing check (``speedup:`` + ``at_least:``) is judged
on the 95 % bootstrap interval of the trials' median: pass, fail or inconclusive.

The helpers here are what those kinds share: the default number of trials, medians with their
intervals for the headline, and the per-trial values ``compare`` bootstraps over.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

from .. import stats

#: default number of trials on the simulated engine and on real engines (as reuse)
SIM_TRIALS = 3
REAL_TRIALS = 5


def default_trials(engines: Iterable[Any]) -> int:
    """3 when every engine is simulated, else 5."""
    return SIM_TRIALS if all(getattr(e, "program", "") == "sim" for e in engines) else REAL_TRIALS


def finite(xs: Iterable[Any]) -> list[float]:
    return [float(x) for x in xs if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)]


def values(per_trial: Sequence[dict[str, Any]], key: str) -> list[float]:
    """The finite values of ``key`` over the trials (missing ones left out)."""
    return finite(t.get(key) for t in per_trial)


def median(per_trial: Sequence[dict[str, Any]], key: str, digits: int = 3) -> float | None:
    xs = values(per_trial, key)
    return round(stats.median(xs), digits) if xs else None


def interval_shown(per_trial: Sequence[dict[str, Any]], key: str) -> str | None:
    """``median [low, high] (95 % CI, n=N)`` of ``key`` over the trials (None when not measured)."""
    xs = values(per_trial, key)
    return stats.bootstrap_ci(xs).shown() if xs else None
