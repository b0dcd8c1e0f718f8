#!/usr/bin/env python3
"""How much time does `orchestrate up` add on top of the processes' own startup?

For each connector (local, and SSH to the two loopback hosts when sshd is installed):
  own    = time from spawning the controller until it answers health, plus the same for the
           slowest engine — each process started by hand, directly, with the same argv and env
  up     = wall time of `orchestrate up --skip-preflight` (and of `up` with preflight)
  ratio  = up / own; overhead = up − own (target ≤ 0.5 s with the simulated engine)
  ssh floor (SSH only) = wall time of a whole parallel-ssh process running bare ``true`` on the
           same hosts (connect + one command: what no `up` over SSH can beat), measured in the same
           rounds; beyond = up − own − ssh floor (what `up` adds beyond connecting + one command).
           Skipped with a line when parallel-ssh is not installed.
Bounded: 3 rounds per setting (``--rounds``), each process stopped right after. Prints a table of
ratios and writes every measurement, the medians and the machine to bench/results/up_overhead.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from kvorch.inventory import load_inventory  # noqa: E402
from kvorch.plan import build_plan  # noqa: E402

ROUNDS = 3
RESULTS: dict[str, dict] = {}

#: the SSH floor: parallel-ssh (libssh2 in C) connects to every host and runs bare `true`, as a
#: whole process (interpreter start and import included, as `orchestrate up` pays them too) —
#: fanout_vs_peers' own contender
from fanout_vs_peers import PSSH as PSSH_TRUE, have_pssh  # noqa: E402


def ssh_floor(cfg: dict[str, Any]) -> float:
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c", PSSH_TRUE, json.dumps(cfg)], capture_output=True, text=True, timeout=120)
    took = time.monotonic() - t0
    if r.returncode != 0:
        raise RuntimeError(f"parallel-ssh `true` failed: {r.stderr[-1500:]}")
    return took


def healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=0.5, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def wait_all(urls: list[str], t0: float, timeout: float = 30.0) -> float:
    """Seconds from t0 until the last of urls answers health."""
    pending, last = set(urls), 0.0
    while pending:
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(pending)
        for url in list(pending):
            if healthy(url):
                pending.discard(url)
                last = time.monotonic() - t0
        time.sleep(0.005)
    return last


def own_startup(inv_path: Path) -> float:
    """Per stage, the slowest process's own startup (spawned directly, same argv and env), summed."""
    plan = build_plan(load_inventory(inv_path))
    total, running = 0.0, []
    try:
        for stage in plan.stages():
            t0 = time.monotonic()
            for p in stage:
                cwd = tempfile.mkdtemp(prefix="bench-own-")
                env = {**os.environ, **p.env, "PROMETHEUS_MULTIPROC_DIR": cwd}
                cfg = next((f for f in plan.host(p.host).files if f.path == p.config_file), None)
                if cfg is not None:
                    (Path(cwd) / cfg.path).write_text(cfg.content)
                    env["LMCACHE_CONFIG_FILE"] = str(Path(cwd) / cfg.path)
                running.append(subprocess.Popen(p.argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                                                stderr=subprocess.DEVNULL, start_new_session=True))
            total += wait_all([p.health_url for p in stage], t0)
    finally:
        for pr in reversed(running):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pr.pid, signal.SIGTERM)
        for pr in running:
            pr.wait(10)
    return total


CLIENT_CPU: list[float] = []  # CPU seconds of each `up` process (user + system)


def orchestrate(args: list[str], env: dict[str, str], cwd: str) -> float:
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, str(ROOT / "orchestrate.py"), *args], env=env, cwd=cwd, capture_output=True, text=True)
    took = time.monotonic() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if args[0] == "up":
        CLIENT_CPU.append(ru1.ru_utime - ru0.ru_utime + ru1.ru_stime - ru0.ru_stime)
    if r.returncode != 0:
        raise RuntimeError(f"orchestrate {' '.join(args)} failed: {r.stderr}{r.stdout}")
    return took


def measure(name: str, inv_path: Path, ssh_config: Path | None, floor_cfg: dict[str, Any] | None = None) -> None:
    """``floor_cfg`` (SSH hosts, user, port, key): the SSH floor is measured in every round too."""
    work = tempfile.mkdtemp(prefix="bench-up-")
    env = {**os.environ, "ORCHESTRATE_STATE": f"{work}/state", "ORCHESTRATE_LOGS": f"{work}/logs",
           "ORCHESTRATE_INVENTORY": str(inv_path)}
    if ssh_config:
        env["ORCHESTRATE_SSH_CONFIG"] = str(ssh_config)
    own, ups, ups_pf, floor = [], [], [], []
    CLIENT_CPU.clear()
    if floor_cfg is not None:
        ssh_floor(floor_cfg)  # warm (not timed): the OS caches for parallel-ssh's modules
    for _ in range(ROUNDS):
        own.append(own_startup(inv_path))
        time.sleep(0.3)
        if floor_cfg is not None:
            floor.append(ssh_floor(floor_cfg))
        ups.append(orchestrate(["up", "--skip-preflight"], env, work))
        orchestrate(["down", "--no-collect"], env, work)
        ups_pf.append(orchestrate(["up"], env, work))
        orchestrate(["down", "--no-collect"], env, work)
    o, u, up = statistics.median(own), statistics.median(ups), statistics.median(ups_pf)
    RESULTS[name] = {"own_s": own, "up_s": ups, "up_preflight_s": ups_pf, "up_cpu_s": list(CLIENT_CPU),
                     "median": {"own_s": o, "up_s": u, "up_preflight_s": up, "overhead_s": u - o,
                                "overhead_preflight_s": up - o, "up_cpu_s": statistics.median(CLIENT_CPU)},
                     "goal": "overhead <= 0.5 s", "goal_met": u - o <= 0.5}
    beyond = ""
    if floor:
        # per round (the same round's own, up and floor), then the median: the load moves them alike
        per_round = [x - y - f for x, y, f in zip(ups, own, floor)]
        f, b = statistics.median(floor), statistics.median(per_round)
        RESULTS[name]["ssh_floor_s"] = floor
        RESULTS[name]["beyond_floor_s"] = per_round
        RESULTS[name]["median"].update({"ssh_floor_s": f, "beyond_floor_s": b})
        beyond = f" | ssh floor (parallel-ssh `true`) {f:5.2f} s  up - own - floor {b:+.2f} s"
    print(f"{name:<10} own startup {o:6.2f} s | up {u:6.2f} s  ratio {u / o:5.2f}  overhead {u - o:+.2f} s | "
          f"up+preflight {up:6.2f} s  overhead {up - o:+.2f} s{beyond}   (median of {ROUNDS}); "
          f"orchestrate's own CPU per up: {statistics.median(CLIENT_CPU):.2f} s")
    shutil.rmtree(work, ignore_errors=True)


