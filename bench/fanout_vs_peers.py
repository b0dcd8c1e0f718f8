#!/usr/bin/env python3
"""Cold `orchestrate status` / `preflight` against Fabric and parallel-ssh running bare `true`.

Starts real sshd on loopback hosts (tests/sshd.py; 2 and 16 hosts on their own 127.0.0.x addresses
and a free port), brings a simulated cluster up on them (one engine per host, every port free-picked),
then, in rounds with the order rotated, runs each of these as a whole new process and times it:

* ``orchestrate status``   (this tool: connect, per host one probe of every marked process, health)
* ``orchestrate preflight`` (this tool: connect, facts, ports, versions, GPU-compat probe)
* Fabric ``ThreadingGroup(...).run("true")``       (peer: connect + one bare command per host)
* parallel-ssh ``ParallelSSHClient(...).run_command("true")`` (peer, libssh2 in C)
* parallel-ssh running, on each host, the very probe script `status` sends there (``pssh_probe``): the
  same remote work as `status` minus its client side — the floor for `status` on these hosts, where
  every host's sshd, login shell and probe share the 2 cores with the client

Goals (issue #18): at 2 hosts status and preflight ≤ 1.2 × the fastest peer; at 16 hosts no slower
than the peers. Prints medians (min–max), ratios, writes bench/results/fanout_vs_peers.json.
parallel-ssh: ``pip install parallel-ssh`` (skipped with that line when missing).

    python bench/fanout_vs_peers.py [--rounds 5] [--hosts 2 16] [--timeout 600]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from sshd import SshdCluster, sshd_unavailable_reason  # noqa: E402

RESULTS = ROOT / "bench" / "results"

FABRIC = r"""
import json, sys
cfg = json.loads(sys.argv[1])
from fabric import ThreadingGroup
g = ThreadingGroup(*cfg["hosts"], user=cfg["user"], port=cfg["port"],
                   connect_kwargs={"key_filename": cfg["key"], "look_for_keys": False, "allow_agent": False})
res = g.run("true", hide=True, warn=True)
bad = [c.host for c, r in res.items() if getattr(r, "exited", 1) != 0]
g.close()
sys.exit(1 if bad or len(res) != len(cfg["hosts"]) else 0)
"""

PSSH = r"""
import json, sys
cfg = json.loads(sys.argv[1])
from pssh.clients import ParallelSSHClient
c = ParallelSSHClient(cfg["hosts"], user=cfg["user"], port=cfg["port"], pkey=cfg["key"], num_retries=1,
                      pool_size=max(10, len(cfg["hosts"])))
out = c.run_command("true", stop_on_errors=False)
c.join(out)
sys.exit(0 if all(o.exit_code == 0 for o in out) else 1)
"""


PSSH_PROBE = r"""
import json, sys
cfg = json.loads(sys.argv[1])
from pssh.clients import ParallelSSHClient
c = ParallelSSHClient(cfg["hosts"], user=cfg["user"], port=cfg["port"], pkey=cfg["key"], num_retries=1,
                      pool_size=max(10, len(cfg["hosts"])))
out = c.run_command("%s", host_args=[(cmd,) for cmd in cfg["probes"]], stop_on_errors=False)
c.join(out)
bad = []
for o in out:
    lines = list(o.stdout)
    if o.exit_code != 0 or not any(line.startswith("M ") for line in lines):
        bad.append(f"{o.host}: exit {o.exit_code}, {len(lines)} lines: {lines[:3]} {list(o.stderr)[:3]}")
