"""up → status → down over real SSH to the two loopback hosts, with the simulated engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clusterkit import Orch, listening, pids_in_group, write_inventory

pytestmark = pytest.mark.ssh

PROCESSES = {"controller": ("127.0.0.13", 9000), "prefill": ("127.0.0.13", 8010), "decode": ("127.0.0.97", 8011)}


@pytest.fixture
def loopback(sshd_cluster, tmp_path):
    """An Orch for inventories/loopback.yaml with this session's sshd port and fresh workdirs."""
    def make(mutate=None, name="inv.yaml"):
        def m(d):
            for host in d["hosts"].values():
                host["ssh"]["port"] = sshd_cluster.port
                host["workdir"] = str(tmp_path / "hosts" / host["address"])
            if mutate:
                mutate(d)
        inv = write_inventory(tmp_path / name, "inventories/loopback.yaml", m)
        return Orch(tmp_path, inv, sshd_cluster.ssh_config)
    orchs = []

    def factory(mutate=None, name="inv.yaml"):
        o = make(mutate, name)
        orchs.append(o)
        return o
    yield factory
    for o in orchs:  # never leave anything running
        o("down", "--no-collect", "--grace", "2")


def state_pids(orch: Orch) -> dict[str, int]:
    st = json.loads((orch.workdir / "state" / "loopback.json").read_text())
    return {n: p["pid"] for n, p in st["processes"].items()}


def test_up_status_down_leaves_nothing_running(loopback):
    orch = loopback()
    r = orch("--json", "up")
    assert r.code == 0, r.err + r.out
    assert set(r.json()["phases_s"]) >= {"connect_observe", "preflight", "upload", "start", "wait_healthy"}
    pids = state_pids(orch)
    assert set(pids) == set(PROCESSES)
    for addr, port in PROCESSES.values():
        assert listening(addr, port)

    st = orch("--json", "status")
    assert st.code == 0, st.err
    rows = {r["process"]: r for r in st.json()["processes"]}
    assert all(rows[n]["state"] == "running" for n in PROCESSES)
    assert rows["decode"]["host"] == "node97" and rows["decode"]["port"] == 8011

    d = orch("--json", "down", "--no-collect")
    assert d.code == 0, d.err + d.out
    assert d.json()["leftovers"] == []
    for pid in pids.values():
        assert pids_in_group(pid) == []
    for addr, port in PROCESSES.values():
        assert not listening(addr, port)


def test_logs_tails_and_follows_each_process_over_ssh(loopback):
    import subprocess
    import sys
    import time

    import httpx

    from clusterkit import ROOT

    orch = loopback()
    assert orch("up").code == 0
    r = orch("logs", "-n", "2")
    assert r.code == 0, r.err
    shown = {line.split("|", 1)[0].strip() for line in r.out.splitlines() if "|" in line}
    assert shown == set(PROCESSES)

    j = orch("--json", "logs", "decode", "-n", "5")
    assert j.code == 0, j.err
    decode = j.json()["processes"]["decode"]
    assert decode["host"] == "node97" and 0 < len(decode["lines"]) <= 5

    bad = orch("logs", "nosuch")
    assert bad.code == 2 and "no process named 'nosuch'" in bad.err and "decode" in bad.err

    import queue
    import threading

    import yaml

    model = yaml.safe_load(orch.inventory.read_text())["model"]
    follower = subprocess.Popen([sys.executable, str(ROOT / "orchestrate.py"), "--json", "logs", "-f", "-n", "0", "decode"],
                                cwd=orch.workdir, env=orch.env(), stdout=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in follower.stdout], daemon=True).start()
    try:
        first = json.loads(lines.get(timeout=30))  # the (empty) tail: following from here
        assert first["processes"]["decode"]["lines"] == []
        rid = "follow-me-0001"
        resp = httpx.post("http://127.0.0.97:8011/v1/completions", headers={"X-Request-Id": rid}, timeout=30,
                          json={"model": model, "prompt": "hello " * 300, "max_tokens": 2})
        assert resp.status_code == 200, resp.text
        deadline, seen = time.monotonic() + 20, []
        while time.monotonic() < deadline and not any(rid in x for x in seen):
            try:
                seen.append(json.loads(lines.get(timeout=1))["line"])
            except queue.Empty:
                pass
        assert any(rid in x for x in seen), seen
    finally:
        follower.terminate()
        follower.wait(10)


