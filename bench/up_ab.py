#!/usr/bin/env python3
"""Two checkouts' `up --skip-preflight` over SSH, interleaved on the same two loopback sshd hosts.

    python bench/up_ab.py /work/main /work/wt-up4 20

Each tree gets its own cluster name, ports, workdirs and state; both are warmed first (bundle on
the hosts, connect cache filled), then N rounds alternate which tree goes first; every `up` is
followed by a `down`. Prints both medians and the median of the paired differences (A − B): on a
shared 2-core machine the load moves both alike, so the paired difference is the number to read.
"""
import os, sys, statistics, subprocess, tempfile, time
from pathlib import Path
import yaml
A, B, N = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2]), int(sys.argv[3])
sys.path.insert(0, f"{B}/tests"); sys.path.insert(0, f"{B}/bench")
from sshd import SshdCluster
from up_overhead import free_ports_everywhere
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
for t in (A, B):
    subprocess.run([sys.executable, "-m", "compileall", "-q", f"{t}/kvorch"], check=True, stdout=subprocess.DEVNULL)
tmp = Path(tempfile.mkdtemp(prefix="ab-"))
res = {A: [], B: []}
with SshdCluster(tmp / "sshd") as cl:
    invs = {}
    for t in (A, B):
        lb = free_ports_everywhere(yaml.safe_load(Path(f"{B}/inventories/loopback.yaml").read_text()))
        lb["cluster"] = "ab" + ("a" if t == A else "b")
        lb.setdefault("env", {})["PYTHONPATH"] = t
        for h in lb["hosts"].values():
            h["ssh"]["port"] = cl.port; h["workdir"] = str(tmp / ("a" if t == A else "b") / h["address"]); h["python"] = sys.executable
        p = tmp / f"inv-{'a' if t == A else 'b'}.yaml"; p.write_text(yaml.safe_dump(lb)); invs[t] = p
    def run(t, *args):
        env = {**os.environ, "PYTHONPATH": t, "ORCHESTRATE_STATE": str(tmp / f"state-{t[-4:]}"), "ORCHESTRATE_LOGS": str(tmp / f"logs-{t[-4:]}"),
               "ORCHESTRATE_INVENTORY": str(invs[t]), "ORCHESTRATE_SSH_CONFIG": str(cl.ssh_config)}
        t0 = time.monotonic(); r = subprocess.run([sys.executable, f"{t}/orchestrate.py", *args], env=env, cwd=tmp, capture_output=True, text=True)
        if r.returncode: raise SystemExit(f"{t} {args}: {r.stderr}{r.stdout}")
        return time.monotonic() - t0
    for t in (A, B):  # warm: bundle shipped, connect cache filled
        run(t, "up", "--skip-preflight"); run(t, "down", "--no-collect")
    for i in range(N):
        for t in ((A, B) if i % 2 == 0 else (B, A)):
            res[t].append(run(t, "up", "--skip-preflight")); run(t, "down", "--no-collect"); time.sleep(0.2)
ma, mb = statistics.median(res[A]), statistics.median(res[B])
d = [a - b for a, b in zip(res[A], res[B])]
print(f"A {A}: median {ma:.3f} s  {[round(x, 2) for x in res[A]]}")
print(f"B {B}: median {mb:.3f} s  {[round(x, 2) for x in res[B]]}")
print(f"A - B: median of paired differences {statistics.median(d):+.3f} s; medians {ma - mb:+.3f} s; load {os.getloadavg()[0]:.2f}")
