"""Statistics for verdicts: medians, seeded bootstrap confidence intervals, interval judgements,
and the smallest speedup a number of trials can detect. Pure functions, standard library only.

A timing check is judged on the 95 % interval of the median of its per-trial values:

* ``pass`` when the interval's lower bound clears the threshold,
* ``fail`` when its upper bound lies below it,
* ``inconclusive`` otherwise (the data do not decide: more trials or a larger effect are needed).
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

Verdict = Literal["pass", "fail", "inconclusive"]

#: resamples of a bootstrap; enough for a stable 95 % percentile interval of a median
DEFAULT_RESAMPLES = 4000
DEFAULT_SEED = 20261201


def median(xs: Sequence[float]) -> float:
    if not xs:
        raise ValueError("median of no values")
    return float(statistics.median(xs))


@dataclass(frozen=True)
class Interval:
    """A statistic's point estimate and its confidence interval."""

    estimate: float
    low: float
    high: float
    level: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "level": self.level, "n": self.n}

    def shown(self, digits: int = 3) -> str:
        f = f"{{:.{digits}g}}"
        return f"{f.format(self.estimate)} [{f.format(self.low)}, {f.format(self.high)}] ({self.level:.0%} CI, n={self.n})"


def _quantile(sorted_xs: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile of sorted values (q in [0, 1])."""
    if len(sorted_xs) == 1:
        return float(sorted_xs[0])
    pos = q * (len(sorted_xs) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(sorted_xs) - 1)
    frac = pos - lo
    return float(sorted_xs[lo] * (1 - frac) + sorted_xs[hi] * frac)


def bootstrap_ci(xs: Sequence[float], stat: Callable[[Sequence[float]], float] = median, *, level: float = 0.95,
                 resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> Interval:
    """Percentile bootstrap interval of ``stat`` over ``xs`` (same seed, same interval).

    With one value the interval is that value (nothing is known about the spread: judge with care,
    see :func:`judge`, which calls a one-trial interval inconclusive unless asked otherwise)."""
    if not xs:
        raise ValueError("bootstrap of no values")
    if not 0 < level < 1:
        raise ValueError("level must be in (0, 1)")
    est = float(stat(xs))
    if len(xs) == 1:
        return Interval(est, est, est, level, 1)
    rng = random.Random(seed)
    n = len(xs)
    values = list(xs)
    stats = sorted(float(stat([values[rng.randrange(n)] for _ in range(n)])) for _ in range(resamples))
    alpha = (1 - level) / 2
    return Interval(est, _quantile(stats, alpha), _quantile(stats, 1 - alpha), level, n)


def diff_ci(a: Sequence[float], b: Sequence[float], stat: Callable[[Sequence[float]], float] = median, *,
            level: float = 0.95, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> Interval:
    """Interval of ``stat(b) - stat(a)`` for two independent samples (each resampled on its own)."""
    if not a or not b:
        raise ValueError("difference needs values on both sides")
    est = float(stat(b)) - float(stat(a))
    rng = random.Random(seed)
    la, lb = list(a), list(b)
    diffs = sorted(float(stat([lb[rng.randrange(len(lb))] for _ in lb])) - float(stat([la[rng.randrange(len(la))] for _ in la]))
                   for _ in range(resamples))
    alpha = (1 - level) / 2
    return Interval(est, _quantile(diffs, alpha), _quantile(diffs, 1 - alpha), level, min(len(la), len(lb)))


def significant(iv: Interval) -> bool:
    """A difference is significant when its interval excludes zero (and is not a point)."""
    return iv.n > 1 and (iv.low > 0 or iv.high < 0)


def judge(iv: Interval, threshold: float) -> Verdict:
    """pass: the interval clears ``threshold``; fail: it lies below; inconclusive: it straddles it.
    One trial never decides (no spread is known)."""
    if iv.n < 2:
        return "inconclusive"
    if iv.low >= threshold:
        return "pass"
    if iv.high < threshold:
        return "fail"
    return "inconclusive"


# -- power ---------------------------------------------------------------------------------------

#: expected range of n standard normal values (d2 of quality control), n = 2..10
_D2 = {2: 1.128, 3: 1.693, 4: 2.059, 5: 2.326, 6: 2.534, 7: 2.704, 8: 2.847, 9: 2.970, 10: 3.078}


def half_width_factor(trials: int, level: float = 0.95) -> float:
    """How many standard deviations of one trial's log-speedup the lower half of the interval of
    the median spans: the larger of the normal approximation (z·√(π/2)/√n) and, for the few
    trials where a bootstrap interval of the median is close to the sample's range, half the
    expected range (d2/2)."""
    if trials < 2:
        return math.inf
    z = statistics.NormalDist().inv_cdf(0.5 + level / 2)
    normal = z * math.sqrt(math.pi / 2) / math.sqrt(trials)
    return max(normal, _D2.get(trials, 0.0) / 2)


def min_detectable_speedup(threshold: float, cv: float, trials: int, level: float = 0.95) -> float:
    """The smallest true speedup whose interval would clear ``threshold`` with these trials when
    one request's TTFT varies by ``cv`` (relative standard deviation): a speedup is a ratio of two
    such TTFTs, so its log varies by about √2·cv."""
    if trials < 2:
        return math.inf
    sigma = math.sqrt(2.0) * max(cv, 0.0)
    return threshold * math.exp(half_width_factor(trials, level) * sigma)


def trials_needed(threshold: float, expected: float, cv: float, level: float = 0.95, max_trials: int = 200) -> int | None:
    """Fewest trials with which ``expected`` would be detectable over ``threshold`` (None: not within max_trials)."""
    if expected <= threshold:
        return None
    for n in range(2, max_trials + 1):
        if min_detectable_speedup(threshold, cv, n, level) <= expected:
            return n
    return None


@dataclass(frozen=True)
class LinearFit:
    intercept: float
    slope: float

    def at(self, x: float) -> float:
        return self.intercept + self.slope * x


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> LinearFit:
    """Least squares y = a + b·x (at least two distinct x)."""
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError("need at least two points")
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("need at least two distinct x")
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return LinearFit(my - b * mx, b)


def relative_spread(xs: Sequence[float]) -> float:
    """Sample standard deviation over the mean (0 for fewer than two values)."""
    if len(xs) < 2:
        return 0.0
    m = statistics.fmean(xs)
    return statistics.stdev(xs) / m if m else 0.0
