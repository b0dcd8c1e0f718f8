"""nodes.connect_early: SSH handshakes begun before the plan is built, taken over by open_nodes
(real sshd on loopback)."""

from __future__ import annotations

import socket

import pytest

from clusterkit import write_inventory
from kvorch import nodes as kn
from kvorch.inventory import load_inventory
from kvorch.plan import build_plan

pytestmark = pytest.mark.ssh


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.97", 0))
        return s.getsockname()[1]


def _inventory(sshd_cluster, tmp_path, port97: int | None = None):
    def m(d):
        for host in d["hosts"].values():
            host["ssh"]["port"] = sshd_cluster.port
            host["workdir"] = str(tmp_path / "hosts" / host["address"])
        if port97 is not None:
            d["hosts"]["node97"]["ssh"]["port"] = port97
            d["hosts"]["node97"]["ssh"]["connect_timeout"] = 3
    return load_inventory(write_inventory(tmp_path / "inv.yaml", "inventories/loopback.yaml", m))


def test_open_nodes_takes_over_the_connections_begun_early(sshd_cluster, tmp_path):
    inv = _inventory(sshd_cluster, tmp_path)
    kn.connect_early(inv, str(sshd_cluster.ssh_config))
    early = dict(kn._EARLY)
    assert set(k[0] for k in early) == {"node13", "node97"}
    plan = build_plan(inv)
    nodes, errors = kn.open_nodes(plan, str(sshd_cluster.ssh_config), strict=False)
    try:
        assert errors == {} and set(nodes) == {"node13", "node97"}
        assert kn._EARLY == {}  # taken over, not connected twice
        for key, (_, fut) in early.items():
            t = nodes[key[0]].ops.t
            assert t is fut.result() and t.connect_time_s is not None
            assert t._idle_shells, "the kept shell was started early too"
            assert nodes[key[0]].ops.run("echo $((6*7))").stdout == "42\n"
    finally:
        kn.close_all(nodes)


def test_a_kept_plan_alone_begins_the_connections_open_nodes_takes_over(sshd_cluster, tmp_path):
    # status on a kept plan never loads the inventory: each host's SSH target and overrides are the plan's
    plan = build_plan(_inventory(sshd_cluster, tmp_path, port97=sshd_cluster.port))
    assert plan.host("node97").ssh["port"] == sshd_cluster.port and plan.host("node97").ssh["connect_timeout"] == 3
    kn.connect_early(plan, str(sshd_cluster.ssh_config))
    early = {k[0]: f for k, (_, f) in kn._EARLY.items()}
    assert set(early) == {"node13", "node97"}
    nodes, errors = kn.open_nodes(plan, str(sshd_cluster.ssh_config), strict=False)
    try:
        assert errors == {} and kn._EARLY == {}
        assert all(nodes[n].ops.t is f.result() for n, f in early.items())
    finally:
        kn.close_all(nodes)


def test_the_plans_ssh_overrides_are_what_connects(sshd_cluster, tmp_path):
    # planted: the plan says a closed port for node97; connecting follows the plan, not the ssh_config
    from kvorch.hosts.base import HostUnreachable

    plan = build_plan(_inventory(sshd_cluster, tmp_path))
    closed = _closed_port()
    plan.host("node97").ssh.update(port=closed, connect_timeout=3)
    nodes, _ = kn.open_nodes(plan, str(sshd_cluster.ssh_config), strict=False)
    try:
        assert nodes["node13"].ops.run("true").exit_code == 0
        with pytest.raises(HostUnreachable, match=f"127.0.0.97:{closed}"):
            nodes["node97"].ops.run("true")  # (an absolute workdir: the connection opens with the first command)
    finally:
        kn.close_all(nodes)


