"""Log lines → events → per-request evidence.

The sample lines are what LMCache 0.5.6 and vLLM 0.32 print: the LMCache ones were rendered with
LMCache's own formatter (``lmcache/logging.py``: ANSI colours, ``[asctime] LMCache LEVEL:`` …
``(file:line:logger)``) from the format strings in ``integration/vllm/vllm_v1_adapter.py``,
``v1/cache_engine.py``, ``v1/storage_backend/p2p_backend.py`` and the MP server's transfer modules;
vLLM's from ``vllm/logger.py``'s format and ``v1/engine/async_llm.py``.
"""

from __future__ import annotations

from kvorch.client import RequestRecord, server_request_ids
from kvorch.evidence import (
    PATTERNS,
    match,
    parse_log,
    parse_logs,
    strip_ansi,
    unattributed,
)

G = "\x1b[32;20m"
Y = "\x1b[33;20m"
R = "\x1b[0m"
U = "\x1b[3m"
ENG = "(EngineCore_DP0 pid=4300) "

RID = "kvorch-decode-201201-0002-3fa9c1"  # what the client sent as X-Request-Id
SID = f"cmpl-{RID}-0-1a2b3c4d"  # what vLLM 0.32 hands to LMCache
BASE_RID = "kvorch-prefill-201159-0001-77aa01"
BASE_SID = f"cmpl-{BASE_RID}-0-9f8e7d6c"


def lmc(
    msg: str,
    level: str = "INFO",
    where: str = "vllm_v1_adapter.py:1478:lmcache.integration.vllm.vllm_v1_adapter",
) -> str:
    color = G if level == "INFO" else Y
    return f"{ENG}{color}[2026-11-24 20:12:01,882] LMCache {level}:{R} {msg} {U}({where}){R}"


DECODE_LOG = "\n".join(
    [
        f"{ENG}INFO 11-24 20:11:40 [core.py:93] Initializing a V1 LLM engine (v0.32.0) with config: ...",
        f"(APIServer pid=4242) INFO 11-24 20:12:01 [async_llm.py:578] Added request {SID}.",
        lmc(
            f"Reqid: {SID}, Total tokens 1501, Inference Engine computed tokens: 0, "
            "LMCache hit tokens: 1280, need to load: 1280"
        ),
        lmc(
            f"[req_id={SID}] Retrieved 1280 out of 1280 required tokens (from 1501 total tokens). "
            "size: 0.0195 gb, cost 12.3000 ms, throughput: 1.5800 GB/s;",
            where="cache_engine.py:986:lmcache.v1.cache_engine",
        ),
        lmc(
            f"[req_id={SID}] Stored 0 out of total 1501 tokens. size: 0.0000 GB, cost 0.5000 ms, "
            "throughput: 0.0000 GB/s; offload_time: 0.3000 ms, put_time: 0.1000 ms",
            where="cache_engine.py:589:lmcache.v1.cache_engine",
        ),
        lmc(
            "Got layout info from controller: ('lmcache_instance_1', 'LocalCPUBackend', 5, '192.168.110.13:8200')",
            where="p2p_backend.py:323:lmcache.v1.storage_backend.p2p_backend",
        ),
        '(APIServer pid=4242) INFO:     127.0.0.1:51234 - "POST /v1/completions HTTP/1.1" 200 OK',
    ]
)

PREFILL_LOG = "\n".join(
    [
        lmc(
            f"Reqid: {BASE_SID}, Total tokens 1400, Inference Engine computed tokens: 0, "
            "LMCache hit tokens: 0, need to load: 0"
        ),
        lmc(
            f"[req_id={BASE_SID}] Stored 1280 out of total 1400 tokens. size: 0.0195 GB, cost 20.1000 ms, "
            "throughput: 0.9700 GB/s; offload_time: 15.0000 ms, put_time: 5.1000 ms",
            where="cache_engine.py:589:lmcache.v1.cache_engine",
        ),
        # the decode engine's lookup reaches this (prefill) LMCache over P2P:
        lmc(
            f"Received P2P batched lookup and get msg, lookup_id: {SID}",
            where="p2p_backend.py:394:lmcache.v1.storage_backend.p2p_backend",
        ),
        lmc(
            "P2P transfer finished for request 17",
            where="p2p_backend.py:383:lmcache.v1.storage_backend.p2p_backend",
        ),
    ]
)


