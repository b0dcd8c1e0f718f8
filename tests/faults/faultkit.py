"""Helpers of the fault suite: a local simulated cluster on free ports with its own name, what of
ours is left (by marker, group and port), and `orchestrate` as a background process to interrupt."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable

import yaml

from clusterkit import ROOT, Orch, give_free_ports, listening, write_inventory

MARKER = "ORCHESTRATE_PROCESS="


def marked_pids(cluster: str, name: str = "") -> list[int]:
    """Live (not zombie) processes whose environment carries a marker of ``cluster``
    (of its process ``name`` when given). A process that exits while it is read is skipped."""
    want = f"{MARKER}{cluster}/{name}".encode()
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = (d / "environ").read_bytes()
            stat = (d / "stat").read_text()
        except OSError:
            continue
        if stat[stat.rindex(")") + 2:].split()[0] in "ZXx":
            continue
        # "<cluster>/<name>@<workdir id>" (an older orchestrate's: "<cluster>/<name>")
        if any(line == want or line.startswith(want + b"@") if name else line.startswith(want)
               for line in env.split(b"\0")):
            out.append(int(d.name))
    return sorted(out)


def session_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[3])


def wait_for(pred: Callable[[], object], timeout: float = 20.0, every: float = 0.05) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout} s")


class Cluster:
    """A local sim cluster (inventories/local.yaml on free ports, its own name and dirs)."""

    def __init__(self, tmp: Path, mutate: Callable[[dict], None] | None = None, base: str = "inventories/local.yaml",
                 ssh_config: Path | None = None):
        tmp.mkdir(parents=True, exist_ok=True)
        self.tmp = tmp
        self.name = "f" + uuid.uuid4().hex[:8]
        def m(d: dict) -> None:
            d["cluster"] = self.name
            for h in d["hosts"].values():
                h["workdir"] = str(tmp / "hosts" / h["address"])
                if h.get("connector", "ssh") == "ssh":
                    h["python"] = sys.executable
            give_free_ports(d)
            if mutate:
                mutate(d)

        self.inv_path = write_inventory(tmp / "inv.yaml", base, m)
        self.data = yaml.safe_load(self.inv_path.read_text())
        self.orch = Orch(tmp, self.inv_path, ssh_config)

    def __call__(self, *args: str, timeout: float = 120) -> "object":
        return self.orch(*args, timeout=timeout)

    def rewrite(self, mutate: Callable[[dict], None]) -> None:
        mutate(self.data)
        self.inv_path.write_text(yaml.safe_dump(self.data, sort_keys=False))

    def engine(self, name: str) -> dict:
        return next(e for e in self.data["engines"] if e["name"] == name)

    def ports(self) -> list[tuple[str, int]]:
        addr = {h: v["address"] for h, v in self.data["hosts"].items()}
        c = self.data["controller"]
        out = [(addr[c["host"]], c["port"])] + [(addr[c["host"]], p) for p in c["monitor_ports"].values()]
        for e in self.data["engines"]:
            out += [(addr[e["host"]], e[k]) for k in ("port", "p2p_init_port", "p2p_lookup_port", "worker_port")]
        return out

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(ROOT / "orchestrate.py"), *args], cwd=self.tmp,
                                env=self.orch.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def state(self) -> dict:
        import json

        return json.loads((self.tmp / "state" / f"{self.name}.json").read_text())

    def leftovers(self) -> list[str]:
        """Everything of ours still there: marked processes and planned ports held."""
        left = [f"pid {p} carries the marker" for p in marked_pids(self.name)]
        left += [f"{a}:{p} still accepts" for a, p in self.ports() if listening(a, p)]
        return left

    def assert_nothing_left(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.leftovers() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert self.leftovers() == []

    def assert_next_up_works(self) -> None:
        r = self("up", "--timeout", "60")
        assert r.code == 0, r.out + r.err
        d = self("down", "--no-collect", "--grace", "2")
        assert d.code == 0, d.out + d.err
        self.assert_nothing_left()

    def kill_process(self, name: str) -> None:
        """SIGKILL everything of one process (it stops writing its log)."""
        for pid in marked_pids(self.name, name):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_for(lambda: not marked_pids(self.name, name), timeout=10)

    def cleanup(self) -> None:
        self("down", "--no-collect", "--grace", "1")
        for pid in marked_pids(self.name):  # the last resort: never leave a process behind
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def finish(p: subprocess.Popen, timeout: float = 60) -> tuple[int, str, str]:
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err
