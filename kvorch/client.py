"""Streaming OpenAI client with per-request timings (TTFT, ITL, TPOT, end-to-end).

One request is one :class:`RequestRecord`. :func:`send` never raises for what the server or the
network does (HTTP errors, broken streams, timeouts are recorded in the record) and never runs
longer than its ``timeout``. :func:`run_load` sends many requests with a concurrency bound and an
optional Poisson arrival rate, bounded in count and in time.

Every request carries ``X-Request-Id: <request_id>`` so that server log lines can be matched to it.
vLLM's OpenAI server builds its own ids from that header (``serving.py``: ``_base_request_id``):

* ``/v1/completions``: ``cmpl-{X}`` for the response ``id``; each prompt ``i`` of the batch goes to the
  engine as ``cmpl-{X}-{i}`` (one prompt → ``cmpl-{X}-0``);
* ``/v1/chat/completions``: ``chatcmpl-{X}``;
* the V1 engine then appends ``-`` + 8 random hex characters (``InputProcessor.assign_request_id``,
  unless ``VLLM_DISABLE_REQUEST_ID_RANDOMIZATION``) — that is the id LMCache logs (``Reqid: …``,
  ``[req_id=…]``) and the one ``Added request …`` shows.

:func:`server_request_ids` gives the ids before the random suffix; :mod:`kvorch.evidence` strips the
suffix when it matches log lines to records.

How the times are taken (the lean path, :mod:`kvorch.h1`, used for every plain ``http://`` URL):

* the clock starts right before the request's bytes are handed to the kernel (``send``); waiting
  for a pooled connection or connecting is ``send_wait_s``, not latency;
* a chunk's time is when its bytes *arrived at this host*: on Linux the kernel stamps every
  received segment (``SO_TIMESTAMPNS``, read with ``recvmsg``), converted from CLOCK_REALTIME to
  ``perf_counter`` with one offset (error: half a two-clock-read bracket, well under 1 µs,
  re-taken every second against wall-clock steps). That is what the server's first token *is*
  at the client; the time the client's own event loop then takes to get to those bytes (other
  requests' chunks, other processes on the cores) is the client's processing delay, not the
  server's latency, and is not in the record. Without kernel stamps (other OS, a loop without
  ``add_reader``, ``KVORCH_CLIENT_STAMPS=loop``, or the httpx path) a chunk is stamped when the
  loop reads it, which includes that delay. ``RequestRecord.arrival_clock`` says which clock a
  record used;
* a read reports the arrival of its *last* segment (the kernel merges segments that wait unread
  and keeps the later stamp): when the loop was so late that the first token and later ones are
  read together, the first token gets the later time — TTFT overstated by that gap, never
  understated — and the gaps between the events of one read are 0 (as with loop stamps).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import os
import random
import re
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from .h1 import H1Error, H1Pool, Response

if TYPE_CHECKING:
    import httpx

# httpx is imported where a request is made, not with this module: its import costs ~0.2 s (it
# pulls in rich and pygments for its CLI), and `orchestrate status` imports this module (through
# kvorch.evidence) without sending any request.

try:  # a JSON parser in C when there is one (vLLM brings orjson): a stream is mostly parsing
    import orjson as _orjson

    _loads: Callable[[bytes | str], Any] = _orjson.loads
    _dumps: Callable[[Any], bytes] = _orjson.dumps
except ImportError:  # pragma: no cover - depends on the environment
    _loads = json.loads

    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj).encode()

#: KVORCH_CLIENT=httpx sends every request through httpx (the lean path is the default for http://)
_FORCE_HTTPX = os.environ.get("KVORCH_CLIENT", "").lower() == "httpx"

__all__ = [
    "RequestRecord",
    "LoadRequest",
    "send",
    "run_load",
    "new_request_id",
    "server_request_ids",
    "endpoint_url",
    "summarize",
    "percentile",
    "save_records",
    "load_records",
    "close_lean_connections",
]

Kind = Literal["completions", "chat"]
Status = Literal["ok", "error", "timeout"]

#: How much of an error body is kept in a record.
_ERROR_BODY_LIMIT = 2000


class RequestRecord(BaseModel):
    """What happened to one request, as the client saw it. Times are seconds."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(description="the X-Request-Id the client sent")
    engine: str = Field(description="engine (process) name in the plan, e.g. 'prefill'")
    url: str = Field(description="the endpoint URL the request went to")
    kind: Kind
    model: str | None = None
    prompt_tokens: int | None = Field(None, description="usage.prompt_tokens (server-counted)")
    output_tokens: int | None = Field(None, description="usage.completion_tokens")
    cached_tokens: int | None = Field(
        None, description="usage.prompt_tokens_details.cached_tokens, when the server reports it"
    )
    started_at: float = Field(
        description="wall clock (time.time()) when the request went on the wire"
    )
    send_wait_s: float | None = Field(
        None,
        description="call → the request's first byte on the wire (waiting for a pooled "
        "connection, connecting, building the request); not part of ttft/e2e; None when the "
        "request never went out (then e2e counts from the call)",
    )
    ttft_s: float | None = Field(
        None, description="request on the wire → the first non-empty content chunk arrived "
        "(see arrival_clock)"
    )
    itl_s: list[float] = Field(default_factory=list, description="gaps between content chunks")
    tpot_s: float | None = Field(
        None, description="(e2e - ttft) / (output tokens - 1), vLLM's definition"
    )
    e2e_s: float | None = Field(
        None, description="request on the wire → end of stream (or → failure)"
    )
    output_text: str = ""
    output_token_ids: list[int] | None = Field(
        None, description="generated token ids, when the server returned them (vLLM: body return_token_ids)"
    )
    output_top_logprobs: list[dict[str, float]] | None = Field(
        None, description="per generated token: top token ids (as strings) → logprob, when the server returned "
        "them (vLLM: body logprobs=k with return_tokens_as_token_ids)"
    )
    finish_reason: str | None = None
    num_chunks: int = Field(0, description="content chunks received")
    status: Status = "ok"
    error: str | None = None
    http_status: int | None = None
    response_id: str | None = Field(None, description="the 'id' field of the streamed chunks")
    arrival_clock: Literal["kernel", "loop", "mixed"] | None = Field(
        None, description="what stamped the answer's arrival times (ttft, itl, e2e): 'kernel' = the "
        "kernel's receive time of the bytes (Linux SO_TIMESTAMPNS), 'loop' = when the client's event "
        "loop read them (httpx, or no kernel stamps), 'mixed' = some of each; None: no byte arrived")
    tags: dict[str, str] = Field(default_factory=dict, description="free labels (phase, role…)")

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class LoadRequest(BaseModel):
    """One request of a workload for :func:`run_load`."""

    model_config = ConfigDict(extra="forbid")

    engine: str
    base_url: str
    model: str
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    max_tokens: int = 16
    temperature: float = 0.0
    request_id: str | None = None
    extra_body: dict[str, Any] | None = None
    tags: dict[str, str] = Field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# request ids

