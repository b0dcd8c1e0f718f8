#!/usr/bin/env python3
"""Does the client's TTFT agree with the simulated engine's configured latency?

Starts one simulated engine (no KV connector, so TTFT = prefill of the uncached prompt =
prompt_tokens x prefill_ms_per_token), sends N cold requests one at a time (a nonce at the start
of each prompt), and prints the median and p90 of (client TTFT − configured prefill).
Target: median within 2 ms. Bounded: N requests, 60 s.

The client's clock starts when the request goes on the wire (httpx's trace extension); what is
left is the sim's timer wake-up (~0.3 ms on its precise loop), its own work after the wait, and
the time httpx takes to hand the first chunk to the caller.
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kvorch import client as oa  # noqa: E402
from kvorch.scenarios.prompts import nonce, text_of_words  # noqa: E402

N = 30
PREFILL_MS = 0.1
DECODE_MS = 2.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def measure(base: str, n: int) -> tuple[list[tuple[float, int]], list[float]]:
    out, itl = [], []
    async with httpx.AsyncClient(trust_env=False) as c:
        await oa.send(c, "sim", base, "m", prompt="warm up", max_tokens=2)
        for i in range(n):
            r = await oa.send(c, "sim", base, "m", prompt=nonce() + text_of_words(600 + 37 * i, i), max_tokens=4,
                              extra_body={"ignore_eos": True})
            if r.ok and r.ttft_s and r.prompt_tokens:
                out.append((r.ttft_s, r.prompt_tokens))
                itl.extend(r.itl_s)
    return out, itl


def main() -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "kvorch.sim.engine", "--model", "m", "--port", str(port),
                             "--sim-prefill-ms-per-token", str(PREFILL_MS),
                             "--sim-ms-per-output-token", str(DECODE_MS)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONHASHSEED": "0"})
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=0.5, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.02)
        rows, itl = asyncio.run(asyncio.wait_for(measure(f"http://127.0.0.1:{port}/v1", N), 60))
    finally:
        proc.terminate()
        proc.wait(10)
    diffs_ms = sorted((ttft - tokens * PREFILL_MS / 1000) * 1000 for ttft, tokens in rows)
    configured = statistics.median(tokens * PREFILL_MS for _, tokens in rows)
    print(f"{len(rows)} cold requests, configured prefill median {configured:.1f} ms")
    print(f"client TTFT − configured: median {statistics.median(diffs_ms):+.2f} ms, "
          f"p90 {diffs_ms[int(0.9 * (len(diffs_ms) - 1))]:+.2f} ms, min {diffs_ms[0]:+.2f} ms (target: median ≤ 2 ms)")
    itl_ms = sorted(1000 * x - DECODE_MS for x in itl)
    if itl_ms:
        print(f"client inter-token latency − configured decode step ({DECODE_MS:g} ms), {len(itl_ms)} gaps: "
              f"median {statistics.median(itl_ms):+.2f} ms, p90 {itl_ms[int(0.9 * (len(itl_ms) - 1))]:+.2f} ms")


if __name__ == "__main__":
    main()
