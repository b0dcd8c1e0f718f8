"""Fault suite, processes and control: members of a group killed, engines that hang, ignore SIGTERM,
fork, setsid or exit mid-run; Ctrl-C / SIGTERM / kill -9 of orchestrate; locks; reused pids.

Each case asserts the outcome, that nothing of ours is left (by marker, group and port) and that
the next `up` works. Local connector, simulated engines: seconds each."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from faultkit import Cluster, finish, marked_pids, session_of, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]


@pytest.fixture
def cluster(tmp_path):
    made: list[Cluster] = []

    def make(mutate=None, **kw) -> Cluster:
        c = Cluster(tmp_path / f"c{len(made)}", mutate, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.cleanup()


def engine_args(name: str, *args: str):
    def m(d):
        e = next(e for e in d["engines"] if e["name"] == name)
        e["args"] = list(e.get("args", [])) + list(args)
    return m


def scenario_started(c: Cluster, name: str) -> None:
    """Wait until `run` is past its checks and sending requests (its folder exists)."""
    wait_for(lambda: list((c.tmp / "logs").glob(f"*/scenarios/{name}-*")), timeout=60)
    time.sleep(0.5)


def status(c: Cluster) -> dict[str, dict]:
    r = c("--json", "status")
    return {row["process"]: row for row in json.loads(r.out)["processes"]}


# ---- the two faults of the issue ----------------------------------------------------------------


def test_killing_the_leader_status_shows_leaves_no_orphan(cluster):
    c = cluster()
    assert c("up").code == 0
    before = status(c)["decode"]
    assert before["state"] == "running" and before["server_pid"] not in (None, before["pid"])
    os.kill(before["pid"], signal.SIGKILL)  # the pid `status` shows: the group leader

    after = wait_for(lambda: (s := status(c)["decode"])["state"] != "running" and s)
    assert after["state"] == "degraded"
    assert after["server_pid"] == before["server_pid"] and str(before["server_pid"]) in after["detail"]
    run = c("run", "reuse-2node")
    assert run.code == 2 and "decode" in run.err and "degraded" in run.err

    down = c("down", "--no-collect")
    assert down.code == 0, down.out + down.err
    c.assert_nothing_left()
    c.assert_next_up_works()


def test_ctrl_c_during_up_stops_what_it_started(cluster):
    c = cluster(engine_args("decode", "--sim-startup-s", "60"))
    p = c.popen("up")
    wait_for(lambda: bool(marked_pids(c.name, "decode")), timeout=30)
    p.send_signal(signal.SIGINT)
    code, out, err = finish(p)
    assert code == 130, out + err
    assert "interrupted" in (out + err) and "controller" in (out + err)
    c.assert_nothing_left()
    c.rewrite(engine_args("decode"))  # the lock is free and the state consistent: the next up works
    c.rewrite(lambda d: next(e for e in d["engines"] if e["name"] == "decode").pop("args"))
    c.assert_next_up_works()


# ---- members of a group ------------------------------------------------------------------------


def test_killed_server_is_dead_and_a_scenario_refuses_naming_it(cluster):
    c = cluster()
    assert c("up").code == 0
    os.kill(status(c)["prefill"]["server_pid"], signal.SIGKILL)
    st = wait_for(lambda: (s := status(c)["prefill"])["state"] == "dead" and s)
    assert st["server_pid"] is None
    run = c("run", "reuse")
    assert run.code == 2 and "prefill: dead" in run.err
    assert c("down", "--no-collect").code == 0
    c.assert_nothing_left()
    c.assert_next_up_works()


def test_a_dead_child_of_an_engine_makes_it_degraded(cluster):
    c = cluster(engine_args("decode", "--sim-fault-children", "1"))
    assert c("up").code == 0
    row = status(c)["decode"]
    assert row["state"] == "running" and len(row["members"]) == 3  # leader, server, child
    child = next(m for m in row["members"] if m not in (row["pid"], row["server_pid"]))
    os.kill(child, signal.SIGKILL)
    st = wait_for(lambda: (s := status(c)["decode"])["state"] == "degraded" and s)
    assert str(child) in st["detail"] and "exited" in st["detail"]
    assert c("down", "--no-collect").code == 0
    c.assert_nothing_left()


@pytest.mark.parametrize("victim", ["leader", "server"])
def test_a_member_killed_during_a_scenario_fails_it_naming_the_engine(cluster, victim):
    c = cluster()
    assert c("up").code == 0
    row = status(c)["decode"]
    p = c.popen("--json", "run", "monitor", "--set", "requests=200", "--set", "rate_rps=40")
    scenario_started(c, "monitor")
    os.kill(row["pid"] if victim == "leader" else row["server_pid"], signal.SIGKILL)
    code, out, err = finish(p, timeout=120)
    assert code == 1, out + err
    result = json.loads(out)
    stayed = next(ch for ch in result["checks"] if ch["name"] == "every process stayed up")
    assert stayed["passed"] is False and "decode" in stayed["shown"]
    assert c("down", "--no-collect").code == 0
    c.assert_nothing_left()


def test_an_engine_exiting_mid_run_fails_the_scenario(cluster):
    c = cluster(engine_args("decode", "--sim-fault-exit-after-s", "8"))
    assert c("up").code == 0
    p = c.popen("--json", "run", "monitor", "--set", "requests=800", "--set", "rate_rps=40")
    scenario_started(c, "monitor")
    code, out, err = finish(p, timeout=120)
    assert code == 1, out + err
    stayed = next(ch for ch in json.loads(out)["checks"] if ch["name"] == "every process stayed up")
    assert stayed["passed"] is False and "decode: dead" in stayed["shown"]
    assert c("down", "--no-collect").code == 0
    c.assert_nothing_left()
    c.rewrite(lambda d: next(e for e in d["engines"] if e["name"] == "decode").pop("args"))
    c.assert_next_up_works()


def test_an_engine_hanging_at_start_is_rolled_back(cluster):
    c = cluster(engine_args("prefill", "--sim-startup-s", "120"))
    r = c("up", "--timeout", "3")
    assert r.code == 2 and "prefill on host local failed: not healthy after 3 s" in r.err, r.out + r.err
    c.assert_nothing_left()
    c.rewrite(lambda d: next(e for e in d["engines"] if e["name"] == "prefill").pop("args"))
    c.assert_next_up_works()


def test_an_engine_ignoring_sigterm_is_killed_after_the_grace_period(cluster):
    c = cluster(engine_args("decode", "--sim-fault-ignore-sigterm", "1", "--sim-fault-children", "1"))
    assert c("up").code == 0
    r = c("--json", "down", "--no-collect", "--grace", "1")
    assert r.code == 0, r.out + r.err
    assert json.loads(r.out)["stopped"]["decode"]["result"] == "SIGKILL after grace"
    c.assert_nothing_left()


def test_a_grandchild_that_called_setsid_is_stopped_too(cluster):
    c = cluster(engine_args("decode", "--sim-fault-children", "1", "--sim-fault-setsid-grandchild", "1"))
    assert c("up").code == 0
    row = status(c)["decode"]
    sessions = {session_of(p) for p in marked_pids(c.name) if p in row["members"] or p not in
                {m for r in status(c).values() for m in r["members"]}}
    escaped = [p for p in marked_pids(c.name) if session_of(p) not in {session_of(m) for r in status(c).values()
                                                                         for m in r["members"] if m == r["pid"]}]
    assert escaped, f"the planted grandchild is not in a session of its own: {sessions}"
    assert c("down", "--no-collect").code == 0
    c.assert_nothing_left()


# ---- control -----------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_or_hangup_during_up_rolls_back(cluster, sig):
    c = cluster(engine_args("prefill", "--sim-startup-s", "60"))
    p = c.popen("up")
    wait_for(lambda: len(marked_pids(c.name)) >= 4, timeout=30)  # controller and engines started
    p.send_signal(sig)
    code, out, err = finish(p)
    assert code == 130 and "interrupted" in err, out + err
    c.assert_nothing_left()


def test_a_second_ctrl_c_skips_the_grace_but_leaves_nothing(cluster):
    c = cluster(engine_args("decode", "--sim-startup-s", "60", "--sim-fault-ignore-sigterm", "1"))
    p = c.popen("up")
    log = c.tmp / "hosts" / "127.0.0.1" / "logs" / "decode.log"
    # decode ignores SIGTERM from here on (its fault is planted before it starts "loading")
    wait_for(lambda: log.exists() and "simulating model loading" in log.read_text(errors="replace"), timeout=60)
    p.send_signal(signal.SIGINT)
    time.sleep(1.0)  # inside the 5 s grace: decode ignores SIGTERM
    p.send_signal(signal.SIGINT)
    code, out, err = finish(p)
    assert code == 130, out + err
    assert "second interrupt" in out + err
    c.assert_nothing_left()


def test_kill_9_of_orchestrate_mid_up_is_cleaned_by_the_next_up(cluster):
    c = cluster(engine_args("decode", "--sim-startup-s", "6"))
    p = c.popen("up")
    wait_for(lambda: len(marked_pids(c.name)) >= 6, timeout=30)
    p.kill()
    p.communicate()
    orphans = marked_pids(c.name)
    assert orphans  # of the killed `up`: decode is still loading, nobody waits for it
    r = c("up")
    assert r.code == 0, r.out + r.err
    assert "stopping what is left of it" in r.out
    assert c("down", "--no-collect").code == 0
    c.assert_nothing_left()


def test_kill_9_of_orchestrate_mid_up_is_cleaned_by_down(cluster):
    c = cluster(engine_args("decode", "--sim-startup-s", "60"))
    p = c.popen("up")
    wait_for(lambda: len(marked_pids(c.name)) >= 6, timeout=30)
    p.kill()
    p.communicate()
    r = c("down", "--no-collect", "--grace", "2")
    assert r.code == 0, r.out + r.err
    c.assert_nothing_left()


def test_two_ups_at_once_one_proceeds_the_other_refuses(cluster):
    c = cluster(engine_args("decode", "--sim-startup-s", "2"))
    p = c.popen("up")
    wait_for(lambda: marked_pids(c.name), timeout=30)
    second = c("up")
    assert second.code == 2 and "is busy" in second.err and "orchestrate up" in second.err
    code, out, err = finish(p)
    assert code == 0, out + err
    assert c("down", "--no-collect").code == 0
    c.assert_nothing_left()


def test_down_twice_and_down_on_a_never_started_cluster(cluster):
    c = cluster()
    first = c("down", "--no-collect")
    assert first.code == 0 and "is down" in first.out
    assert c("up").code == 0
    assert c("down").code == 0
    again = c("down")
    assert again.code == 0 and "is down" in again.out
    c.assert_nothing_left()


def test_a_stale_lock_of_a_dead_process_does_not_block(cluster):
    c = cluster()
    lock = c.tmp / "state" / f"{c.name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text("`orchestrate up` (pid 4000000)")  # its holder died without unlocking
    c.assert_next_up_works()


def test_pidfiles_whose_pids_were_reused_are_left_alone(cluster):
    """After a reboot the pidfiles survive and their pids belong to strangers: never signalled."""
    c = cluster()
    strangers = [subprocess.Popen(["sleep", "300"], start_new_session=True) for _ in range(3)]
    try:
        run = c.tmp / "hosts" / "127.0.0.1" / "run"
        run.mkdir(parents=True)
        for name, s in zip(("controller", "prefill", "decode"), strangers):
            (run / f"{name}.pid").write_text(f"{s.pid}\n")
        st = status(c)
        assert {r["state"] for r in st.values()} == {"foreign"}
        r = c("--json", "down", "--no-collect")
        assert r.code == 0, r.out + r.err
        assert all("left alone" in v["result"] for v in json.loads(r.out)["stopped"].values())
        assert all(s.poll() is None for s in strangers)  # still alive
        c.assert_next_up_works()
        assert all(s.poll() is None for s in strangers)
    finally:
        for s in strangers:
            s.kill()
            s.wait()


def test_two_clusters_of_the_same_name_on_one_host_leave_each_other_alone(cluster):
    """Two users (or checkouts) call their clusters the same: each has its own workdir, and one's
    `up`, `status` and `down` never take the other's processes for theirs."""
    a = cluster()
    b = cluster(lambda d: d.update(cluster=a.name))
    b.name = a.name
    assert a("up").code == 0
    before = {n: (r["pid"], r["server_pid"]) for n, r in status(a).items()}
    up_b = b("up")
    assert up_b.code == 0, up_b.out + up_b.err
    assert {n: r["state"] for n, r in status(b).items()} == dict.fromkeys(before, "running")
    assert {n: (r["state"], (r["pid"], r["server_pid"])) for n, r in status(a).items()} == \
        {n: ("running", pids) for n, pids in before.items()}  # b's up stopped nothing of a's
    down_b = b("--json", "down", "--no-collect")
    assert down_b.code == 0, down_b.out + down_b.err
    assert {n: r["state"] for n, r in status(a).items()} == dict.fromkeys(before, "running")
    assert {n: r["state"] for n, r in status(b).items()} == dict.fromkeys(before, "absent")
    assert a("down", "--no-collect").code == 0
    a.assert_nothing_left()


