"""`orchestrate sweep`: the design, the restarts it plans, and a 2x2 sweep with 2 trials on a local
simulated cluster of its own (free ports) that restarts the engines only when chunk_size changes,
resumes after an interrupt without redoing finished points, and writes its report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from clusterkit import ROOT, Orch, write_inventory, give_free_ports

from kvorch import sweep as sw

pytestmark = pytest.mark.timeout(900)


def spec(**over) -> sw.SweepSpec:
    base = {"name": "t", "inventory": "x.yaml", "scenario": "reuse",
            "factors": [{"set": "lmcache.chunk_size", "levels": [256, 512]}, {"set": "params.prefix_tokens", "levels": [1, 2, 3]}],
            "metrics": [{"name": "m", "expr": "ttft_speedup"}]}
    base.update(over)
    return sw.SweepSpec.model_validate(base)


def test_full_factorial_varies_the_first_factor_slowest():
    pts = sw.points(spec())
    assert len(pts) == 6 and pts[0] == {"chunk_size": 256, "prefix_tokens": 1} and pts[3]["chunk_size"] == 512
    assert [p["chunk_size"] for p in pts] == [256, 256, 256, 512, 512, 512]


def test_listed_points_must_name_every_factor():
    with pytest.raises(ValueError, match=r"points\[1\]: missing factors \['prefix_tokens'\]"):
        spec(design="points", points=[{"chunk_size": 256, "prefix_tokens": 1}, {"chunk_size": 512}])


def test_a_sweep_file_with_an_unknown_key_is_refused_with_its_line(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("name: s\ninventory: x.yaml\nscenario: reuse\nfactor: []\nmetrics: [{name: m, expr: x}]\n")
    with pytest.raises(sw.SweepError) as e:
        sw.load(f)
    assert "s.yaml:4" in str(e.value.message) + " ".join(e.value.details) or "factor" in e.value.message


def test_dotted_paths_reach_engines_by_name_and_all_engines():
    data = {"engines": [{"name": "a", "env": {}}, {"name": "b"}], "lmcache": {"chunk_size": 256}}
    sw.set_path(data, "engines.a.env.X", "1")
    sw.set_path(data, "engines.*.vllm.max_num_seqs", 4)
    sw.set_path(data, "lmcache.chunk_size", 512)
    assert data["engines"][0]["env"] == {"X": "1"} and data["engines"][1]["vllm"] == {"max_num_seqs": 4}
    assert data["lmcache"]["chunk_size"] == 512
    with pytest.raises(sw.SweepError, match="no entry 'c'"):
        sw.set_path(data, "engines.c.env.X", "1")


def test_a_points_metric_is_the_median_with_the_verdicts_bootstrap_interval():
    from kvorch import stats

    xs = [1.0, 2.0, 3.0, 10.0]
    st = sw.interval(xs)
    iv = stats.bootstrap_ci(xs)  # the same seeded interval the verdicts and `compare` use
    assert st == {"n": 4, "median": 2.5, "lo": iv.low, "hi": iv.high} and iv.low < 2.5 < iv.high
    assert sw.interval([5.0, None]) == {"n": 1, "median": 5.0, "lo": None, "hi": None}  # one trial: no spread known
    assert sw.interval([])["median"] is None


def test_a_metric_expression_that_does_not_compile_is_refused_with_its_line(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("name: s\ninventory: x.yaml\nscenario: reuse\nfactors: [{set: params.a, levels: [1]}]\n"
                 "metrics:\n  - name: m\n    expr: 'ttft_s +* 2'\n")
    with pytest.raises(sw.SweepError) as e:
        sw.load(f)
    assert e.value.message.startswith(f"{f}:7: metrics[0].expr:")


def test_dry_run_lists_the_restarts_each_point_needs(tmp_path):
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, str(ROOT / "orchestrate.py"), "--json", "sweep", str(ROOT / "sweeps/sim-chunk-prefix.yaml"),
                        "--dry-run", "--out", str(out)], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "ORCHESTRATE_STATE": str(tmp_path / "state")})
    assert r.returncode == 0, r.stderr
    pts = json.loads(r.stdout)["points"]
    assert [p["restarted"] for p in pts] == [["up: every process"], [], ["prefill", "decode"], []]
    assert "example1.yaml" in pts[2]["restart_reason"] and "example2.yaml" in pts[2]["restart_reason"]


@pytest.fixture()
def sim_sweep(tmp_path):
    name = f"sweep-{os.getpid()}"

    def mutate(data: dict) -> None:
        data["cluster"] = name
        for h in data["hosts"].values():
            h["workdir"] = str(tmp_path / "work")
        give_free_ports(data)

    inv = write_inventory(tmp_path / "inventory.yaml", "inventories/local.yaml", mutate)
    s = yaml.safe_load((ROOT / "sweeps/sim-chunk-prefix.yaml").read_text())
    s["inventory"] = str(inv)
    f = tmp_path / "sweep.yaml"
    f.write_text(yaml.safe_dump(s, sort_keys=False))
    orch = Orch(tmp_path, inv)
    try:
        yield orch, f, tmp_path / "sweep-out"
    finally:
        orch("down", "--no-collect", timeout=180)


def test_sim_sweep_restarts_only_on_chunk_size_resumes_after_an_interrupt_and_reports(sim_sweep):
    orch, f, out = sim_sweep
    # 1. start, interrupt once the first point has both trials
    proc = subprocess.Popen([sys.executable, str(ROOT / "orchestrate.py"), "sweep", str(f), "--out", str(out)],
                            cwd=orch.workdir, env=orch.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = out / "points"
    t0 = time.monotonic()
    while time.monotonic() - t0 < 240 and not list(first.glob("p01-*/point.json")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    done1 = sorted(first.glob("p01-*/trial-*.json"))
    assert len(done1) == 2
    mtimes = {p: p.stat().st_mtime_ns for p in done1}
    assert not list(first.glob("p04-*/trial-*.json"))
    # 2. resume: the first point is not run again
    r = orch("--json", "sweep", str(f), "--out", str(out), "--resume", timeout=600)
    assert r.code == 0, r.out + r.err
    res = json.loads(r.out)
    assert {p: p.stat().st_mtime_ns for p in done1} == mtimes
    pts = res["points"]
    assert pts[0]["skipped_trials"] == 2 and all(len(p["trials"]) == 2 for p in pts)
    assert pts[2]["restarted"] == ["prefill", "decode"] and "example1.yaml" in pts[2]["restart_reason"]
    assert pts[3]["restarted"] == [] and pts[1]["restarted"] == []
    # the sim's LMCache chunk size really changed: whole chunks of 512 at the chunk_size=512 points
    for p in pts:
        for t in p["trials"]:
            hits = t["metrics"]["follow_up_hit_tokens"]
            assert hits is not None and hits > 0 and hits % p["levels"]["chunk_size"] == 0, (p["id"], hits)
    # 3. the report: table, plots with intervals, best point per metric
    assert set(res["best"]) == {"follow_up_ttft_ms", "ttft_speedup", "follow_up_hit_tokens"}
    assert res["best"]["follow_up_hit_tokens"]["levels"]["prefix_tokens"] == 1280
    table = (out / "table.csv").read_text().splitlines()
    assert table[0].startswith("point,chunk_size,prefix_tokens,restarted") and len(table) == 5
    plots = sorted(x.name for x in (out / "plots").iterdir())
    assert "ttft_speedup-vs-chunk_size.png" in plots and len(plots) == 6
    md = (out / "report.md").read_text()
    assert "wall time" in md and "sum of the points" in md and "best point per metric" in md
    assert res["wall_s"] >= res["points_s"] * 0.5
    # down_after: nothing of the cluster runs any more
    st = orch("--json", "status")
    assert "running" not in st.out or st.code != 0
