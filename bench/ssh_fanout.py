#!/usr/bin/env python
"""SSH fan-out: `facts` (preflight-like) and a status-like command on 2 vs 16 loopback SSH hosts,
all hosts in parallel (kvorch.hosts.run_parallel), and the 16/2 ratio (target ≤ 1.5×).

Starts 18 real sshd (127.0.0.13, 127.0.0.97 and 127.0.0.20–35, port 2222 or the next free one)
in a temporary directory, measures, stops them. Bounded: gives up after --timeout seconds.

    python bench/ssh_fanout.py [--rounds 3] [--timeout 240] [--no-serial]

cold = new connections (what one CLI invocation pays: connect + work);
warm = the connections are already open (work only).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from sshd import SEED_HOSTS, SshdCluster, extra_hosts, sshd_unavailable_reason  # noqa: E402

from kvorch.hosts import HostOps, SshTransport, run_parallel  # noqa: E402


#: the interpreter the inventory would name (a venv's python); not a pyenv shim
PYTHON = sys.executable


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def _machine_cpu() -> float:
    """CPU seconds every process of this machine has used (user + system), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return float("nan")
    user, nice, system = fields[0], fields[1], fields[2]
    irq, softirq = (fields[5], fields[6]) if len(fields) > 6 else (0, 0)
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def _raise_timeout(signum, frame):
    raise TimeoutError("bench exceeded its time budget")


def _ops(cluster: SshdCluster, aliases: list[str], workdir: str) -> dict[str, HostOps]:
    return {a: HostOps(SshTransport(cluster.settings(a), name=a), workdir=workdir) for a in aliases}


def _close(ops: dict[str, HostOps]) -> None:
    for o in ops.values():
        o.t.close()


def _check(results: dict, what: str) -> None:
    bad = {k: v for k, v in results.items() if isinstance(v, BaseException)}
    if bad:
        raise RuntimeError(f"{what} failed on {len(bad)} host(s): {next(iter(bad.values()))!r}")


def status_like(ops: HostOps, pids: list[int], log: str) -> tuple[dict, str]:
    """What `orchestrate status` does per host: process states, then the last log line."""
    return ops.process_states(pids), ops.tail(log, 1)