def test_processes_an_older_orchestrate_started_are_still_found_and_stopped(cluster):
    """Before workdir ids the marker was "<cluster>/<name>": such a process (an engine started by
    an older version) is still ours for status and down — no orphan after an upgrade."""
    from kvorch.hosts import HostOps, LocalTransport

    c = cluster()
    assert c("up").code == 0
    c.kill_process("decode")
    work = c.tmp / "hosts" / "127.0.0.1"
    ops = HostOps(LocalTransport(), workdir=str(work))
    pid = ops.start_detached("run/decode.sh", "logs/decode.log", "run/decode.pid",
                             env={"ORCHESTRATE_PROCESS": f"{c.name}/decode"})
    row = wait_for(lambda: (r := status(c)["decode"])["state"] == "running" and r)
    assert row["pid"] == pid
    down = c("down", "--no-collect")
    assert down.code == 0, down.out + down.err
    c.assert_nothing_left()


def test_ctrl_c_during_run_cancels_it_and_leaves_the_cluster_up(cluster):
    c = cluster()
    assert c("up").code == 0
    p = c.popen("run", "monitor", "--set", "requests=400", "--set", "rate_rps=40")
    scenario_started(c, "monitor")
    p.send_signal(signal.SIGINT)
    code, out, err = finish(p)
    assert code == 130 and "interrupted" in err and "still up" in err, out + err
    assert {r["state"] for r in status(c).values()} == {"running"}
    assert c("run", "reuse", "--set", "wait_s=0.2").code == 0  # and usable
    assert c("down", "--no-collect").code == 0
    c.assert_nothing_left()


