"""A small HTTP/1.1 server and client on asyncio streams, for the simulated engine and controller.

Why not aiohttp: importing it costs 0.3-0.7 s here (it builds SSL contexts at import), and the
simulator must be healthy in well under a second. This covers what the sim needs: keep-alive,
Content-Length and chunked request bodies, JSON and byte responses, chunked streaming responses
(SSE), client-disconnect detection on write, and a bounded, prompt shutdown.
"""

from __future__ import annotations

import asyncio
import time
import json
import traceback
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qsl, urlsplit

REASONS = {200: "OK", 201: "Created", 204: "No Content", 400: "Bad Request", 401: "Unauthorized",
           404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
           413: "Payload Too Large", 422: "Unprocessable Entity", 500: "Internal Server Error",
           503: "Service Unavailable"}
MAX_HEADER = 64 * 1024
MAX_BODY = 256 * 1024 * 1024


class HTTPError(Exception):
    def __init__(self, status: int, message: str = ""):
        super().__init__(message)
        self.status = status


class Headers(dict):
    """Case-insensitive (lower-cased keys) header dict."""

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(key.lower(), default)

    def __contains__(self, key: object) -> bool:
        return super().__contains__(str(key).lower())

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())


class Request:
    def __init__(self, method: str, target: str, version: str, headers: Headers, body: bytes,
                 peer: Any, writer: asyncio.StreamWriter, arrived: float | None = None):
        #: when the request's head had arrived: the server's clock (queueing, prefill) starts
        #: here, so reading the body and parsing it count as the server's own time
        self.received = arrived if arrived is not None else time.perf_counter()
        self.method = method
        parts = urlsplit(target)
        self.path = parts.path or "/"
        self.path_qs = target
        self.query = dict(parse_qsl(parts.query, keep_blank_values=True))
        self.version = version
        self.headers = headers
        self.body = body
        self.peer = peer
        self.writer = writer
        self.keep_alive = (headers.get("connection", "").lower() != "close"
                           and version != "HTTP/1.0")
        self.streaming = False

    def json(self) -> Any:
        return json.loads(self.body)


class Response:
    def __init__(self, body: bytes | str = b"", status: int = 200,
                 headers: dict[str, str] | None = None, content_type: str | None = None):
        self.body = body.encode() if isinstance(body, str) else body
        self.status = status
        self.headers = dict(headers or {})
        if content_type:
            self.headers["Content-Type"] = content_type
        self.prepared = False


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(obj, separators=(",", ":")).encode(), status, headers,
                    "application/json")


def _head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class StreamResponse:
    """A chunked response written piece by piece; ``write`` raises ConnectionResetError when the
    client has gone away."""

    def __init__(self, status: int = 200, headers: dict[str, str] | None = None):
        self.status = status
        self.headers = dict(headers or {})
        self.prepared = False
        self._writer: asyncio.StreamWriter | None = None
        self.finished = False

    async def prepare(self, request: Request) -> None:
        self._writer = request.writer
        request.streaming = True
        h = dict(self.headers)
        h["Transfer-Encoding"] = "chunked"
        h.setdefault("Connection", "keep-alive" if request.keep_alive else "close")
        self._writer.write(_head(self.status, h))
        self.prepared = True
        await self._drain()

    async def _drain(self) -> None:
        w = self._writer
        if w is None or w.is_closing():
            raise ConnectionResetError("client disconnected")
        await w.drain()

    async def write(self, data: bytes) -> None:
        if not data:
            return
        w = self._writer
        if w is None or w.is_closing():
            raise ConnectionResetError("client disconnected")
        w.write(b"%x\r\n%s\r\n" % (len(data), data))
        await self._drain()

    async def write_eof(self) -> None:
        if self._writer is not None and not self.finished:
            self.finished = True
            self._writer.write(b"0\r\n\r\n")
            await self._drain()


Handler = Callable[[Request], Awaitable["Response | StreamResponse"]]


class Router:
    def __init__(self) -> None:
        self.routes: dict[str, dict[str, Handler]] = {}

    def add(self, method: str, path: str, handler: Handler) -> None:
        self.routes.setdefault(path, {})[method.upper()] = handler

    def get(self, path: str, handler: Handler) -> None:
        self.add("GET", path, handler)

    def post(self, path: str, handler: Handler) -> None:
        self.add("POST", path, handler)

    def resolve(self, method: str, path: str) -> Handler:
        by_method = self.routes.get(path)
        if by_method is None:
            raise HTTPError(404, "Not Found")
        h = by_method.get(method) or by_method.get("*")
        if h is None:
            raise HTTPError(405, "Method Not Allowed")
        return h


Middleware = Callable[[Request, Handler], Awaitable["Response | StreamResponse"]]