_ID_COUNTER = itertools.count(1)
_ID_SAFE = re.compile(r"[^A-Za-z0-9_.]+")


def new_request_id(prefix: str = "kvorch", engine: str | None = None) -> str:
    """A readable, unique, header- and log-safe id: ``kvorch-decode-200601-0007-3fa9c1``.

    Only ``[A-Za-z0-9_.-]``: it survives HTTP headers, shell logs and the ``Reqid: <id>,`` format.
    """
    parts = [_ID_SAFE.sub("_", prefix).strip("_") or "req"]
    if engine:
        parts.append(_ID_SAFE.sub("_", engine).strip("_") or "engine")
    parts.append(time.strftime("%H%M%S"))
    parts.append(f"{next(_ID_COUNTER):04d}")
    parts.append(os.urandom(3).hex())
    return "-".join(parts)


def server_request_ids(request_id: str, kind: Kind, num_prompts: int = 1) -> list[str]:
    """The ids vLLM's OpenAI server uses internally for a request sent with ``X-Request-Id``.

    Most specific first. The engine may append ``-<8 hex>`` to each (see the module docstring);
    :func:`kvorch.evidence.match` strips that suffix before comparing. The bare ``request_id`` is
    included last for engines that log it unchanged.
    """
    if kind == "completions":
        ids = [f"cmpl-{request_id}-{i}" for i in range(max(1, num_prompts))]
        ids.append(f"cmpl-{request_id}")
    elif kind == "chat":
        ids = [f"chatcmpl-{request_id}"]
    else:  # pragma: no cover - guarded by the Literal
        raise ValueError(f"unknown request kind {kind!r}")
    ids.append(request_id)
    return ids