def rec(rid: str, engine: str, kind: str = "completions") -> RequestRecord:
    return RequestRecord(
        request_id=rid,
        engine=engine,
        url="http://127.0.0.1:8010/v1/completions",
        kind=kind,
        started_at=0.0,
    )


def test_strip_ansi() -> None:
    assert (
        strip_ansi(f"{G}[x] LMCache INFO:{R} hi {U}(a.py:1:b){R}")
        == "[x] LMCache INFO: hi (a.py:1:b)"
    )


def test_parse_decode_log() -> None:
    evs = parse_log(DECODE_LOG, source="decode", host="192.168.110.97")
    kinds = [e.kind for e in evs]
    assert kinds == ["vllm_added", "lookup", "retrieve", "store", "p2p_lookup"]
    added, lookup, retrieve, store, p2p = evs
    assert added.server_request_id == SID
    assert added.timestamp == "11-24 20:12:01"
    assert lookup.server_request_id == SID
    assert (
        lookup.total_tokens,
        lookup.computed_tokens,
        lookup.hit_tokens,
        lookup.need_to_load,
    ) == (1501, 0, 1280, 1280)
    assert lookup.timestamp == "2026-11-24 20:12:01,882"
    assert lookup.source == "decode" and lookup.host == "192.168.110.97"
    assert lookup.line_no == 3
    assert "\x1b" not in lookup.line
    assert (retrieve.retrieved_tokens, retrieve.required_tokens, retrieve.total_tokens) == (
        1280,
        1280,
        1501,
    )
    assert (store.stored_tokens, store.total_tokens) == (0, 1501)
    assert (p2p.chunks, p2p.peer, p2p.server_request_id) == (5, "192.168.110.13:8200", None)


def test_lookup_variants() -> None:
    text = "\n".join(
        [
            # vLLM's bundled copy of the adapter: no "Inference Engine computed tokens"
            "LMCache INFO: Reqid: cmpl-a-0-00000000, Total tokens 600, LMCache hit tokens: 512, need to load: 512",
            # below min_retrieve
            lmc(
                "Reqid: cmpl-b-0-11111111, Total tokens 700, Inference Engine computed tokens: 512, "
                "LMCache hit tokens: 512, but need to load: 0 < min_retrieve 256, skip retrieve but record for save skip"
            ),
            # asynchronous lookup still under way (DEBUG)
            lmc(
                "Reqid: cmpl-c-0-22222222, Total tokens 800, Inference Engine computed tokens: 0, LMCache hit tokens: None.",
                level="DEBUG",
            ),
            # the DESIGN.md §4 form, as a simulated engine may print it
            "Reqid: chatcmpl-d, Total tokens 300, LMCache hit tokens: 256, need to load: 256",
        ]
    )
    a, b, c, d = parse_log(text)
    assert (
        a.server_request_id,
        a.total_tokens,
        a.computed_tokens,
        a.hit_tokens,
        a.need_to_load,
    ) == ("cmpl-a-0-00000000", 600, None, 512, 512)
    assert (b.hit_tokens, b.need_to_load, b.min_retrieve, b.computed_tokens) == (512, 0, 256, 512)
    assert (c.hit_tokens, c.need_to_load, c.total_tokens) == (None, None, 800)
    assert (d.server_request_id, d.hit_tokens) == ("chatcmpl-d", 256)