def loopback_inventory(cluster: Any, tmp: Path) -> Path:
    """inventories/loopback.yaml on the bench's sshd (tests/sshd.py's cluster: its hosts' addresses
    in place of the seed's, in order), every port free, the hosts' workdirs under ``tmp``, this
    checkout's kvorch and this venv's interpreter on the hosts."""
    text = (ROOT / "inventories/loopback.yaml").read_text()
    seed = [h["address"] for h in yaml.safe_load(text)["hosts"].values()]
    for old, new in zip(seed, [h.address for h in cluster.hosts.values()]):
        text = text.replace(old, f"@{new}@")
    lb = free_ports_everywhere(yaml.safe_load(text.replace("@", "")))
    lb.setdefault("env", {})["PYTHONPATH"] = str(ROOT)
    for h in lb["hosts"].values():
        h["ssh"]["port"] = cluster.port
        h["workdir"] = str(tmp / h["address"])
        h["python"] = sys.executable  # the venv's interpreter, as an inventory would name it
    path = tmp / "loopback.yaml"
    path.write_text(yaml.safe_dump(lb))
    return path


def free_ports_everywhere(inv: dict) -> dict:
    """Every service port of the inventory replaced by a free one (on its host's address), so the
    bench never collides with a cluster someone else runs on the default ports."""
    import socket

    def free(addr: str) -> int:
        with socket.socket() as s:
            s.bind((addr, 0))
            return s.getsockname()[1]

    addr = {n: h.get("address", "127.0.0.1") for n, h in inv["hosts"].items()}
    ctl = inv.get("controller")
    if ctl:
        a = addr[ctl["host"]]
        ctl["port"] = free(a)
        ctl["monitor_ports"] = {k: free(a) for k in ctl.get("monitor_ports", {})}
    for e in inv.get("engines", []):
        for k in ("port", "p2p_init_port", "p2p_lookup_port", "worker_port"):
            if k in e:
                e[k] = free(addr[e["host"]])
    return inv


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_results(out: Path, load0: float) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    out.write_text(json.dumps({"tree": {"root": str(ROOT), "commit": rev or None},
                               "machine": {"cpu": cpu_model(), "cpus": os.cpu_count(), "python": platform.python_version(),
                                           "load_avg_start": load0, "load_avg_end": os.getloadavg()[0]},
                               "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "rounds": ROUNDS, "results": RESULTS},
                              indent=2))
    print(f"wrote {out}")


def main() -> None:
    global ROUNDS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=ROUNDS)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "up_overhead.json"))
    ap.add_argument("--addresses", nargs=2, default=["127.0.0.13", "127.0.0.97"], metavar="ADDR",
                    help="the two loopback SSH hosts (default the seed's; pick addresses nobody else uses)")
    a = ap.parse_args()
    ROUNDS = a.rounds
    load0 = os.getloadavg()[0]
    # As pip installs a package: byte-compiled. (With PYTHONDONTWRITEBYTECODE set and an editable
    # install, every run would compile kvorch from source: ~50 ms that no installed copy pays.)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "kvorch")], check=True,
                   stdout=subprocess.DEVNULL)
    tmp = Path(tempfile.mkdtemp(prefix="bench-inv-"))
    local = free_ports_everywhere(yaml.safe_load((ROOT / "inventories/local.yaml").read_text()))
    local.setdefault("env", {})["PYTHONPATH"] = str(ROOT)  # this checkout's kvorch on the hosts too
    local["hosts"]["local"]["workdir"] = str(tmp / "local")
    (tmp / "local.yaml").write_text(yaml.safe_dump(local))
    print(f"orchestrate up overhead, simulated engine (median of {ROUNDS} rounds), {cpu_model()}, load {load0:.2f}")
    measure("local", tmp / "local.yaml", None)
    from sshd import SshdCluster, sshd_unavailable_reason

    if sshd_unavailable_reason():
        print(f"loopback   skipped: {sshd_unavailable_reason()}")
        write_results(Path(a.out), load0)
        return
    floor_cfg = None
    with SshdCluster(tmp / "sshd", {f"h{i}": addr for i, addr in enumerate(a.addresses)}) as cluster:
        if have_pssh():
            floor_cfg = {"hosts": [h.address for h in cluster.hosts.values()], "user": cluster.user,
                         "port": cluster.port, "key": str(cluster.client_key)}
        else:
            print("ssh floor  skipped: parallel-ssh is not installed (pip install parallel-ssh)")
        measure("ssh x2", loopback_inventory(cluster, tmp), cluster.ssh_config, floor_cfg)
    write_results(Path(a.out), load0)


if __name__ == "__main__":
    main()
