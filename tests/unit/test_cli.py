"""The command line: render and dry-run need no network; mistakes are one line, no traceback."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kvorch.cli import main

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "orchestrate.py"), *args], cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest.fixture
def no_sockets(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a socket was opened")
    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def call(*args: str) -> int:
    try:
        main(list(args))
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def test_render_writes_one_folder_per_host_without_network(tmp_path, no_sockets, capsys):
    assert call("-i", str(ROOT / "inventory.yaml"), "render", "--out", str(tmp_path)) == 0
    assert yaml.safe_load((tmp_path / "node13" / "example1.yaml").read_text())["p2p_host"] == "192.168.110.13"
    assert yaml.safe_load((tmp_path / "node97" / "example2.yaml").read_text())["p2p_host"] == "192.168.110.97"
    assert (tmp_path / "node13" / "run" / "prefill.sh").stat().st_mode & 0o111


def test_dry_run_prints_the_plan_as_json_without_network(no_sockets, capsys):
    assert call("-i", str(ROOT / "inventory.yaml"), "--json", "up", "--dry-run") == 0
    data = json.loads(capsys.readouterr().out)
    assert [p["name"] for h in data["hosts"] for p in h["processes"]] == ["controller", "prefill", "decode"]


def test_json_flag_also_works_after_the_command(no_sockets, capsys):
    assert call("-i", str(ROOT / "inventory.yaml"), "up", "--dry-run", "--json") == 0
    assert json.loads(capsys.readouterr().out)["cluster"] == "seed"


def test_dry_run_readable_output_names_hosts_and_commands(no_sockets, capsys):
    assert call("-i", str(ROOT / "inventory.yaml"), "up", "--dry-run") == 0
    out = capsys.readouterr().out
    assert "host node13 (192.168.110.13" in out and "lmcache_controller --host 0.0.0.0 --port 9000" in out


def test_inventory_mistake_is_one_clear_line_and_exit_2(tmp_path):
    bad = tmp_path / "inv.yaml"
    bad.write_text((ROOT / "inventory.yaml").read_text().replace("port: 8011", "port: 99999"))
    r = run_cli("-i", str(bad), "up", "--dry-run")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert f"error: {bad}:" in r.stderr and "engines[1].port" in r.stderr


def test_missing_inventory_exit_2_with_hint(tmp_path):
    r = run_cli("render", cwd=tmp_path)
    assert r.returncode == 2 and "no such inventory file" in r.stderr and "Traceback" not in r.stderr


def test_unknown_option_is_a_usage_error():
    r = run_cli("up", "--frobnicate")
    assert r.returncode == 2 and "No such option" in r.stderr


def test_help_does_not_import_heavy_modules():
    # (argv given: main() returns here; as the program it would end the process with os._exit)
    code = ("import sys\n"
            "from kvorch.cli import main\n"
            "try:\n main(['--help'])\nexcept SystemExit: pass\n"
            "heavy=[m for m in ('fabric','paramiko','httpx','matplotlib','aiohttp') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in r.stdout