def test_a_workdir_under_home_is_resolved_with_what_the_early_shell_reported(sshd_cluster, tmp_path, monkeypatch):
    import os

    inv = _inventory(sshd_cluster, tmp_path)
    for h in inv.hosts.values():
        h.workdir = "~/kvorch-early-test"
    kn.connect_early(inv, str(sshd_cluster.ssh_config))
    asked = []
    from kvorch.hosts.ops import HostOps

    real = HostOps.run
    monkeypatch.setattr(HostOps, "run", lambda self, cmd, *a, **k: asked.append(cmd) or real(self, cmd, *a, **k))
    nodes, errors = kn.open_nodes(build_plan(inv), str(sshd_cluster.ssh_config), strict=False)
    try:
        assert errors == {}
        home = os.path.expanduser("~")  # (the loopback hosts are this machine, this user)
        assert {n.workdir for n in nodes.values()} == {f"{home}/kvorch-early-test"}
        assert not any("HOME" in c for c in asked)  # no round trip to ask for it again
    finally:
        kn.close_all(nodes)
    # without an early connection the home directory is asked for
    nodes, errors = kn.open_nodes(build_plan(inv), str(sshd_cluster.ssh_config), strict=False)
    kn.close_all(nodes)
    assert errors == {} and sum("HOME" in c for c in asked) == 2


def test_a_host_that_cannot_be_reached_early_fails_in_open_nodes_with_the_usual_message(sshd_cluster, tmp_path):
    from kvorch.hosts.base import HostUnreachable

    inv = _inventory(sshd_cluster, tmp_path, port97=_closed_port())
    plan = build_plan(inv)
    # without connect_early the transport connects at its first command, and fails there
    plain, _ = kn.open_nodes(plan, str(sshd_cluster.ssh_config), strict=False)
    with pytest.raises(HostUnreachable) as exc:
        plain["node97"].ops.run(":")
    kn.close_all(plain)
    kn.connect_early(inv, str(sshd_cluster.ssh_config))
    nodes, errors = kn.open_nodes(plan, str(sshd_cluster.ssh_config), strict=False)
    try:
        assert set(nodes) == {"node13"} and set(errors) == {"node97"}
        assert errors["node97"].message == kn.host_error_message("node97", exc.value).message
        assert "127.0.0.97" in errors["node97"].message
    finally:
        kn.close_all(nodes)


def test_connections_nobody_took_over_are_closed_with_the_nodes(sshd_cluster, tmp_path):
    inv = _inventory(sshd_cluster, tmp_path)
    kn.connect_early(inv, str(sshd_cluster.ssh_config))
    plan = build_plan(inv)
    fut97 = next(f for k, (_, f) in kn._EARLY.items() if k[0] == "node97")
    nodes, _ = kn.open_nodes(plan, str(sshd_cluster.ssh_config), names=["node13"], strict=False)
    assert set(nodes) == {"node13"} and len(kn._EARLY) == 1
    t97 = fut97.result()
    assert t97._conn is not None
    kn.close_all(nodes)
    assert kn._EARLY == {} and t97._conn is None


def _free_ports_loopback(sshd_cluster, tmp_path):
    """inventories/loopback.yaml on this session's sshd, every service port free-picked."""
    import sys

    from clusterkit import Orch, give_free_ports

    def m(d):
        for host in d["hosts"].values():
            host["python"] = sys.executable
            host["ssh"]["port"] = sshd_cluster.port
            host["workdir"] = str(tmp_path / "hosts" / host["address"])
        give_free_ports(d)
    inv = write_inventory(tmp_path / "inv.yaml", "inventories/loopback.yaml", m)
    return Orch(tmp_path, inv, sshd_cluster.ssh_config)


def test_preflight_on_a_cluster_that_is_up_passes_its_own_ports_on_every_host(sshd_cluster, tmp_path):
    import json

    orch = _free_ports_loopback(sshd_cluster, tmp_path)
    try:
        up = orch("up", "--skip-preflight")
        assert up.code == 0, up.err + up.out
        pre = orch("--json", "preflight")
        checks = json.loads(pre.out)["checks"]
        failed = [ch for ch in checks if ch["status"] == "fail"]
        assert pre.code == 0 and not failed, failed
        st = orch("--json", "status")
        assert st.code == 0 and {r["state"] for r in st.json()["processes"]} == {"running"}, st.out
    finally:
        orch("down", "--no-collect", "--grace", "2")


