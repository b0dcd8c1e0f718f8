"""Judging checks: exact checks hold in every trial; timing checks on intervals, with power."""

from kvorch.scenarios.spec import CheckSpec
from kvorch.scenarios.verdicts import judge_checks

import pytest
from pydantic import ValidationError

TIMING = CheckSpec(name="faster than a cold control", speedup="ttft_speedup_vs_control", at_least=1.2)
HITS = CheckSpec(name="hits", expr="follow_up.hits >= 256")


def trials(*speedups, hits=512):
    return [{"ttft_speedup_vs_control": s, "follow_up": {"hits": hits}} for s in speedups]


def test_timing_check_passes_when_the_interval_clears_the_threshold():
    rows, verdict = judge_checks([TIMING, HITS], {}, trials(2.0, 2.1, 1.9), None)
    assert verdict == "pass" and rows[0]["verdict"] == "pass" and rows[0]["interval"]["low"] >= 1.2


def test_timing_check_fails_when_the_interval_lies_below():
    rows, verdict = judge_checks([TIMING], {}, trials(1.0, 0.98, 1.02), None)
    assert verdict == "fail" and rows[0]["passed"] is False


def test_straddling_interval_is_inconclusive_and_says_what_to_change():
    rows, verdict = judge_checks([TIMING], {}, trials(1.1, 1.4, 1.3), {"expected": {"ttft_speedup_vs_control": 1.3},
                                                                       "detectable": {"ttft_speedup_vs_control": 1.35},
                                                                       "cv": 0.1})
    assert verdict == "inconclusive" and rows[0]["passed"] is None
    assert "--set trials=" in rows[0]["reason"] and "prefix_tokens" in rows[0]["reason"]


def test_a_would_be_failure_below_the_detectable_effect_is_inconclusive_with_its_reason():
    cal = {"expected": {"ttft_speedup_vs_control": 1.05}, "detectable": {"ttft_speedup_vs_control": 1.3}, "cv": 0.05}
    rows, verdict = judge_checks([TIMING], {}, trials(1.0, 1.03, 1.06), cal)
    assert verdict == "inconclusive"
    assert "expected 1.05×" in rows[0]["reason"] and "longer prefix" in rows[0]["reason"]


def test_a_failure_the_calibration_could_have_detected_stays_a_failure():
    cal = {"expected": {"ttft_speedup_vs_control": 3.0}, "detectable": {"ttft_speedup_vs_control": 1.3}, "cv": 0.05}
    _, verdict = judge_checks([TIMING], {}, trials(1.0, 1.03, 1.06), cal)
    assert verdict == "fail"


def test_exact_check_must_hold_in_every_trial_and_names_the_one_that_broke():
    t = trials(2.0, 2.0, 2.0)
    t[1]["follow_up"]["hits"] = 0
    rows, verdict = judge_checks([HITS], {}, t, None)
    assert verdict == "fail" and rows[0]["shown"].startswith("trial 2 of 3")


def test_a_failure_beats_an_inconclusive_timing_check():
    rows, verdict = judge_checks([TIMING, HITS], {}, trials(1.1, 1.4, 1.3, hits=0), None)
    assert [r["verdict"] for r in rows] == ["inconclusive", "fail"] and verdict == "fail"


def test_a_check_is_either_exact_or_timing():
    with pytest.raises(ValidationError):
        CheckSpec(name="x", expr="a > 1", speedup="a", at_least=1.2)
    with pytest.raises(ValidationError):
        CheckSpec(name="x", speedup="a")


def test_a_model_made_by_tinymodel_counts_as_random_weights_without_tiny_model(tmp_path):
    from types import SimpleNamespace

    from kvorch.hosts.local import LocalTransport
    from kvorch.hosts.ops import HostOps
    from kvorch.scenarios.runner import _made_by_tinymodel
    from kvorch.tinymodel import MARKER

    made, real = tmp_path / "made", tmp_path / "real"
    made.mkdir()
    real.mkdir()
    (made / MARKER).write_text("{}")
    ops = HostOps(LocalTransport())
    node = SimpleNamespace(ops=ops, path=lambda p: p)
    plan = SimpleNamespace(engines=lambda: [SimpleNamespace(host="local")])
    assert _made_by_tinymodel({"local": node}, plan, str(made))
    assert not _made_by_tinymodel({"local": node}, plan, str(real))
    assert not _made_by_tinymodel({"local": node}, plan, "meta-llama/Meta-Llama-3.1-8B-Instruct")


def test_reused_answer_equal_to_the_cold_one_has_no_divergence():
    from kvorch.scenarios.kinds.reuse import compare_answers

    c = compare_answers([1, 2, 3], [1, 2, 3], None, None, 0.05)
    assert c["equal"] and c["confident_divergence"] == "none"


def test_a_divergence_at_a_numerical_tie_is_told_from_a_wrong_answer():
    from kvorch.scenarios.kinds.reuse import compare_answers

    reused, cold = [5, 7, 9], [5, 8, 9]
    tie_r = [{"5": -0.1}, {"7": -0.70, "8": -0.71}, {}]
    tie_c = [{"5": -0.1}, {"8": -0.69, "7": -0.70}, {}]
    tie = compare_answers(reused, cold, tie_r, tie_c, 0.05)
    assert tie["tie"] and tie["confident_divergence"] == "none" and tie["first_divergence"] == 1
    sure_c = [{"5": -0.1}, {"8": -0.01, "7": -4.6}, {}]
    wrong = compare_answers(reused, cold, tie_r, sure_c, 0.05)
    assert not wrong["tie"] and wrong["confident_divergence"].startswith("at 1: 7≠8 (cold Δlogprob 4.59")
    blind = compare_answers(reused, cold, None, None, 0.05)  # no logprobs (e.g. the sim): a divergence is real
    assert blind["confident_divergence"].startswith("at 1: 7≠8")
    absent = compare_answers(reused, cold, tie_r, [{"5": 0.0}, {"8": -0.01}, {}], 0.05)  # 7 not in cold's top-k
    assert "inf" in absent["confident_divergence"]


def test_rows_with_only_passed_count_in_the_overall_verdict():
    from kvorch.scenarios.verdicts import overall

    inconclusive = {"verdict": "inconclusive", "severity": "fail", "passed": None}
    assert overall([inconclusive, {"passed": False, "severity": "fail"}]) == "fail"
    assert overall([inconclusive, {"passed": True, "severity": "fail"}]) == "inconclusive"
    assert overall([{"passed": None, "severity": "fail"}, {"passed": False, "severity": "warn"}]) == "pass"


def test_without_a_calibration_the_advice_takes_the_noise_from_the_trials_and_the_kinds_own_hint():
    blend = CheckSpec(name="reordered faster", speedup="min_speedup", at_least=1.5)
    ts = [{"min_speedup": s} for s in (1.4, 2.2, 1.9)]
    rows, verdict = judge_checks([blend], {"longer_hint": "longer chunks (--set chunk_tokens=N)"}, ts, None)
    assert verdict == "inconclusive"
    reason = rows[0]["reason"]
    assert "longer chunks (--set chunk_tokens=N)" in reason and "prefix_tokens" not in reason
    assert "--set trials=" in reason  # how many, from the trials' own spread
