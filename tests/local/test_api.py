"""The library API: an in-process Cluster on the local sim cluster, events recorded, nothing printed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "faults"))
from faultkit import Cluster as Fixture  # noqa: E402

from kvorch import Cluster, RecordingEvents, StartFailed  # noqa: E402


def test_up_run_collect_down_in_process_with_events_and_no_output(tmp_path, capsys):
    fx = Fixture(tmp_path)
    ev = RecordingEvents()
    with Cluster(fx.inv_path, events=ev, state_dir=tmp_path / "state", logs_dir=tmp_path / "logs") as c:
        up = c.up()
        assert up.ok and up.changed and set(up.to_json()["processes"]) == {"controller", "prefill", "decode"}
        assert c.up().changed is False  # a second up changes nothing
        st = c.status()
        assert st.ok and {p["state"] for p in st.processes} == {"running"}
        r = c.run("reuse", wait_s=0.2)
        assert r.ok and r.verdict == "pass" and Path(r.dir).is_dir()
        col = c.collect()
        assert col.ok and (Path(col.run_dir) / "manifest.json").is_file()
    assert fx.leftovers() == []  # the with block brought it down
    names = ev.names()
    assert names.count("waiting") == 3 and names.count("healthy") == 3
    assert ("scenario_started" in names and "scenario_finished" in names and "stopping" in names)
    assert any(n == "phase" and a["name"] == "wait_healthy" for n, a in ev.calls)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_a_start_failure_raises_with_its_data_and_rolls_back(tmp_path):
    def m(d):
        d["engines"][1]["args"] = ["--no-such-flag"]
    fx = Fixture(tmp_path, m)
    ev = RecordingEvents()
    c = Cluster(fx.inv_path, events=ev, state_dir=tmp_path / "state", logs_dir=tmp_path / "logs")
    with pytest.raises(StartFailed) as e:
        c.up(timeout=30)
    assert e.value.process == "decode" and e.value.host == "local"
    assert "--no-such-flag" in e.value.log_tail
    assert "controller" in e.value.stopped and "prefill" in e.value.stopped
    assert any(n == "start_failed" and a["process"] == "decode" for n, a in ev.calls)
    assert fx.leftovers() == []


def test_the_shipped_example_runs(tmp_path):
    import os
    import subprocess

    fx = Fixture(tmp_path)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "ORCHESTRATE_STATE": str(tmp_path / "state"), "ORCHESTRATE_LOGS": str(tmp_path / "logs")}
    r = subprocess.run([sys.executable, str(root / "examples" / "reuse_sweep.py"), str(fx.inv_path)], env=env,
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "reuse-2node prefix_tokens=1024: pass" in r.stdout
    assert fx.leftovers() == []