def test_an_inventory_of_local_hosts_connects_nothing_and_imports_no_paramiko(tmp_path):
    import subprocess
    import sys

    from clusterkit import ROOT

    code = ("import sys; from kvorch.inventory import load_inventory; from kvorch import nodes; "
            f"nodes.connect_early(load_inventory({str(ROOT / 'inventories/local.yaml')!r}), None); "
            "print(len(nodes._EARLY), 'paramiko' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["0", "False"]


def _remembering(sshd_cluster, tmp_path, monkeypatch):
    """An inventory file, its hosts remembered as `status` remembers them (run state present)."""
    from kvorch import connect_cache

    monkeypatch.setenv("ORCHESTRATE_STATE", str(tmp_path / "state"))
    (tmp_path / "state").mkdir()
    inv = _inventory(sshd_cluster, tmp_path)
    path, cfg = str(tmp_path / "inv.yaml"), str(sshd_cluster.ssh_config)
    kn.connect_early(inv, cfg, inventory_path=path)
    kn.close_early()
    assert {h["name"] for h in connect_cache.lookup(path, cfg)} == {"node13", "node97"}
    return inv, path, cfg


def test_connections_predicted_from_the_remembered_hosts_are_taken_over(sshd_cluster, tmp_path, monkeypatch):
    inv, path, cfg = _remembering(sshd_cluster, tmp_path, monkeypatch)
    assert kn.connect_predicted(path, cfg) == 2  # before the inventory is loaded again
    predicted = {k[0]: f for k, (_, f) in kn._EARLY.items()}
    again = load_inventory(path)
    kn.connect_early(again, cfg, inventory_path=path)  # the validated inventory agrees: nothing new begun
    assert {k[0]: f for k, (_, f) in kn._EARLY.items()} == predicted
    nodes, errors = kn.open_nodes(build_plan(again), cfg, strict=False)
    try:
        assert errors == {} and kn._EARLY == {}
        for name, fut in predicted.items():
            assert nodes[name].ops.t is fut.result()
            assert nodes[name].ops.run("echo ok").stdout == "ok\n"
    finally:
        kn.close_all(nodes)


def test_a_prediction_the_validated_inventory_contradicts_is_not_used(sshd_cluster, tmp_path, monkeypatch):
    from kvorch import connect_cache

    inv, path, cfg = _remembering(sshd_cluster, tmp_path, monkeypatch)
    hosts = connect_cache.lookup(path, cfg)
    for h in hosts:  # planted: remembered settings that no longer hold (a port nobody listens on)
        h["settings"]["port"] = _closed_port()
    connect_cache.remember(path, cfg, hosts)
    assert kn.connect_predicted(path, cfg) == 2
    stale = [f for _, f in kn._EARLY.values()]
    nodes, errors = kn.open_nodes(build_plan(inv), cfg, strict=False)
    try:
        assert errors == {} and set(nodes) == {"node13", "node97"}
        for n in nodes.values():
            assert n.ops.t.settings.port == sshd_cluster.port and n.ops.t not in [f.result() for f in stale
                                                                                  if f.exception() is None]
            assert n.ops.run("echo ok").stdout == "ok\n"
        assert all(f.exception() is not None for f in stale)  # they did go to the stale port
    finally:
        kn.close_all(nodes)


def test_predicted_hosts_are_dialed_before_paramiko_is_imported_and_that_socket_carries_the_ssh(
        sshd_cluster, tmp_path, monkeypatch):
    # the hosts' sshd accept, fork and send their banner while this process imports paramiko
    import json
    import subprocess
    import sys

    _, path, cfg = _remembering(sshd_cluster, tmp_path, monkeypatch)
    code = f"""
import json, socket, sys
from kvorch.hosts import dial
dialed, made = [], []
real_dial, real_cc = dial.dial, socket.create_connection
def record_dial(host, port, timeout):
    dialed.append([host, port, "paramiko" in sys.modules])
    real_dial(host, port, timeout)
def record_cc(*a, **k):
    s = real_cc(*a, **k); made.append(s); return s
dial.dial, socket.create_connection = record_dial, record_cc
from kvorch import nodes
assert nodes.connect_predicted({path!r}, {cfg!r}) == 2
used = []
for (name, _, _), (_, fut) in sorted(nodes._EARLY.items()):
    t = fut.result()
    used.append([name, t.run("echo ok").stdout.strip(), any(t._conn.transport.sock is s for s in made)])
print(json.dumps({{"dialed": sorted(dialed), "used": used, "left": len(dial._DIALED)}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**__import__("os").environ, "ORCHESTRATE_STATE": str(tmp_path / "state")})
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["dialed"] == [["127.0.0.13", sshd_cluster.port, False], ["127.0.0.97", sshd_cluster.port, False]]
    assert got["used"] == [["node13", "ok", True], ["node97", "ok", True]] and got["left"] == 0