def test_retrieve_layerwise_and_load_failed_and_mp_lines() -> None:
    text = "\n".join(
        [
            lmc("[req_id=cmpl-x-0-33333333] Retrieved 512 out of 512 out of total 700 tokens"),
            lmc(
                "Request cmpl-x-0-33333333 failed to load 256 tokens across 16 blocks",
                level="WARNING",
            ),
            lmc(
                "[req_id=unspecified] Stored 256 out of total 256 tokens. size: 0.0039 GB, cost 1.0 ms, throughput: 3.9 GB/s"
            ),
            # LMCache MP server (lmcache server): no request id
            lmc(
                "Stored 1280 tokens in 0.012 seconds",
                where="lmcache_driven_transfer.py:834:lmcache.v1.multiprocess",
            ),
            lmc(
                "Retrieved 1280 tokens in 0.004 seconds",
                where="lmcache_driven_transfer.py:1100:lmcache.v1.multiprocess",
            ),
        ]
    )
    r, f, s, ms, mr = parse_log(text, source="lmcache")
    assert (r.kind, r.retrieved_tokens, r.required_tokens, r.total_tokens) == (
        "retrieve",
        512,
        512,
        700,
    )
    assert (f.kind, f.tokens, f.server_request_id) == ("load_failed", 256, "cmpl-x-0-33333333")
    assert (s.kind, s.server_request_id, s.stored_tokens) == ("store", None, 256)
    assert (ms.kind, ms.tokens, ms.seconds) == ("mp_store", 1280, 0.012)
    assert (mr.kind, mr.tokens) == ("mp_retrieve", 1280)
    tot = unattributed([r, f, s, ms, mr])
    assert tot["lmcache"]["mp_store_tokens"] == 1280
    assert tot["lmcache"]["mp_retrieve_tokens"] == 1280
    assert tot["lmcache"]["store_tokens"] == 256
    assert tot["lmcache"]["mp_store_lines"] == 1


def test_vllm_request_lines() -> None:
    text = "\n".join(
        [
            "(APIServer pid=1) INFO 11-24 20:12:01 [request_logger.py:66] Received request cmpl-r1-0: params: SamplingParams(n=1, temperature=0.0), lora_request: None.",
            "(APIServer pid=1) INFO 11-24 20:12:01 [async_llm.py:578] Added request cmpl-r1-0-abcdef01.",
            "(APIServer pid=1) INFO 11-24 20:12:02 [request_logger.py:109] Generated response cmpl-r1-0 (streaming complete): output: 'hi', finish_reason: length",
            "(APIServer pid=1) INFO 11-24 20:12:03 [async_llm.py:922] Aborted request(s) cmpl-r2-0-abcdef02,cmpl-r3-0-abcdef03.",
        ]
    )
    evs = parse_log(text)
    assert [(e.kind, e.server_request_id) for e in evs] == [
        ("vllm_received", "cmpl-r1-0"),
        ("vllm_added", "cmpl-r1-0-abcdef01"),
        ("vllm_generated", "cmpl-r1-0"),
        ("vllm_aborted", "cmpl-r2-0-abcdef02"),
        ("vllm_aborted", "cmpl-r3-0-abcdef03"),
    ]


def test_match_two_hosts() -> None:
    """The follow-up on the decode host loaded 1280 tokens that the prefill host stored and served."""
    events = parse_logs(
        {"decode": DECODE_LOG, "prefill": PREFILL_LOG}, hosts={"decode": "h97", "prefill": "h13"}
    )
    records = [rec(BASE_RID, "prefill"), rec(RID, "decode"), rec("never-logged", "decode")]
    ev = match(events, records)
    assert set(ev) == {BASE_RID, RID, "never-logged"}
    base, follow, missing = ev[BASE_RID], ev[RID], ev["never-logged"]
    assert base.found and base.hit_tokens == 0 and base.stored_tokens == 1280
    assert base.store_sources == ["prefill@h13"] and not base.reused
    assert follow.found and follow.reused
    assert (
        follow.hit_tokens,
        follow.need_to_load,
        follow.total_tokens,
        follow.computed_tokens,
    ) == (1280, 1280, 1501, 0)
    assert follow.retrieved_tokens == 1280 and follow.stored_tokens == 0
    assert follow.lookup_sources == ["decode@h97"]
    assert follow.served_by == ["prefill@h13"]
    assert follow.server_request_ids == [SID]
    assert [e.kind for e in follow.events] == [
        "vllm_added",
        "lookup",
        "retrieve",
        "store",
        "p2p_serve",
    ]
    assert not missing.found and missing.hit_tokens is None and not missing.reused


