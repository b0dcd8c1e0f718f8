"""Fault suite, hostile input and hostile endpoints, and secrets.

- every string field of an inventory with shell metacharacters, newlines, NUL, non-UTF-8, 1 MB values:
  a located error, or (where the value is legal) quoted everywhere — nothing of it ever runs;
- YAML alias bombs and huge files: rejected before they cost memory (bounded in a subprocess);
- paths that try to leave the workdir; check expressions that try to leave the evaluator;
- endpoints that answer garbage, trickle bytes, cut the stream, fail with 500 or never end: the client
  records the error per request and returns within its bound;
- secrets: a token in env appears nowhere (terminal, logs, state, run folder, report, any process's argv).
"""

from __future__ import annotations

import asyncio
import copy
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from clusterkit import ROOT
from faultkit import Cluster

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]

BASE = yaml.safe_load((ROOT / "inventories" / "local.yaml").read_text())
CANARY = "/tmp/kvorch-fault-canary"
HOSTILE = {
    "shell": f"$(touch {CANARY})`touch {CANARY}`;touch {CANARY}|&>x'\"\\",
    "newline": "a\nb",
    "nul": "a\x00b",
    "big": "x" * 1_000_000,
    "dots": "../../../../etc/kvorch-escape.yaml",
    "absolute": "/etc/kvorch-escape.yaml",
}
FIELDS = {  # where each string field of the inventory lives
    "cluster": lambda d, v: d.__setitem__("cluster", v),
    "description": lambda d, v: d.__setitem__("description", v),
    "model": lambda d, v: d.__setitem__("model", v),
    "host.workdir": lambda d, v: d["hosts"]["local"].__setitem__("workdir", v),
    "host.address": lambda d, v: d["hosts"]["local"].__setitem__("address", v),
    "host.python": lambda d, v: d["hosts"]["local"].__setitem__("python", v),
    "env value": lambda d, v: d["env"].__setitem__("FOO", v),
    "env name": lambda d, v: d["env"].__setitem__(v, "1"),
    "engine.name": lambda d, v: d["engines"][0].__setitem__("name", v),
    "engine.instance_id": lambda d, v: d["engines"][0].__setitem__("instance_id", v),
    "engine.config_file": lambda d, v: d["engines"][0].__setitem__("config_file", v),
    "engine.args": lambda d, v: d["engines"][0].__setitem__("args", [v]),
    "lmcache key": lambda d, v: d["lmcache"]["extra_config"].__setitem__("k", v),
}


def load(tmp_path: Path, data: dict | None = None, raw: bytes | None = None):
    from kvorch.errors import UserError
    from kvorch.inventory import load_inventory
    from kvorch.plan import build_plan

    p = tmp_path / "inv.yaml"
    p.write_bytes(raw if raw is not None else yaml.safe_dump(data, allow_unicode=True).encode())
    try:
        return build_plan(load_inventory(p)), None
    except UserError as e:
        return None, e


@pytest.mark.parametrize("field", list(FIELDS))
@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_strings_are_rejected_with_their_field_or_carried_quoted(tmp_path, field, kind):
    d = copy.deepcopy(BASE)
    FIELDS[field](d, HOSTILE[kind])
    plan, err = load(tmp_path, d)
    if err is not None:  # a located, actionable error: file, line and the field
        assert str(tmp_path / "inv.yaml") in err.message and ":" in err.message
        assert len(err.message) < 2000 and all(len(x) < 2000 for x in err.details)  # never a 1 MB echo
        return
    assert kind not in ("nul",), "a NUL byte can reach no command line: it must be refused"
    # accepted: every rendered launch script is valid bash that runs nothing of the value
    for hp in plan.hosts:
        for f in hp.files:
            if f.path.endswith(".sh"):
                r = subprocess.run(["bash", "-n"], input=f.content, text=True, capture_output=True)
                assert r.returncode == 0, r.stderr