def measure(cluster: SshdCluster, aliases: list[str], workdir: str, pids: list[int], log: str) -> dict[str, float]:
    out: dict[str, float] = {}
    # cold: connect + facts (preflight-like)
    ops = _ops(cluster, aliases, workdir)
    c0, t0 = _cpu(), time.monotonic()
    r = run_parallel(ops, lambda o: (o.t.open(), o.facts(PYTHON)))
    out["cold_facts"] = time.monotonic() - t0
    out["cold_facts_client_cpu"] = _cpu() - c0
    _check(r, "facts")
    out["connect_mean"] = statistics.mean(o.t.connect_time_s or 0 for o in ops.values())
    # warm: status-like on the open connections
    t0 = time.monotonic()
    r = run_parallel(ops, lambda o: status_like(o, pids, log))
    out["warm_status"] = time.monotonic() - t0
    _check(r, "status")
    t0 = time.monotonic()
    r = run_parallel(ops, lambda o: o.facts(PYTHON))
    out["warm_facts"] = time.monotonic() - t0
    _check(r, "facts")
    _close(ops)
    # cold status: a fresh CLI invocation of `status`
    ops = _ops(cluster, aliases, workdir)
    m0, c0, t0 = _machine_cpu(), _cpu(), time.monotonic()
    r = run_parallel(ops, lambda o: status_like(o, pids, log))
    out["cold_status"] = time.monotonic() - t0
    out["cold_status_client_cpu"] = _cpu() - c0
    out["cold_status_host_cpu"] = _machine_cpu() - m0 - out["cold_status_client_cpu"]
    _check(r, "status")
    _close(ops)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description="SSH fan-out on 2 vs 16 loopback hosts")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=240.0)
    ap.add_argument("--no-serial", action="store_true", help="skip the one-after-another baseline")
    a = ap.parse_args()
    reason = sshd_unavailable_reason()
    if reason:
        print(f"skipped: {reason}")
        return 0
    signal.signal(signal.SIGALRM, _raise_timeout)
    signal.alarm(int(a.timeout))
    two = list(SEED_HOSTS)
    sixteen = list(extra_hosts(16))
    spec = dict(SEED_HOSTS) | extra_hosts(16)
    with tempfile.TemporaryDirectory(prefix="kvorch-bench-ssh-") as tmp:
        cluster = SshdCluster(Path(tmp) / "sshd", spec)
        try:
            cluster.start()
            print(f"{len(cluster.hosts)} sshd up in {cluster.start_time_s:.2f}s on port {cluster.port}; "
                  f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
            workdir = str(Path(tmp) / "work")
            os.makedirs(workdir)
            log = "status.log"
            Path(workdir, log).write_text("first\nlast line\n")
            pids = [os.getpid(), 4_000_000]

            # one host, one connection: connect time and a bare command
            with SshTransport(cluster.settings("h13")) as t:
                connect = t.open()
                cmd = statistics.median(t.run("true").duration_s for _ in range(5))
            print(f"one host: connect {connect * 1000:.0f} ms, command `true` {cmd * 1000:.0f} ms "
                  f"(median of 5; the login shell and ~/.bashrc start once per connection, with its first command)")

            rows: dict[int, list[dict[str, float]]] = {2: [], 16: []}
            for _ in range(a.rounds):
                for n, aliases in ((2, two), (16, sixteen)):
                    rows[n].append(measure(cluster, aliases, workdir, pids, log))
            med = {n: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for n, rs in rows.items()}

            print(f"\nmedian of {a.rounds} rounds, all hosts in parallel (seconds):")
            print(f"{'':28}{'2 hosts':>10}{'16 hosts':>10}{'16/2':>8}")
            labels = {
                "cold_facts": "connect + facts (preflight)",
                "cold_status": "connect + status",
                "warm_status": "status, open connections",
                "warm_facts": "facts, open connections",
                "connect_mean": "mean connect per host",
                "cold_facts_client_cpu": "client CPU, connect+facts",
                "cold_status_client_cpu": "client CPU, connect+status",
                "cold_status_host_cpu": "hosts' CPU, connect+status",
            }
            for k, label in labels.items():
                r = med[16][k] / med[2][k]
                print(f"{label:28}{med[2][k]:10.3f}{med[16][k]:10.3f}{r:7.2f}x")

            if not a.no_serial:
                ops = _ops(cluster, sixteen, workdir)
                t0 = time.monotonic()
                for o in ops.values():
                    o.t.open()
                    o.facts(PYTHON)
                serial = time.monotonic() - t0
                _close(ops)
                print(f"\n16 hosts one after another, connect + facts: {serial:.3f}s "
                      f"({serial / med[16]['cold_facts']:.1f}x the parallel time)")
            print("\nAll 18 sshd and their remote shells share this machine's CPUs: remote work per host "
                  "(login shell reading ~/.bashrc, python for versions) adds up here, while on a real "
                  "cluster it runs on each host. The client CPU rows are what the orchestrator itself spends.")
            ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            floor16 = (med[16]["cold_status_host_cpu"] + med[16]["cold_status_client_cpu"]) / ncpu
            print(f"\nconnect + status on 16 hosts needs {med[16]['cold_status_host_cpu']:.2f} s of the hosts' CPU "
                  f"(sshd handshakes, login shells) and {med[16]['cold_status_client_cpu']:.2f} s of the client's: "
                  f"on {ncpu} CPUs, at least {floor16:.2f} s = {floor16 / med[2]['cold_status']:.1f}x the 2-host time, "
                  f"whatever the client does. Separate hosts would each do their share in parallel.")
            ratio = med[16]["cold_facts"] / med[2]["cold_facts"]
            print(f"\nRATIO preflight-like 16/2 = {ratio:.2f}x, status-like 16/2 = "
                  f"{med[16]['cold_status'] / med[2]['cold_status']:.2f}x (target <= 1.5x)")
        finally:
            signal.alarm(0)
            cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
