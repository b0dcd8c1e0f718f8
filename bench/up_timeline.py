#!/usr/bin/env python3
"""Where does `orchestrate up` over SSH spend its time? A timeline per host and thread.

Starts the two loopback sshd hosts (tests/sshd.py), then runs ``orchestrate up --skip-preflight``
(and ``down``) in a child process whose modules are wrapped as they are imported: every SSH
connect, kept-shell start, command round trip (labelled by HostOps' ``what`` or the command's
first words), SFTP put, bundle check, process start, health poll and run-state write is recorded
with its thread and its start/end relative to the process's start. Prints the timeline of each
round (``--rounds``), the process's CPU, and where the wall time beyond the processes' own start
goes. Nothing here changes what `up` does: the wrappers only take times.

    python bench/up_timeline.py --rounds 3 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

#: the child: wraps functions of kvorch's modules when they are first imported, then runs the CLI
TRACER = textwrap.dedent(r'''
    import time
    T0 = time.monotonic()
    import atexit, functools, importlib.abc, importlib.machinery, json, os, resource, sys, threading
    sys.path.insert(0, os.environ["KVT_ROOT"])
    EV = []

    def rec(kind, label, t0, t1):
        EV.append({"thread": threading.current_thread().name, "kind": kind, "label": label,
                   "start_ms": round((t0 - T0) * 1000, 2), "end_ms": round((t1 - T0) * 1000, 2)})

    def wrap(obj, attr, kind, label=None):
        fn = getattr(obj, attr)
        if getattr(fn, "_kvt", False):
            return
        @functools.wraps(fn)
        def w(*a, **k):
            t0 = time.monotonic()
            try:
                return fn(*a, **k)
            finally:
                lab = label(a, k) if callable(label) else (label or attr)
                rec(kind, lab, t0, time.monotonic())
        w._kvt = True
        setattr(obj, attr, w)

    def cmd_label(a, k):
        what = k.get("what") or ""
        cmd = a[1] if len(a) > 1 else k.get("command", "")
        first = " ".join(str(cmd).split())[:60]
        host = getattr(a[0], "name", "?")
        return f"{host}: {what or first}"

    def patch(name, mod):
        if name == "kvorch.hosts.ssh":
            wrap(mod.SshTransport, "_ensure_open", "connect", lambda a, k: f"{a[0].name}: connect+auth")
            wrap(mod._Shell, "start", "shell", "kept shell ready (login shell -> bash)")
            wrap(mod.SshTransport, "put_bytes", "sftp", lambda a, k: f"{a[0].name}: put {os.path.basename(a[1])} {len(a[2])} B")
            wrap(mod.SshTransport, "_sftp_client", "sftp", lambda a, k: f"{a[0].name}: sftp session")
            wrap(mod.SshTransport, "run", "ssh_rt", lambda a, k: f"{a[0].name}: " + " ".join(str(a[1]).split())[:50])
        elif name == "kvorch.hosts.ops":
            wrap(mod.HostOps, "run", "cmd", cmd_label)
        elif name == "kvorch.processes":
            wrap(mod, "http_health", "health", lambda a, k: a[0])
        elif name == "kvorch.bundle":
            wrap(mod, "ensure", "bundle", lambda a, k: f"{a[0].name}: bundle.ensure")
            wrap(mod, "local_bundle", "bundle", "local_bundle()")
        elif name == "kvorch.cluster":
            for f in ("open_nodes", "observe", "start_process", "_wait_healthy", "save_state", "_ship_bundles",
                      "_upload", "load_state", "stop_all", "not_running", "http_health", "up", "down",
                      "clear_state", "new_run_id"):
                if hasattr(mod, f):
                    lab = (lambda f: (lambda a, k: f + (f" {a[0].name}" if a and hasattr(a[0], "name") and f in ("observe", "start_process", "_upload") else "")
                                      + (f" {a[2].name}" if f == "start_process" else "")
                                      + (f" {a[0]}" if f == "http_health" else "")))(f)
                    wrap(mod, f, "cluster", lab)
        elif name == "kvorch.nodes":
            for f in ("connect_predicted", "connect_early", "_resolve_workdir"):
                wrap(mod, f, "nodes", f)
        elif name == "kvorch.plan":
            wrap(mod, "build_plan", "plan", "build_plan")
        elif name == "kvorch.inventory":
            wrap(mod, "load_inventory", "plan", "load_inventory")

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path, target=None):
            if not fullname.startswith("kvorch"):
                return None
            for f in sys.meta_path:
                if f is self:
                    continue
                spec = getattr(f, "find_spec", lambda *a: None)(fullname, path, target)
                if spec is not None:
                    break
            else:
                return None
            loader = spec.loader
            orig = loader.exec_module
            def exec_module(module, orig=orig):
                t0 = time.monotonic()
                orig(module)
                patch(fullname, module)
                if time.monotonic() - t0 > 0.004:
                    rec("import", fullname, t0, time.monotonic())
            loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, Finder())

    def dump():
        ru = resource.getrusage(resource.RUSAGE_SELF)
        out = {"events": EV, "end_ms": round((time.monotonic() - T0) * 1000, 2),
               "cpu_s": ru.ru_utime + ru.ru_stime}
        with open(os.environ["KVT_OUT"], "w") as f:
            json.dump(out, f)
        if os.environ.get("KVT_FAST_EXIT"):
            sys.stdout.flush(); sys.stderr.flush()
            os._exit(0)
    atexit.register(dump)
    sys.argv = ["orchestrate"] + sys.argv[1:]
    from kvorch.cli import main
    main()
''')


def run_traced(args: list[str], env: dict[str, str], out: Path) -> dict:
    tracer = out.with_suffix(".tracer.py")
    tracer.write_text(TRACER)
    import time

    t0 = time.monotonic()
    r = subprocess.run([sys.executable, str(tracer), *args], env={**env, "KVT_ROOT": str(ROOT), "KVT_OUT": str(out)},
                       capture_output=True, text=True)
    wall_ms = (time.monotonic() - t0) * 1000
    if r.returncode != 0:
        raise RuntimeError(f"{args} failed: {r.stderr}{r.stdout}")
    tl = json.loads(out.read_text())
    tl["wall_ms"] = round(wall_ms, 1)  # as the caller saw it: spawn to exit (the interpreter's start and end too)
    return tl


def show(tl: dict) -> None:
    for e in sorted(tl["events"], key=lambda e: e["start_ms"]):
        if e["kind"] == "cluster" and e["label"] == "up":
            continue
        dur = e["end_ms"] - e["start_ms"]
        print(f"  {e['start_ms']:8.1f} → {e['end_ms']:8.1f}  {dur:7.1f} ms  {e['thread'][:22]:<22} {e['kind']:<7} {e['label']}")
    print(f"  atexit at {tl['end_ms']:.1f} ms after the first line of the program; spawn to exit {tl['wall_ms']:.1f} ms; "
          f"CPU {tl['cpu_s'] * 1000:.0f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", help="write every round's timeline here")
    ap.add_argument("--keep-bundle", action="store_true", help="(default) bundle already on the hosts after round 1")
    a = ap.parse_args()
    from sshd import SshdCluster
    from up_overhead import loopback_inventory

    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    tmp = Path(tempfile.mkdtemp(prefix="bench-tl-"))
    rounds = []
    with SshdCluster(tmp / "sshd") as cluster:
        inv = loopback_inventory(cluster, tmp)
        env = {**os.environ, "ORCHESTRATE_STATE": f"{tmp}/state", "ORCHESTRATE_LOGS": f"{tmp}/logs",
               "ORCHESTRATE_INVENTORY": str(inv), "ORCHESTRATE_SSH_CONFIG": str(cluster.ssh_config)}
        for i in range(a.rounds):
            tl = run_traced(["up", "--skip-preflight", "--json"], env, tmp / f"up{i}.json")
            print(f"round {i + 1}: up --skip-preflight")
            show(tl)
            rounds.append(tl)
            subprocess.run([sys.executable, str(ROOT / "orchestrate.py"), "down", "--no-collect"], env=env,
                           capture_output=True, check=True)
    if a.json:
        Path(a.json).write_text(json.dumps(rounds, indent=1))


if __name__ == "__main__":
    main()