def test_hostile_values_reach_the_processes_verbatim_and_run_nothing(tmp_path):
    if os.path.exists(CANARY):
        os.unlink(CANARY)

    def m(d):
        d["env"]["FOO"] = HOSTILE["shell"] + "\n" + "second line"
        d["engines"][0]["env"] = {"BAR": HOSTILE["shell"]}
    c = Cluster(tmp_path, m)
    try:
        r = c("up")
        assert r.code == 0, r.out + r.err
        from faultkit import marked_pids

        envs = [dict(x.split("=", 1) for x in Path(f"/proc/{p}/environ").read_text().split("\0") if "=" in x)
                for p in marked_pids(c.name)]
        foo = [e["FOO"] for e in envs if "FOO" in e]  # the servers (their wrappers have only the marker)
        assert len(foo) >= 3 and set(foo) == {HOSTILE["shell"] + "\nsecond line"}
        assert any(e.get("BAR") == HOSTILE["shell"] for e in envs)
        assert c("run", "reuse", "--set", "wait_s=0.2").code == 0
        assert not os.path.exists(CANARY)
    finally:
        c.cleanup()
    assert not os.path.exists(CANARY)
    c.assert_nothing_left()


def _bounded_load(tmp_path: Path, raw: bytes) -> subprocess.CompletedProcess:
    """Load in a child with 1 GiB of address space and a 60 s bound: an expansion would die there."""
    p = tmp_path / "bomb.yaml"
    p.write_bytes(raw)
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30))\n"
            "from kvorch.errors import UserError\nfrom kvorch.inventory import load_inventory\n"
            f"try:\n    load_inventory({str(p)!r})\nexcept UserError as e:\n    print('REJECTED', e.message); sys.exit(3)\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_a_yaml_alias_bomb_is_rejected_without_expanding_it(tmp_path):
    levels = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i, name in enumerate("bcdefghi"):
        prev = "abcdefghi"[i]
        levels.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    levels.append("cluster: [" + ",".join(["*i"] * 9) + "]")
    r = _bounded_load(tmp_path, ("\n".join(levels) + "\n").encode())
    assert r.returncode == 3 and "aliases expand" in r.stdout, r.stdout + r.stderr


def test_a_huge_inventory_is_rejected_before_it_is_read(tmp_path):
    p = tmp_path / "huge.yaml"
    with p.open("wb") as fh:
        fh.write(b"cluster: x\n")
        fh.truncate(200 * 2**20)  # 200 MiB
    r = _bounded_load(tmp_path, b"")  # warm the import path
    from kvorch.errors import UserError
    from kvorch.inventory import load_inventory

    with pytest.raises(UserError, match="too large"):
        load_inventory(p)
    assert r.returncode in (0, 3, 1)


def test_non_utf8_inventory_names_the_line(tmp_path):
    raw = (ROOT / "inventories" / "local.yaml").read_bytes().replace(b"cluster: local", b"cluster: lo\xff\xfecal")
    plan, err = load(tmp_path, raw=raw)
    line = raw[: raw.index(b"\xff")].count(b"\n") + 1
    assert err is not None and f"inv.yaml:{line}: not UTF-8" in err.message


def test_remove_tree_refuses_paths_that_leave_the_workdir(tmp_path):
    from kvorch.hosts import HostOps, LocalTransport
    from kvorch.hosts.base import CommandError

    work = tmp_path / "work"
    (work / "run").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("precious")
    (work / "link").symlink_to(outside)
    ops = HostOps(LocalTransport(), workdir=str(work))
    for bad in ("../outside", str(outside), "link/..", "run/../../outside"):
        with pytest.raises((ValueError, CommandError)):
            ops.remove_tree(bad)
    assert (outside / "keep").read_text() == "precious"


@pytest.mark.parametrize("expr", [
    "__import__('os').system('touch /tmp/kvorch-fault-canary')",
    "().__class__.__bases__[0].__subclasses__()",
    "params.__class__",
    "open('/etc/passwd')",
    "[x for x in range(10**9)]",
    "lambda: 1",
    "(1).__add__(2)",
    "import os",
])
def test_check_expressions_cannot_leave_the_evaluator(expr):
    from kvorch.scenarios.expr import ExprError, evaluate

    try:
        r = evaluate(expr, {"params": {"a": 1}})
    except ExprError:
        pass  # refused before anything runs
    else:
        assert r.passed is False
    assert not os.path.exists(CANARY)


