"""What a short command does not pay for at start-up, and the behaviour kept while skipping it:
no rich behind ``status``, no pydantic plugin scan in the command line (the library still loads plugins)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from clusterkit import ROOT, Orch, give_free_ports, write_inventory


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **env})


def _imported(stderr: str) -> set[str]:
    """Module names from ``python -X importtime`` output."""
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines() if line.startswith("import time:")}


def _local_cluster(tmp_path: Path) -> Orch:
    name = f"startup{tmp_path.name[-12:]}".replace("_", "").replace("-", "")[:30]

    def m(d):
        d["cluster"] = name
        give_free_ports(d)
        for h in d["hosts"].values():
            h["workdir"] = str(tmp_path / "hosts")
    return Orch(tmp_path, write_inventory(tmp_path / "inv.yaml", "inventories/local.yaml", m))


def test_status_prints_its_table_without_loading_rich(tmp_path):
    orch = _local_cluster(tmp_path)
    r = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / "orchestrate.py"), "status"], cwd=tmp_path,
                       env=orch.env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 1  # nothing runs: every process absent
    lines = r.stdout.splitlines()
    assert lines[0].startswith("cluster startup") and lines[1].split()[:6] == ["process", "host", "pid", "serves", "port", "state"]
    assert sorted(ln.split()[0] for ln in lines[3:]) == ["controller", "decode", "prefill"]
    assert all("absent" in ln for ln in lines[3:])
    assert not {m for m in _imported(r.stderr) if m.split(".")[0] == "rich"}


def test_up_off_a_terminal_prints_its_table_without_loading_rich(tmp_path):
    orch = _local_cluster(tmp_path)
    try:
        r = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / "orchestrate.py"), "up", "--skip-preflight"],
                           cwd=tmp_path, env=orch.env(), capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        lines = r.stdout.splitlines()
        assert lines[0].startswith("cluster startup") and " is up (run " in lines[0]
        assert lines[1].split() == ["process", "host", "pid", "ports", "health", "log"]
        assert sorted(ln.split()[0] for ln in lines[3:]) == ["controller", "decode", "prefill"]
        assert not {m for m in _imported(r.stderr) if m.split(".")[0] == "rich"}
    finally:
        orch("down", "--no-collect")


def _planted_plugin(tmp_path: Path) -> Path:
    """A pydantic plugin, found the way pydantic finds them (an entry point in group
    ``pydantic``), that writes a file when it is loaded."""
    site = tmp_path / "site"
    dist = site / "planted_plugin-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: planted-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[pydantic]\nplanted = planted_plugin:plugin\n")
    marker = tmp_path / "loaded"
    (site / "planted_plugin.py").write_text(
        f"open({str(marker)!r}, 'w').write('loaded')\n"
        "class _P:\n    def new_schema_validator(self, *a, **k):\n        return None, None, None\n"
        "plugin = _P()\n")
    return site


@pytest.mark.parametrize("command", [["render", "--out", "r"], ["status"], ["preflight"], ["up", "--dry-run"]],
                         ids=["render", "status", "preflight", "up-dry-run"])
def test_the_command_line_does_not_scan_for_pydantic_plugins(tmp_path, command):
    # (status, preflight and up skip the scan later than the others: once their connections are begun)
    site = _planted_plugin(tmp_path)
    orch = _local_cluster(tmp_path)
    env = {**orch.env(), "PYTHONPATH": f"{ROOT}:{site}"}
    r = subprocess.run([sys.executable, str(ROOT / "orchestrate.py"), *command],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode in (0, 1), r.stderr  # (status: nothing runs)
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "loaded").exists()


def test_the_library_still_loads_pydantic_plugins(tmp_path):
    site = _planted_plugin(tmp_path)
    orch = _local_cluster(tmp_path)
    r = _python(f"from kvorch.inventory import load_inventory; load_inventory({str(orch.inventory)!r})",
                PYTHONPATH=f"{ROOT}:{site}")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "loaded").read_text() == "loaded"


def test_status_json_is_unchanged_by_the_plain_table(tmp_path):
    orch = _local_cluster(tmp_path)
    r = orch("--json", "status")
    data = json.loads(r.out)
    assert r.code == 1 and sorted(p["process"] for p in data["processes"]) == ["controller", "decode", "prefill"]
    assert {p["state"] for p in data["processes"]} == {"absent"}