# --------------------------------------------------------------------------------------------
# one request


def endpoint_url(base_url: str, kind: Kind) -> str:
    """``http://h:8010/v1`` (or ``http://h:8010``) → ``…/v1/completions`` or ``…/v1/chat/completions``."""
    base = base_url.rstrip("/")
    if urlsplit(base).path in ("", "/"):
        base += "/v1"
    return base + ("/completions" if kind == "completions" else "/chat/completions")


def _chunk_text(choice: dict[str, Any], kind: Kind) -> str:
    if kind == "completions":
        t = choice.get("text")
        return t if isinstance(t, str) else ""
    delta = choice.get("delta") or {}
    out = ""
    for key in ("content", "reasoning_content", "reasoning"):
        v = delta.get(key)
        if isinstance(v, str):
            out += v
    return out


def _error_message(obj: Any) -> str | None:
    """vLLM streams ``{"error": {...}}`` (newer) or ``{"object": "error", "message": …}`` (older)."""
    if not isinstance(obj, dict):
        return None
    err = obj.get("error")
    if isinstance(err, dict):
        return str(err.get("message") or err)
    if isinstance(err, str):
        return err
    if obj.get("object") == "error":
        return str(obj.get("message") or obj)
    return None


class _Progress:
    """Mutable state of one streaming request, kept outside the timed-out coroutine."""

    __slots__ = ("t_call", "t0", "wall0", "sent", "last", "text", "itl", "ttft", "chunks", "usage", "finish", "rid",
                 "http", "error_body", "token_ids", "top_logprobs", "t_end", "done", "failure", "resp")

    def __init__(self) -> None:
        self.t_call = time.perf_counter()
        self.t0 = self.t_call  # moved to when the request goes on the wire, see trace()
        self.wall0 = time.time()
        self.sent = False
        self.last: float | None = None
        self.text: list[str] = []
        self.itl: list[float] = []
        self.ttft: float | None = None
        self.chunks = 0
        self.usage: dict[str, Any] | None = None
        self.finish: str | None = None
        self.rid: str | None = None
        self.http: int | None = None
        self.error_body: bytes | None = None  # the body of an HTTP error (status >= 400)
        self.token_ids: list[int] | None = None
        self.top_logprobs: list[dict[str, float]] | None = None
        self.t_end: float | None = None  # when [DONE] (or the error chunk) arrived
        self.done = False
        self.failure: str | None = None
        self.resp: Response | None = None  # the lean path's answer, filled as it arrives

    @property
    def clock(self) -> Literal["kernel", "loop", "mixed"] | None:
        if self.resp is not None:
            r = self.resp
            return r.clock if r.kernel_reads or r.loop_reads else None
        return "loop" if self.http is not None else None

    async def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpx's ``trace`` extension: the clock starts when the request's headers start going
        out on the connection, so that connection-pool waits, connecting and the client's own
        request building (~1 ms per request in httpx) are not counted as server latency."""
        if event.endswith("send_request_headers.started"):
            self.t0 = time.perf_counter()
            self.wall0 = time.time()
            self.sent = True


def _on_data(p: _Progress, kind: Kind, data: bytes | str, now: float) -> bool:
    """One SSE ``data:`` payload that arrived at ``now`` (perf_counter): update ``p``.

    Returns True when the stream is over for the client: ``[DONE]`` (``p.done``) or an error
    (``p.failure``)."""
    if data == b"[DONE]" or data == "[DONE]":
        p.done = True
        return True
    try:
        obj = _loads(data)
    except ValueError:
        shown = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        p.failure = f"unparsable stream chunk: {shown[:200]!r}"
        return True
    if not isinstance(obj, dict):
        p.failure = f"unexpected stream chunk: {str(obj)[:200]!r}"
        return True
    if "error" in obj or "message" in obj:  # (the test costs a lookup per chunk; the full check more)
        err = _error_message(obj)
        if err is not None:
            p.failure = f"stream error: {err}"
            return True
    if p.rid is None and isinstance(obj.get("id"), str):
        p.rid = obj["id"]
    usage = obj.get("usage")
    if usage is not None and isinstance(usage, dict):
        p.usage = usage
    text = ""
    new_ids = 0
    for choice in obj.get("choices") or ():
        if kind == "completions":  # _chunk_text, inlined for the usual case (a chunk is ~1 token)
            t = choice.get("text")
            if t.__class__ is str:
                text += t
        else:
            text += _chunk_text(choice, kind)
        if "token_ids" in choice:
            ids = choice["token_ids"]
            if isinstance(ids, list):
                p.token_ids = (p.token_ids or []) + [int(t) for t in ids]
                new_ids += len(ids)
        lp = choice.get("logprobs")
        if lp and isinstance(lp, dict) and isinstance(lp.get("top_logprobs"), list):
            p.top_logprobs = (p.top_logprobs or []) + [_top(d) for d in lp["top_logprobs"]]
        finish = choice.get("finish_reason")
        if finish:
            p.finish = finish
    if text or new_ids:  # a token whose text is empty (a partial UTF-8 piece) is still a token
        if p.ttft is None:
            p.ttft = now - p.t0
        elif p.last is not None:
            p.itl.append(now - p.last)
        p.last = now
        p.chunks += 1
        p.text.append(text)
    return False


def _top(d: Any) -> dict[str, float]:
    """One position's top logprobs with token-id keys ("token_id:12" → "12")."""
    if not isinstance(d, dict):
        return {}
    out: dict[str, float] = {}
    for k, v in d.items():
        if isinstance(v, (int, float)):
            out[str(k).removeprefix("token_id:")] = float(v)
    return out


