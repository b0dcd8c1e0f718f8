"""collect over real SSH to the two loopback hosts (127.0.0.13, 127.0.0.97), simulated engines:
up → run → collect → (kill -9) → collect → down, and what lands in the run folder."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from clusterkit import ROOT, Orch, write_inventory
from kvorch.collect import read_local_log

pytestmark = pytest.mark.ssh

SECRET = "hf_SSHplantedSecret_41d07a"
HOSTS = {"node13": "127.0.0.13", "node97": "127.0.0.97"}
PROCS = {"controller": "node13", "prefill": "node13", "decode": "node97"}


def free_ports(address: str, n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((address, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture(scope="module")
def cluster(sshd_cluster, tmp_path_factory):
    """The loopback inventory on free ports (other sessions may use 9000/8010/8011), a planted
    secret, workdirs in this test's tmp dir; up and one reuse-2node run."""
    tmp = tmp_path_factory.mktemp("collect-ssh")
    p13, p97 = iter(free_ports("127.0.0.13", 8)), iter(free_ports("127.0.0.97", 4))

    def m(d):
        d["cluster"] = "collectssh"
        d["env"]["HF_TOKEN"] = SECRET
        for name, host in d["hosts"].items():
            host["ssh"]["port"] = sshd_cluster.port
            host["workdir"] = str(tmp / "hosts" / name)
        d["controller"]["port"] = next(p13)
        d["controller"]["monitor_ports"] = {"pull": next(p13), "reply": next(p13), "heartbeat": next(p13)}
        for e in d["engines"]:
            it = p13 if e["host"] == "node13" else p97
            e.update(port=next(it), p2p_init_port=next(it), p2p_lookup_port=next(it), worker_port=next(it))
    inv = write_inventory(tmp / "inv.yaml", "inventories/loopback.yaml", m)
    orch = Orch(tmp, inv, sshd_cluster.ssh_config)
    try:
        r = orch("up")
        assert r.code == 0, r.err + r.out
        r = orch("run", "reuse-2node", "--set", "wait_s=0.2")
        assert r.code == 0, r.err + r.out
        yield orch
    finally:
        orch("down", "--no-collect", "--grace", "2")


def collect(orch: Orch, *args: str) -> dict:
    t0 = time.monotonic()
    r = orch("--json", "collect", *args)
    assert r.code in (0, 1), r.err + r.out
    out = r.json()
    out["_code"], out["_wall_s"] = r.code, time.monotonic() - t0
    return out


def host_log(orch: Orch, proc: str) -> bytes:
    return (orch.workdir / "hosts" / PROCS[proc] / "logs" / f"{proc}.log").read_bytes()


def test_collect_over_ssh_brings_every_log_byte_for_byte_and_each_hosts_facts(cluster):
    out = collect(cluster)
    assert out["_code"] == 0, out["partial_reasons"]
    run_dir = Path(out["run_dir"])
    for proc, host in PROCS.items():
        log = out["processes"][proc]["log"]
        here = read_local_log(run_dir / "hosts" / host / log["file"])
        assert len(here) == log["bytes_here"] == log["host_size"] > 0
        assert here == host_log(cluster, proc)[: len(here)]
    m = json.loads((run_dir / "manifest.json").read_text())
    for name, address in HOSTS.items():
        facts = m["hosts"][name]["facts"]
        assert facts["server_address"] == address  # reached over SSH, on its own address
        assert facts["python_version"] and "vllm" in facts["packages"]
        assert m["rendered"][name]  # the deployed files, read back over SFTP
    assert m["rendered"]["node97"]["example2.yaml"]["matches_deployed"] is True
    assert m["processes"]["decode"]["env"]["HF_TOKEN"] == "***"
    print(f"\ncollect over ssh: {out['seconds']:.2f} s in-process, {out['_wall_s']:.2f} s wall, "
          f"{out['bytes_pulled']} bytes of logs, phases {out['phases_s']}")


def test_secret_planted_in_env_appears_nowhere_in_the_run_folder(cluster):
    out = collect(cluster)
    run_dir = Path(out["run_dir"])
    assert SECRET in (cluster.workdir / "hosts" / "node97" / "run" / "decode.secrets.env").read_text()
    checked = 0
    for p in run_dir.rglob("*"):
        if p.is_file():
            data = read_local_log(p) if p.suffix == ".gz" else p.read_bytes()
            assert SECRET.encode() not in data, p
            checked += 1
    assert checked > 20


