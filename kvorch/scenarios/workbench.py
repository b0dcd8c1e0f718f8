"""What a scenario can do against the running cluster: send requests, scrape metrics, read the
engines' logs from an offset and match their LMCache lines to requests, reset or restart caches.

Scenarios never know whether an engine is real vLLM or the simulated one.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import httpx

from .. import client as oa
from .. import evidence as ev
from .. import metrics as mx
from ..errors import UserError
from ..plan import Plan, ProcessSpec

if TYPE_CHECKING:
    from ..inventory import Inventory
    from ..nodes import Node

#: counters that rise when an engine (or the LMCache server) has stored KV cache
STORE_COUNTERS = ("lmcache_stored_tokens", "mp_l1_write_chunks", "mp_stores_finished")
#: counters of tokens served from a cache outside vLLM's own prefix cache
EXTERNAL_HIT_COUNTERS = ("external_prefix_cache_hits", "lmcache_hit_tokens")


class ScenarioCannotRun(UserError):
    """The scenario cannot run against this cluster (exit 2, with the reason)."""


@dataclass
class LogMark:
    offsets: dict[str, int] = field(default_factory=dict)


class Workbench:
    def __init__(self, inv: Inventory, plan: Plan, nodes: dict[str, Node], out_dir: Path, *, request_timeout: float = 300.0,
                 extra_body: dict[str, Any] | None = None):
        self.inv = inv
        #: fields added to every request's body (the scenario's ``extra_body:``); a request's own win
        self.extra_body: dict[str, Any] = dict(extra_body or {})
        self.plan = plan
        self.nodes = nodes
        self.out_dir = out_dir
        self.request_timeout = request_timeout
        self.model = inv.vllm.served_model_name or inv.model
        self.chunk_size = int(inv.lmcache.get("chunk_size", 256))
        self.http = httpx.Client(timeout=10.0, trust_env=False)
        self.notes: list[str] = []
        # One event loop and one connection pool for every request of the scenario: a new client per
        # request would put a TCP connect into each TTFT.
        self._loop = asyncio.new_event_loop()
        self._aclient = httpx.AsyncClient(trust_env=False, limits=httpx.Limits(max_connections=256))

    def close(self) -> None:
        self.http.close()
        oa.close_lean_connections(self._aclient)  # the client's streaming connections (kvorch.h1)
        self._loop.run_until_complete(self._aclient.aclose())
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())  # streams left mid-iteration
        self._loop.close()

    @property
    def client(self) -> httpx.AsyncClient:
        """The pooled async client (use it inside :meth:`run`)."""
        return self._aclient

    def run(self, coro: Any) -> Any:
        """Run a coroutine on the workbench's event loop (where its client lives)."""
        return self._loop.run_until_complete(coro)

    # -- engines ------------------------------------------------------------------------------
    def engines(self) -> list[ProcessSpec]:
        return self.plan.engines()

    def engine(self, ref: str) -> ProcessSpec:
        """An engine by name, or ``role:prefill`` / ``role:decode`` (the first with that role)."""
        engines = self.engines()
        if ref.startswith("role:"):
            role = ref[5:]
            for p in engines:
                if p.role == role:
                    return p
            for p in engines:  # a single-role cluster: any engine does
                if p.role == "both":
                    return p
            raise ScenarioCannotRun(f"no engine with role {role!r} in cluster {self.plan.cluster}",
                                    hint="set role: on the engines, or pass --set engines via the scenario file")
        for p in engines:
            if p.name == ref:
                return p
        raise ScenarioCannotRun(f"no engine named {ref!r}", hint=f"engines: {', '.join(p.name for p in engines)}")

    @staticmethod
    def max_model_len(engine: ProcessSpec) -> int | None:
        """The engine's ``--max-model-len`` as planned (None: the model's own limit)."""
        argv = engine.argv
        for i, a in enumerate(argv[:-1]):
            if a == "--max-model-len":
                return int(argv[i + 1])
        return None

    def metric_targets(self) -> dict[str, str]:
        return {p.name: p.metrics_url for p in self.plan.processes() if p.metrics_url}

    # -- requests -----------------------------------------------------------------------------
    def send(self, engine: ProcessSpec, prompt: str, max_tokens: int, *, tags: dict[str, str] | None = None,
             extra_body: dict[str, Any] | None = None, request_id: str | None = None) -> oa.RequestRecord:
        return self._loop.run_until_complete(oa.send(
            self._aclient, engine.name, engine.api_url or "", self.model, prompt=prompt, max_tokens=max_tokens,
            temperature=0.0, timeout=self.request_timeout,
            request_id=request_id or oa.new_request_id("kvorch", engine.name), extra_body=self.body(extra_body), tags=tags))

    def load(self, requests: Sequence[oa.LoadRequest], *, concurrency: int, rate_rps: float | None,
             max_duration_s: float, seed: int = 0) -> list[oa.RequestRecord]:
        return self._loop.run_until_complete(oa.run_load(
            requests, concurrency=concurrency, rate_rps=rate_rps, max_duration_s=max_duration_s, seed=seed,
            timeout=self.request_timeout, client=self._aclient))

    def request(self, engine: ProcessSpec, prompt: str, max_tokens: int, tags: dict[str, str] | None = None,
                extra_body: dict[str, Any] | None = None) -> oa.LoadRequest:
        return oa.LoadRequest(engine=engine.name, base_url=engine.api_url or "", model=self.model, prompt=prompt,
                              max_tokens=max_tokens, request_id=oa.new_request_id("kvorch", engine.name),
                              tags=tags or {}, extra_body=self.body(extra_body))

    def body(self, extra_body: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """The scenario's extra body fields with a request's own on top (None when there are none)."""
        merged = {**self.extra_body, **(extra_body or {})}
        return merged or None

    def tokenize(self, engine: ProcessSpec, text: str) -> list[int] | None:
        """Token ids from the engine's own tokenizer (POST /tokenize), None when unsupported."""
        base = (engine.api_url or "").rsplit("/v1", 1)[0]
        try:
            r = self.http.post(f"{base}/tokenize", json={"model": self.model, "prompt": text})
            if r.status_code == 200:
                toks = r.json().get("tokens")
                return [int(t) for t in toks] if isinstance(toks, list) else None
        except (httpx.HTTPError, ValueError, TypeError):
            pass
        return None

    def tokens(self, engine: ProcessSpec, text: str) -> int | None:
        """Token count from the engine's own tokenizer, None when unsupported."""
        ids = self.tokenize(engine, text)
        return len(ids) if ids is not None else None

    # -- metrics ------------------------------------------------------------------------------
    def snapshot(self, names: Sequence[str] | None = None) -> dict[str, mx.Snapshot]:
        out: dict[str, mx.Snapshot] = {}
        for name, url in self.metric_targets().items():
            if names is not None and name not in names:
                continue
            try:
                out[name] = mx.scrape(url, client=self.http)
            except UserError as e:
                self.notes.append(f"metrics of {name} unavailable: {e.message}")
        return out

    @staticmethod
    def deltas(before: dict[str, mx.Snapshot], after: dict[str, mx.Snapshot]) -> dict[str, dict[str, float]]:
        return {n: mx.delta(before.get(n), a) for n, a in after.items()}

    def wait_for_store(self, before: dict[str, mx.Snapshot], timeout_s: float, settle_s: float = 0.0) -> float | None:
        """Wait until a store counter rose anywhere (KV cache shipped to LMCache). Seconds waited, or None."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            now = self.snapshot()
            for name, snap in now.items():
                d = mx.delta(before.get(name), snap, STORE_COUNTERS)
                if any(v > 0 for v in d.values()):
                    if settle_s:
                        time.sleep(settle_s)
                    return time.monotonic() - t0
            time.sleep(0.05)
        return None

    # -- logs and evidence --------------------------------------------------------------------
    def mark_logs(self) -> LogMark:
        mark = LogMark()
        for p in self.plan.processes():
            node = self.nodes.get(p.host)
            if node is not None:
                mark.offsets[p.name] = node.ops.file_size(node.path(p.log_path)) or 0
        return mark

    def read_logs(self, mark: LogMark) -> dict[str, str]:
        out: dict[str, str] = {}
        for p in self.plan.processes():
            node = self.nodes.get(p.host)
            if node is None:
                continue
            data = node.ops.read_from(p.log_path, mark.offsets.get(p.name, 0))
            out[p.name] = data.decode(errors="replace")
        return out

    def evidence(self, mark: LogMark, records: Sequence[oa.RequestRecord], wait_s: float = 0.3) -> tuple[dict[str, ev.RequestEvidence], dict[str, Any]]:
        """Per request: what the logs say (LMCache hit tokens, loads, stores, and where)."""
        time.sleep(wait_s)  # log lines are written right after the response; give them a moment
        logs = self.read_logs(mark)
        events = ev.parse_logs(logs, hosts={p.name: p.host for p in self.plan.processes()})
        return ev.match(events, list(records)), ev.unattributed(events)

    # -- cache control ------------------------------------------------------------------------
    def reset_caches(self, engines: Sequence[ProcessSpec]) -> dict[str, dict[str, str]]:
        """Empty every cache tier: each engine's prefix cache, and LMCache (controller or server)."""
        report: dict[str, dict[str, str]] = {}
        for p in engines:
            base = (p.api_url or "").rsplit("/v1", 1)[0]
            report.setdefault(p.name, {})["engine_prefix_cache"] = self._post(f"{base}/reset_prefix_cache", None)
        for p in self.plan.processes():
            if p.kind == "controller":
                for e in engines:
                    if e.instance_id:
                        report.setdefault(e.name, {})["lmcache"] = self._post(
                            p.health_url.replace("/controller/workers", "/clear"),
                            {"instance_id": e.instance_id, "location": "LocalCPUBackend"})
            if p.kind == "lmcache_server":
                report.setdefault(p.name, {})["lmcache_server"] = self._post(p.health_url.replace("/healthcheck", "/cache/clear"), None)
        return report

    def _post(self, url: str, body: Any) -> str:
        try:
            r = self.http.post(url, json=body) if body is not None else self.http.post(url)
        except httpx.HTTPError as e:
            return f"failed: {type(e).__name__}"
        return "ok" if r.status_code < 300 else f"failed: HTTP {r.status_code} {r.text[:120]}"

    def sampler(self, interval_s: float, max_duration_s: float) -> mx.Sampler:
        return mx.Sampler(self.metric_targets(), interval_s=interval_s, max_duration_s=max_duration_s)


def hit_tokens(d: dict[str, float]) -> float | None:
    """Tokens an engine got from outside its own prefix cache (LMCache), from a metrics delta.
    vLLM's own counter first: LMCache's counts whole retrieved chunks, which can overlap the
    tokens vLLM already had."""
    for k in EXTERNAL_HIT_COUNTERS:
        if k in d:
            return d[k]
    return None


def summarize_delta(d: dict[str, float]) -> dict[str, Any]:
    rates = mx.hit_rates(d)
    return {
        "external_hit_tokens": hit_tokens(d),
        "prefix_cache_hit_tokens": d.get("prefix_cache_hits"),
        "prompt_tokens": d.get("prompt_tokens"),
        "lmcache_hit_tokens": d.get("lmcache_hit_tokens"),
        "lmcache_stored_tokens": d.get("lmcache_stored_tokens"),
        "mp_lookup_hit_tokens": d.get("mp_lookup_hit_tokens"),
        "mp_l1_write_chunks": d.get("mp_l1_write_chunks"),
        "external_hit_rate": rates.get("external_hit_rate"),
        "prefix_hit_rate": rates.get("prefix_hit_rate"),
        "all": d,
    }


def record_view(r: oa.RequestRecord, e: ev.RequestEvidence | None) -> dict[str, Any]:
    """One request as check expressions see it: timings, tokens, text, and its log evidence."""
    return {
        "request_id": r.request_id, "engine": r.engine, "status": r.status, "error": r.error,
        "ttft_s": r.ttft_s, "e2e_s": r.e2e_s, "tpot_s": r.tpot_s, "prompt_tokens": r.prompt_tokens,
        "output_tokens": r.output_tokens, "output_text": r.output_text,
        "log": {
            "found": e.found if e else False,
            "hit_tokens": e.hit_tokens if e else None,
            "need_to_load": e.need_to_load if e else None,
            "retrieved_tokens": e.retrieved_tokens if e else None,
            "stored_tokens": e.stored_tokens if e else None,
            "lookup_sources": e.lookup_sources if e else [],
            "served_by": e.served_by if e else [],
            "server_request_ids": e.server_request_ids if e else [],
        },
    }
