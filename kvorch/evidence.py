"""Log evidence: LMCache / vLLM log lines → events → per-request proof of KV reuse.

The caller reads each engine's log (from the offset it recorded before the scenario) and hands the
text to :func:`parse_log` with the name of the process and host it came from; :func:`match` then
attributes events to the client's :class:`~kvorch.client.RequestRecord` by request id.

Line formats (read in LMCache 0.5.6 and vLLM 0.32 sources):

* LMCache's logger (``lmcache/logging.py``) writes
  ``[<asctime>] LMCache <LEVEL>: <message> (<file>:<line>:<logger>)`` wrapped in ANSI colour codes;
  vLLM prefixes child-process output with ``(EngineCore_DP0 pid=…)``. Both are tolerated: patterns
  are searched anywhere in a line after ANSI codes are removed.
* ``integration/vllm/vllm_v1_adapter.py`` (LMCacheConnectorV1, scheduler side, INFO)::

      Reqid: %s, Total tokens %d, Inference Engine computed tokens: %d, LMCache hit tokens: %d, need to load: %d
      Reqid: %s, Total tokens %d, Inference Engine computed tokens: %d, LMCache hit tokens: %d, but need to load: %d < min_retrieve %d, skip retrieve but record for save skip
      Reqid: %s, Total tokens %d, Inference Engine computed tokens: %d, LMCache hit tokens: None.   (DEBUG)

  (vLLM's own copy ``lmcache_integration/vllm_v1_adapter.py`` omits the "Inference Engine computed
  tokens" part.) ``Request %s failed to load %d tokens across %d blocks`` (WARNING).
* ``v1/cache_engine.py`` (worker side, INFO)::

      [req_id=%s] Retrieved %d out of %d required tokens (from %d total tokens). size: …
      [req_id=%s] Retrieved %d out of %d out of total %d tokens            (layerwise)
      [req_id=%s] Stored %d out of total %d tokens. size: …                (stored, asked to store)

* ``v1/storage_backend/p2p_backend.py`` (the peer that serves a P2P hit)::

      Received P2P batched lookup and get msg, lookup_id: %s     (lookup_id = the requester's req id)
      Got layout info from controller: (…, location, num_hit_chunks, peer_init_url)   (requester)

* LMCache MP server (``v1/multiprocess/modules/*_transfer.py``), no request id::

      Stored %d tokens in %.3f seconds
      Retrieved %d tokens in %.3f seconds

  The vLLM-side ``LMCacheMPConnector`` logs its per-request hit only at DEBUG ("vLLM hit is: %d,
  Need to load is %d") — in MP mode per-request proof comes from metrics and timings.
* vLLM (``vllm/logger.py``: ``(<proc> pid=N) INFO MM-DD HH:MM:SS [file.py:N] msg``) with
  ``--enable-log-requests``: ``Added request %s.`` (``v1/engine/async_llm.py``), ``Received request
  %s: params: …`` and ``Generated response %s…`` (``entrypoints/serve/utils/request_logger.py``),
  ``Aborted request(s) %s.``.

Request ids in these lines are vLLM's internal ids, e.g. ``cmpl-<X-Request-Id>-0-1a2b3c4d``
(see :mod:`kvorch.client`): :func:`match` undoes the prefix, the prompt index and the random suffix.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .client import RequestRecord, server_request_ids
from .fmt import strip_ansi

__all__ = [
    "LogEvent",
    "RequestEvidence",
    "PATTERNS",
    "parse_log",
    "parse_logs",
    "match",
    "unattributed",
    "strip_ansi",
]

EventKind = Literal[
    "lookup",  # LMCache scheduler-side lookup: hit tokens, need to load
    "retrieve",  # LMCache worker: KV loaded into vLLM
    "store",  # LMCache worker: KV stored
    "load_failed",  # LMCache: a load failed (blocks recomputed)
    "p2p_serve",  # this LMCache served a peer's lookup-and-get (id = the requester's)
    "p2p_lookup",  # the controller told this LMCache where a hit is (no request id)
    "mp_store",  # LMCache MP server stored tokens (no request id)
    "mp_retrieve",  # LMCache MP server handed tokens to an engine (no request id)
    "vllm_received",
    "vllm_added",
    "vllm_generated",
    "vllm_aborted",
]


#: Request ids as they appear in lines: no whitespace, no comma, no closing bracket.
_ID = r"[^\s,\]]+"

#: name → compiled pattern. Each has named groups; ``id`` is the request id when there is one.
PATTERNS: dict[str, re.Pattern[str]] = {
    "lookup": re.compile(
        rf"Reqid:\s*(?P<id>{_ID}),\s*Total tokens:?\s*(?P<total>\d+),\s*"
        r"(?:Inference Engine computed tokens:\s*(?P<computed>\d+),\s*)?"
        r"LMCache hit tokens:\s*(?P<hit>\d+|None)"
        r"(?:,\s*(?:but\s+)?need to load:\s*(?P<load>\d+)"
        r"(?:\s*<\s*min_retrieve\s*(?P<min_retrieve>\d+))?)?"
    ),
    "retrieve": re.compile(
        rf"\[req_id=(?P<id>{_ID})\]\s*Retrieved\s+(?P<retrieved>\d+)\s+out of\s+(?P<required>\d+)"
        r"(?:\s+required tokens(?:\s*\(from\s+(?P<total>\d+)\s+total tokens\))?"
        r"|\s+out of total\s+(?P<total_lw>\d+)\s+tokens)"
    ),
    "store": re.compile(
        rf"(?:\[req_id=(?P<id>{_ID})\]\s*)?Stored\s+(?P<stored>\d+)\s+out of total\s+(?P<total>\d+)\s+tokens"
    ),
    "load_failed": re.compile(
        rf"Request\s+(?P<id>{_ID})\s+failed to load\s+(?P<tokens>\d+)\s+tokens across\s+(?P<blocks>\d+)\s+blocks"
    ),
    "p2p_serve": re.compile(
        rf"Received P2P batched lookup and get msg, lookup_id:\s*(?P<id>{_ID})"
    ),
    "p2p_lookup": re.compile(
        r"Got layout info from controller:\s*[\[(]\s*(?P<first>[^,]*),\s*'?(?P<location>[^',]*)'?,\s*"
        r"(?P<chunks>\d+),\s*'?(?P<peer>[^')\]]*)'?"
    ),
    "mp_store": re.compile(r"\bStored (?P<tokens>\d+) tokens in (?P<secs>[\d.]+) seconds"),
    "mp_retrieve": re.compile(r"\bRetrieved (?P<tokens>\d+) tokens in (?P<secs>[\d.]+) seconds"),
    "vllm_received": re.compile(r"Received request (?P<id>[^\s:]+):"),
    "vllm_added": re.compile(rf"Added request (?P<id>{_ID}?)\.?(?:\s|$)"),
    "vllm_generated": re.compile(r"Generated response (?P<id>[^\s:]+?)(?: \(streaming [a-z]+\))?:"),
    "vllm_aborted": re.compile(r"Aborted request\(s\) (?P<ids>\S+?)\.?(?:\s|$)"),
}

#: Timestamps: LMCache ``[2026-11-24 20:06:01,123]``, vLLM ``INFO 11-24 20:06:01``.
_TS = re.compile(
    r"\[(?P<lmc>\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(?:[,.]\d+)?)\]"
    r"|(?:DEBUG|INFO|WARNING|ERROR|CRITICAL) (?P<vllm>\d{2}-\d{2} \d{2}:\d{2}:\d{2}(?:\.\d+)?)"
)

#: Cheap pre-filter: a line without any of these cannot match.
_KEYWORDS = (
    "Reqid:",
    "Retrieved",
    "Stored",
    "failed to load",
    "P2P batched lookup and get",
    "Got layout info",
    "Received request",
    "Added request",
    "Generated response",
    "Aborted request",
)

#: vLLM V1 appends "-" + 8 hex chars to every request id (InputProcessor.assign_request_id).
_RANDOM_SUFFIX = re.compile(r"-[0-9a-f]{8}$")


class LogEvent(BaseModel):
    """One recognised log line."""

    model_config = ConfigDict(extra="forbid")

    kind: EventKind
    server_request_id: str | None = Field(None, description="the id as logged (None: not logged)")
    source: str | None = Field(None, description="process name, e.g. 'decode'")
    host: str | None = None
    line_no: int = Field(description="1-based line number within the text given")
    timestamp: str | None = Field(None, description="as written in the line")
    total_tokens: int | None = None
    computed_tokens: int | None = Field(
        None, description="tokens vLLM already had (its prefix cache)"
    )
    hit_tokens: int | None = Field(None, description="LMCache hit tokens (lookup)")
    need_to_load: int | None = None
    min_retrieve: int | None = None
    retrieved_tokens: int | None = None
    required_tokens: int | None = None
    stored_tokens: int | None = None
    tokens: int | None = Field(None, description="mp_store / mp_retrieve / load_failed token count")
    seconds: float | None = None
    chunks: int | None = Field(None, description="p2p_lookup: hit chunks at the peer")
    peer: str | None = Field(None, description="p2p_lookup: the peer's init URL")
    line: str = Field(description="the line, ANSI codes removed")


def _int(m: re.Match[str], name: str) -> int | None:
    v = m.groupdict().get(name)
    return int(v) if v is not None and v.isdigit() else None


def _rid(v: str | None) -> str | None:
    if v is None or v in ("unspecified", "None", ""):
        return None
    return v


def _events_in_line(line: str) -> list[tuple[str, re.Match[str]]]:
    found: list[tuple[str, re.Match[str]]] = []
    for kind, pat in PATTERNS.items():
        m = pat.search(line)
        if m is None:
            continue
        found.append((kind, m))
    return found


def parse_log(
    text: str, source: str | None = None, host: str | None = None, *, first_line_no: int = 1
) -> list[LogEvent]:
    """Every recognised LMCache/vLLM line of ``text``, in order.

    ``source``/``host`` are copied into each event (which process's log, on which host).
    ``first_line_no`` numbers the lines when ``text`` starts in the middle of a file.
    """
    events: list[LogEvent] = []
    for i, raw in enumerate(text.splitlines()):
        if not any(k in raw for k in _KEYWORDS):
            continue
        line = strip_ansi(raw).strip()
        hits = _events_in_line(line)
        if not hits:
            continue
        ts_m = _TS.search(line)
        ts = (ts_m.group("lmc") or ts_m.group("vllm")) if ts_m else None
        for kind, m in hits:
            base = dict(
                source=source, host=host, line_no=first_line_no + i, timestamp=ts, line=line
            )
            if kind == "lookup":
                hit = m.group("hit")
                ev = LogEvent(
                    kind="lookup",
                    server_request_id=_rid(m.group("id")),
                    total_tokens=_int(m, "total"),
                    computed_tokens=_int(m, "computed"),
                    hit_tokens=int(hit) if hit and hit.isdigit() else None,
                    need_to_load=_int(m, "load"),
                    min_retrieve=_int(m, "min_retrieve"),
                    **base,
                )
            elif kind == "retrieve":
                total = _int(m, "total")
                ev = LogEvent(
                    kind="retrieve",
                    server_request_id=_rid(m.group("id")),
                    retrieved_tokens=_int(m, "retrieved"),
                    required_tokens=_int(m, "required"),
                    total_tokens=total if total is not None else _int(m, "total_lw"),
                    **base,
                )
            elif kind == "store":
                ev = LogEvent(
                    kind="store",
                    server_request_id=_rid(m.group("id")),
                    stored_tokens=_int(m, "stored"),
                    total_tokens=_int(m, "total"),
                    **base,
                )
            elif kind == "load_failed":
                ev = LogEvent(
                    kind="load_failed",
                    server_request_id=_rid(m.group("id")),
                    tokens=_int(m, "tokens"),
                    **base,
                )
            elif kind == "p2p_serve":
                ev = LogEvent(kind="p2p_serve", server_request_id=_rid(m.group("id")), **base)
            elif kind == "p2p_lookup":
                ev = LogEvent(
                    kind="p2p_lookup",
                    chunks=_int(m, "chunks"),
                    peer=(m.group("peer") or "").strip() or None,
                    **base,
                )
            elif kind in ("mp_store", "mp_retrieve"):
                ev = LogEvent(
                    kind=kind,  # type: ignore[arg-type]
                    tokens=_int(m, "tokens"),
                    seconds=float(m.group("secs")),
                    **base,
                )
            elif kind == "vllm_aborted":
                for rid in m.group("ids").split(","):
                    if rid:
                        events.append(LogEvent(kind="vllm_aborted", server_request_id=rid, **base))
                continue
            else:
                ev = LogEvent(kind=kind, server_request_id=_rid(m.group("id")), **base)  # type: ignore[arg-type]
            events.append(ev)
    return events


def parse_logs(logs: Mapping[str, str], hosts: Mapping[str, str] | None = None) -> list[LogEvent]:
    """:func:`parse_log` over ``{source: text}``; ``hosts`` maps a source to its host."""
    out: list[LogEvent] = []
    for source, text in logs.items():
        out.extend(parse_log(text, source=source, host=(hosts or {}).get(source)))
    return out


# --------------------------------------------------------------------------------------------
# matching


class RequestEvidence(BaseModel):
    """What the logs say about one client request."""

    model_config = ConfigDict(extra="forbid")

    request_id: str
    engine: str = Field(description="where the client sent it")
    found: bool = Field(False, description="at least one log line names this request")
    server_request_ids: list[str] = Field(default_factory=list, description="ids seen in the logs")
    total_tokens: int | None = None
    computed_tokens: int | None = Field(None, description="vLLM's own prefix-cache tokens")
    hit_tokens: int | None = Field(
        None, description="LMCache hit tokens (last lookup with a number)"
    )
    need_to_load: int | None = None
    retrieved_tokens: int | None = Field(None, description="sum over retrieve lines")
    required_tokens: int | None = None
    stored_tokens: int | None = Field(None, description="sum over store lines")
    load_failed_tokens: int | None = None
    lookup_sources: list[str] = Field(default_factory=list, description="source@host of lookups")
    retrieve_sources: list[str] = Field(default_factory=list)
    store_sources: list[str] = Field(default_factory=list)
    served_by: list[str] = Field(
        default_factory=list, description="source@host of peers that served this request over P2P"
    )
    events: list[LogEvent] = Field(default_factory=list)

    @property
    def reused(self) -> bool:
        """LMCache had tokens for this request (hit tokens > 0 or tokens retrieved)."""
        return bool(self.hit_tokens) or bool(self.retrieved_tokens)


def _where(ev: LogEvent) -> str:
    s = ev.source or "?"
    return f"{s}@{ev.host}" if ev.host else s


def _add_unique(lst: list[str], v: str) -> None:
    if v not in lst:
        lst.append(v)


class _Index:
    """Server id → client request id, exact first, then by id containment."""

    def __init__(self, records: Sequence[RequestRecord]) -> None:
        self.exact: dict[str, str] = {}
        self.by_len = sorted({r.request_id for r in records}, key=len, reverse=True)
        for r in records:
            for sid in server_request_ids(r.request_id, r.kind):
                self.exact.setdefault(sid, r.request_id)

    def lookup(self, sid: str) -> str | None:
        cand = [sid]
        stripped = _RANDOM_SUFFIX.sub("", sid)
        if stripped != sid:
            cand.append(stripped)
        for c in cand:
            if c in self.exact:
                return self.exact[c]
        # Unknown decoration (another server, a proxy adding its own prefix): the client id as a
        # whole '-'-delimited part of the logged id; the longest id wins ("r-1" vs "r-10").
        for rid in self.by_len:
            i = sid.find(rid)
            while i != -1:
                before_ok = i == 0 or not (sid[i - 1].isalnum())
                j = i + len(rid)
                after_ok = j == len(sid) or not (sid[j].isalnum())
                if before_ok and after_ok:
                    return rid
                i = sid.find(rid, i + 1)
        return None


def match(
    events: Iterable[LogEvent], records: Sequence[RequestRecord]
) -> dict[str, RequestEvidence]:
    """Per client request id, the evidence the log events give. Every record gets an entry
    (``found=False`` when no line names it). Events without a request id are ignored here (see
    :func:`unattributed`).

    * ``hit_tokens`` / ``need_to_load`` / ``total_tokens`` / ``computed_tokens``: from the last
      lookup line that carries a number (the connector may log ``None`` first while an
      asynchronous lookup is under way, and log again after a preemption).
    * ``retrieved_tokens`` / ``stored_tokens``: summed over lines (stores come per chunked step).
    * ``served_by``: the peers whose logs show a P2P lookup-and-get for this request.
    """
    idx = _Index(records)
    out: dict[str, RequestEvidence] = {
        r.request_id: RequestEvidence(request_id=r.request_id, engine=r.engine) for r in records
    }
    for ev in events:
        if ev.server_request_id is None:
            continue
        rid = idx.lookup(ev.server_request_id)
        if rid is None:
            continue
        e = out[rid]
        e.found = True
        _add_unique(e.server_request_ids, ev.server_request_id)
        e.events.append(ev)
        where = _where(ev)
        if ev.kind == "lookup":
            _add_unique(e.lookup_sources, where)
            if ev.hit_tokens is not None or e.hit_tokens is None:
                # a numbered lookup replaces what we had; a "None" one only fills the blanks
                if ev.hit_tokens is not None:
                    e.hit_tokens = ev.hit_tokens
                    e.need_to_load = ev.need_to_load
                e.total_tokens = ev.total_tokens
                e.computed_tokens = ev.computed_tokens
        elif ev.kind == "retrieve":
            _add_unique(e.retrieve_sources, where)
            e.retrieved_tokens = (e.retrieved_tokens or 0) + (ev.retrieved_tokens or 0)
            e.required_tokens = (e.required_tokens or 0) + (ev.required_tokens or 0)
        elif ev.kind == "store":
            _add_unique(e.store_sources, where)
            e.stored_tokens = (e.stored_tokens or 0) + (ev.stored_tokens or 0)
        elif ev.kind == "load_failed":
            e.load_failed_tokens = (e.load_failed_tokens or 0) + (ev.tokens or 0)
        elif ev.kind == "p2p_serve":
            _add_unique(e.served_by, where)
    return out


def unattributed(events: Iterable[LogEvent]) -> dict[str, dict[str, float]]:
    """Totals of the events that carry no request id, per ``source@host`` and kind.

    E.g. ``{"lmcache@hostA": {"mp_store_tokens": 1280, "mp_store_lines": 5,
    "mp_retrieve_tokens": 1280, …}}`` — the LMCache MP server's share of the evidence.
    """
    out: dict[str, dict[str, float]] = {}
    for ev in events:
        if ev.server_request_id is not None:
            continue
        d = out.setdefault(_where(ev), {})
        d[f"{ev.kind}_lines"] = d.get(f"{ev.kind}_lines", 0) + 1
        n = ev.tokens if ev.tokens is not None else ev.stored_tokens
        if ev.kind == "p2p_lookup":
            n = ev.chunks
            key = "p2p_lookup_chunks"
        else:
            key = f"{ev.kind}_tokens"
        if n is not None:
            d[key] = d.get(key, 0) + n
    return out
