"""The program ends without the interpreter's teardown (``os._exit`` once its work is done), yet as
a normal Python exit would: the same exit code and output as ``main(argv)`` returning through
Python's own shutdown, every atexit handler run (tempfile finalizers, paramiko's transports) and
nothing left behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from clusterkit import ROOT, Orch, give_free_ports, write_inventory

#: the program, as the console script and orchestrate.py run it (argv None: ends with os._exit)
PROGRAM = "import sys; sys.path.insert(0, sys.argv.pop(1)); from kvorch.cli import main; main()"
#: the same command as a function call, ended by Python's normal shutdown
FUNCTION = "import sys; sys.path.insert(0, sys.argv.pop(1)); from kvorch.cli import main; main(sys.argv[1:])"


def _env(orch: Orch) -> dict[str, str]:
    """Orch's environment with stdout block-buffered, as in a user's shell (PYTHONUNBUFFERED would
    flush every write, and hide output the exit did not flush)."""
    env = orch.env()
    env.pop("PYTHONUNBUFFERED", None)
    return env


def _run(code: str, args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, str(ROOT), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def local(tmp_path) -> Orch:
    def m(d):
        d["cluster"] = "exit" + tmp_path.name[-8:].replace("_", "").replace("-", "")
        give_free_ports(d)
        d["hosts"]["local"]["workdir"] = str(tmp_path / "hosts")
    (tmp_path / "state").mkdir()
    return Orch(tmp_path, write_inventory(tmp_path / "inv.yaml", "inventories/local.yaml", m))


@pytest.mark.parametrize("args", [
    ["--version"],                              # click's Exit(0)
    ["no-such-command"],                        # a usage error: 2
    ["-i", "/nonexistent/inv.yaml", "status"],  # a user error, on stderr
    ["--json", "up", "--dry-run"],              # success, ~100 kB of JSON through a pipe
    ["status"],                                 # nothing runs: exit 1 after the table
    ["--json", "status"],
], ids=lambda a: " ".join(a))
def test_the_program_exits_with_the_code_and_output_of_a_normal_python_exit(local, args):
    env = _env(local)
    program, function = _run(PROGRAM, args, local.workdir, env), _run(FUNCTION, args, local.workdir, env)
    assert (program.returncode, program.stdout, program.stderr) == \
           (function.returncode, function.stdout, function.stderr)
    assert program.stdout or program.stderr


def test_atexit_handlers_run_their_output_is_flushed_and_temporary_directories_are_removed(local, tmp_path):
    code = ("import atexit, sys, tempfile; sys.path.insert(0, sys.argv.pop(1)); "
            "d = tempfile.TemporaryDirectory(dir=sys.argv.pop(1)); "
            "atexit.register(lambda: print('atexit ran', file=sys.stderr)); "
            "atexit.register(lambda: print('buffered last words')); "  # (stdout: flushed only at exit)
            "from kvorch.cli import main; main()")
    kept = tmp_path / "tmpdirs"
    kept.mkdir()
    r = subprocess.run([sys.executable, "-c", code, str(ROOT), str(kept), "status"], cwd=local.workdir,
                       env=_env(local), capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "absent" in r.stdout  # status's own outcome, unchanged
    assert r.stderr.strip().endswith("atexit ran") and r.stdout.endswith("buffered last words\n")
    assert list(kept.iterdir()) == []  # the TemporaryDirectory's finalizer ran


def test_a_sys_exit_with_a_message_prints_it_and_exits_1(local, monkeypatch):
    # SystemExit("text") from anywhere below main(): as Python, the text on stderr and code 1
    code = ("import sys; sys.path.insert(0, sys.argv.pop(1)); import kvorch.cli.main; "
            "m = sys.modules['kvorch.cli.main']; m._main = lambda argv: sys.exit('stopped: why'); m.main()")
    r = subprocess.run([sys.executable, "-c", code, str(ROOT)], cwd=local.workdir, env=local.env(),
                       capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout, r.stderr) == (1, "", "stopped: why\n")


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["-i", "/nonexistent/inventory.yaml", "render"]])
def test_main_called_from_a_program_gives_its_signal_handlers_back(args):
    # (it ignores SIGINT/SIGTERM/SIGHUP while it prints its last words; left so, every process the
    # caller starts afterwards would inherit "ignore SIGTERM" and outlive a stop by SIGTERM)
    import signal

    from kvorch.cli import main

    mine = lambda *_: None  # noqa: E731
    before = {s: signal.signal(s, mine) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        try:
            main(args)
        except SystemExit:  # (the render of a missing inventory exits 2)
            pass
        assert {s: signal.getsignal(s) for s in before} == dict.fromkeys(before, mine)
    finally:
        for s, h in before.items():
            signal.signal(s, h)
