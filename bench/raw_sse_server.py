#!/usr/bin/env python3
"""A streaming completions server that does not queue: the reference for the client's overhead.

The simulated engine is one Python process doing the work of a server (tokenizing, a KV store,
metrics, LMCache log lines); at 64+ requests in flight it saturates its core, and the time a
request waits before its handler starts is in the client's TTFT but not in the server's own
TTFT clock. This server does almost nothing per request (an asyncio Protocol, answers prepared
in advance), so at the client's highest rate its loop stays mostly idle: what the client
measures above this server's own first-byte time is the client's (and the loopback's) share.

Per request (HTTP/1.1, keep-alive, ``POST /v1/completions``): after ``--ttft-ms`` it writes the
headers and the first SSE chunk, then one chunk every ``--itl-ms`` (``max_tokens`` chunks, default
16), a usage chunk and ``[DONE]``. Its clock runs from the moment the request's last byte was
parsed to the moment the first chunk was handed to the socket. ``GET /stats`` returns those times
(p50, p90, mean in ms), the count, and its event loop's lag; ``POST /stats/reset`` clears them.

    python bench/raw_sse_server.py --port 8123 [--ttft-ms 5] [--itl-ms 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import time

_CL = re.compile(rb"content-length:\s*(\d+)", re.I)
_MAXTOK = re.compile(rb'"max_tokens"\s*:\s*(\d+)')


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _event(obj: dict) -> bytes:
    return _chunk(b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n")


class Server:
    def __init__(self, ttft_ms: float, itl_ms: float):
        self.ttft = ttft_ms / 1000
        self.itl = itl_ms / 1000
        self.first: list[float] = []
        self.lags: list[float] = []
        self.tok = _event({"id": "cmpl-raw", "object": "text_completion", "model": "bench-model",
                           "choices": [{"index": 0, "text": " tok", "finish_reason": None}]})

    def stats(self) -> bytes:
        xs = sorted(self.first)
        lags = sorted(self.lags)

        def q(v: list[float], p: float) -> float | None:
            return 1000 * v[min(len(v) - 1, int(p * (len(v) - 1)))] if v else None

        return json.dumps({"count": len(xs), "first_byte_p50_ms": q(xs, 0.5), "first_byte_p90_ms": q(xs, 0.9),
                           "first_byte_mean_ms": 1000 * statistics.fmean(xs) if xs else None,
                           "loop_lag_p50_ms": q(lags, 0.5), "loop_lag_p90_ms": q(lags, 0.9)}).encode()

    async def stream(self, tr: asyncio.Transport, n: int, t_req: float) -> None:
        await asyncio.sleep(self.ttft)
        if tr.is_closing():
            return
        tr.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n" + self.tok)
        self.first.append(time.perf_counter() - t_req)
        for _ in range(n - 1):
            await asyncio.sleep(self.itl)
            if tr.is_closing():
                return
            tr.write(self.tok)
        tail = _event({"id": "cmpl-raw", "object": "text_completion", "model": "bench-model", "choices": [],
                       "usage": {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": n + 1}})
        tr.write(tail + _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")

    async def lag_monitor(self) -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            self.lags.append(time.perf_counter() - t - 0.001)
            if len(self.lags) > 200_000:
                del self.lags[:100_000]


class Conn(asyncio.Protocol):
    def __init__(self, srv: Server):
        self.srv = srv
        self.buf = b""
        self.tr: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.tr = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end]
            m = _CL.search(head)
            size = int(m.group(1)) if m else 0
            if len(self.buf) < end + 4 + size:
                return
            body = self.buf[end + 4:end + 4 + size]
            self.buf = self.buf[end + 4 + size:]
            self.handle(head, body)

    def handle(self, head: bytes, body: bytes) -> None:
        t = time.perf_counter()
        assert self.tr is not None
        line = head.split(b"\r\n", 1)[0]
        if line.startswith(b"GET /stats") or line.startswith(b"GET /health"):
            out = self.srv.stats() if b"/stats" in line else b"{}"
            self.tr.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                          % (len(out), out))
        elif line.startswith(b"POST /stats/reset"):
            self.srv.first.clear()
            self.srv.lags.clear()
            self.tr.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        else:
            m = _MAXTOK.search(body)
            asyncio.get_running_loop().create_task(self.srv.stream(self.tr, max(1, int(m.group(1)) if m else 16), t))


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ttft-ms", type=float, default=5.0)
    ap.add_argument("--itl-ms", type=float, default=2.0)
    a = ap.parse_args()
    srv = Server(a.ttft_ms, a.itl_ms)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Conn(srv), a.host, a.port, backlog=1024)
    loop.create_task(srv.lag_monitor())
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