def test_ctrl_c_during_down_then_down_again_finishes(cluster):
    c = cluster(engine_args("decode", "--sim-fault-ignore-sigterm", "1"))
    assert c("up").code == 0
    p = c.popen("down", "--no-collect", "--grace", "60")
    time.sleep(1.5)
    p.send_signal(signal.SIGINT)
    code, out, err = finish(p)
    assert code == 130, out + err
    r = c("down", "--no-collect", "--grace", "1")
    assert r.code == 0, r.out + r.err
    c.assert_nothing_left()


def test_ctrl_c_during_collect_then_collect_resumes_byte_exact(cluster):
    c = cluster()
    assert c("up").code == 0
    log = c.tmp / "hosts" / "127.0.0.1" / "logs" / "decode.log"
    c.kill_process("decode")  # it no longer writes (it writes at its own offset, not appending)
    with log.open("ab") as fh:  # a large log: the collect is still pulling it when interrupted
        for i in range(400_000):
            fh.write(f"line {i} of a long engine log\n".encode())
    p = c.popen("collect", "--compress-over", "1G", "--no-report")
    time.sleep(0.8)
    p.send_signal(signal.SIGINT)
    finish(p)
    r = c("--json", "collect", "--compress-over", "1G", "--no-report")
    assert r.code == 0, r.out + r.err
    run_dir = json.loads(r.out)["run_dir"]
    local = open(os.path.join(run_dir, "hosts", "local", "decode.log"), "rb").read()
    host = log.read_bytes()
    assert local == host[:len(local)] and len(host) - len(local) < 4096  # only lines written since
    assert c("down", "--no-collect").code == 0
    c.assert_nothing_left()
