"""The streaming client against a scripted SSE server (aiohttp, 127.0.0.1, ephemeral port).

The server (a child process) speaks vLLM's streaming format: ``data: {chunk}`` lines, a final usage chunk when
``stream_options.include_usage`` is set, then ``data: [DONE]``; chat streams start with a
role-only delta. Delays are scripted per test, so the client's timings can be checked against them.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from kvorch.client import (
    LoadRequest,
    RequestRecord,
    endpoint_url,
    new_request_id,
    run_load,
    send,
    summarize,
)


@dataclass
class Script:
    ttft: float = 0.0  # delay before the first content chunk
    itl: float = 0.0  # delay between content chunks
    tokens: int = 4
    header_delay: float = 0.0  # delay before the response headers
    status: int = 200
    error_chunk: bool = False  # an error object in the stream
    no_done: bool = False  # end the stream without [DONE]
    # observed by the server (filled in when the server stops)
    max_inflight: int = 0
    arrivals: list[float] = field(default_factory=list)  # time.perf_counter() (CLOCK_MONOTONIC)
    request_ids: list[str] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    # rid → [arrival, 1st chunk written, 2nd chunk written, ...] (time.time(), stamped before each write)
    wall: dict[str, list[float | None]] = field(default_factory=dict)
    peers: list[int] = field(default_factory=list)  # the client's port of each request's connection

    def config(self) -> dict[str, Any]:
        keys = ("ttft", "itl", "tokens", "header_delay", "status", "error_chunk", "no_done")
        return {k: getattr(self, k) for k in keys}


#: The scripted server runs in its own process, as an engine would: a server thread in the test
#: process would share the GIL with the client and add milliseconds to what is measured.
SERVER = r"""
import asyncio, json, sys, time
from aiohttp import web

cfg = json.loads(sys.argv[1])
seen = {"arrivals": [], "request_ids": [], "bodies": [], "max_inflight": 0, "wall": {}, "peers": []}
inflight = 0


async def stats(request):
    return web.json_response(seen)