def test_up_twice_changes_nothing_and_down_twice_is_fine(loopback):
    orch = loopback()
    assert orch("up").code == 0
    before = state_pids(orch)
    again = orch("--json", "up")
    assert again.code == 0, again.err
    assert again.json()["changed"] is False
    assert state_pids(orch) == before
    assert orch("down", "--no-collect").code == 0
    second = orch("--json", "down", "--no-collect")
    assert second.code == 0
    assert all(r["result"] in ("not started", "already stopped") for r in second.json()["stopped"].values())


def test_down_after_a_crash_cleans_up(loopback):
    import os
    import signal

    orch = loopback()
    assert orch("up").code == 0
    pids = state_pids(orch)
    os.killpg(pids["decode"], signal.SIGKILL)
    st = orch("--json", "status")
    assert st.code == 1
    assert {r["process"]: r["state"] for r in st.json()["processes"]}["decode"] in ("dead", "zombie")
    assert orch("down", "--no-collect").code == 0
    for pid in pids.values():
        assert pids_in_group(pid) == []


def test_host_key_mismatch_refuses_and_starts_nothing(sshd_cluster, loopback, tmp_path):
    kh = tmp_path / "known_hosts_wrong"
    lines = sshd_cluster.known_hosts.read_text().splitlines()
    other = next(l for l in lines if "127.0.0.97" in l).split()[2]
    kh.write_text("\n".join(l.split()[0] + " " + l.split()[1] + " " + other if "127.0.0.13" in l else l for l in lines) + "\n")

    def m(d):
        d["hosts"]["node13"]["ssh"]["known_hosts_file"] = str(kh)
    orch = loopback(m)
    r = orch("up")
    assert r.code == 2
    assert "node13" in r.err and "ssh-keygen -R" in r.err
    assert "Traceback" not in r.err
    for addr, port in PROCESSES.values():
        assert not listening(addr, port)


def test_preflight_on_free_hosts_passes_and_starts_nothing(loopback):
    r = loopback()("--json", "preflight")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["ok"] and {ch["host"] for ch in report["checks"]} >= {"node13", "node97"}
    for addr, port in PROCESSES.values():
        assert not listening(addr, port)


def test_taken_port_fails_preflight_naming_the_holder(loopback):
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", "import socket,time; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.97', 8011)); s.listen(); time.sleep(60)"])
    try:
        for _ in range(50):
            if listening("127.0.0.97", 8011):
                break
            import time; time.sleep(0.05)
        orch = loopback()
        pre = orch("--json", "preflight")
        assert pre.code == 1
        failed = [ch for ch in json.loads(pre.out)["checks"] if ch["status"] == "fail"]
        assert any("8011" in ch["detail"] and f"{holder.pid}/python" in ch["detail"] for ch in failed)
        r = orch("up")
        assert r.code == 2
        assert "8011" in (r.out + r.err) and f"{holder.pid}/python" in (r.out + r.err)
        assert not listening("127.0.0.13", 9000)  # nothing was started
    finally:
        holder.kill()
        holder.wait()


def test_engine_that_exits_at_start_fails_up_with_its_log_and_leaves_nothing(loopback):
    def m(d):
        d["engines"][1]["args"] = ["--no-such-flag"]
    orch = loopback(m)
    r = orch("up", "--timeout", "30")
    assert r.code == 2, r.out + r.err
    assert "decode on host node97 failed" in r.err
    assert "--no-such-flag" in r.out  # the log tail shows the engine's own complaint
    for addr, port in PROCESSES.values():
        assert not listening(addr, port)


def test_shell_metacharacters_reach_the_process_verbatim_and_run_nothing(loopback, tmp_path):
    canary = tmp_path / "pwned"
    value = f"$(touch {canary}); `touch {canary}`; 'q' \"dq\" \\ end"

    def m(d):
        d["engines"][0]["env"] = {"NOTE": value}
    orch = loopback(m)
    assert orch("up").code == 0
    pgid = state_pids(orch)["prefill"]
    envs = []
    for pid in pids_in_group(pgid):
        raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        envs += [e.decode() for e in raw if e.startswith(b"NOTE=")]
    assert envs and all(e == "NOTE=" + value for e in envs)
    assert not canary.exists()
