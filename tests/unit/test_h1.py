"""kvorch.h1, the lean HTTP/1.1 client of the measuring path, against small asyncio servers that
script the bytes on the wire (keep-alive, chunked SSE, closes, errors)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from kvorch.h1 import ConnectError, H1Error, H1Pool

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, dict[str, Any]], Awaitable[bool]]


async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.decode("latin-1").split("\r\n"):
        if line.lower().startswith("content-length:"):
            length = int(line.split(":", 1)[1])
    return head + await reader.readexactly(length)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


async def serve(handler: Handler, body: Callable[[str, dict[str, Any]], Awaitable[Any]]) -> dict[str, Any]:
    """Run ``handler`` per request (it returns whether to keep the connection), call ``body(base)``."""
    seen: dict[str, Any] = {"connections": 0, "requests": [], "open": 0, "max_open": 0}

    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen["connections"] += 1
        seen["open"] += 1
        seen["max_open"] = max(seen["max_open"], seen["open"])
        try:
            while True:
                req = await _read_request(reader)
                if req is None:
                    break
                seen["requests"].append(req)
                if not await handler(reader, writer, seen):
                    break
        finally:
            seen["open"] -= 1
            writer.close()

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        seen["result"] = await body(f"127.0.0.1:{port}", seen)
    finally:
        server.close()
    return seen


async def sse_three_events(reader, writer, seen) -> bool:
    writer.write(SSE_HEAD)
    for i in range(3):
        writer.write(chunk(b'data: {"n": %d}\n\n' % i))
    writer.write(chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
    await writer.drain()
    return True


def collect(events: list[tuple[bytes, float]]):
    def sink(data: bytes, now: float) -> bool:
        events.append((data, now))
        return data == b"[DONE]"
    return sink


def run(coro):
    return asyncio.run(coro)


def test_a_streamed_answer_leaves_the_connection_for_the_next_request() -> None:
    async def body(base: str, seen) -> list[list[bytes]]:
        host, port = base.split(":")
        pool = H1Pool()
        out = []
        for _ in range(3):
            events: list[tuple[bytes, float]] = []
            resp = await pool.request(host, int(port), "/v1/completions", b"{}", {}, sink=collect(events))
            assert resp.status == 200
            out.append([d for d, _ in events])
        pool.close()
        return out

    seen = run(serve(sse_three_events, body))
    assert seen["result"] == [[b'{"n": 0}', b'{"n": 1}', b'{"n": 2}', b"[DONE]"]] * 3
    assert seen["connections"] == 1 and len(seen["requests"]) == 3
    head = seen["requests"][0].split(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"post /v1/completions http/1.1") and b"content-length: 2" in head


def test_a_kept_connection_closed_by_the_server_before_answering_is_retried_once_on_a_fresh_one() -> None:
    async def one_answer_per_connection(reader, writer, seen) -> bool:
        # the first request on a connection is answered; the next one meets a close, as when the
        # server's keep-alive timeout fires just as the request arrives
        answered = seen.setdefault("answered", [])  # the writers themselves: ids get reused
        if any(w is writer for w in answered):
            return False
        answered.append(writer)
        return await sse_three_events(reader, writer, seen)

    async def body(base: str, seen) -> list[int]:
        host, port = base.split(":")
        pool = H1Pool()
        statuses = []
        for _ in range(3):
            resp = await pool.request(host, int(port), "/x", b"{}", {}, sink=collect([]))
            statuses.append(resp.status)
        pool.close()
        return statuses

    seen = run(serve(one_answer_per_connection, body))
    assert seen["result"] == [200, 200, 200]
    assert seen["connections"] == 3 and len(seen["requests"]) == 5  # 2 dropped, each retried once


def test_a_connection_the_server_closes_after_answering_is_not_reused() -> None:
    async def answer_then_close(reader, writer, seen) -> bool:
        await sse_three_events(reader, writer, seen)
        return False  # closes without saying so (no Connection: close)

    async def body(base: str, seen) -> list[int]:
        host, port = base.split(":")
        pool = H1Pool()
        statuses = []
        for _ in range(3):
            resp = await pool.request(host, int(port), "/x", b"{}", {}, sink=collect([]))
            statuses.append(resp.status)
            await asyncio.sleep(0.05)  # the server's close arrives
        pool.close()
        return statuses

    seen = run(serve(answer_then_close, body))
    assert seen["result"] == [200, 200, 200]
    assert seen["connections"] == 3 and len(seen["requests"]) == 3


def test_an_error_status_keeps_its_body_and_the_events_sink_gets_nothing() -> None:
    async def bad_request(reader, writer, seen) -> bool:
        payload = b'{"error": {"message": "max_tokens is too large"}}'
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))
        await writer.drain()
        return True

    async def body(base: str, seen):
        host, port = base.split(":")
        pool = H1Pool()
        events: list[tuple[bytes, float]] = []
        resp = await pool.request(host, int(port), "/x", b"{}", {}, sink=collect(events))
        again = await pool.request(host, int(port), "/x", b"{}", {}, sink=collect(events))
        pool.close()
        return resp, again, events

    seen = run(serve(bad_request, body))
    resp, again, events = seen["result"]
    assert resp.status == 400 and b"max_tokens is too large" in resp.body and events == []
    assert again.status == 400 and seen["connections"] == 1  # a Content-Length answer keeps the connection


def test_a_stream_cut_mid_answer_is_an_error_not_an_empty_success() -> None:
    async def cut(reader, writer, seen) -> bool:
        writer.write(SSE_HEAD + chunk(b'data: {"n": 0}\n\n'))
        await writer.drain()
        return False

    async def body(base: str, seen):
        host, port = base.split(":")
        pool = H1Pool()
        events: list[tuple[bytes, float]] = []
        try:
            with pytest.raises(H1Error, match="mid-response"):
                await pool.request(host, int(port), "/x", b"{}", {}, sink=collect(events))
        finally:
            pool.close()
        return events

    seen = run(serve(cut, body))
    assert [d for d, _ in seen["result"]] == [b'{"n": 0}']


def test_events_carry_the_time_their_bytes_arrived_and_done_is_handed_over_at_once() -> None:
    gap = 0.2
    answered = asyncio.Event()

    async def slow(reader, writer, seen) -> bool:
        writer.write(SSE_HEAD + chunk(b"data: a\n\ndata: b\n\n"))  # two events in one segment
        await writer.drain()
        await asyncio.sleep(gap)
        writer.write(chunk(b"data: c\n\n"))
        await writer.drain()
        await asyncio.sleep(gap)
        writer.write(chunk(b"data: [DONE]\n\n"))
        await writer.drain()
        # the message's end only once the caller has its answer: a client that waited for it hangs
        await answered.wait()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    async def body(base: str, seen):
        host, port = base.split(":")
        pool = H1Pool()
        events: list[tuple[bytes, float]] = []
        resp = await asyncio.wait_for(pool.request(host, int(port), "/x", b"{}", {}, sink=collect(events)), 10)
        answered.set()
        await asyncio.sleep(0.1)  # the terminator arrives: the connection goes back to the pool
        second = await pool.request(host, int(port), "/x", b"{}", {}, sink=collect([]))
        pool.close()
        return events, resp, second

    seen = run(serve(slow, body))
    events, resp, second = seen["result"]
    (a, ta), (b, tb), (c, tc), (done, td) = events
    assert (a, b, c, done) == (b"a", b"b", b"c", b"[DONE]")
    assert ta == tb  # arrived together
    assert tc - tb >= gap * 0.9 and td - tc >= gap * 0.9
    assert resp.ended_at == td
    assert second.status == 200 and seen["connections"] == 1  # the connection was read to its end and reused


def test_max_connections_bounds_the_open_connections_and_the_rest_wait() -> None:
    async def slowish(reader, writer, seen) -> bool:
        await asyncio.sleep(0.05)
        return await sse_three_events(reader, writer, seen)

    async def body(base: str, seen):
        host, port = base.split(":")
        pool = H1Pool(max_connections=2)
        resps = await asyncio.gather(*[pool.request(host, int(port), "/x", b"{}", {}, sink=collect([]))
                                       for _ in range(6)])
        pool.close()
        return [r.status for r in resps]

    seen = run(serve(slowish, body))
    assert seen["result"] == [200] * 6
    assert seen["max_open"] == 2 and seen["connections"] == 2


def test_connection_refused_is_a_connect_error_naming_the_address() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def main() -> None:
        pool = H1Pool()
        with pytest.raises(ConnectError, match=f"127.0.0.1:{port}"):
            await pool.request("127.0.0.1", port, "/x", b"{}", {})
        pool.close()

    run(main())


def test_a_closed_pool_refuses_new_requests() -> None:
    async def main() -> None:
        pool = H1Pool()
        pool.close()
        with pytest.raises(H1Error, match="closed"):
            await pool.request("127.0.0.1", 1, "/x", b"{}", {})

    run(main())


def test_the_next_request_waits_for_a_connection_finishing_its_answer_rather_than_opening_one() -> None:
    async def terminator_a_little_later(reader, writer, seen) -> bool:
        writer.write(SSE_HEAD + chunk(b"data: a\n\n") + chunk(b"data: [DONE]\n\n"))
        await writer.drain()
        await asyncio.sleep(0.01)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    async def body(base: str, seen) -> list[int]:
        host, port = base.split(":")
        pool = H1Pool()
        statuses = []
        for _ in range(3):  # each right after the previous one's [DONE]
            resp = await pool.request(host, int(port), "/x", b"{}", {}, sink=collect([]))
            statuses.append(resp.status)
        pool.close()
        return statuses

    seen = run(serve(terminator_a_little_later, body))
    assert seen["result"] == [200] * 3 and seen["connections"] == 1