def test_second_collect_over_ssh_pulls_only_the_new_bytes(cluster):
    import httpx

    first = collect(cluster)
    api = json.loads(Path(first["manifest"]).read_text())["processes"]["decode"]["api_url"]
    httpx.post(api + "/completions", timeout=30, json={"model": "meta-llama/Meta-Llama-3.1-8B-Instruct",
                                                       "prompt": "collect me " * 200, "max_tokens": 4})
    second = collect(cluster)
    for proc, p in second["processes"].items():
        log = p["log"]
        assert log["pulled"] == log["new"] == log["host_size"] - first["processes"][proc]["log"]["host_size"]
    assert second["processes"]["decode"]["log"]["pulled"] > 500
    total = sum(p["log"]["host_size"] for p in second["processes"].values())
    assert second["bytes_pulled"] < total / 3
    run_dir = Path(second["run_dir"])
    assert read_local_log(run_dir / "hosts" / "node97" / "decode.log") == host_log(cluster, "decode")[
        : second["processes"]["decode"]["log"]["bytes_here"]]


def test_one_unreachable_host_gives_a_partial_collect_and_exit_code_1(cluster, tmp_path):
    inv = yaml.safe_load(cluster.inventory.read_text())
    inv["hosts"]["node97"]["ssh"]["port"] = free_ports("127.0.0.97", 1)[0]  # nothing listens there
    bad = tmp_path / "node97-down.yaml"
    bad.write_text(yaml.safe_dump(inv))
    r = Orch(cluster.workdir, bad, cluster.ssh_config)("--json", "collect")
    assert r.code == 1, r.err
    out = r.json()
    assert out["complete"] is False and out["unreachable"] == ["node97"]
    assert out["processes"]["prefill"]["log"]["status"] in ("pulled", "unchanged")  # node13 was collected
    assert out["processes"]["decode"]["log"]["status"] == "not collected: host unreachable"
    m = json.loads(Path(out["manifest"]).read_text())
    assert m["hosts"]["node97"]["reachable"] is False and m["hosts"]["node13"]["reachable"] is True
    assert any(reason.startswith("host node97 unreachable") for reason in m["partial_reasons"])
    assert collect(cluster)["_code"] == 0


@pytest.mark.skipif(shutil.which("chromium") is None and shutil.which("chromium-browser") is None,
                    reason="chromium not installed (apt-get install chromium)")
def test_report_renders_its_plots_in_headless_chromium(cluster, tmp_path):
    out = collect(cluster)
    shot = tmp_path / "report.png"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_report_html.py"), out["run_dir"], "--json",
                        "--min-plots", "4", "--screenshot", str(shot)], capture_output=True, text=True, timeout=240)
    res = json.loads(r.stdout)
    assert r.returncode == 0 and res["ok"], res
    assert all(im["w"] > 100 and im["h"] > 100 for im in res["images"])
    assert shot.read_bytes().startswith(b"\x89PNG")


def test_kill_9_then_collect_then_down_keeps_the_whole_log(cluster):
    st = json.loads((cluster.workdir / "state" / "collectssh.json").read_text())
    os.killpg(st["processes"]["decode"]["pid"], signal.SIGKILL)
    time.sleep(0.3)
    out = collect(cluster)
    assert out["_code"] == 0
    decode = out["processes"]["decode"]
    assert decode["state_now"] in ("dead", "zombie") and decode["exit_code"] is None and "kill" in decode["exit_note"]
    run_dir = Path(out["run_dir"])
    assert read_local_log(run_dir / "hosts" / "node97" / "decode.log") == host_log(cluster, "decode")
    d = cluster("down", "--grace", "2")  # collects first, by default
    assert d.code == 0, d.err + d.out
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["complete"] is True and len(m["collections"]) >= 2
    for proc in PROCS:
        here = read_local_log(run_dir / "hosts" / PROCS[proc] / m["processes"][proc]["log"]["file"])
        assert here == host_log(cluster, proc)[: len(here)]
