"""A lean HTTP/1.1 client for streamed POSTs (SSE), on an asyncio ``Protocol``.

Why not httpx for the measuring path: under load one asyncio process spends most of its CPU in
httpx/httpcore/h11/anyio layers (cProfile at 64 concurrent streams: ~5 ms of CPU per 16-token
request, the client saturating a core before the server does), and every chunk passes through
several awaits before the caller sees it, which adds to the TTFT it measures. Here:

* bytes are parsed where they arrive (``data_received``): each SSE ``data:`` line is handed to the
  caller's callback *with the time it arrived*, synchronously, without waking a task per chunk;
* "the time it arrived" is the kernel's receive time where the kernel gives one (Linux:
  ``SO_TIMESTAMPNS``; the connection reads its non-blocking socket with ``recvmsg`` from
  ``loop.add_reader`` instead of asyncio's transport), not the moment the event loop got round to
  the bytes: under load the loop is late (other requests' chunks, other processes on the cores)
  and that delay is the client's, not the server's. See :class:`KernelClock` for the clock
  conversion and :class:`_StampedSocket` for which segment's time a read carries. Elsewhere (no
  such option, a loop without ``add_reader``) the bytes are stamped when the loop reads them;
  :attr:`Response.clock` says which clock stamped an answer;
* the request goes out in one ``send`` (the clock starts right before the bytes are handed to the
  kernel);
* keep-alive connections are pooled per (host, port) and per event loop, bounded like httpx's
  ``max_connections`` (a request beyond the bound waits for a connection — not counted as latency);
* chunked and Content-Length bodies; a stale keep-alive connection (closed by the server before
  any byte of the answer) is retried once on a fresh connection.

What it does not do (callers use httpx for these): TLS, proxies, redirects, compression, HTTP/2.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

__all__ = ["H1Pool", "H1Error", "ConnectError", "Response", "EventSink", "KernelClock", "CLOCK", "Clock"]

#: an SSE ``data:`` payload (bytes, stripped) and the perf_counter() time its bytes arrived;
#: returns True when the stream is complete for the caller (e.g. ``[DONE]``)
EventSink = Callable[[bytes, float], bool]

#: which clock stamped an answer's bytes: "kernel" (every read carried the kernel's receive time),
#: "loop" (stamped when the event loop read them), "mixed" (some of each)
Clock = Literal["kernel", "loop", "mixed"]

_MAX_HEAD = 64 * 1024
_READ_SIZE = 256 * 1024
#: SO_TIMESTAMPNS: Python's socket module does not name it; 35 on Linux (asm-generic/socket.h)
_SO_TIMESTAMPNS: int | None = getattr(socket, "SO_TIMESTAMPNS", 35 if sys.platform.startswith("linux") else None)
_TIMESPEC = struct.Struct("@ll")  # struct timespec {time_t tv_sec; long tv_nsec;} (64-bit Linux)
_ANC_SIZE = socket.CMSG_SPACE(_TIMESPEC.size) if hasattr(socket, "CMSG_SPACE") else 0
#: KVORCH_CLIENT_STAMPS=loop: stamp bytes when the loop reads them, even where the kernel could
_KERNEL_STAMPS = os.environ.get("KVORCH_CLIENT_STAMPS", "").lower() != "loop"


class KernelClock:
    """Converts the kernel's receive stamps (CLOCK_REALTIME) to the client's clock
    (``time.perf_counter()``, CLOCK_MONOTONIC on Linux) with one offset.

    The offset is read as ``realtime − monotonic`` between two monotonic reads; of a few tries the
    tightest bracket is kept, and half its width is :attr:`error_ns`, the conversion error
    (typically well under a microsecond). Both clocks run at the same rate (NTP slews both), but
    the wall clock can be *stepped*: the offset is taken again when it is older than
    ``max_age_s`` (see :meth:`refresh_if_old`, called once per request), and a converted stamp
    that is in the future, or more than a minute in the past, is not used (the loop's stamp is).
    """

    def __init__(self, max_age_s: float = 1.0) -> None:
        self.max_age_s = max_age_s
        self.offset_ns = 0
        self.error_ns = 0
        self.taken_at = -1e18
        self.refresh()

    def refresh(self) -> None:
        best: tuple[int, int] | None = None
        mono, real = time.monotonic_ns, time.time_ns
        for _ in range(5):
            m1 = mono()
            r = real()
            m2 = mono()
            if best is None or m2 - m1 < best[0]:
                best = (m2 - m1, r - (m1 + m2) // 2)
        assert best is not None
        self.error_ns = (best[0] + 1) // 2
        self.offset_ns = best[1]
        self.taken_at = time.perf_counter()

    def refresh_if_old(self, now: float) -> None:
        if now - self.taken_at > self.max_age_s:
            self.refresh()

    def to_perf(self, realtime_ns: int) -> float:
        """A CLOCK_REALTIME time (ns) on the perf_counter() scale (s)."""
        return (realtime_ns - self.offset_ns) / 1e9


#: the process's conversion of kernel stamps (perf_counter is CLOCK_MONOTONIC on Linux, where
#: kernel stamps are used; elsewhere they are not)
CLOCK = KernelClock()
_USE_KERNEL = (_KERNEL_STAMPS and _SO_TIMESTAMPNS is not None and _ANC_SIZE > 0
               and time.get_clock_info("perf_counter").implementation == "clock_gettime(CLOCK_MONOTONIC)")
#: how long a request waits for a connection that is finishing its last answer before it opens one
_DRAIN_WAIT_S = 0.05


class H1Error(Exception):
    """The connection or the HTTP framing failed (not an HTTP error status)."""


class ConnectError(H1Error):
    """The TCP connection could not be made."""


class Response:
    """What a request got: status, headers (lower-case names), the body when not streamed."""

    __slots__ = ("status", "headers", "body", "ended_at", "kernel_reads", "loop_reads")

    def __init__(self) -> None:
        self.status: int = 0
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.ended_at: float | None = None
        self.kernel_reads = 0  # reads of this answer stamped with the kernel's receive time
        self.loop_reads = 0  # … stamped when the loop read them

    @property
    def clock(self) -> Clock:
        """Which clock stamped this answer's bytes (and so its events' times)."""
        if self.loop_reads == 0:
            return "kernel" if self.kernel_reads else "loop"
        return "mixed" if self.kernel_reads else "loop"


class _StampedSocket:
    """The transport of one connection: a non-blocking TCP socket watched with ``loop.add_reader``
    and read with ``recvmsg``, so that every read carries the kernel's receive time.

    With ``SO_TIMESTAMPNS`` the kernel stamps each segment when it arrives (CLOCK_REALTIME); a TCP
    read reports the stamp of the *last* segment it copied (segments queued unread are merged and
    keep the later stamp). So when several SSE events arrive in one read, all get the time of the
    last byte of that read: never earlier than the true arrival of any of them — conservative for
    the first token (TTFT can only be overstated, by at most the gap to the read's last segment),
    and events of one read have zero gaps between them, as with loop stamps.

    Only what :class:`_Conn` needs of a transport: ``write``, ``abort``, ``is_closing``;
    ``connection_lost`` comes via ``call_soon`` as with asyncio's transports.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, proto: _Conn, stamps: bool) -> None:
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.proto = proto
        self.stamps = stamps
        self.wbuf = bytearray()
        self.closing = False
        loop.add_reader(self.fd, self._read)

    def _read(self) -> None:
        try:
            if self.stamps:
                data, anc, _flags, _addr = self.sock.recvmsg(_READ_SIZE, _ANC_SIZE)
            else:
                data, anc = self.sock.recv(_READ_SIZE), None
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._close(e)
            return
        now = time.perf_counter()
        if not data:
            self.loop.remove_reader(self.fd)
            if not self.proto.eof_received():
                self._close(None)
            return
        kernel = False
        if anc:  # one control message at most: the only option asked for
            level, kind, payload = anc[0]
            if kind == _SO_TIMESTAMPNS and level == socket.SOL_SOCKET and len(payload) >= _TIMESPEC.size:
                sec, nsec = _TIMESPEC.unpack_from(payload)
                t = (sec * 1_000_000_000 + nsec - CLOCK.offset_ns) / 1e9  # CLOCK.to_perf, inlined
                if now - 60.0 < t <= now + 0.001:  # else the wall clock was stepped: the loop's time
                    if t < now:
                        now = t
                    kernel = True
        self.proto.data_received(data, now, kernel)

    def write(self, data: bytes) -> None:
        if self.closing:
            return
        if self.wbuf:
            self.wbuf += data
            return
        try:
            n = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as e:
            self._close(e)
            return
        if n < len(data):
            self.wbuf += data[n:]
            self.loop.add_writer(self.fd, self._write_more)

    def _write_more(self) -> None:
        try:
            n = self.sock.send(self.wbuf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._close(e)
            return
        del self.wbuf[:n]
        if not self.wbuf:
            self.loop.remove_writer(self.fd)

    def is_closing(self) -> bool:
        return self.closing

    def abort(self) -> None:
        self._close(None)

    def _close(self, exc: Exception | None) -> None:
        if self.closing:
            return
        self.closing = True
        self.loop.remove_reader(self.fd)
        if self.wbuf:
            self.loop.remove_writer(self.fd)
            self.wbuf.clear()
        self.sock.close()
        if not self.loop.is_closed():  # (a pool closed after its loop: nobody is left to tell)
            self.loop.call_soon(self.proto.connection_lost, exc)


class _LoopStamped(asyncio.Protocol):
    """Where a loop cannot watch sockets (``add_reader``: e.g. Windows' proactor): asyncio's own
    transport, bytes stamped when the loop hands them over."""

    def __init__(self, conn: _Conn) -> None:
        self.conn = conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.conn.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.connection_lost(exc)

    def eof_received(self) -> bool | None:
        return self.conn.eof_received()

    def data_received(self, data: bytes) -> None:
        self.conn.data_received(data, time.perf_counter(), False)


async def _connect(loop: asyncio.AbstractEventLoop, host: str, port: int, conn: _Conn) -> None:
    """Connect ``conn`` to host:port on a stamped socket (or asyncio's transport, see above)."""
    try:  # a numeric address needs no resolver thread (as asyncio's own create_connection)
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP,
                                   flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    if not infos:
        raise OSError(f"no address for {host}")
    last: OSError | None = None
    for family, type_, proto, _, addr in infos:
        sock = socket.socket(family, type_, proto)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await loop.sock_connect(sock, addr)
        except OSError as e:
            sock.close()
            last = e
            continue
        except BaseException:
            sock.close()
            raise
        stamps = False
        if _USE_KERNEL:
            try:
                sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)  # type: ignore[arg-type]
                stamps = True
            except OSError:
                pass
        try:
            tr: Any = _StampedSocket(loop, sock, conn, stamps)
        except NotImplementedError:  # no add_reader on this loop
            await loop.create_connection(lambda: _LoopStamped(conn), sock=sock)
            return
        conn.connection_made(tr)
        return
    assert last is not None
    raise last


class _Conn:
    """One keep-alive connection; one request at a time. Protocol-like: ``data_received`` gets
    each read's bytes with their arrival time and whether the kernel stamped it."""

    def __init__(self, pool: H1Pool, key: tuple[str, int]) -> None:
        self.pool = pool
        self.key = key
        self.transport: Any = None
        self.closed = False
        self.reused = False
        self._reset()

    def _reset(self) -> None:
        self.fut: asyncio.Future[Response] | None = None
        self.resp: Response | None = None
        self.sink: EventSink | None = None
        self.body_limit = 0
        self.buf = bytearray()
        self.state = "idle"  # idle | head | chunk_size | chunk_data | chunk_end | length | eof | trailer
        self.remaining = 0
        self.sse = bytearray()
        self.got_bytes = False
        self.keep = True
        self.stopped = False
        self.draining = False  # the caller has its answer; back to the pool when the message ends

    # ---- transport callbacks ------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool._forget(self)
        if self.state == "eof" and self.resp is not None:
            self._finish()
            return
        if self.fut is not None and not self.fut.done():
            why = f": {exc}" if exc else ""
            self.fut.set_exception(H1Error(f"server closed the connection mid-response{why}"))

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost decides what the response was

    def data_received(self, data: bytes, now: float, kernel: bool) -> None:
        if self.fut is None or self.state in ("idle", "done") or (self.fut.cancelled()):
            # bytes nobody asked for (or after a cancelled request): the connection is unusable
            self._abort()
            return
        self.got_bytes = True
        resp = self.resp
        assert resp is not None
        if kernel:
            resp.kernel_reads += 1
        else:
            resp.loop_reads += 1
        if self.buf:  # the rest of a line or chunk that the last read cut (rare): join, once
            self.buf += data
            data = bytes(self.buf)
            self.buf = bytearray()
        try:
            self._parse(data, now)
        except H1Error as e:
            if not self.fut.done():
                self.fut.set_exception(e)
            self._abort()

    # ---- request ----------------------------------------------------------------------------

    def start(self, head: bytes, body: bytes, sink: EventSink | None, body_limit: int,
              into: Response | None = None) -> asyncio.Future[Response]:
        """Send the request (one write); the future resolves at the end of the answer."""
        assert self.transport is not None
        self.fut = asyncio.get_running_loop().create_future()
        self.resp = into if into is not None else Response()
        self.sink = sink
        self.body_limit = body_limit
        self.state = "head"
        self.transport.write(head + body)
        return self.fut

    def _abort(self) -> None:
        self.keep = False
        if self.transport is not None and not self.closed:
            self.transport.abort()
        self.closed = True
        self.pool._forget(self)

    def _finish(self) -> None:
        resp, fut = self.resp, self.fut
        keep = self.keep and not self.closed and self.state == "idle"
        self.state = "done"
        if fut is not None and not fut.done() and resp is not None:
            if resp.ended_at is None:
                resp.ended_at = time.perf_counter()
            fut.set_result(resp)
        if not keep:
            self._abort()
        elif self.draining:
            self.pool._release(self)

    def _event(self, payload: bytes, now: float) -> None:
        """One SSE ``data:`` payload for the sink; [DONE] (the sink says so) hands the answer over."""
        assert self.sink is not None
        if self.sink(payload, now):
            # the caller's answer is complete ([DONE]): hand it over now, and read the rest of
            # the message (the chunked terminator) so the connection can be reused
            self.stopped = True
            resp = self.resp
            assert resp is not None
            resp.ended_at = now
            if self.fut is not None and not self.fut.done():
                self.fut.set_result(resp)

    def _body(self, data: bytes, now: float) -> None:
        resp = self.resp
        assert resp is not None
        if self.sink is None or resp.status >= 300:
            room = self.body_limit - len(resp.body)
            if room > 0:
                resp.body += data[:room]
            return
        if self.stopped:
            return
        if not self.sse and data.startswith(b"data:") and data.find(b"\n") == len(data) - 2 and data.endswith(b"\n\n"):
            # the usual chunk of an OpenAI-style stream: exactly one line, one event, "data: {...}\n\n"
            self._event(data[5:-2].strip(), now)
            return
        sse = self.sse
        sse += data
        start = 0
        while not self.stopped:
            nl = sse.find(b"\n", start)
            if nl < 0:
                break
            line = bytes(sse[start:nl]).strip()
            start = nl + 1
            if line.startswith(b"data:"):
                self._event(line[5:].strip(), now)
        del sse[:start]

    def _parse(self, data: bytes, now: float) -> None:
        """Parse ``data`` from ``pos`` on (no copies of what is consumed); what a read cut short
        stays in ``self.buf`` for the next read."""
        resp = self.resp
        assert resp is not None
        pos = 0
        end_all = len(data)
        while pos < end_all or self.state == "length":
            st = self.state
            if st == "chunk_size":
                nl = data.find(b"\r\n", pos)
                if nl < 0:
                    if end_all - pos > 1024:
                        raise H1Error("bad chunk header")
                    break
                size_s = data[pos:nl].split(b";", 1)[0].strip()
                try:
                    size = int(size_s, 16)
                except ValueError as e:
                    raise H1Error(f"bad chunk size {size_s[:20]!r}") from e
                pos = nl + 2
                if size == 0:
                    self.state = "trailer"
                    continue
                if end_all - pos >= size + 2:  # the whole chunk and its CRLF are here (usual)
                    piece = data[pos:pos + size]
                    pos += size
                    if data[pos:pos + 2] != b"\r\n":
                        raise H1Error("bad chunk end")
                    pos += 2
                    self._body(piece, now)
                    continue
                self.remaining = size
                self.state = "chunk_data"
            elif st == "chunk_data":
                n = min(self.remaining, end_all - pos)
                piece = data[pos:pos + n]
                pos += n
                self.remaining -= n
                self._body(piece, now)
                if self.remaining == 0:
                    self.state = "chunk_end"
            elif st == "chunk_end":
                if end_all - pos < 2:
                    break
                if data[pos:pos + 2] != b"\r\n":
                    raise H1Error("bad chunk end")
                pos += 2
                self.state = "chunk_size"
            elif st == "head":
                end = data.find(b"\r\n\r\n", pos)
                if end < 0:
                    if end_all - pos > _MAX_HEAD:
                        raise H1Error("response headers too large")
                    break
                lines = data[pos:end].decode("latin-1").split("\r\n")
                pos = end + 4
                parts = lines[0].split(" ", 2)
                if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
                    raise H1Error(f"not an HTTP/1.x response: {lines[0][:80]!r}")
                status = int(parts[1])
                if 100 <= status < 200:  # 100 Continue and friends: the real answer follows
                    continue
                resp.status = status
                hdrs = resp.headers
                for ln in lines[1:]:
                    k, _, v = ln.partition(":")
                    hdrs[k.strip().lower()] = v.strip()
                conn = hdrs.get("connection", "").lower()
                if parts[0] == "HTTP/1.0" and "keep-alive" not in conn or "close" in conn:
                    self.keep = False
                if "chunked" in hdrs.get("transfer-encoding", "").lower():
                    self.state = "chunk_size"
                elif "content-length" in hdrs:
                    try:
                        self.remaining = int(hdrs["content-length"])
                    except ValueError as e:
                        raise H1Error(f"bad Content-Length {hdrs['content-length']!r}") from e
                    self.state = "length"
                elif status in (204, 304):
                    self.remaining = 0
                    self.state = "length"
                else:
                    self.keep = False
                    self.state = "eof"
            elif st == "trailer":
                nl = data.find(b"\r\n", pos)
                if nl < 0:
                    break
                empty = nl == pos
                pos = nl + 2
                if empty:
                    self.buf = bytearray(data[pos:])
                    self._complete()
                    return
            elif st == "length":
                n = min(self.remaining, end_all - pos)
                if n:
                    piece = data[pos:pos + n]
                    pos += n
                    self.remaining -= n
                    self._body(piece, now)
                if self.remaining == 0:
                    self.buf = bytearray(data[pos:])
                    self._complete()
                    return
                break
            elif st == "eof":
                self._body(data[pos:], now)
                pos = end_all
            else:
                raise H1Error(f"unexpected bytes after the response ({end_all - pos})")
        if pos < end_all:
            self.buf = bytearray(data[pos:])

    def _complete(self) -> None:
        if self.buf:
            self.keep = False  # pipelined garbage: don't trust this connection again
        self.state = "idle"
        self._finish()


class H1Pool:
    """Keep-alive connections per (host, port), for one event loop.

    ``max_connections`` bounds open connections per (host, port) like httpx's limit: a request
    beyond it waits (in :meth:`request`, before its clock starts). ``None``: no bound.
    """

    def __init__(self, max_connections: int | None = None, headers: Mapping[str, str] | None = None) -> None:
        self.max_connections = max_connections
        self.headers = dict(headers or {})
        self._idle: dict[tuple[str, int], list[_Conn]] = {}
        self._open: dict[tuple[str, int], set[_Conn]] = {}
        self._waiters: dict[tuple[str, int], list[asyncio.Future[None]]] = {}
        self.closed = False

    def _forget(self, c: _Conn) -> None:
        idle = self._idle.get(c.key)
        if idle and c in idle:
            idle.remove(c)
        opened = self._open.get(c.key)
        if opened is not None and c in opened:
            opened.discard(c)
            self._wake(c.key)

    def _wake(self, key: tuple[str, int]) -> None:
        ws = self._waiters.get(key)
        while ws:
            w = ws.pop(0)
            if not w.done():
                w.set_result(None)
                return

    async def _acquire(self, host: str, port: int, connect_timeout: float) -> _Conn:
        key = (host, port)
        while True:
            idle = self._idle.setdefault(key, [])
            while idle:
                c = idle.pop()
                if not c.closed:
                    c.reused = True
                    return c
            opened = self._open.setdefault(key, set())
            draining = any(c.draining and not c.closed for c in opened)
            if self.max_connections is not None and len(opened) >= self.max_connections:
                w = asyncio.get_running_loop().create_future()
                self._waiters.setdefault(key, []).append(w)
                await w
                continue
            if not draining:
                break
            # a connection is reading the last bytes of its answer ([DONE] was handed over before the
            # chunked terminator): it is usually back in a moment; wait that long rather than connect
            w = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(key, []).append(w)
            try:
                await asyncio.wait_for(w, _DRAIN_WAIT_S)
            except asyncio.TimeoutError:
                break
        loop = asyncio.get_running_loop()
        placeholder = _Conn(self, key)
        opened.add(placeholder)  # counts against the bound while connecting
        try:
            await asyncio.wait_for(_connect(loop, host, port, placeholder), connect_timeout)
        except (OSError, asyncio.TimeoutError) as e:
            opened.discard(placeholder)
            self._wake(key)
            what = "timed out" if isinstance(e, asyncio.TimeoutError) else str(e)
            raise ConnectError(f"cannot connect to {host}:{port}: {what}") from e
        except BaseException:
            opened.discard(placeholder)
            self._wake(key)
            raise
        return placeholder

    def _release(self, c: _Conn) -> None:
        if c.closed or self.closed or not c.keep:
            c._abort()
            return
        if c.state != "done":
            c.draining = True
            return
        c._reset()
        self._idle.setdefault(c.key, []).append(c)
        self._wake(c.key)

    async def request(
        self,
        host: str,
        port: int,
        path: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        sink: EventSink | None = None,
        on_wire: Callable[[], None] | None = None,
        connect_timeout: float = 10.0,
        body_limit: int = 1 << 20,
        into: Response | None = None,
    ) -> Response:
        """POST ``body`` to ``path``; SSE ``data:`` lines go to ``sink`` as they arrive (2xx only;
        an error status's body is kept, up to ``body_limit``). ``on_wire`` is called right before
        the request's bytes are written. ``into``: the Response to fill (the caller sees what arrived
        even when it cancels the request). Cancel-safe: a cancelled request closes its connection."""
        if self.closed:
            raise H1Error("the client is closed")
        hdrs = {"host": f"{host}:{port}", **{k.lower(): v for k, v in self.headers.items()},
                **{k.lower(): v for k, v in headers.items()}}
        hdrs["content-length"] = str(len(body))
        hdrs.setdefault("content-type", "application/json")
        head = (f"POST {path} HTTP/1.1\r\n"
                + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n").encode("latin-1")
        for attempt in (0, 1):
            c = await self._acquire(host, port, connect_timeout)
            CLOCK.refresh_if_old(time.perf_counter())
            if on_wire is not None:
                on_wire()
            fut = c.start(head, body, sink, body_limit, into)
            try:
                resp = await fut
            except H1Error:
                c._abort()
                # a kept-alive connection the server had already closed: nothing of the answer
                # arrived, the server never saw the request; once more on a fresh connection
                if attempt == 0 and c.reused and not c.got_bytes:
                    continue
                raise
            except BaseException:
                c._abort()
                raise
            self._release(c)
            return resp
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        """Close every connection (idle and in use)."""
        self.closed = True
        for conns in list(self._open.values()):
            for c in list(conns):
                c._abort()
        for idle in self._idle.values():
            for c in idle:
                c._abort()
        self._idle.clear()
        for ws in self._waiters.values():
            for w in ws:
                if not w.done():
                    w.set_exception(H1Error("the client is closed"))
        self._waiters.clear()

    def stats(self) -> dict[str, Any]:
        return {"open": sum(len(s) for s in self._open.values()),
                "idle": sum(len(s) for s in self._idle.values())}