print("\n".join(bad), file=sys.stderr)
sys.exit(1 if bad else 0)
"""


def probe_commands(inventory_path: Path) -> list[str]:
    """Per host of the plan, the command line `orchestrate status` has its kept shell run there (the
    probe of kvorch.processes.observe, as kvorch.hosts.base.bash_command wraps it)."""
    from kvorch.hosts.base import RunResult, bash_command
    from kvorch.hosts.ops import HostOps
    from kvorch.inventory import load_inventory
    from kvorch.nodes import Node
    from kvorch.plan import build_plan
    from kvorch.processes import observe

    class Capture:  # a transport that records what it is asked to run
        small_files_via_shell = True

        def __init__(self) -> None:
            self.sent: list[str] = []

        def run(self, command: str, timeout: float | None = None, env: Any = None) -> RunResult:
            self.sent.append(bash_command(command, env))
            return RunResult(exit_code=0, stdout="", stderr="")

        def close(self) -> None:
            pass

    plan = build_plan(load_inventory(str(inventory_path)))
    out = []
    for hp in plan.hosts:
        t = Capture()
        observe(plan, Node(plan=hp, ops=HostOps(t, workdir=hp.workdir), workdir=hp.workdir), last_lines=True)
        out.append(t.sent[-1])
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def free_ports(addr: str, n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((addr, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def inventory(cluster: SshdCluster, aliases: list[str], tmp: Path, name: str) -> dict[str, Any]:
    """A p2p sim cluster: the controller on the first host, one engine per host; every port free."""
    hosts: dict[str, Any] = {}
    for a in aliases:
        h = cluster.host(a)
        hosts[a] = {"address": h.address, "ssh": {"port": cluster.port}, "workdir": str(tmp / name / a),
                    "python": sys.executable}
    first = cluster.host(aliases[0]).address
    cport, pull, reply, hb = free_ports(first, 4)
    engines = []
    for i, a in enumerate(aliases):
        addr = cluster.host(a).address
        port, init, lookup, worker = free_ports(addr, 4)
        engines.append({"name": f"e{i}", "host": a, "bind": addr, "role": "prefill" if i == 0 else "decode",
                        "port": port, "instance_id": f"lmcache_instance_{i + 1}", "config_file": f"e{i}.yaml",
                        "p2p_init_port": init, "p2p_lookup_port": lookup, "worker_port": worker})
    return {"cluster": name, "topology": "p2p", "engine": "sim", "model": "bench-model", "bind": "0.0.0.0",
            # the hosts' processes run this checkout's kvorch (the venv may hold another one)
            "env": {"PYTHONHASHSEED": 123, "PYTHONPATH": str(ROOT)}, "hosts": hosts,
            "controller": {"host": aliases[0], "bind": first, "port": cport,
                           "monitor_ports": {"pull": pull, "reply": reply, "heartbeat": hb}},
            "vllm": {"max_model_len": 1600},
            "lmcache": {"chunk_size": 256, "local_cpu": True, "max_local_cpu_size": 5, "transfer_channel": "nixl"},
            "engines": engines}


#: CPU seconds (user + system) of each timed run, by kind: what a run costs whatever the machine's
#: load (wall times on a shared 2-core machine follow the load)
CPU: dict[str, list[float]] = {}


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


class Tool:
    def __init__(self, inv: Path, ssh_config: Path, work: Path):
        self.env = {**os.environ, "ORCHESTRATE_STATE": str(work / "state"), "ORCHESTRATE_LOGS": str(work / "logs"),
                    "ORCHESTRATE_INVENTORY": str(inv), "ORCHESTRATE_SSH_CONFIG": str(ssh_config),
                    "PYTHONPATH": str(ROOT)}
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)

    def run(self, *args: str, check: bool = True, timeout: float = 300) -> tuple[float, subprocess.CompletedProcess]:
        c0 = _cpu()
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, str(ROOT / "orchestrate.py"), *args], env=self.env,
                           capture_output=True, text=True, timeout=timeout)
        took = time.perf_counter() - t0
        CPU.setdefault(args[0], []).append(_cpu() - c0)
        if check and r.returncode != 0:
            raise RuntimeError(f"orchestrate {' '.join(args)} failed ({r.returncode}): {r.stderr[-1500:]}{r.stdout[-1500:]}")
        return took, r


def peer(script: str, cfg: dict[str, Any]) -> float:
    c0 = _cpu()
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", script, json.dumps(cfg)], capture_output=True, text=True, timeout=120)
    took = time.perf_counter() - t0
    CPU.setdefault({id(FABRIC): "fabric", id(PSSH): "pssh"}.get(id(script), "pssh_probe"), []).append(_cpu() - c0)
    if r.returncode != 0:
        raise RuntimeError(f"peer failed: {r.stderr[-1500:]}")
    return took


def have_pssh() -> bool:
    r = subprocess.run([sys.executable, "-c", "import pssh.clients"], capture_output=True)
    return r.returncode == 0


def med(xs: list[float]) -> tuple[float, float, float]:
    return statistics.median(xs), min(xs), max(xs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--hosts", type=int, nargs="+", default=[2, 16])
    ap.add_argument("--first-address", type=int, default=140,
                    help="hosts are 127.0.0.<first>… (away from the test suite's .13/.97/.20–35)")
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--out", default=str(RESULTS / "fanout_vs_peers.json"))
    a = ap.parse_args()
    reason = sshd_unavailable_reason()
    if reason:
        print(f"skipped: {reason}")
        return 0
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("bench exceeded its time budget")))
    signal.alarm(int(a.timeout))
    pssh_ok = have_pssh()
    machine = {"cpu": cpu_model(), "cpus": os.cpu_count(), "python": platform.python_version(),
               "load_avg_start": os.getloadavg()[0]}
    print(f"machine: {machine['cpu']}, {machine['cpus']} CPUs, load {machine['load_avg_start']:.2f}"
          + ("" if pssh_ok else "; parallel-ssh missing (pip install parallel-ssh): its column is skipped"))
    # byte-compiled, as pip installs it (an editable checkout without .pyc compiles kvorch every run)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "kvorch")], check=True,
                   stdout=subprocess.DEVNULL)
    results: dict[int, dict[str, list[float]]] = {}
    cpu_of: dict[int, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="kvorch-bench-fanout-") as tmpd:
        tmp = Path(tmpd)
        n_max = max(a.hosts)
        spec = {f"h{a.first_address + i}": f"127.0.0.{a.first_address + i}" for i in range(n_max)}
        cluster = SshdCluster(tmp / "sshd", spec)
        cluster.start()
        try:
            print(f"{len(cluster.hosts)} sshd on port {cluster.port}")
            for n in a.hosts:
                aliases = list(spec)[:n]
                inv = tmp / f"inv{n}.yaml"
                inv.write_text(yaml.safe_dump(inventory(cluster, aliases, tmp, f"fan{n}")))
                tool = Tool(inv, cluster.ssh_config, tmp / f"work{n}")
                took, _ = tool.run("up", "--skip-preflight")
                print(f"{n} hosts: cluster up in {took:.1f} s")
                cfg = {"hosts": [cluster.host(x).address for x in aliases], "user": cluster.user,
                       "port": cluster.port, "key": str(cluster.client_key)}
                probe_cfg = {**cfg, "probes": probe_commands(inv)}
                # warm the OS caches for every contender once (not timed)
                tool.run("status")
                peer(FABRIC, cfg)
                if pssh_ok:
                    peer(PSSH, cfg)
                    peer(PSSH_PROBE, probe_cfg)
                kinds = ["status", "preflight", "fabric"] + (["pssh", "pssh_probe"] if pssh_ok else [])
                CPU.clear()
                rows: dict[str, list[float]] = {k: [] for k in kinds}
                for rnd in range(a.rounds):
                    order = kinds[rnd % len(kinds):] + kinds[:rnd % len(kinds)]
                    for k in order:
                        if k == "status":
                            rows[k].append(tool.run("status")[0])
                        elif k == "preflight":
                            rows[k].append(tool.run("preflight")[0])
                        elif k == "fabric":
                            rows[k].append(peer(FABRIC, cfg))
                        elif k == "pssh":
                            rows[k].append(peer(PSSH, cfg))
                        else:
                            rows[k].append(peer(PSSH_PROBE, probe_cfg))
                    print(f"  round {rnd}: " + "  ".join(f"{k} {rows[k][-1] * 1000:.0f} ms" for k in kinds), flush=True)
                cpu_of[n] = {k: list(CPU.get(k, [])[-a.rounds:]) for k in kinds}
                tool.run("down", "--no-collect", check=False)
                results[n] = rows
        finally:
            signal.alarm(0)
            cluster.stop()
    machine["load_avg_end"] = os.getloadavg()[0]
    summary = []
    goals = True
    print(f"\ncold whole processes, median of {a.rounds} (min–max), ms")
    for n, rows in results.items():
        m = {k: med(v) for k, v in rows.items()}
        peers = {k: m[k][0] for k in ("fabric", "pssh") if k in m}
        fastest = min(peers.values())
        line: dict[str, Any] = {"hosts": n, **{f"{k}_ms": [1000 * x for x in v] for k, v in m.items()},
                                **{f"{k}_cpu_ms": [1000 * x for x in med(v)] for k, v in cpu_of.get(n, {}).items() if v}}
        for k in ("status", "preflight"):
            line[f"{k}_over_fastest_peer"] = m[k][0] / fastest
            line[f"{k}_over_slowest_peer"] = m[k][0] / max(peers.values())
        if "pssh_probe" in m:
            line["status_over_pssh_probe"] = m["status"][0] / m["pssh_probe"][0]
        limit = 1.2 if n <= 2 else 1.0
        met = all(line[f"{k}_over_fastest_peer"] <= limit for k in ("status", "preflight"))
        line["goal"] = f"<= {limit} x the fastest peer"
        line["goal_met"] = met
        goals &= met
        summary.append(line)
        print(f"{n:>3} hosts: " + "  ".join(f"{k} {m[k][0] * 1000:.0f} ({m[k][1] * 1000:.0f}–{m[k][2] * 1000:.0f})"
                                             for k in rows))
        print("     CPU (user+system of the process and its children), median: " + "  ".join(
            f"{k} {line[f'{k}_cpu_ms'][0]:.0f} ms" for k in rows if f"{k}_cpu_ms" in line))
        print(f"RATIO {n} hosts: status/fastest peer {line['status_over_fastest_peer']:.2f}, "
              f"preflight/fastest peer {line['preflight_over_fastest_peer']:.2f} (goal {line['goal']}: "
              f"{'MET' if met else 'NOT MET'})")
        if "status_over_pssh_probe" in line:
            print(f"RATIO {n} hosts: status / parallel-ssh running status's probe {line['status_over_pssh_probe']:.2f} "
                  f"(the same remote work: what is left is the client's own)")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "args": vars(a), "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
                               "summary": summary, "rows": {str(k): v for k, v in results.items()},
                               "goals_met": goals}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
