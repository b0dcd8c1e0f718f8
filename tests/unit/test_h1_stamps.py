"""Arrival times from the kernel (kvorch.h1 on Linux): a chunk that arrived while the client's
event loop was busy keeps the time it arrived, not the time the loop got round to it.

The servers here run in a thread of their own, with their own clock stamps taken right before
each write, so that blocking the client's loop does not delay them."""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time
from collections.abc import Callable

import httpx
import pytest

from kvorch import client as oa
from kvorch import h1

linux_only = pytest.mark.skipif(not h1._USE_KERNEL, reason="kernel receive stamps: Linux only")

SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def token(text: str) -> bytes:
    return chunk(b'data: {"id":"cmpl-t","choices":[{"index":0,"text":"%s","finish_reason":null}]}\n\n'
                 % text.encode())


TAIL = (chunk(b'data: {"id":"cmpl-t","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":3}}\n\n')
        + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")


class ThreadServer:
    """One-connection-at-a-time SSE server in a thread: on each request it calls ``on_request``
    (from its thread), waits ``first_after`` s, writes the head and the first token, then the
    other tokens ``gap`` s apart. ``writes`` holds, per token, (perf_counter, time.time) right
    before its write and (perf_counter, time.time) right after: the kernel stamped its arrival
    (loopback: during the send) in between. ``tail_sent``: time.time() after the last bytes."""

    def __init__(self, first_after: float, gap: float = 0.01, tokens: int = 3,
                 on_request: Callable[[], None] | None = None) -> None:
        self.first_after, self.gap, self.tokens, self.on_request = first_after, gap, tokens, on_request
        self.writes: list[tuple[float, float, float, float]] = []
        self.tail_sent = 0.0
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.port = self.lsock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.lsock.accept()
        except OSError:
            return
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += conn.recv(65536)
            head, _, rest = buf.partition(b"\r\n\r\n")
            length = int(next(ln.split(b":", 1)[1] for ln in head.split(b"\r\n")
                              if ln.lower().startswith(b"content-length")))
            while len(rest) < length:
                rest += conn.recv(65536)
            if self.on_request is not None:
                self.on_request()
            time.sleep(self.first_after)
            for i in range(self.tokens):
                if i:
                    time.sleep(self.gap)
                before = (time.perf_counter(), time.time())
                conn.sendall((SSE_HEAD if i == 0 else b"") + token(f"t{i}"))
                self.writes.append((*before, time.perf_counter(), time.time()))
            conn.sendall(TAIL)
            self.tail_sent = time.time()
            try:
                conn.recv(1)  # until the client closes
            except OSError:
                pass

    def close(self) -> None:
        self.lsock.close()
        self.thread.join(5)


def _send_while_the_loop_is_blocked(block_s: float, first_after: float, gap: float = 0.1) -> tuple[oa.RequestRecord, ThreadServer]:
    """send() one request; when the server has it, the client's loop is blocked for ``block_s``
    (from the server's thread: the loop runs a sleep) while the server writes the first token."""

    async def main() -> tuple[oa.RequestRecord, ThreadServer]:
        loop = asyncio.get_running_loop()
        srv = ThreadServer(first_after, gap, on_request=lambda: loop.call_soon_threadsafe(time.sleep, block_s))
        try:
            async with httpx.AsyncClient(trust_env=False) as c:
                rec = await oa.send(c, "e", f"http://127.0.0.1:{srv.port}", "m", prompt="hi", timeout=20)
                oa.close_lean_connections(c)
        finally:
            srv.close()
        return rec, srv

    return asyncio.run(main())


@linux_only
def test_ttft_is_the_kernels_arrival_time_even_when_the_loop_is_blocked_as_the_first_token_arrives() -> None:
    rec, srv = _send_while_the_loop_is_blocked(block_s=0.08, first_after=0.02, gap=0.1)
    assert rec.ok, rec.error
    assert rec.arrival_clock == "kernel"
    _, sent_from, _, sent_to = srv.writes[0]
    # the first token arrived while the server sent it, ~60 ms before the loop could read it (a
    # loop stamp would be that late); 1 ms of slack for the clocks (µs apart)
    arrived = rec.started_at + rec.ttft_s
    assert sent_from - 0.001 <= arrived <= sent_to + 0.001


def test_without_kernel_stamps_the_same_ttft_is_late_by_the_loops_delay(monkeypatch) -> None:
    """The planted cause the test above guards against: stamped by the loop, TTFT includes the
    client's own 60 ms (this is what the client measured before kernel stamps)."""
    monkeypatch.setattr(h1, "_USE_KERNEL", False)
    rec, srv = _send_while_the_loop_is_blocked(block_s=0.08, first_after=0.02, gap=0.1)
    assert rec.ok, rec.error
    assert rec.arrival_clock == "loop"
    late = rec.started_at + rec.ttft_s - srv.writes[0][1]
    assert late > 0.04


@linux_only
def test_tokens_that_arrive_together_while_the_loop_is_blocked_all_get_the_last_ones_time() -> None:
    """The kernel merges segments queued unread and keeps the later stamp, so a read carries the
    arrival of its last byte: the first token is then stamped late (never early) — TTFT is
    overstated by the gap to the last token of that read, not understated."""
    rec, srv = _send_while_the_loop_is_blocked(block_s=0.08, first_after=0.01, gap=0.01)
    assert rec.ok and rec.arrival_clock == "kernel"
    arrived = rec.started_at + rec.ttft_s
    assert arrived >= srv.writes[0][1]  # never before the first token was sent
    assert srv.writes[-1][1] - 0.001 <= arrived <= srv.tail_sent + 0.001  # the read's last segment
    assert rec.itl_s == [0.0, 0.0]


@linux_only
def test_itl_from_kernel_stamps_follows_the_servers_write_gaps() -> None:
    rec, srv = _send_while_the_loop_is_blocked(block_s=0.0, first_after=0.005, gap=0.01)
    assert rec.ok and rec.arrival_clock == "kernel"
    assert len(rec.itl_s) == len(srv.writes) - 1 == 2
    for got, (a, b) in zip(rec.itl_s, zip(srv.writes, srv.writes[1:])):
        # between (next sent from − this sent to) and (next sent to − this sent from), ±1 ms
        assert b[0] - a[2] - 0.001 <= got <= b[2] - a[0] + 0.001


def test_the_kernel_clock_converts_realtime_to_perf_counter_within_its_stated_error() -> None:
    clock = h1.KernelClock()
    assert 0 <= clock.error_ns < 100_000  # a bracket of two clock reads: well under 0.1 ms
    before = time.perf_counter()
    converted = clock.to_perf(time.time_ns())
    after = time.perf_counter()
    assert before - 0.001 <= converted <= after + 0.001


@linux_only
def test_a_kernel_stamp_that_would_lie_in_the_future_is_not_used(monkeypatch) -> None:
    """The wall clock stepped back after the offset was taken: converted kernel stamps would come
    out in the future; the loop's stamp is used instead, and the record says so."""
    monkeypatch.setattr(h1.CLOCK, "offset_ns", h1.CLOCK.offset_ns - 5_000_000_000)
    monkeypatch.setattr(h1.CLOCK, "taken_at", 1e18)  # not refreshed during the test
    rec, srv = _send_while_the_loop_is_blocked(block_s=0.0, first_after=0.005)
    assert rec.ok and rec.arrival_clock == "loop"
    assert rec.started_at + rec.ttft_s >= srv.writes[0][1]


@pytest.mark.skipif(sys.platform != "linux", reason="Linux")
def test_the_kernel_path_is_on_by_default_on_linux() -> None:
    assert h1._USE_KERNEL, "SO_TIMESTAMPNS should be available on Linux with perf_counter on CLOCK_MONOTONIC"


class _NoAddReaderLoop(asyncio.SelectorEventLoop):
    """A loop that cannot watch sockets for the caller (as Windows' proactor loop)."""

    def add_reader(self, *args, **kwargs):  # type: ignore[override]
        raise NotImplementedError


def test_a_loop_without_add_reader_streams_through_asyncios_transport_stamped_by_the_loop() -> None:
    async def main() -> tuple[oa.RequestRecord, ThreadServer]:
        srv = ThreadServer(0.005, 0.01)
        try:
            async with httpx.AsyncClient(trust_env=False) as c:
                rec = await oa.send(c, "e", f"http://127.0.0.1:{srv.port}", "m", prompt="hi", timeout=20)
                oa.close_lean_connections(c)
        finally:
            srv.close()
        return rec, srv

    loop = _NoAddReaderLoop()
    try:
        rec, srv = loop.run_until_complete(main())
    finally:
        loop.close()
    assert rec.ok, rec.error
    assert rec.output_text == "t0t1t2" and rec.arrival_clock == "loop"
    assert rec.started_at + rec.ttft_s >= srv.writes[0][1]


def test_the_httpx_path_says_its_chunks_are_stamped_by_the_loop(monkeypatch) -> None:
    monkeypatch.setattr(oa, "_FORCE_HTTPX", True)
    rec, _ = _send_while_the_loop_is_blocked(block_s=0.0, first_after=0.005, gap=0.01)
    assert rec.ok, rec.error
    assert rec.output_text == "t0t1t2" and rec.arrival_clock == "loop"


def test_a_host_name_is_resolved_and_streamed_like_an_address() -> None:
    async def main() -> tuple[oa.RequestRecord, ThreadServer]:
        srv = ThreadServer(0.005, 0.01)
        try:
            async with httpx.AsyncClient(trust_env=False) as c:
                rec = await oa.send(c, "e", f"http://localhost:{srv.port}", "m", prompt="hi", timeout=20)
                oa.close_lean_connections(c)
        finally:
            srv.close()
        return rec, srv

    rec, _ = asyncio.run(main())
    assert rec.ok, rec.error
    assert rec.output_text == "t0t1t2"
