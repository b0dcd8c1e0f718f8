"""compare RUN_A RUN_B: each headline metric's B − A with its bootstrap interval over the trials and
whether it is significant; the compare plot and the report carry intervals as error bars.
Also: the README figures' lines come from a run folder, with the CPU model beside them."""

import json
from pathlib import Path

from kvorch import figures, plots
from kvorch.report import compare_runs, load_run


def _run(root: Path, name: str, follow_ms: list[float], control_ms: list[float]) -> Path:
    d = root / name / "scenarios" / "reuse-2node-1"
    d.mkdir(parents=True)
    speedups = [c / f for c, f in zip(control_ms, follow_ms)]
    result = {
        "scenario": "reuse-2node", "verdict": "pass", "started_at": "2026-12-01T00:00:00+00:00", "seconds": 9.0,
        "headline": {"follow-up TTFT (ms)": sorted(follow_ms)[len(follow_ms) // 2],
                     "TTFT speedup vs control": sorted(speedups)[len(speedups) // 2], "trials": len(follow_ms)},
        "results": {"n_trials": len(follow_ms), "prefix_tokens": 1024,
                    "per_trial_values": {"follow-up TTFT (ms)": follow_ms, "TTFT speedup vs control": speedups}},
        "checks": [{"name": "follow-up TTFT is lower", "type": "timing", "metric": "ttft_speedup_vs_control",
                    "threshold": 1.2, "verdict": "pass", "passed": True, "severity": "fail", "shown": "…",
                    "values": speedups, "interval": {"estimate": 4.0, "low": 3.5, "high": 4.5, "level": 0.95, "n": 5}}],
    }
    (d / "result.json").write_text(json.dumps(result))
    (root / name / "state.json").write_text(json.dumps({"run_id": name, "processes": {
        "prefill": {"started_at": "2026-12-01T00:00:00+00:00", "healthy_at": "2026-12-01T00:01:36+00:00"}}}))
    return root / name


def test_a_real_difference_is_significant_and_noise_is_not(tmp_path):
    a = _run(tmp_path, "a", [25, 26, 24, 25, 27], [100, 104, 98, 101, 99])
    b = _run(tmp_path, "b", [50, 52, 49, 51, 50], [101, 97, 103, 100, 102])
    res = compare_runs(load_run(a), load_run(b), tmp_path / "cmp")
    head = {h["name"]: h for h in res["scenarios"]["reuse-2node"]["headline"]}
    slower = head["follow-up TTFT (ms)"]
    assert slower["significant"] is True and slower["diff_low"] > 0 and 20 < slower["diff"] < 30
    assert head["trials"].get("significant") is None  # no per-trial values: no interval claimed
    assert Path(res["scenarios"]["reuse-2node"]["plot"]).stat().st_size > 1000

    same = compare_runs(load_run(a), load_run(_run(tmp_path, "c", [26, 24, 25, 27, 25], [99, 101, 103, 98, 100])),
                        tmp_path / "cmp2")
    h2 = {h["name"]: h for h in same["scenarios"]["reuse-2node"]["headline"]}
    assert h2["follow-up TTFT (ms)"]["significant"] is False


def test_speedup_intervals_are_drawn_as_error_bars(tmp_path):
    rows = [{"label": "ttft_speedup_vs_control", "estimate": 4.0, "low": 3.5, "high": 4.5, "threshold": 1.2,
             "values": [3.6, 4.0, 4.4], "verdict": "pass"}]
    assert plots.speedup_intervals(rows, "t", tmp_path / "s.png").stat().st_size > 1000
    assert plots.speedup_intervals([], "t", tmp_path / "none.png") is None


def test_cpu_model_is_read_from_cpuinfo():
    text = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nprocessor\t: 1\nmodel name\t: AMD EPYC 7B13\n"
    assert figures.cpu_model(text) == "AMD EPYC 7B13, 2 cores"


def test_figures_lines_quote_the_run_with_the_cpu(tmp_path):
    run = _run(tmp_path, "f", [25, 26, 24, 25, 27], [100, 104, 98, 101, 99])
    out = figures.lines(run, cpu="Test CPU, 2 cores")
    assert out[0] == "CPU: Test CPU, 2 cores" and "engines healthy in ~96 s" in out
    assert any("ttft_speedup_vs_control: median 4.00× [95 % CI 3.50, 4.50]" in ln for ln in out)


def test_figures_quote_reuse_from_its_own_folder_not_from_reuse_2node(tmp_path):
    run = _run(tmp_path, "f", [25, 26, 24, 25, 27], [100, 104, 98, 101, 99])
    d = run / "scenarios" / "reuse-1"
    d.mkdir()
    own = json.loads((run / "scenarios" / "reuse-2node-1" / "result.json").read_text())
    own.update(scenario="reuse", verdict="inconclusive")
    (d / "result.json").write_text(json.dumps(own))
    out = figures.lines(run, cpu="Test CPU, 2 cores")
    assert any(ln.startswith("reuse: INCONCLUSIVE") for ln in out) and any(ln.startswith("reuse-2node: PASS") for ln in out)