async def handler(request):
    global inflight
    seen["arrivals"].append(time.perf_counter())
    seen["peers"].append(request.transport.get_extra_info("peername")[1])
    rid = request.headers.get("X-Request-Id", "")
    seen["wall"][rid] = [time.time(), None]  # arrival, first content chunk written
    seen["request_ids"].append(rid)
    body = await request.json()
    seen["bodies"].append(body)
    chat = request.path.endswith("/chat/completions")
    sid = ("chatcmpl-" if chat else "cmpl-") + (rid or "anon")
    inflight += 1
    seen["max_inflight"] = max(seen["max_inflight"], inflight)
    try:
        if cfg["header_delay"]:
            await asyncio.sleep(cfg["header_delay"])
        if cfg["status"] != 200:
            err = {"message": "max_tokens is too large", "type": "BadRequestError", "code": 400}
            return web.json_response({"error": err}, status=cfg["status"])
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        async def emit(obj):
            await resp.write(("data: " + json.dumps(obj) + "\n\n").encode())

        def chunk(text, finish=None):
            if chat:
                choice = {"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": finish}
                obj = "chat.completion.chunk"
            else:
                choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish, "stop_reason": None}
                obj = "text_completion"
            return {"id": sid, "object": obj, "created": 1, "model": body["model"], "choices": [choice]}

        if chat:  # the role comes first, without content: not a token
            await emit({"id": sid, "object": "chat.completion.chunk", "created": 1, "model": body["model"],
                        "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                     "logprobs": None, "finish_reason": None}]})
        await resp.write(b": keep-alive comment\n\n")
        n = cfg["tokens"]
        for i in range(n):
            await asyncio.sleep(cfg["ttft"] if i == 0 else cfg["itl"])
            if cfg["error_chunk"] and i == 1:
                await emit({"error": {"message": "engine died", "type": "InternalServerError", "code": 500}})
                await resp.write(b"data: [DONE]\n\n")
                return resp
            # stamped before the write: a client may read the chunk before a stamp after it
            if i == 0:
                seen["wall"][rid][1] = time.time()
            else:
                seen["wall"][rid].append(time.time())
            await emit(chunk(" t%d" % i, "length" if i == n - 1 else None))
        if (body.get("stream_options") or {}).get("include_usage"):
            await emit({"id": sid, "object": "text_completion", "created": 1, "model": body["model"],
                        "choices": [], "usage": {"prompt_tokens": 7, "total_tokens": 7 + n,
                        "completion_tokens": n, "prompt_tokens_details": {"cached_tokens": 0}}})
        if not cfg["no_done"]:
            await resp.write(b"data: [DONE]\n\n")
        return resp
    finally:
        inflight -= 1


async def main():
    app = web.Application()
    app.router.add_post("/v1/completions", handler)
    app.router.add_post("/v1/chat/completions", handler)
    app.router.add_get("/_stats", stats)
    runner = web.AppRunner(app, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(site._server.sockets[0].getsockname()[1], flush=True)
    await asyncio.sleep(120)  # never outlives a test run


asyncio.run(main())
"""


@contextmanager
def sse_server(script: Script) -> Iterator[str]:
    """Serve ``script`` on 127.0.0.1 (ephemeral port) from a child process; on exit, copy what
    the server observed into ``script``."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, json.dumps(script.config())],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.strip().isdigit(), f"test SSE server did not start: {line!r}"
        base = f"http://127.0.0.1:{int(line)}"
        yield base + "/v1"
        seen = httpx.get(base + "/_stats", timeout=5, trust_env=False).json()
        script.arrivals = seen["arrivals"]
        script.request_ids = seen["request_ids"]
        script.bodies = seen["bodies"]
        script.max_inflight = seen["max_inflight"]
        script.wall = seen["wall"]
        script.peers = seen["peers"]
    finally:
        proc.kill()
        proc.wait(10)
        if proc.stdout:
            proc.stdout.close()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------ send()


async def _send_n(base: str, n: int, **kw: Any) -> list[RequestRecord]:
    async with httpx.AsyncClient(trust_env=False) as c:
        out = []
        for i in range(n):
            out.append(await send(c, kw.pop("engine", "e") if i == 0 else "e", base, "tiny", **kw))
            kw.pop("request_id", None)
        return out


async def _send_one(base: str, **kw: Any) -> tuple[RequestRecord, float]:
    async with httpx.AsyncClient(trust_env=False) as c:
        t = time.perf_counter()
        r = await send(c, kw.pop("engine", "e"), base, "tiny", **kw)
        return r, time.perf_counter() - t


def test_ttft_starts_when_the_request_is_on_the_wire_not_while_it_waits_for_a_connection() -> None:
    sc = Script(ttft=0.3, tokens=2)

    async def main(base: str) -> list[RequestRecord]:
        limits = httpx.Limits(max_connections=1)  # the second request waits for the first's connection
        async with httpx.AsyncClient(trust_env=False, limits=limits) as c:
            return list(await asyncio.gather(*[
                send(c, "e", base, "tiny", prompt="x", max_tokens=2, request_id=f"w-{i}", timeout=10)
                for i in range(2)
            ]))

    with sse_server(sc) as base:
        recs = run(main(base))
    assert [r.status for r in recs] == ["ok", "ok"]
    first, second = sorted(recs, key=lambda r: r.send_wait_s or 0.0)
    assert second.send_wait_s is not None and second.send_wait_s >= 0.3, second.send_wait_s
    assert second.ttft_s is not None and 0.3 <= second.ttft_s < second.send_wait_s + 0.3
    assert first.send_wait_s is not None and first.send_wait_s < 0.3
    # started_at is the wall clock of the wire start: the waiting request started after the first ended
    assert second.started_at >= first.started_at + (first.e2e_s or 0) - 0.01


def test_ttft_itl_usage_and_request_id() -> None:
    sc = Script(ttft=0.12, itl=0.02, tokens=5)

    async def main(base: str) -> list[RequestRecord]:
        async with httpx.AsyncClient(trust_env=False) as c:
            return [
                await send(
                    c,
                    "prefill",
                    base,
                    "tiny",
                    prompt="hello " * 10,
                    max_tokens=5,
                    request_id=f"ttft-{i}",
                    timeout=5,
                )
                for i in range(7)
            ]

    with sse_server(sc) as base:
        recs = run(main(base))
    assert [r.status for r in recs] == ["ok"] * 7
    # Never below the scripted delay; the rest is sending the request and the server's own work.
    over = [r.ttft_s - 0.12 for r in recs]
    assert all(x >= 0 for x in over), over
    assert statistics.median(over) < 0.05, over  # loose: this machine is shared and loaded
    # The measuring end: the client sees the first token within ~2 ms of the server writing it,
    # i.e. client send time + TTFT == the first chunk's arrival (same host, same wall clock).
    recv = [r.started_at + r.ttft_s - sc.wall[r.request_id][1] for r in recs]
    assert statistics.median(recv) < 0.002, recv
    assert min(recv) > -0.001, recv
    # ...and the server's scripted part (arrival → first token) is inside what the client measured
    inside = [r.ttft_s - (sc.wall[r.request_id][1] - sc.wall[r.request_id][0]) for r in recs]
    assert min(inside) > 0, inside
    r = recs[0]
    assert r.request_id == "ttft-0" and sc.request_ids == [f"ttft-{i}" for i in range(7)]
    assert r.response_id == "cmpl-ttft-0"
    assert r.kind == "completions" and r.url.endswith("/v1/completions") and r.engine == "prefill"
    assert r.output_text == " t0 t1 t2 t3 t4" and r.num_chunks == 5 and r.finish_reason == "length"
    assert (r.prompt_tokens, r.output_tokens, r.cached_tokens) == (7, 5, 0)
    # ITL: each gap is the gap between the server's writes, measured at the client's end (a chunk
    # the server wrote late shortens the next gap on both ends alike, so the gaps are compared with
    # the server's own, not with the scripted 20 ms)
    assert len(r.itl_s) == 4 and all(x > 0 for x in r.itl_s), r.itl_s
    lag = []
    for rec in recs:
        arrivals = [rec.started_at + rec.ttft_s]
        for gap in rec.itl_s:
            arrivals.append(arrivals[-1] + gap)
        written = sc.wall[rec.request_id][1:]
        assert len(written) == len(arrivals) == 5
        lag += [a - w for a, w in zip(arrivals, written)]
    assert min(lag) > -0.001, lag
    assert statistics.median(lag) < 0.002, lag
    assert statistics.median(x for rec in recs for x in rec.itl_s) > 0.015
    assert statistics.median(x for rr in recs for x in rr.itl_s) == pytest.approx(0.02, abs=0.003)
    assert r.tpot_s == pytest.approx((r.e2e_s - r.ttft_s) / 4)
    assert r.e2e_s >= r.ttft_s + sum(r.itl_s) - 1e-6
    assert r.started_at == pytest.approx(time.time(), abs=30)
    body = sc.bodies[0]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert (
        body["temperature"] == 0 and body["max_tokens"] == 5 and body["prompt"].startswith("hello")
    )


def test_chat_ttft_ignores_role_chunk_and_generates_id() -> None:
    sc = Script(ttft=0.08, itl=0.01, tokens=3)
    with sse_server(sc) as base:
        r, _ = run(
            _send_one(
                base,
                engine="decode",
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=3,
                timeout=5,
            )
        )
    assert r.status == "ok" and r.kind == "chat" and r.url.endswith("/v1/chat/completions")
    assert 0.08 <= r.ttft_s < 0.13
    assert r.output_text == " t0 t1 t2"
    assert r.request_id.startswith("kvorch-decode-") and sc.request_ids == [r.request_id]
    assert r.response_id == f"chatcmpl-{r.request_id}"
    assert sc.bodies[0]["messages"] == [{"role": "user", "content": "hi"}]


def test_timeout_before_headers_is_recorded_not_raised() -> None:
    sc = Script(header_delay=5.0)
    with sse_server(sc) as base:
        r, took = run(_send_one(base, prompt="x", timeout=0.3))
    assert r.status == "timeout" and "0.3" in (r.error or "")
    assert took < 1.0 and r.e2e_s < 1.0
    assert r.ttft_s is None and r.output_text == ""


def test_timeout_mid_stream_keeps_partial_output() -> None:
    sc = Script(ttft=0.02, itl=0.1, tokens=100)
    with sse_server(sc) as base:
        r, took = run(_send_one(base, prompt="x", timeout=0.35))
    assert r.status == "timeout" and took < 1.0
    assert r.ttft_s is not None and r.output_text.startswith(" t0") and 1 <= r.num_chunks <= 5
    assert r.tpot_s is None


def test_http_error_stream_error_missing_done_and_refused() -> None:
    def one(sc: Script) -> RequestRecord:
        with sse_server(sc) as base:
            return run(_send_one(base, prompt="x", timeout=2))[0]

    r = one(Script(status=400))
    assert (r.status, r.http_status) == ("error", 400) and "max_tokens is too large" in (
        r.error or ""
    )
    r = one(Script(error_chunk=True, tokens=3))
    assert r.status == "error" and "engine died" in (r.error or "") and r.output_text == " t0"
    r = one(Script(no_done=True, tokens=2))
    assert r.status == "error" and "[DONE]" in (r.error or "")
    r, _ = run(_send_one(f"http://127.0.0.1:{_free_port()}/v1", prompt="x", timeout=2))
    assert r.status == "error" and r.http_status is None and "Connect" in (r.error or "")


def test_send_argument_checks_and_urls() -> None:
    async def main() -> None:
        async with httpx.AsyncClient() as c:
            with pytest.raises(ValueError):
                await send(c, "e", "http://127.0.0.1:1/v1", "m")
            with pytest.raises(ValueError):
                await send(c, "e", "http://127.0.0.1:1/v1", "m", prompt="a", messages=[])

    run(main())
    assert (
        endpoint_url("http://127.0.0.1:8010", "completions")
        == "http://127.0.0.1:8010/v1/completions"
    )
    assert (
        endpoint_url("http://127.0.0.1:8010/v1/", "chat")
        == "http://127.0.0.1:8010/v1/chat/completions"
    )
    a, b = new_request_id(engine="de code"), new_request_id(engine="de code")
    assert a != b and a.startswith("kvorch-de_code-")
    assert all(ch.isalnum() or ch in "-_." for ch in a)


# ------------------------------------------------------------------------------ run_load()


def _reqs(base: str, n: int, **kw: Any) -> list[LoadRequest]:
    return [
        LoadRequest(
            engine="e",
            base_url=base,
            model="tiny",
            prompt=f"p{i}",
            max_tokens=2,
            request_id=f"load-{i}",
            **kw,
        )
        for i in range(n)
    ]


def test_run_load_respects_concurrency() -> None:
    sc = Script(ttft=0.05, itl=0.01, tokens=2)
    with sse_server(sc) as base:
        t = time.perf_counter()
        recs = run(run_load(_reqs(base, 12), concurrency=3, max_duration_s=10, timeout=5))
        took = time.perf_counter() - t
    assert len(recs) == 12 and all(r.ok for r in recs)
    assert sc.max_inflight == 3
    assert [r.request_id for r in recs] == [f"load-{i}" for i in range(12)]
    assert 0.2 < took < 2.0  # 4 waves of ~60 ms
    s = summarize(recs)
    assert s["ok"] == 12 and s["ttft_s"]["p50"] is not None and s["output_tokens"] == 24


def test_run_load_poisson_arrivals_follow_the_seeded_schedule() -> None:
    sc = Script(ttft=0.0, itl=0.0, tokens=1)
    rate, n, seed = 40.0, 40, 7
    with sse_server(sc) as base:
        recs = run(
            run_load(
                _reqs(base, n),
                concurrency=n,
                rate_rps=rate,
                seed=seed,
                max_duration_s=20,
                timeout=5,
            )
        )
    assert len(recs) == n and all(r.ok for r in recs)
    rng = random.Random(seed)
    expected = [0.0]
    for _ in range(n - 1):
        expected.append(expected[-1] + rng.expovariate(rate))
    # the client's send times follow the schedule drawn from the seed (its pacing, not the server)
    starts = [r.started_at - recs[0].started_at for r in recs]
    lag = [g - e for g, e in zip(starts, expected)]
    assert statistics.median(abs(x) for x in lag) < 0.02, lag
    assert max(abs(x) for x in lag) < 0.25, lag
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert 0.5 / rate < statistics.mean(gaps) < 2.0 / rate
    assert len(sc.arrivals) == n  # and the server saw every one of them


def test_run_load_is_bounded_in_time() -> None:
    sc = Script(header_delay=3.0)
    with sse_server(sc) as base:
        t = time.perf_counter()
        recs = run(run_load(_reqs(base, 10), concurrency=2, max_duration_s=0.4, timeout=30))
        took = time.perf_counter() - t
    assert took < 1.5, took
    assert len(recs) == 2  # the two in flight; the other eight never started
    assert all(r.status == "timeout" for r in recs)


def test_run_load_is_bounded_in_count_with_an_endless_generator() -> None:
    sc = Script(tokens=1)

    def endless(base: str) -> Iterator[LoadRequest]:
        i = 0
        while True:
            yield LoadRequest(engine="e", base_url=base, model="tiny", prompt=f"p{i}", max_tokens=1)
            i += 1

    seen: list[str] = []
    with sse_server(sc) as base:
        recs = run(
            run_load(
                endless(base),
                concurrency=4,
                max_requests=9,
                max_duration_s=10,
                timeout=5,
                on_record=lambda r: seen.append(r.request_id),
            )
        )
    assert len(recs) == 9 and len({r.request_id for r in recs}) == 9
    assert sorted(seen) == sorted(r.request_id for r in recs)


def test_run_load_argument_checks() -> None:
    with pytest.raises(ValueError):
        run(run_load([], concurrency=0))
    with pytest.raises(ValueError):
        run(run_load([], rate_rps=0))
    assert run(run_load([], concurrency=1)) == []


def test_records_round_trip(tmp_path) -> None:
    from kvorch.client import load_records, save_records

    recs = [
        RequestRecord(
            request_id="a",
            engine="e",
            url="u",
            kind="chat",
            started_at=1.0,
            ttft_s=0.1,
            itl_s=[0.01, 0.02],
            tags={"phase": "warm"},
        ),
        RequestRecord(
            request_id="b",
            engine="e",
            url="u",
            kind="completions",
            started_at=2.0,
            status="timeout",
            error="late",
        ),
    ]
    save_records(recs, tmp_path / "r" / "requests.jsonl")
    assert load_records(tmp_path / "r" / "requests.jsonl") == recs


# ------------------------------------------------------------------------------ the two HTTP paths


@pytest.mark.parametrize("path", ["lean", "httpx"])
def test_one_client_keeps_one_connection_across_streamed_requests(path, monkeypatch) -> None:
    import kvorch.client as kc

    monkeypatch.setattr(kc, "_FORCE_HTTPX", path == "httpx")
    sc = Script(ttft=0.01, itl=0.005, tokens=3)
    with sse_server(sc) as base:
        recs = run(_send_n(base, 4, prompt="x", max_tokens=3, timeout=5))
    assert [r.status for r in recs] == ["ok"] * 4 and all(r.output_text == " t0 t1 t2" for r in recs)
    assert len(set(sc.peers)) == 1, sc.peers  # read to the end of each answer: the connection is reused


def test_a_client_with_mounted_transports_goes_through_httpx() -> None:
    import kvorch.client as kc

    async def main(base: str) -> tuple[RequestRecord, bool]:
        async with httpx.AsyncClient(trust_env=False, mounts={"http://": httpx.AsyncHTTPTransport()}) as c:
            r = await send(c, "e", base, "tiny", prompt="x", max_tokens=2, timeout=5)
            return r, c in kc._POOLS

    with sse_server(Script(tokens=2)) as base:
        r, lean = run(main(base))
    assert r.status == "ok" and r.output_text == " t0 t1" and not lean


def test_a_closed_client_gives_an_error_record_not_an_exception() -> None:
    async def main() -> RequestRecord:
        c = httpx.AsyncClient(trust_env=False)
        await c.aclose()
        return await send(c, "e", "http://127.0.0.1:1/v1", "tiny", prompt="x", timeout=2)

    r = run(main())
    assert r.status == "error" and "closed" in (r.error or "") and r.send_wait_s is None


def test_the_client_module_does_not_import_httpx_until_a_request_is_made() -> None:
    code = ("import sys, kvorch.client, kvorch.evidence; "
            "print('httpx' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_a_token_that_decodes_to_no_text_still_starts_ttft_and_is_kept_with_its_logprobs() -> None:
    chunks = [
        {"id": "cmpl-x", "choices": [{"index": 0, "text": "", "token_ids": [7792],
                                      "logprobs": {"top_logprobs": [{"token_id:7792": -0.1, "token_id:5": -2.5}]}}]},
        {"id": "cmpl-x", "choices": [{"index": 0, "text": " hi", "token_ids": [12], "finish_reason": "length",
                                      "logprobs": {"top_logprobs": [{"token_id:12": -0.01}]}}]},
        {"id": "cmpl-x", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}},
    ]
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Type": "text/event-stream"}, content=body.encode())

    async def main() -> RequestRecord:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as c:
            return await send(c, "e", "http://127.0.0.1:1/v1", "m", prompt="p", max_tokens=2, timeout=5,
                              extra_body={"return_token_ids": True, "logprobs": 2})

    r = run(main())
    assert r.status == "ok" and r.ttft_s is not None and r.num_chunks == 2
    assert r.output_token_ids == [7792, 12] and r.output_text == " hi"
    assert r.output_top_logprobs == [{"7792": -0.1, "5": -2.5}, {"12": -0.01}]