def _http_error(status: int, raw: bytes) -> str:
    text = raw[:_ERROR_BODY_LIMIT].decode("utf-8", "replace")
    try:
        msg = _error_message(json.loads(text)) or text
    except ValueError:
        msg = text
    return f"HTTP {status}: {msg}".strip()


async def _stream_h1(
    pool: H1Pool,
    url: str,
    body: dict[str, Any],
    headers: dict[str, str],
    kind: Kind,
    p: _Progress,
    read_timeout: float,
) -> None:
    """The lean path (:mod:`kvorch.h1`): chunks are timed where their bytes arrive."""
    u = urlsplit(url)
    path = u.path + (f"?{u.query}" if u.query else "")

    def on_wire() -> None:
        p.t0 = time.perf_counter()
        p.wall0 = time.time()
        p.sent = True

    p.resp = Response()
    resp = await pool.request(u.hostname or "127.0.0.1", u.port or 80, path, _dumps(body), headers,
                              sink=functools.partial(_on_data, p, kind), on_wire=on_wire,
                              connect_timeout=min(read_timeout, 10.0), body_limit=_ERROR_BODY_LIMIT,
                              into=p.resp)
    p.http = resp.status
    p.t_end = resp.ended_at
    if resp.status >= 400:
        p.error_body = bytes(resp.body)


async def _stream_httpx(
    client: httpx.AsyncClient,
    url: str,
    body: dict[str, Any],
    headers: dict[str, str],
    kind: Kind,
    p: _Progress,
    read_timeout: float,
) -> None:
    """Through httpx (TLS, proxies, custom transports): chunks are timed when httpx yields them."""
    import httpx

    timeout = httpx.Timeout(read_timeout, connect=min(read_timeout, 10.0))
    async with client.stream("POST", url, json=body, headers=headers, timeout=timeout,
                             extensions={"trace": p.trace}) as resp:
        p.http = resp.status_code
        if resp.status_code >= 400:
            p.error_body = await resp.aread()
            return
        async for line in resp.aiter_lines():
            if p.t_end is not None or not line.startswith("data:"):
                continue  # after [DONE]: read the message's end, so httpx can keep the connection
            if _on_data(p, kind, line[5:].strip(), time.perf_counter()):
                p.t_end = time.perf_counter()
                if p.failure is not None:
                    break


