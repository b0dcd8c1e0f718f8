"""kvorch.h1's framing parser, fed the bytes of an answer cut at every position: the in-place parse
with its shortcuts (a whole chunk in one read, a one-line ``data:`` chunk) gives the same events
and body as any other cut, and bad framing is still refused."""

from __future__ import annotations

import asyncio

import pytest

from kvorch import h1


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"

#: chunks that the one-line shortcut must *not* take as one event, and some it may
STREAM = (HEAD
          + chunk(b'data: {"n": 0}\n\n')  # the usual: one line, one event
          + chunk(b'data: {"n": 1}\n\ndata: {"n": 2}\n\n')  # two events in one chunk
          + chunk(b"event: message\ndata: 3\n\n")  # a field line before the data line
          + chunk(b": a comment\n\n")  # no event at all
          + chunk(b"data: 4")  # an event cut across two chunks ...
          + chunk(b"4\n\n")  # ... that the shortcut must not end early
          + chunk(b"data:5\r\n\r\n")  # CRLF lines, no space after the colon
          + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")

EXPECTED = [b'{"n": 0}', b'{"n": 1}', b'{"n": 2}', b"3", b"44", b"5", b"[DONE]"]


class _Transport:
    def __init__(self) -> None:
        self.aborted = False

    def write(self, data: bytes) -> None:
        pass

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.aborted


def feed(pieces: list[bytes]) -> tuple[list[bytes], h1._Conn, asyncio.Future]:
    async def main():
        conn = h1._Conn(h1.H1Pool(), ("127.0.0.1", 1))
        conn.connection_made(_Transport())
        events: list[bytes] = []

        def sink(data: bytes, now: float) -> bool:
            events.append(data)
            return data == b"[DONE]"

        fut = conn.start(b"", b"", sink, 1000)
        for i, p in enumerate(pieces):
            if conn.state in ("idle", "done"):
                break
            conn.data_received(p, float(i), True)
        return events, conn, fut
    return asyncio.run(main())


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_an_answer_cut_anywhere_gives_the_same_events_and_ends_the_message(cut: int) -> None:
    events, conn, fut = feed([STREAM[:cut], STREAM[cut:]])
    assert events == EXPECTED
    assert conn.state == "done" and not conn.buf
    assert fut.done() and fut.result().status == 200


def test_an_answer_fed_one_byte_at_a_time_gives_the_same_events() -> None:
    events, conn, _ = feed([STREAM[i:i + 1] for i in range(len(STREAM))])
    assert events == EXPECTED and conn.state == "done"


def test_each_event_carries_the_stamp_of_the_read_that_completed_it() -> None:
    """An event cut across reads is stamped when its last byte arrived (read 1), not its first."""
    first = HEAD + chunk(b"data: a\n\n") + chunk(b"data: b")
    second = chunk(b"c\n\n") + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"

    async def main():
        conn = h1._Conn(h1.H1Pool(), ("127.0.0.1", 1))
        conn.connection_made(_Transport())
        got: list[tuple[bytes, float]] = []
        conn.start(b"", b"", lambda d, now: got.append((d, now)) or d == b"[DONE]", 1000)
        conn.data_received(first, 10.0, True)
        conn.data_received(second, 11.0, False)
        return got, conn.resp
    got, resp = asyncio.run(main())
    assert got == [(b"a", 10.0), (b"bc", 11.0), (b"[DONE]", 11.0)]
    assert resp.clock == "mixed" and resp.ended_at == 11.0


@pytest.mark.parametrize("bad, why", [
    (HEAD + b"zz\r\n", "bad chunk size"),
    (HEAD + b"3\r\nabcXY", "bad chunk end"),  # a whole chunk whose CRLF is wrong (the shortcut)
    (HEAD + b"3\r\nab" + b"cXY", "bad chunk end"),
    (b"SPDY/3 200 OK\r\n\r\n", "not an HTTP/1.x response"),
])
def test_bad_framing_fails_the_request(bad: bytes, why: str) -> None:
    for pieces in ([bad], [bad[:-2], bad[-2:]]):
        _, conn, fut = feed(pieces)
        assert conn.transport.aborted
        with pytest.raises(h1.H1Error, match=why):
            fut.result()