def test_match_ids_are_not_confused() -> None:
    """'r-1' must not take the lines of 'r-10'; chat ids; ids without the random suffix."""
    text = "\n".join(
        [
            "Reqid: cmpl-r-10-0-0123abcd, Total tokens 600, LMCache hit tokens: 512, need to load: 512",
            "Reqid: cmpl-r-1-0-4567cdef, Total tokens 600, LMCache hit tokens: 256, need to load: 256",
            "Reqid: chatcmpl-c-1-89abcdef, Total tokens 600, LMCache hit tokens: 0, need to load: 0",
            "Reqid: cmpl-plain-0, Total tokens 300, LMCache hit tokens: 256, need to load: 256",
            "Reqid: proxy:r-42:x, Total tokens 300, LMCache hit tokens: 256, need to load: 256",
            "Reqid: cmpl-someone-else-0-00000000, Total tokens 300, LMCache hit tokens: 256, need to load: 256",
        ]
    )
    records = [
        rec("r-1", "a"),
        rec("r-10", "a"),
        rec("c-1", "b", kind="chat"),
        rec("plain", "a"),
        rec("r-42", "a"),
    ]
    ev = match(parse_log(text), records)
    assert ev["r-10"].hit_tokens == 512
    assert ev["r-1"].hit_tokens == 256
    assert ev["c-1"].hit_tokens == 0 and ev["c-1"].found
    assert ev["plain"].hit_tokens == 256
    assert ev["r-42"].hit_tokens == 256  # unknown decoration: found by whole-part containment
    assert sum(len(e.events) for e in ev.values()) == 5  # "someone-else" matched nobody


def test_later_numbered_lookup_wins_and_none_does_not_erase() -> None:
    text = "\n".join(
        [
            "Reqid: cmpl-q-0-aaaaaaaa, Total tokens 900, Inference Engine computed tokens: 0, LMCache hit tokens: None.",
            "Reqid: cmpl-q-0-aaaaaaaa, Total tokens 900, Inference Engine computed tokens: 0, LMCache hit tokens: 768, need to load: 768",
            "Reqid: cmpl-q-0-aaaaaaaa, Total tokens 900, Inference Engine computed tokens: 0, LMCache hit tokens: None.",
            "[req_id=cmpl-q-0-aaaaaaaa] Stored 0 out of total 900 tokens.",
            "[req_id=cmpl-q-0-aaaaaaaa] Stored 128 out of total 1028 tokens.",
        ]
    )
    e = match(parse_log(text), [rec("q", "a")])["q"]
    assert e.hit_tokens == 768 and e.need_to_load == 768
    assert e.stored_tokens == 128


def test_server_request_ids() -> None:
    assert server_request_ids("X", "completions") == ["cmpl-X-0", "cmpl-X", "X"]
    assert server_request_ids("X", "completions", num_prompts=2)[:2] == ["cmpl-X-0", "cmpl-X-1"]
    assert server_request_ids("X", "chat") == ["chatcmpl-X", "X"]


def test_patterns_are_named() -> None:
    assert {"lookup", "retrieve", "store", "mp_store", "mp_retrieve", "p2p_serve"} <= set(PATTERNS)
