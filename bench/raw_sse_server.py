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
parsed to the moment the first chunk was handed to the socket. A second clock starts when the
request's last byte *arrived* (the kernel's receive stamp, SO_TIMESTAMPNS, on Linux): the
difference is the time the request waited for this server's loop to read it — a wait that is in
the client's TTFT but neither the client's doing nor in the first clock (under CPU contention it is
the server's share of the "overhead"). ``GET /stats`` returns those times (p50, p90, mean in ms),
the count, and its event loop's lag; ``POST /stats/reset`` clears them.

    python bench/raw_sse_server.py --port 8123 [--ttft-ms 5] [--itl-ms 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import statistics
import struct
import time

_CL = re.compile(rb"content-length:\s*(\d+)", re.I)
_MAXTOK = re.compile(rb'"max_tokens"\s*:\s*(\d+)')


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _event(obj: dict) -> bytes:
    return _chunk(b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n")


_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TS = struct.Struct("@ll")


def _offset_ns() -> int:
    """CLOCK_REALTIME − perf_counter (CLOCK_MONOTONIC), tightest of a few brackets."""
    best = None
    for _ in range(5):
        m1 = time.monotonic_ns()
        r = time.time_ns()
        m2 = time.monotonic_ns()
        if best is None or m2 - m1 < best[0]:
            best = (m2 - m1, r - (m1 + m2) // 2)
    return best[1]


class Server:
    def __init__(self, ttft_ms: float, itl_ms: float):
        self.ttft = ttft_ms / 1000
        self.itl = itl_ms / 1000
        self.first: list[float] = []
        self.first_from_arrival: list[float] = []  # from the request's kernel arrival stamp
        self.gap_sum = 0.0  # between consecutive token writes of a stream, for the mean ITL
        self.gap_n = 0
        self.offset_ns = _offset_ns()
        self.lags: list[float] = []
        self.tok = _event({"id": "cmpl-raw", "object": "text_completion", "model": "bench-model",
                           "choices": [{"index": 0, "text": " tok", "finish_reason": None}]})

    def stats(self) -> bytes:
        xs = sorted(self.first)
        xa = sorted(self.first_from_arrival)
        lags = sorted(self.lags)

        def q(v: list[float], p: float) -> float | None:
            return 1000 * v[min(len(v) - 1, int(p * (len(v) - 1)))] if v else None

        return json.dumps({"count": len(xs), "first_byte_p50_ms": q(xs, 0.5), "first_byte_p90_ms": q(xs, 0.9),
                           "first_byte_mean_ms": 1000 * statistics.fmean(xs) if xs else None,
                           "first_byte_from_arrival_p50_ms": q(xa, 0.5), "first_byte_from_arrival_p90_ms": q(xa, 0.9),
                           "arrival_stamped": len(xa),
                           "itl_mean_ms": 1000 * self.gap_sum / self.gap_n if self.gap_n else None,
                           "loop_lag_p50_ms": q(lags, 0.5), "loop_lag_p90_ms": q(lags, 0.9)}).encode()

    async def stream(self, tr: "Conn", n: int, t_req: float, t_arrived: float | None) -> None:
        await asyncio.sleep(self.ttft)
        if tr.is_closing():
            return
        t = time.perf_counter()
        tr.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n" + self.tok)
        self.first.append(t - t_req)
        if t_arrived is not None:
            self.first_from_arrival.append(t - t_arrived)
        last = t
        for _ in range(n - 1):
            await asyncio.sleep(self.itl)
            if tr.is_closing():
                return
            t = time.perf_counter()
            tr.write(self.tok)
            self.gap_sum += t - last
            self.gap_n += 1
            last = t
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


class Conn:
    """One connection, read with recvmsg from loop.add_reader (so each read has the kernel's
    arrival stamp), written with send (the rest, if any, when the socket is writable)."""

    def __init__(self, srv: Server, loop: asyncio.AbstractEventLoop, sock: socket.socket):
        self.srv, self.loop, self.sock = srv, loop, sock
        self.fd = sock.fileno()
        self.buf = b""
        self.wbuf = bytearray()
        self.closed = False
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
            self.stamps = True
        except OSError:
            self.stamps = False
        loop.add_reader(self.fd, self.on_read)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.remove_reader(self.fd)
            self.loop.remove_writer(self.fd)
            self.sock.close()

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        if self.wbuf:
            self.wbuf += data
            return
        try:
            n = self.sock.send(data)
        except BlockingIOError:
            n = 0
        except OSError:
            self.close()
            return
        if n < len(data):
            self.wbuf += data[n:]
            self.loop.add_writer(self.fd, self.on_write)

    def on_write(self) -> None:
        try:
            n = self.sock.send(self.wbuf)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        del self.wbuf[:n]
        if not self.wbuf:
            self.loop.remove_writer(self.fd)

    def on_read(self) -> None:
        try:
            data, anc, _, _ = self.sock.recvmsg(65536, socket.CMSG_SPACE(_TS.size) if self.stamps else 0)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        if not data:
            self.close()
            return
        arrived = None
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS:
                sec, nsec = _TS.unpack_from(payload)
                arrived = (sec * 1_000_000_000 + nsec - self.srv.offset_ns) / 1e9
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
            self.handle(head, body, arrived)

    def handle(self, head: bytes, body: bytes, arrived: float | None) -> None:
        t = time.perf_counter()
        line = head.split(b"\r\n", 1)[0]
        if line.startswith(b"GET /stats") or line.startswith(b"GET /health"):
            out = self.srv.stats() if b"/stats" in line else b"{}"
            self.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                       % (len(out), out))
        elif line.startswith(b"POST /stats/reset"):
            self.srv.first.clear()
            self.srv.first_from_arrival.clear()
            self.srv.gap_sum, self.srv.gap_n = 0.0, 0
            self.srv.lags.clear()
            self.srv.offset_ns = _offset_ns()
            self.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        else:
            m = _MAXTOK.search(body)
            self.loop.create_task(self.srv.stream(self, max(1, int(m.group(1)) if m else 16), t, arrived))


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ttft-ms", type=float, default=5.0)
    ap.add_argument("--itl-ms", type=float, default=2.0)
    a = ap.parse_args()
    srv = Server(a.ttft_ms, a.itl_ms)
    loop = asyncio.get_running_loop()
    lsock = socket.create_server((a.host, a.port), backlog=1024)
    lsock.setblocking(False)
    loop.create_task(srv.lag_monitor())
    while True:
        sock, _ = await loop.sock_accept(lsock)
        Conn(srv, loop, sock)


if __name__ == "__main__":
    asyncio.run(main())