class Server:
    def __init__(self, router: Router, middleware: Middleware | None = None,
                 error_response: Callable[[int, str], Response] | None = None):
        self.router = router
        self.middleware = middleware
        self.error_response = error_response or (
            lambda status, msg: json_response({"detail": msg}, status))
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[asyncio.Task] = set()

    async def start(self, host: str, port: int, backlog: int = 1024) -> None:
        self._server = await asyncio.start_server(self._handle, host, port, backlog=backlog,
                                                  limit=MAX_HEADER, reuse_address=True)

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def close(self, timeout: float = 0.3) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._conns):
            t.cancel()
        if self._conns:
            await asyncio.wait(list(self._conns), timeout=timeout)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._conns.add(task)
        peer = writer.get_extra_info("peername")
        try:
            while True:
                try:
                    req = await self._read_request(reader, writer, peer)
                except HTTPError as e:
                    await self._send(writer, self.error_response(e.status, str(e)), False)
                    return
                if req is None:
                    return
                try:
                    handler = self.router.resolve(req.method, req.path)
                    if self.middleware is not None:
                        resp = await self.middleware(req, handler)
                    else:
                        resp = await handler(req)
                except HTTPError as e:
                    resp = self.error_response(e.status, str(e))
                except (ConnectionResetError, BrokenPipeError):
                    return
                except Exception as e:  # a bug in a handler: answer 500, keep serving
                    traceback.print_exc()
                    if req.streaming:  # headers already sent: all we can do is drop it
                        return
                    resp = self.error_response(500, f"{type(e).__name__}: {e}")
                if isinstance(resp, StreamResponse):
                    if not resp.finished:
                        return  # a stream that did not finish: drop the connection
                    if not req.keep_alive:
                        return
                    continue
                await self._send(writer, resp, req.keep_alive)
                if not req.keep_alive:
                    return
        except (ConnectionResetError, BrokenPipeError, asyncio.IncompleteReadError,
                asyncio.CancelledError, TimeoutError, OSError):
            pass
        finally:
            if task is not None:
                self._conns.discard(task)
            try:
                writer.close()
            except Exception:
                pass

    async def _read_request(self, reader, writer, peer) -> Request | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        except asyncio.LimitOverrunError:
            raise HTTPError(413, "header too large") from None
        arrived = time.perf_counter()
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, version = lines[0].split(" ", 2)
        except ValueError:
            raise HTTPError(400, "bad request line") from None
        headers = Headers()
        for line in lines[1:]:
            if not line:
                continue
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        if headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = await self._read_chunked(reader)
        else:
            n = int(headers.get("content-length", "0") or 0)
            if n > MAX_BODY:
                raise HTTPError(413, "body too large")
            body = await reader.readexactly(n) if n else b""
        return Request(method.upper(), target, version, headers, body, peer, writer, arrived)

    @staticmethod
    async def _read_chunked(reader) -> bytes:
        parts = []
        total = 0
        while True:
            line = await reader.readuntil(b"\r\n")
            size = int(line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                return b"".join(parts)
            total += size
            if total > MAX_BODY:
                raise HTTPError(413, "body too large")
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)

    @staticmethod
    async def _send(writer, resp: Response, keep_alive: bool) -> None:
        h = dict(resp.headers)
        h.setdefault("Content-Type", "application/octet-stream" if resp.body else "text/plain")
        h["Content-Length"] = str(len(resp.body))
        h["Connection"] = "keep-alive" if keep_alive else "close"
        writer.write(_head(resp.status, h) + resp.body)
        await writer.drain()


# ---------------------------------------------------------------------------- client
async def request(method: str, url: str, body: Any = None, timeout: float = 5.0,
                  headers: dict[str, str] | None = None) -> tuple[int, Headers, bytes]:
    """One request on a fresh connection (loopback, low volume): (status, headers, body).
    ``body`` may be bytes or a JSON-serialisable object."""
    return await asyncio.wait_for(_request(method, url, body, headers or {}), timeout)


async def _request(method, url, body, headers) -> tuple[int, Headers, bytes]:
    parts = urlsplit(url if "://" in url else "http://" + url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    if body is None:
        data = b""
    elif isinstance(body, (bytes, bytearray)):
        data = bytes(body)
    else:
        data = json.dumps(body, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", **headers}
    reader, writer = await asyncio.open_connection(host, port, limit=MAX_HEADER)
    try:
        h = {"Host": f"{host}:{port}", "Content-Length": str(len(data)), "Connection": "close",
             **headers}
        writer.write((f"{method} {path} HTTP/1.1\r\n" +
                      "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n").encode("latin-1")
                     + data)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        rh = Headers()
        for line in lines[1:]:
            if line:
                k, _, v = line.partition(":")
                rh[k.strip().lower()] = v.strip()
        if rh.get("transfer-encoding", "").lower() == "chunked":
            payload = await Server._read_chunked(reader)
        elif "content-length" in rh:
            payload = await reader.readexactly(int(rh["content-length"]))
        else:
            payload = await reader.read()
        return status, rh, payload
    finally:
        writer.close()


async def post_json(url: str, body: Any, timeout: float = 5.0) -> tuple[int, Any]:
    """POST JSON, return (status, parsed JSON or None)."""
    status, _h, payload = await request("POST", url, body, timeout)
    try:
        return status, json.loads(payload) if payload else None
    except ValueError:
        return status, None