# ---- endpoints ---------------------------------------------------------------------------------


class Hostile:
    """A TCP server on loopback that answers each connection in one bad way."""

    def __init__(self, mode: str):
        self.mode = mode
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(5)
            conn.recv(65536)
            head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n"
            chunk = b'data: {"id":"x","choices":[{"index":0,"text":" t","finish_reason":null}]}\n\n'
            if self.mode == "garbage":
                conn.sendall(b"\x00\xffSSH-2.0-nonsense\r\n\r\n" + os.urandom(256))
            elif self.mode == "not-json":
                conn.sendall(head + b"data: {this is not json\n\ndata: [DONE]\n\n")
            elif self.mode == "500":
                conn.sendall(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 5\r\n\r\noops!")
            elif self.mode == "truncated":
                conn.sendall(head + chunk + b'data: {"id":"x","choi')
            elif self.mode == "slow-loris":
                for b in head + chunk * 50:
                    if self.stop.is_set():
                        break
                    conn.sendall(bytes([b]))
                    time.sleep(0.05)
            elif self.mode == "endless":
                conn.sendall(head)
                while not self.stop.is_set():
                    conn.sendall(chunk)
                    time.sleep(0.001)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@pytest.mark.parametrize("mode,status,words", [
    ("garbage", "error", ""),
    ("not-json", "error", ""),
    ("500", "error", "500"),
    ("truncated", "error", ""),
    ("slow-loris", "timeout", "1"),
    ("endless", "timeout", "1"),
])
def test_a_hostile_endpoint_is_one_failed_record_within_the_bound(mode, status, words):
    from kvorch.client import send

    srv = Hostile(mode)

    async def go():
        async with httpx.AsyncClient(trust_env=False) as c:
            t0 = time.monotonic()
            recs = await asyncio.gather(*(send(c, "e", f"http://127.0.0.1:{srv.port}/v1", "m", prompt="hi",
                                               max_tokens=4, timeout=1.0) for _ in range(3)))
            return recs, time.monotonic() - t0

    try:
        recs, took = asyncio.run(go())
    finally:
        srv.close()
    assert [r.status for r in recs] == [status] * 3, [(r.status, r.error) for r in recs]
    assert all(r.error and words in r.error for r in recs)
    assert took < 10  # the 1 s deadline holds, with slack for a loaded machine (a bound, not a benchmark)


# ---- secrets -----------------------------------------------------------------------------------


SECRET = "hf_FAULTsuiteSECRET_7c1e9a2b4d"


def test_a_token_appears_nowhere(tmp_path):
    def m(d):
        d["env"]["HF_TOKEN"] = SECRET
        d["engines"][1]["env"] = {"MY_API_KEY": SECRET + "x"}
    c = Cluster(tmp_path, m)
    outputs = []
    try:
        for args in (("up",), ("--json", "status"), ("run", "reuse-2node", "--set", "wait_s=0.2"), ("-v", "status"),
                     ("logs",), ("--json", "up", "--dry-run"), ("render", "--out", str(tmp_path / "rendered")),
                     ("collect",)):
            r = c(*args)
            outputs.append(r.out + r.err)
        from faultkit import marked_pids

        for pid in marked_pids(c.name):  # argv of every process of ours, as ps shows it
            assert SECRET.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        assert SECRET not in ps
        r = c("down")
        outputs.append(r.out + r.err)
    finally:
        c.cleanup()
    assert all(SECRET not in o for o in outputs)
    leaks = []
    for root in (tmp_path / "logs", tmp_path / "state", tmp_path / "rendered", tmp_path / "hosts"):
        for f in root.rglob("*"):
            if f.is_file() and SECRET.encode() in f.read_bytes():
                if f.name.endswith(".secrets.env") and (f.stat().st_mode & 0o077) == 0:
                    continue  # the one place it must be: a file only its owner can read, on the host
                leaks.append(str(f))
    assert leaks == []
