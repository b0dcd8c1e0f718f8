"""Fault suite, hosts: sshd down before `up`, sshd killed during `up`, the connection dropped in
the middle of `collect`. Real OpenSSH servers of this test's own on loopback addresses."""

from __future__ import annotations

import json
import os
import subprocess

import psutil
import pytest

from faultkit import Cluster, finish, marked_pids, wait_for

try:
    from sshd import SSHD, SshdCluster, sshd_unavailable_reason
except ImportError:  # pragma: no cover
    from tests.sshd import SSHD, SshdCluster, sshd_unavailable_reason

pytestmark = [pytest.mark.faults, pytest.mark.ssh, pytest.mark.timeout(240)]

HOSTS = {"node13": "127.0.0.113", "node97": "127.0.0.197"}


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    reason = sshd_unavailable_reason()
    if reason:
        pytest.skip(reason)
    c = SshdCluster(tmp_path_factory.mktemp("fault-sshd"), hosts=HOSTS)
    c.start()
    yield c
    c.stop()


def kill_sshd(c: SshdCluster, alias: str, *, listener: bool = True) -> None:
    """The host goes away: its sshd and every connection it serves (or only the connections)."""
    h = c.host(alias)
    root = psutil.Process(h.proc.pid)
    for child in root.children(recursive=True):
        try:
            if child.name().startswith("sshd"):  # the connections, not what was started through them
                child.kill()
        except psutil.NoSuchProcess:
            pass
    if listener:
        root.kill()
        h.proc.wait()


def start_sshd(c: SshdCluster, alias: str) -> None:
    h = c.host(alias)
    if h.proc.poll() is None:
        return
    h.proc = subprocess.Popen([SSHD, "-D", "-f", str(h.dir / "sshd_config"), "-E", str(h.log_path)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    import socket

    def banner() -> bool:
        try:
            with socket.create_connection((h.address, h.port), timeout=0.5) as s:
                return s.recv(4).startswith(b"SSH-")
        except OSError:
            return False
    wait_for(banner, timeout=15)


@pytest.fixture
def cluster(sshd, tmp_path):
    made: list[Cluster] = []

    def make(mutate=None) -> Cluster:
        def m(d):
            for name, addr in HOSTS.items():
                d["hosts"][name]["address"] = addr
                d["hosts"][name]["ssh"]["port"] = sshd.port
            d["controller"]["bind"] = HOSTS["node13"]
            d["bind"] = "127.0.0.1"
            for e in d["engines"]:
                e["bind"] = HOSTS[e["host"]]
            if mutate:
                mutate(d)
        c = Cluster(tmp_path / f"c{len(made)}", m, base="inventories/loopback.yaml", ssh_config=sshd.ssh_config)
        made.append(c)
        return c

    yield make
    for alias in HOSTS:
        start_sshd(sshd, alias)
    for c in made:
        c.cleanup()


def test_sshd_down_on_one_host_before_up_starts_nothing_anywhere(cluster, sshd):
    c = cluster()
    kill_sshd(sshd, "node97")
    r = c("up")
    assert r.code == 2 and "node97" in r.err and "Traceback" not in r.err, r.out + r.err
    assert marked_pids(c.name) == []  # not even the controller on node13
    start_sshd(sshd, "node97")
    c.assert_next_up_works()


def test_sshd_killed_during_up_stops_everything_elsewhere_and_down_cleans_it_later(cluster, sshd):
    def slow_decode(d):
        next(e for e in d["engines"] if e["name"] == "decode")["args"] = ["--sim-startup-s", "60"]
    c = cluster(slow_decode)
    p = c.popen("up", "--timeout", "60")
    wait_for(lambda: len(marked_pids(c.name)) >= 6, timeout=60)  # decode started on node97, loading
    kill_sshd(sshd, "node97")
    code, out, err = finish(p, timeout=120)
    assert code == 2 and "node97" in err and "lost" in err, out + err
    assert "Traceback" not in err
    # node13's controller and prefill were stopped; decode on node97 could not be reached
    left = marked_pids(c.name)
    assert len(left) == 2 and left == marked_pids(c.name, "decode")
    start_sshd(sshd, "node97")
    r = c("down", "--no-collect", "--grace", "2")
    assert r.code == 0, r.out + r.err
    c.assert_nothing_left()


def test_connection_dropped_mid_collect_then_collect_resumes_byte_exact(cluster, sshd):
    c = cluster()
    assert c("up").code == 0, "up failed"
    from pathlib import Path

    log = Path(c.data["hosts"]["node97"]["workdir"]) / "logs" / "decode.log"
    c.kill_process("decode")  # it no longer writes (it writes at its own offset, not appending)
    with log.open("ab") as fh:
        for i in range(4_000_000):
            fh.write(f"line {i} of a long engine log on node97\n".encode())
    p = c.popen("--json", "collect", "--compress-over", "1G", "--no-report")
    size = log.stat().st_size

    def pulling() -> bool:
        got = [f.stat().st_size for f in (c.tmp / "logs").glob("*/hosts/node97/decode.log")]
        return bool(got) and 0 < got[0] < size
    wait_for(pulling, timeout=60, every=0.002)
    kill_sshd(sshd, "node97")  # the connection goes, and the host stays away until collect gave up
    code, out, err = finish(p, timeout=120)
    start_sshd(sshd, "node97")
    assert "Traceback" not in err
    first = json.loads(out)
    assert code == 1 and first["complete"] is False, out  # the drop really hit the pull
    assert any("node97" in r for r in first["partial_reasons"])
    r = c("--json", "collect", "--compress-over", "1G", "--no-report")
    assert r.code == 0, r.out + r.err
    local = open(os.path.join(json.loads(r.out)["run_dir"], "hosts", "node97", "decode.log"), "rb").read()
    host = log.read_bytes()
    if not (local == host[:len(local)] and len(host) - len(local) < 4096):
        i = next((k for k in range(min(len(local), len(host))) if local[k] != host[k]), min(len(local), len(host)))
        raise AssertionError(f"local {len(local)} B, host {len(host)} B, first difference at {i}: "
                             f"{local[max(0, i - 80):i + 80]!r} vs {host[max(0, i - 80):i + 80]!r}; first collect: {code} {out[-500:]} {err[-500:]}")
    assert c("down", "--no-collect").code == 0
    c.assert_nothing_left()