def _outcome(p: _Progress) -> tuple[Status, str | None]:
    """What a finished stream (either path) amounts to: ok, or the error to record."""
    if p.http is not None and p.http >= 400:
        return "error", _http_error(p.http, p.error_body or b"")
    if p.failure is not None:
        return "error", p.failure
    if not p.done:
        return "error", "stream ended without [DONE]"
    return "ok", None


#: lean pools, one per httpx client and event loop (connections belong to a loop)
_POOLS: "weakref.WeakKeyDictionary[httpx.AsyncClient, dict[asyncio.AbstractEventLoop, H1Pool]]" = (
    weakref.WeakKeyDictionary())
#: httpx's defaults that the lean path does not send (it neither decompresses nor needs them)
_SKIP_HEADERS = {"accept-encoding", "connection", "host", "content-length", "transfer-encoding"}


def _lean_pool(client: httpx.AsyncClient, url: str) -> H1Pool | None:
    """The lean pool standing in for ``client`` on this loop, or None when httpx must do it
    (https, proxies or mounted/custom transports, or ``KVORCH_CLIENT=httpx``)."""
    if _FORCE_HTTPX or not url.startswith("http://"):
        return None
    import httpx

    if type(getattr(client, "_transport", None)) is not httpx.AsyncHTTPTransport or getattr(client, "_mounts", None):
        return None
    loop = asyncio.get_running_loop()
    per_loop = _POOLS.get(client)
    if per_loop is None:
        per_loop = {}
        _POOLS[client] = per_loop
        weakref.finalize(client, _close_pools, per_loop)
    pool = per_loop.get(loop)
    if pool is None:
        inner = getattr(client._transport, "_pool", None)
        limit = getattr(inner, "_max_connections", None)
        hdrs = {k: v for k, v in client.headers.items() if k.lower() not in _SKIP_HEADERS}
        pool = per_loop[loop] = H1Pool(max_connections=limit, headers=hdrs)
    return pool


def _close_pools(per_loop: dict[Any, H1Pool]) -> None:
    for pool in list(per_loop.values()):
        pool.close()
    per_loop.clear()


def close_lean_connections(client: httpx.AsyncClient) -> None:
    """Close the lean connections :func:`send` keeps for ``client`` (call it with ``client.aclose()``;
    they are also closed when ``client`` is garbage-collected)."""
    per_loop = _POOLS.pop(client, None)
    if per_loop:
        _close_pools(per_loop)


