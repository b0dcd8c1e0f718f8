#!/usr/bin/env python
"""How many requests per second the simulated engine sustains on this machine.

Starts ``python -m kvorch.sim.engine`` on 127.0.0.1 (an ephemeral port) with every modeled
latency set to zero, so what is measured is the simulator's own overhead (HTTP, tokenizer,
prefix cache, LMCache bookkeeping, metrics, log lines), then sends non-streaming completions
from keep-alive connections, bounded by a request count and a time limit. Prints requests/s
and latency percentiles; ``--lmcache`` turns the LMCache connector on (a prompt-prefix mix that
hits), ``--stream`` uses SSE.

    python bench/sim_throughput.py --requests 2000 --concurrency 16 --max-seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Conn:
    """One keep-alive HTTP/1.1 connection (the benchmark client must stay cheap)."""

    def __init__(self, port: int):
        self.port = port
        self.reader = self.writer = None

    async def post(self, path: str, body: dict) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        data = json.dumps(body).encode()
        self.writer.write(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(data), data))
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        hdr = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
        if hdr.get("transfer-encoding") == "chunked":
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")
                    break
                parts.append(await self.reader.readexactly(size))
                await self.reader.readexactly(2)
            payload = b"".join(parts)
        else:
            payload = await self.reader.readexactly(int(hdr.get("content-length", "0")))
        if hdr.get("connection") == "close":
            self.writer.close()
            self.writer = None
        return status, payload


async def run_load(port: int, n: int, concurrency: int, max_s: float, lmcache: bool,
                   stream: bool, prompt_tokens: int) -> dict:
    lat: list[float] = []
    errors = 0
    next_i = 0
    t_end = time.perf_counter() + max_s
    shared = "".join(f" s{i:04d}" for i in range(prompt_tokens))

    async def worker(w: int) -> None:
        nonlocal next_i, errors
        c = Conn(port)
        while next_i < n and time.perf_counter() < t_end:
            i = next_i
            next_i += 1
            # with LMCache: a shared prefix (hits after the first) + a unique tail
            prompt = (shared if lmcache else "".join(f" u{i:05d}" for i in range(4))) + f" q{i}"
            body = {"prompt": prompt, "max_tokens": 4, "temperature": 0, "ignore_eos": True}
            if stream:
                body["stream"] = True
            t0 = time.perf_counter()
            try:
                status, _ = await c.post("/v1/completions", body)
            except (OSError, asyncio.IncompleteReadError):
                status = 0
                c = Conn(port)
            if status != 200:
                errors += 1
            lat.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*[worker(w) for w in range(concurrency)])
    elapsed = time.perf_counter() - t0
    lat.sort()
    return {"requests": len(lat), "errors": errors, "elapsed_s": elapsed,
            "req_per_s": len(lat) / elapsed if elapsed else 0.0,
            "p50_ms": 1000 * lat[len(lat) // 2] if lat else 0.0,
            "p99_ms": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else 0.0,
            "mean_ms": 1000 * statistics.fmean(lat) if lat else 0.0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-seconds", type=float, default=20.0)
    ap.add_argument("--lmcache", action="store_true", help="LMCacheConnectorV1 on (local CPU tier)")
    ap.add_argument("--stream", action="store_true")
    ap.add_argument("--prompt-tokens", type=int, default=600)
    ap.add_argument("--access-log", action="store_true", help="keep the per-request access log line")
    ap.add_argument("--json", action="store_true", help="print one JSON line")
    a = ap.parse_args()

    port = free_port()
    env = dict(os.environ, PYTHONHASHSEED="123", PYTHONPATH=str(ROOT),
               KVORCH_SIM_PREFILL_MS_PER_TOKEN="0", KVORCH_SIM_LOAD_MS_PER_TOKEN="0",
               KVORCH_SIM_MS_PER_OUTPUT_TOKEN="0", KVORCH_SIM_STORE_MS_PER_TOKEN="0",
               KVORCH_SIM_TRANSFER_MBPS="0")
    argv = [sys.executable, "-m", "kvorch.sim.engine", "--model", "bench-model", "--host",
            "127.0.0.1", "--port", str(port), "--max-num-seqs", "256", "--disable-log-stats"]
    if not a.access_log:
        argv.append("--disable-uvicorn-access-log")
    if a.lmcache:
        argv += ["--kv-transfer-config", '{"kv_connector":"LMCacheConnectorV1","kv_role":"kv_both"}']
        env["LMCACHE_CHUNK_SIZE"] = "256"
    log = tempfile.NamedTemporaryFile("wb", prefix="sim_bench_", suffix=".log", delete=False)
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if proc.poll() is not None or time.perf_counter() - t0 > 10:
                    print(f"engine did not start; see {log.name}", file=sys.stderr)
                    return 1
                time.sleep(0.01)
        startup = time.perf_counter() - t0
        res = asyncio.run(run_load(port, a.requests, a.concurrency, a.max_seconds, a.lmcache,
                                   a.stream, a.prompt_tokens))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        os.unlink(log.name)
    res.update(startup_s=startup, concurrency=a.concurrency, lmcache=a.lmcache, stream=a.stream,
               cpus=os.cpu_count())
    if a.json:
        print(json.dumps(res))
    else:
        print(f"sim engine: {res['req_per_s']:.0f} requests/s "
              f"({res['requests']} requests in {res['elapsed_s']:.2f} s, concurrency "
              f"{a.concurrency}, lmcache={'on' if a.lmcache else 'off'}, "
              f"stream={'on' if a.stream else 'off'}, {res['errors']} errors); "
              f"latency p50 {res['p50_ms']:.1f} ms, p99 {res['p99_ms']:.1f} ms; "
              f"startup to listening {res['startup_s']:.2f} s; {res['cpus']} CPUs")
    return 0 if res["errors"] == 0 and res["requests"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
