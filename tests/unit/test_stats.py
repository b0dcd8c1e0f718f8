"""kvorch.stats: seeded bootstrap intervals, interval judgements, power."""

import math

import pytest

from kvorch import stats


def test_median_of_odd_and_even_samples():
    assert stats.median([3, 1, 2]) == 2
    assert stats.median([4, 1, 3, 2]) == 2.5


def test_bootstrap_interval_is_reproducible_with_its_seed_and_brackets_the_median():
    xs = [1.9, 2.1, 2.0, 2.4, 1.7, 2.2, 2.05]
    a, b = stats.bootstrap_ci(xs, seed=7), stats.bootstrap_ci(xs, seed=7)
    assert a == b
    assert a.low <= a.estimate == 2.05 <= a.high
    assert min(xs) <= a.low and a.high <= max(xs)


def test_noisier_samples_give_wider_intervals():
    tight = stats.bootstrap_ci([2.0, 2.02, 1.98, 2.01, 1.99])
    noisy = stats.bootstrap_ci([2.0, 2.6, 1.4, 2.3, 1.7])
    assert (noisy.high - noisy.low) > 10 * (tight.high - tight.low)


def test_judge_passes_above_fails_below_and_is_inconclusive_across_the_threshold():
    assert stats.judge(stats.bootstrap_ci([1.5, 1.6, 1.55]), 1.2) == "pass"
    assert stats.judge(stats.bootstrap_ci([0.95, 1.0, 1.05]), 1.2) == "fail"
    assert stats.judge(stats.bootstrap_ci([1.0, 1.3, 1.25]), 1.2) == "inconclusive"


def test_one_trial_never_decides():
    assert stats.judge(stats.bootstrap_ci([9.0]), 1.2) == "inconclusive"


def test_difference_of_two_runs_is_significant_only_when_its_interval_excludes_zero():
    same = stats.diff_ci([100, 104, 98, 101, 99], [101, 97, 103, 100, 102])
    slower = stats.diff_ci([100, 104, 98, 101, 99], [150, 149, 155, 152, 148])
    assert not stats.significant(same)
    assert stats.significant(slower) and 45 < slower.estimate < 55 and slower.low > 0


def test_smallest_detectable_speedup_grows_with_noise_and_shrinks_with_trials():
    base = stats.min_detectable_speedup(1.2, 0.05, 5)
    assert base > 1.2
    assert stats.min_detectable_speedup(1.2, 0.20, 5) > base
    assert stats.min_detectable_speedup(1.2, 0.05, 30) < base
    assert math.isinf(stats.min_detectable_speedup(1.2, 0.05, 1))


def test_trials_needed_for_an_expected_speedup():
    n = stats.trials_needed(1.2, 1.5, 0.1)
    assert n is not None and stats.min_detectable_speedup(1.2, 0.1, n) <= 1.5 < stats.min_detectable_speedup(1.2, 0.1, n - 1)
    assert stats.trials_needed(1.2, 1.1, 0.1) is None  # below the threshold: no number of trials shows it


def test_linear_fit_recovers_a_line():
    fit = stats.linear_fit([256, 512, 1024], [0.03 + 0.0001 * x for x in (256, 512, 1024)])
    assert fit.intercept == pytest.approx(0.03) and fit.slope == pytest.approx(0.0001)
