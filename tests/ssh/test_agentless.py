"""Agentless hosts (issue #13): a host with only sshd, bash and a python3 >= 3.10 that has nothing
installed runs the simulated cluster; `up` ships this tool's code there once; an older Python is
refused by preflight with one clear line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from clusterkit import Orch, listening, loopback_orch, pids_in_group

pytestmark = pytest.mark.ssh


def _lowest_python_at_least_3_10() -> str:
    """The oldest CPython >= 3.10 on this machine (the bundle must run there), else this one."""
    for minor in (10, 11, 12, 13):
        candidates = [str(p) for p in sorted(Path("/root/.pyenv/versions").glob(f"3.{minor}.*/bin/python3"))]
        candidates += [c for c in [shutil.which(f"python3.{minor}")] if c]
        for c in candidates:
            r = subprocess.run([c, "-c", "import sys, venv; print(sys.version_info[1])"], capture_output=True, text=True)
            if r.returncode == 0 and r.stdout.strip() == str(minor):
                return c
    return sys.executable


@pytest.fixture
def empty_venv(tmp_path) -> Path:
    """A fresh venv with nothing installed (not even pip), from the oldest Python >= 3.10 here."""
    venv = tmp_path / "bare-venv"
    subprocess.run([_lowest_python_at_least_3_10(), "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    listing = subprocess.run([str(py), "-c", "import importlib.metadata as m; print(sorted(d.metadata['Name'] for d in m.distributions()))"],
                             cwd=venv, capture_output=True, text=True, check=True).stdout.strip()  # not the checkout's kvorch.egg-info
    assert listing == "[]", listing  # nothing: no kvorch, no prometheus_client, no yaml
    return py


def _engine_pythons(state: dict) -> set[str]:
    """The interpreters the started processes run (first word of each group member's cmdline)."""
    exes = set()
    for p in state["processes"].values():
        for pid in pids_in_group(p["pid"]):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"-m" in argv:
                exes.add(argv[0].decode())
    return exes


def test_empty_venv_hosts_run_up_reuse_2node_down_with_the_sim(sshd_cluster, tmp_path, empty_venv):
    orch = loopback_orch(tmp_path, sshd_cluster, "agentless", str(empty_venv))
    try:
        up = orch("--json", "up")
        assert up.code == 0, up.err + up.out
        sent = up.json()["bundle"]
        assert set(sent) == {"node13", "node97"} and all(b["uploaded"] and b["bytes"] > 10_000 for b in sent.values())
        state = json.loads((tmp_path / "state" / "agentless.json").read_text())
        assert _engine_pythons(state) == {str(empty_venv)}  # the hosts' interpreter, not pytest's

        r = orch("--json", "run", "reuse-2node", timeout=300)
        assert r.code == 0, r.err + r.out
        res = json.loads(r.out)
        assert res["verdict"] == "pass" and res["results"]["follow_up"]["log"]["hit_tokens"] >= 512

        d = orch("--json", "down", "--no-collect")
        assert d.code == 0 and d.json()["leftovers"] == [], d.err + d.out

        again = orch("--json", "up")  # unchanged code: found on the hosts, nothing sent
        assert again.code == 0, again.err + again.out
        assert all(not b["uploaded"] and b["bytes"] == 0 for b in again.json()["bundle"].values())
        assert again.json()["run_id"] != up.json()["run_id"]
    finally:
        orch("down", "--no-collect", "--grace", "2")
    for p in state["processes"].values():
        assert pids_in_group(p["pid"]) == []


FAKE_38 = """#!/usr/bin/env bash
# A stand-in for an old interpreter: answers like Python 3.8.18 would, runs nothing.
case "${1:-}" in
  --version|-V) echo "Python 3.8.18" ;;
  -c) printf '{"version": "3.8.18", "executable": "%s", "packages": {}}\\n' "$0" ;;
  *) echo "python 3.8.18 stand-in: cannot run $*" >&2; exit 1 ;;
esac
"""


def _old_pythons(tmp: Path) -> list:
    fake = tmp / "oldpy" / "python3"
    fake.parent.mkdir()
    fake.write_text(FAKE_38)
    fake.chmod(0o755)
    out = [pytest.param(str(fake), "3.8.18", id="fake-3.8")]
    real = sorted(Path("/root/.pyenv/versions").glob("3.8.*/bin/python3"))
    if real:
        out.append(pytest.param(str(real[0]), real[0].parts[-3], id="real-3.8"))
    return out


@pytest.mark.parametrize("which", ["fake-3.8", "real-3.8"])
def test_a_host_python_below_3_10_fails_preflight_with_one_clear_line(sshd_cluster, tmp_path, which):
    olds = {p.id: p.values for p in _old_pythons(tmp_path)}
    if which not in olds:
        pytest.skip("no Python 3.8 on this machine")
    python, version = olds[which]
    orch = loopback_orch(tmp_path, sshd_cluster, "oldpy", None)
    data = orch.inventory.read_text().replace("python: python3", f"python: {python}", 1)  # node13 only
    orch.inventory.write_text(data)

    r = orch("up")
    assert r.code == 2, r.err + r.out
    errors = [ln for ln in r.err.splitlines() if ln.startswith("error:")]
    assert errors == [f"error: preflight failed: node13: python: {python} is Python {version}: "
                      "orchestrate's host programs need Python >= 3.10"], r.err
    assert "hosts.node13.python" in r.err  # the fix names the field
    pf = orch("--json", "preflight")
    failed = [c for c in pf.json()["checks"] if c["status"] == "fail"]
    assert [(c["host"], c["name"]) for c in failed] == [("node13", "python")]  # that line, nothing else
    assert not (tmp_path / "hosts" / "127.0.0.13" / ".kvorch").exists()  # nothing shipped, nothing started
    assert not any(listening("127.0.0.13", p) for p in _ports(orch))


def _ports(orch: Orch) -> list[int]:
    import yaml

    d = yaml.safe_load(orch.inventory.read_text())
    return [d["controller"]["port"]] + [e["port"] for e in d["engines"]]