async def send(
    client: httpx.AsyncClient,
    engine_name: str,
    base_url: str,
    model: str,
    prompt: str | None = None,
    messages: Sequence[dict[str, Any]] | None = None,
    max_tokens: int = 16,
    temperature: float = 0.0,
    request_id: str | None = None,
    timeout: float = 120.0,
    *,
    extra_body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    tags: dict[str, str] | None = None,
) -> RequestRecord:
    """Send one streaming request and time it. Never raises for server/network trouble.

    Exactly one of ``prompt`` (→ ``/v1/completions``) or ``messages`` (→ ``/v1/chat/completions``).
    ``timeout`` is the overall deadline of the request (connect + wait + the whole stream).
    ``extra_body`` is merged into the JSON body (e.g. ``{"ignore_eos": True}``).
    """
    if (prompt is None) == (messages is None):
        raise ValueError("send() needs exactly one of prompt= or messages=")
    kind: Kind = "completions" if prompt is not None else "chat"
    rid = request_id or new_request_id(engine=engine_name)
    url = endpoint_url(base_url, kind)
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if kind == "completions":
        body["prompt"] = prompt
    else:
        body["messages"] = list(messages or [])
    if extra_body:
        body.update(extra_body)
    hdrs = {"X-Request-Id": rid, "Accept": "text/event-stream"}
    if headers:
        hdrs.update(headers)

    import httpx

    p = _Progress()
    status: Status
    error: str | None
    try:
        if client.is_closed:
            raise RuntimeError("the HTTP client is closed")
        pool = _lean_pool(client, url)
        if pool is not None:
            coro = _stream_h1(pool, url, body, hdrs, kind, p, read_timeout=timeout)
        else:
            coro = _stream_httpx(client, url, body, hdrs, kind, p, read_timeout=timeout)
        await asyncio.wait_for(coro, timeout)
        status, error = _outcome(p)
    except (asyncio.TimeoutError, httpx.TimeoutException) as e:
        status, error = "timeout", f"no complete answer within {timeout:g} s ({type(e).__name__})"
    except (httpx.HTTPError, H1Error) as e:
        status, error = "error", f"{type(e).__name__}: {e}"
    except Exception as e:  # noqa: BLE001 - a record, never an exception, whatever went wrong
        status, error = "error", f"{type(e).__name__}: {e}"
    e2e = (p.t_end if status == "ok" and p.t_end is not None else time.perf_counter()) - p.t0
    send_wait = p.t0 - p.t_call if p.sent else None  # never on the wire: all of it is in e2e

    usage = p.usage or {}
    prompt_tokens = usage.get("prompt_tokens")
    output_tokens = usage.get("completion_tokens")
    details = usage.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    n_out = output_tokens if isinstance(output_tokens, int) else p.chunks
    tpot = None
    if status == "ok" and p.ttft is not None and n_out and n_out > 1:
        tpot = (e2e - p.ttft) / (n_out - 1)
    return RequestRecord(
        request_id=rid,
        engine=engine_name,
        url=url,
        kind=kind,
        model=model,
        prompt_tokens=prompt_tokens if isinstance(prompt_tokens, int) else None,
        output_tokens=output_tokens if isinstance(output_tokens, int) else None,
        cached_tokens=cached if isinstance(cached, int) else None,
        started_at=p.wall0,
        send_wait_s=send_wait,
        ttft_s=p.ttft,
        itl_s=p.itl,
        tpot_s=tpot,
        e2e_s=e2e,
        output_text="".join(p.text),
        output_token_ids=p.token_ids,
        output_top_logprobs=p.top_logprobs,
        finish_reason=p.finish,
        num_chunks=p.chunks,
        status=status,
        error=error,
        http_status=p.http,
        response_id=p.rid,
        arrival_clock=p.clock,
        tags=dict(tags or {}),
    )


# --------------------------------------------------------------------------------------------
# many requests


async def run_load(
    requests: Iterable[LoadRequest],
    concurrency: int = 1,
    rate_rps: float | None = None,
    max_duration_s: float = 300.0,
    *,
    seed: int = 0,
    timeout: float = 120.0,
    max_requests: int | None = None,
    client: httpx.AsyncClient | None = None,
    on_record: Callable[[RequestRecord], Awaitable[None] | None] | None = None,
) -> list[RequestRecord]:
    """Send ``requests`` with at most ``concurrency`` in flight, bounded in count and time.

    * ``rate_rps``: request *arrivals* follow a Poisson process of that rate (exponential gaps
      drawn from ``random.Random(seed)``: the same seed gives the same schedule); a request that
      arrives while ``concurrency`` are in flight waits for a slot. ``None``: send as fast as the
      concurrency allows.
    * ``max_duration_s``: no request starts after it; requests still in flight at
      ``max_duration_s`` are cut and recorded as ``timeout``. Requests never started are not in the
      result.
    * ``max_requests``: stop after that many (the iterable may be endless, e.g. a generator).
    * each request has its own ``timeout`` (never beyond the overall deadline).

    Returns the records in the order the requests were started.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    if rate_rps is not None and rate_rps <= 0:
        raise ValueError("rate_rps must be > 0 (or None for no pacing)")
    if max_duration_s <= 0:
        raise ValueError("max_duration_s must be > 0")

    own_client = client is None
    if client is None:
        import httpx

        limits = httpx.Limits(
            max_connections=concurrency + 4, max_keepalive_connections=concurrency
        )
        client = httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False)
    rng = random.Random(seed)
    sem = asyncio.Semaphore(concurrency)
    loop = asyncio.get_running_loop()
    t_start = loop.time()
    deadline = t_start + max_duration_s
    slots: list[RequestRecord | None] = []
    tasks: list[asyncio.Task[None]] = []

    async def one(index: int, req: LoadRequest) -> None:
        try:
            remaining = deadline - loop.time()
            rec = await send(
                client,
                req.engine,
                req.base_url,
                req.model,
                prompt=req.prompt,
                messages=req.messages,
                max_tokens=req.max_tokens,
                temperature=req.temperature,
                request_id=req.request_id,
                timeout=max(0.001, min(timeout, remaining)),
                extra_body=req.extra_body,
                tags=req.tags,
            )
            slots[index] = rec
            if on_record is not None:
                res = on_record(rec)
                if asyncio.iscoroutine(res):
                    await res
        finally:
            sem.release()

    next_arrival = t_start
    try:
        for n, req in enumerate(requests):
            if max_requests is not None and n >= max_requests:
                break
            if rate_rps is not None:
                if n > 0:
                    next_arrival += rng.expovariate(rate_rps)
                wait = next_arrival - loop.time()
                if next_arrival >= deadline:
                    break
                if wait > 0:
                    await asyncio.sleep(wait)
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                await asyncio.wait_for(sem.acquire(), remaining)
            except asyncio.TimeoutError:
                break
            if loop.time() >= deadline:
                sem.release()
                break
            slots.append(None)
            tasks.append(asyncio.create_task(one(len(slots) - 1, req)))
        if tasks:
            # Each send() is bounded by the deadline already; this is a safety net.
            done, pending = await asyncio.wait(
                tasks, timeout=max(0.0, deadline - loop.time()) + 5.0
            )
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
    finally:
        if own_client:
            close_lean_connections(client)
            await client.aclose()
    return [r for r in slots if r is not None]


# --------------------------------------------------------------------------------------------
# summaries


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100) of raw values; None when empty."""
    xs = sorted(v for v in values if v is not None)
    if not xs:
        return None
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * (q / 100.0)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(records: Sequence[RequestRecord]) -> dict[str, Any]:
    """Counts, p50/p90/p99 of TTFT/ITL/TPOT/E2E, token throughput, over a set of records."""
    ok = [r for r in records if r.ok]
    out: dict[str, Any] = {
        "requests": len(records),
        "ok": len(ok),
        "errors": sum(1 for r in records if r.status == "error"),
        "timeouts": sum(1 for r in records if r.status == "timeout"),
    }
    series = {
        "ttft_s": [r.ttft_s for r in ok if r.ttft_s is not None],
        "itl_s": [x for r in ok for x in r.itl_s],
        "tpot_s": [r.tpot_s for r in ok if r.tpot_s is not None],
        "e2e_s": [r.e2e_s for r in ok if r.e2e_s is not None],
    }
    for name, vals in series.items():
        out[name] = {
            "mean": (sum(vals) / len(vals)) if vals else None,
            "p50": percentile(vals, 50),
            "p90": percentile(vals, 90),
            "p99": percentile(vals, 99),
        }
    if ok:
        t0 = min(r.started_at for r in ok)
        t1 = max(r.started_at + (r.e2e_s or 0.0) for r in ok)
        span = max(t1 - t0, 1e-9)
        out_tokens = sum(r.output_tokens or r.num_chunks for r in ok)
        in_tokens = sum(r.prompt_tokens or 0 for r in ok)
        out["duration_s"] = span
        out["output_tokens"] = out_tokens
        out["prompt_tokens"] = in_tokens
        out["output_tokens_per_s"] = out_tokens / span
        out["requests_per_s"] = len(ok) / span
    return out


def save_records(records: Iterable[RequestRecord], path: str | os.PathLike[str]) -> None:
    """Write records as JSON lines (one request per line)."""
    from pathlib import Path

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(r.model_dump_json() + "\n")


def load_records(path: str | os.PathLike[str]) -> list[RequestRecord]:
    """Read what :func:`save_records` wrote."""
    from pathlib import Path

    text = Path(path).read_text(encoding="utf-8")
    return [RequestRecord.model_validate_json(line) for line in text.splitlines() if line.strip()]
