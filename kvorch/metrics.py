"""Prometheus ``/metrics``: scrape, parse, one name mapping, counter deltas, percentiles, sampler.

Everything above this module speaks *canonical* names (``external_prefix_cache_hits``,
``lmcache_hit_tokens``, ``mp_l1_write_chunks`` …). :data:`METRICS` is the one place that says which
exported names each one has had across vLLM / LMCache versions; the first name an endpoint exports
wins. Names are given without the ``_total`` suffix of counters (the exposition adds it; an untyped
exposition may not, both are tried).

Where the names come from (read in the sources, 2026-11):

* vLLM 0.32 ``vllm/v1/metrics/loggers.py``: ``vllm:num_requests_running|waiting``,
  ``vllm:kv_cache_usage_perc``, ``vllm:prefix_cache_queries|hits``,
  ``vllm:external_prefix_cache_queries|hits``, ``vllm:prompt_tokens``, ``vllm:generation_tokens``,
  ``vllm:prompt_tokens_cached``, ``vllm:num_preemptions``, ``vllm:request_success``, histograms
  ``vllm:time_to_first_token_seconds``, ``vllm:inter_token_latency_seconds``,
  ``vllm:request_time_per_output_token_seconds``, ``vllm:e2e_request_latency_seconds``,
  ``vllm:request_queue_time_seconds``, ``vllm:request_prefill_time_seconds``,
  ``vllm:request_decode_time_seconds``. Older: ``vllm:gpu_cache_usage_perc`` (< 0.12 / V0),
  ``vllm:gpu_prefix_cache_queries|hits`` (early V1), ``vllm:time_per_output_token_seconds``
  (the inter-token histogram before its rename).
* LMCache 0.5.6 ``lmcache/observability.py`` (same endpoint through ``PROMETHEUS_MULTIPROC_DIR``):
  ``lmcache:num_requested_tokens``, ``lmcache:num_hit_tokens``, ``lmcache:num_stored_tokens``,
  ``lmcache:num_lookup_tokens``, ``lmcache:num_lookup_hits``, ``lmcache:num_*_requests``,
  ``lmcache:num_vllm_hit_tokens``, ``lmcache:num_prompt_tokens``, gauges
  ``lmcache:retrieve_hit_rate|lookup_hit_rate`` (reset "since last log": use the counters),
  ``lmcache:local_cache_usage``, histograms ``lmcache:time_to_retrieve|time_to_store|time_to_lookup``,
  ``lmcache:p2p_time_to_transfer``.
* LMCache 0.5.6 MP server ``lmcache/v1/mp_observability/subscribers/metrics/*.py``: OpenTelemetry
  instruments such as ``lmcache_mp.lookup_hit`` (unit ``tokens``) that the OTel Prometheus
  exporter exposes as ``lmcache_mp_lookup_hit_tokens_total``; ``lmcache_mp.l1_write`` (``chunks``)
  → ``lmcache_mp_l1_write_chunks_total``; unit-less ones (``lmcache_mp.num_chunks_loaded``) →
  ``lmcache_mp_num_chunks_loaded_total``. Both the with-unit and without-unit forms are mapped.
* LMCache 0.5.6 controller ``lmcache/v1/cache_controller/observability.py``:
  gauges ``lmcache:cache_controller_registered_workers_count``, ``…_kv_pool_keys_count``,
  ``…_pull_socket_message_count``, ``…_reply_socket_message_count``.
"""

from __future__ import annotations

import csv
import json
import math
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, ConfigDict, Field

from .errors import UserError

__all__ = [
    "MetricSpec",
    "METRICS",
    "ScrapeError",
    "Snapshot",
    "Histogram",
    "scrape",
    "parse",
    "delta",
    "histogram_delta",
    "hit_rates",
    "Sample",
    "Sampler",
    "SAMPLE_FIELDS",
    "save_jsonl",
    "save_csv",
]

MetricKind = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True)
class MetricSpec:
    kind: MetricKind
    names: tuple[str, ...]  # exported names, preferred first; counters without "_total"
    help: str


def _c(help: str, *names: str) -> MetricSpec:
    return MetricSpec("counter", names, help)


def _g(help: str, *names: str) -> MetricSpec:
    return MetricSpec("gauge", names, help)


def _h(help: str, *names: str) -> MetricSpec:
    return MetricSpec("histogram", names, help)


#: canonical name → what it is and the names it is exported under. The ONE mapping.
METRICS: dict[str, MetricSpec] = {
    # ---- vLLM: scheduler, KV cache, prefix caches
    "requests_running": _g("requests in the running batch", "vllm:num_requests_running"),
    "requests_waiting": _g("requests waiting", "vllm:num_requests_waiting"),
    "kv_cache_usage": _g(
        "KV cache usage, 0..1", "vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"
    ),
    "prefix_cache_queries": _c(
        "tokens queried in vLLM's own prefix cache",
        "vllm:prefix_cache_queries",
        "vllm:gpu_prefix_cache_queries",
    ),
    "prefix_cache_hits": _c(
        "tokens found in vLLM's own prefix cache",
        "vllm:prefix_cache_hits",
        "vllm:gpu_prefix_cache_hits",
    ),
    "external_prefix_cache_queries": _c(
        "tokens queried in the KV connector (LMCache)", "vllm:external_prefix_cache_queries"
    ),
    "external_prefix_cache_hits": _c(
        "tokens the KV connector (LMCache) had", "vllm:external_prefix_cache_hits"
    ),
    "prompt_tokens": _c("prompt tokens processed", "vllm:prompt_tokens"),
    "prompt_tokens_cached": _c("prompt tokens served from a cache", "vllm:prompt_tokens_cached"),
    "generation_tokens": _c("tokens generated", "vllm:generation_tokens"),
    "num_preemptions": _c("preemptions", "vllm:num_preemptions"),
    "request_success": _c("finished requests (label finished_reason)", "vllm:request_success"),
    # ---- vLLM: latency histograms (seconds)
    "ttft_seconds": _h("time to first token", "vllm:time_to_first_token_seconds"),
    "itl_seconds": _h(
        "inter-token latency",
        "vllm:inter_token_latency_seconds",
        "vllm:time_per_output_token_seconds",
    ),
    "tpot_seconds": _h(
        "per-request time per output token", "vllm:request_time_per_output_token_seconds"
    ),
    "e2e_seconds": _h("end-to-end request latency", "vllm:e2e_request_latency_seconds"),
    "queue_seconds": _h("time in the waiting queue", "vllm:request_queue_time_seconds"),
    "prefill_seconds": _h("prefill phase time", "vllm:request_prefill_time_seconds"),
    "decode_seconds": _h("decode phase time", "vllm:request_decode_time_seconds"),
    "inference_seconds": _h("running phase time", "vllm:request_inference_time_seconds"),
    # ---- LMCache in-process (LMCacheConnectorV1), same /metrics endpoint as vLLM
    "lmcache_retrieve_requests": _c("retrieve requests", "lmcache:num_retrieve_requests"),
    "lmcache_store_requests": _c("store requests", "lmcache:num_store_requests"),
    "lmcache_lookup_requests": _c("lookup requests", "lmcache:num_lookup_requests"),
    "lmcache_requested_tokens": _c("tokens asked for in retrieves", "lmcache:num_requested_tokens"),
    "lmcache_hit_tokens": _c("tokens retrieved (hit) from LMCache", "lmcache:num_hit_tokens"),
    "lmcache_stored_tokens": _c("tokens stored into LMCache", "lmcache:num_stored_tokens"),
    "lmcache_lookup_tokens": _c("tokens looked up", "lmcache:num_lookup_tokens"),
    "lmcache_lookup_hits": _c("tokens found by lookups", "lmcache:num_lookup_hits"),
    "lmcache_vllm_hit_tokens": _c("tokens vLLM already had", "lmcache:num_vllm_hit_tokens"),
    "lmcache_prompt_tokens": _c("prompt tokens seen by LMCache", "lmcache:num_prompt_tokens"),
    "lmcache_retrieve_hit_rate_gauge": _g(
        "retrieve hit rate SINCE LAST LOG (resets; prefer counter deltas)",
        "lmcache:retrieve_hit_rate",
    ),
    "lmcache_lookup_hit_rate_gauge": _g(
        "lookup hit rate SINCE LAST LOG (resets; prefer counter deltas)", "lmcache:lookup_hit_rate"
    ),
    "lmcache_local_cache_usage": _g("local (CPU) cache usage, bytes", "lmcache:local_cache_usage"),
    "lmcache_time_to_retrieve": _h("time to retrieve", "lmcache:time_to_retrieve"),
    "lmcache_time_to_store": _h("time to store", "lmcache:time_to_store"),
    "lmcache_time_to_lookup": _h("time to look up", "lmcache:time_to_lookup"),
    "lmcache_p2p_time_to_transfer": _h("P2P transfer time", "lmcache:p2p_time_to_transfer"),
    # ---- LMCache MP server (`lmcache server`, OpenTelemetry → Prometheus names)
    "mp_lookup_requested_tokens": _c(
        "chunk-aligned tokens submitted for lookup",
        "lmcache_mp_lookup_requested_tokens",
        "lmcache_mp_lookup_requested",
    ),
    "mp_lookup_hit_tokens": _c(
        "tokens found in L1+L2 by lookups",
        "lmcache_mp_lookup_hit_tokens",
        "lmcache_mp_lookup_hit",
    ),
    "mp_lookup_hit_l1_tokens": _c(
        "of the lookup hits: served by L1",
        "lmcache_mp_lookup_hit_l1_tokens",
        "lmcache_mp_lookup_hit_l1",
    ),
    "mp_lookup_hit_l2_tokens": _c(
        "of the lookup hits: added by L2",
        "lmcache_mp_lookup_hit_l2_tokens",
        "lmcache_mp_lookup_hit_l2",
    ),
    "mp_lookups": _c("completed lookups", "lmcache_mp_lookups_requests", "lmcache_mp_lookups"),
    "mp_l1_write_chunks": _c(
        "chunks written to L1 (stores)", "lmcache_mp_l1_write_chunks", "lmcache_mp_l1_write"
    ),
    "mp_l1_read_chunks": _c(
        "chunks read from L1 (retrieves)", "lmcache_mp_l1_read_chunks", "lmcache_mp_l1_read"
    ),
    "mp_l1_evicted_chunks": _c(
        "chunks evicted from L1", "lmcache_mp_l1_evicted_chunks", "lmcache_mp_l1_evicted"
    ),
    "mp_chunks_loaded": _c("chunks loaded into engines", "lmcache_mp_num_chunks_loaded"),
    "mp_stores_finished": _c("store transfers completed", "lmcache_mp_num_finished_stores"),
    "mp_retrieves_finished": _c(
        "retrieve transfers completed", "lmcache_mp_num_finished_retrieves"
    ),
    # ---- LMCache controller (`lmcache_controller`)
    "controller_registered_workers": _g(
        "registered LMCache workers", "lmcache:cache_controller_registered_workers_count"
    ),
    "controller_kv_pool_keys": _g(
        "keys in the controller's KV pool", "lmcache:cache_controller_kv_pool_keys_count"
    ),
    "controller_pull_messages": _g(
        "messages received on the PULL socket", "lmcache:cache_controller_pull_socket_message_count"
    ),
    "controller_reply_messages": _g(
        "messages received on the REPLY socket",
        "lmcache:cache_controller_reply_socket_message_count",
    ),
}

#: Hit rates computed from counter deltas: name → (hits, queries).
RATES: dict[str, tuple[str, str]] = {
    "prefix_hit_rate": ("prefix_cache_hits", "prefix_cache_queries"),
    "external_hit_rate": ("external_prefix_cache_hits", "external_prefix_cache_queries"),
    "lmcache_hit_rate": ("lmcache_hit_tokens", "lmcache_requested_tokens"),
    "lmcache_lookup_hit_rate": ("lmcache_lookup_hits", "lmcache_lookup_tokens"),
    "mp_lookup_hit_rate": ("mp_lookup_hit_tokens", "mp_lookup_requested_tokens"),
}


class ScrapeError(UserError):
    """A /metrics endpoint could not be read or parsed."""


# --------------------------------------------------------------------------------------------
# parsing

LabelKey = tuple[tuple[str, str], ...]


def _lkey(labels: Mapping[str, str], drop: Iterable[str] = ()) -> LabelKey:
    d = set(drop)
    return tuple(sorted((k, v) for k, v in labels.items() if k not in d))


def _matches(labels: Mapping[str, str], want: Mapping[str, str] | None) -> bool:
    return not want or all(labels.get(k) == str(v) for k, v in want.items())


def _parse_le(s: str) -> float:
    return math.inf if s in ("+Inf", "Inf", "inf") else float(s)


@dataclass
class Histogram:
    """Cumulative buckets ``[(le, count), …]`` sorted by ``le`` (last is +Inf), sum and count."""

    buckets: list[tuple[float, float]]
    sum: float
    count: float

    @property
    def mean(self) -> float | None:
        return self.sum / self.count if self.count > 0 else None

    def quantile(self, q: float) -> float | None:
        """Prometheus ``histogram_quantile``: linear interpolation inside the bucket.

        ``q`` in 0..1. None when empty. A rank in the +Inf bucket returns the highest finite bound.
        """
        if not self.buckets or self.count <= 0:
            return None
        q = min(max(q, 0.0), 1.0)
        total = self.buckets[-1][1] if math.isinf(self.buckets[-1][0]) else self.count
        if total <= 0:
            return None
        rank = q * total
        prev_le, prev_c = 0.0, 0.0
        for i, (le, c) in enumerate(self.buckets):
            if c >= rank and c > 0:
                if math.isinf(le):
                    finite = [b for b, _ in self.buckets if not math.isinf(b)]
                    return finite[-1] if finite else None
                lower = prev_le if i > 0 else (0.0 if le > 0 else le)
                width_c = c - prev_c
                if width_c <= 0:
                    return le
                return lower + (le - lower) * ((rank - prev_c) / width_c)
            prev_le, prev_c = le, c
        return self.buckets[-1][0]

    def percentiles(self, qs: Sequence[float] = (50, 90, 99)) -> dict[str, float | None]:
        return {f"p{int(q) if float(q).is_integer() else q}": self.quantile(q / 100.0) for q in qs}

    def minus(self, before: Histogram | None) -> Histogram:
        """The observations made between ``before`` and this one (a reset → this one alone)."""
        if before is None or self.count < before.count:
            return Histogram(list(self.buckets), self.sum, self.count)
        prev = dict(before.buckets)
        out = []
        for le, c in self.buckets:
            out.append((le, max(0.0, c - prev.get(le, 0.0))))
        return Histogram(out, max(0.0, self.sum - before.sum), self.count - before.count)


class Snapshot(BaseModel):
    """One scrape of one endpoint: every sample, by sample name."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    url: str = ""
    t: float = Field(default_factory=time.time, description="wall clock of the scrape")
    # sample name → [(labels, value)]
    samples: dict[str, list[tuple[dict[str, str], float]]] = Field(default_factory=dict)
    types: dict[str, str] = Field(default_factory=dict, description="family name → type")

    # -- lookups by exported name
    def names(self) -> list[str]:
        return sorted(self.samples)

    def raw(self, sample_name: str, labels: Mapping[str, str] | None = None) -> float | None:
        rows = [v for lab, v in self.samples.get(sample_name, []) if _matches(lab, labels)]
        return sum(rows) if rows else None

    def resolve(self, canonical: str) -> str | None:
        """The exported name this endpoint uses for ``canonical`` (None: not exported here)."""
        spec = _spec(canonical)
        for name in spec.names:
            if spec.kind == "counter":
                if name + "_total" in self.samples or name in self.samples:
                    return name
            elif spec.kind == "gauge":
                if name in self.samples:
                    return name
            elif name + "_bucket" in self.samples or name + "_count" in self.samples:
                return name
        return None

    def series(self, canonical: str) -> dict[LabelKey, float]:
        """Counter/gauge value per label set (counters: the ``_total`` samples)."""
        spec = _spec(canonical)
        name = self.resolve(canonical)
        if name is None:
            return {}
        if spec.kind == "histogram":
            raise ValueError(f"{canonical} is a histogram: use .histogram()")
        sname = (
            name + "_total" if spec.kind == "counter" and name + "_total" in self.samples else name
        )
        out: dict[LabelKey, float] = {}
        for lab, v in self.samples.get(sname, []):
            k = _lkey(lab)
            out[k] = out.get(k, 0.0) + v
        return out

    def value(self, canonical: str, labels: Mapping[str, str] | None = None) -> float | None:
        """Sum over every label set matching ``labels`` (a subset match). None: not exported.

        For a histogram: its observation count.
        """
        spec = _spec(canonical)
        if spec.kind == "histogram":
            h = self.histogram(canonical, labels)
            return h.count if h is not None else None
        s = self.series(canonical)
        if not s:
            return None
        rows = [v for k, v in s.items() if _matches(dict(k), labels)]
        return sum(rows) if rows else None

    def histogram(
        self, canonical: str, labels: Mapping[str, str] | None = None
    ) -> Histogram | None:
        """Buckets merged over every label set matching ``labels`` (None: not exported)."""
        spec = _spec(canonical)
        if spec.kind != "histogram":
            raise ValueError(f"{canonical} is a {spec.kind}, not a histogram")
        name = self.resolve(canonical)
        if name is None:
            return None
        buckets: dict[float, float] = {}
        found = False
        for lab, v in self.samples.get(name + "_bucket", []):
            if not _matches(lab, labels) or "le" not in lab:
                continue
            found = True
            le = _parse_le(lab["le"])
            buckets[le] = buckets.get(le, 0.0) + v
        total = sum(v for lab, v in self.samples.get(name + "_count", []) if _matches(lab, labels))
        s = sum(v for lab, v in self.samples.get(name + "_sum", []) if _matches(lab, labels))
        if not found and not self.samples.get(name + "_count"):
            return None
        return Histogram(sorted(buckets.items()), s, total)

    def values(self, canonicals: Iterable[str] | None = None) -> dict[str, float]:
        """Every canonical counter/gauge this endpoint exports → its summed value."""
        out: dict[str, float] = {}
        for c in canonicals if canonicals is not None else METRICS:
            if METRICS[c].kind == "histogram":
                continue
            v = self.value(c)
            if v is not None:
                out[c] = v
        return out


def _spec(canonical: str) -> MetricSpec:
    try:
        return METRICS[canonical]
    except KeyError:
        raise KeyError(
            f"unknown canonical metric {canonical!r}; known: {', '.join(sorted(METRICS))}"
        ) from None


def parse(text: str, url: str = "") -> Snapshot:
    """Parse Prometheus text exposition. ``*_created`` samples (client bookkeeping) are dropped."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    types: dict[str, str] = {}
    for fam in text_string_to_metric_families(text):
        types[fam.name] = fam.type
        for s in fam.samples:
            if s.name.endswith("_created") and fam.type != "gauge":
                continue
            samples.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    return Snapshot.model_construct(url=url, t=time.time(), samples=samples, types=types)


def scrape(url: str, timeout: float = 5.0, client: httpx.Client | None = None) -> Snapshot:
    """GET ``url`` (a ``/metrics`` URL) and parse it. Raises :class:`ScrapeError`."""
    t = time.time()
    try:
        if client is not None:
            resp = client.get(url, timeout=timeout)
        else:
            with httpx.Client(timeout=timeout, trust_env=False) as c:
                resp = c.get(url)
        resp.raise_for_status()
    except httpx.HTTPError as e:
        raise ScrapeError(f"cannot read metrics from {url}: {type(e).__name__}: {e}") from e
    try:
        snap = parse(resp.text, url=url)
    except ValueError as e:
        raise ScrapeError(f"metrics from {url} are not Prometheus text: {e}") from e
    snap.t = t
    return snap


# --------------------------------------------------------------------------------------------
# deltas


def _series_delta(before: dict[LabelKey, float], after: dict[LabelKey, float]) -> float:
    total = 0.0
    for k, a in after.items():
        b = before.get(k)
        if b is None:
            total += a  # a new series started from zero
        elif a >= b:
            total += a - b
        else:
            total += a  # counter reset (restart): count what it counted since
    return total


def delta(
    before: Snapshot | None, after: Snapshot, canonicals: Iterable[str] | None = None
) -> dict[str, float]:
    """Counter increase from ``before`` to ``after`` per canonical name, summed over label sets.

    A series whose value went down was reset (engine restarted): its increase is its new value.
    Only counters ``after`` exports appear in the result (absent ≠ zero). ``before=None``: the
    whole value (counting since the process started).
    """
    out: dict[str, float] = {}
    for c in canonicals if canonicals is not None else METRICS:
        if _spec(c).kind != "counter":
            continue
        a = after.series(c)
        if not a:
            continue
        b: dict[LabelKey, float] = {}
        if before is not None and before.resolve(c) == after.resolve(c):
            b = before.series(c)
        out[c] = _series_delta(b, a)
    return out


def histogram_delta(
    before: Snapshot | None,
    after: Snapshot,
    canonical: str,
    labels: Mapping[str, str] | None = None,
) -> Histogram | None:
    """Observations of histogram ``canonical`` made between the two snapshots."""
    ha = after.histogram(canonical, labels)
    if ha is None:
        return None
    hb = before.histogram(canonical, labels) if before is not None else None
    return ha.minus(hb)


def hit_rates(d: Mapping[str, float]) -> dict[str, float | None]:
    """Rates from a :func:`delta` result: hits / queries, None when no queries (or not exported)."""
    out: dict[str, float | None] = {}
    for name, (hits, queries) in RATES.items():
        h, q = d.get(hits), d.get(queries)
        out[name] = (h / q) if (h is not None and q) else None
    return out


# --------------------------------------------------------------------------------------------
# background sampler (seed 004)

#: Columns of a sample, in CSV order (after t, elapsed_s, target, ok, error).
SAMPLE_GAUGES = (
    "kv_cache_usage",
    "requests_running",
    "requests_waiting",
    "lmcache_local_cache_usage",
)
SAMPLE_COUNTERS = (
    "prompt_tokens",
    "generation_tokens",
    "prefix_cache_queries",
    "prefix_cache_hits",
    "external_prefix_cache_queries",
    "external_prefix_cache_hits",
    "lmcache_requested_tokens",
    "lmcache_hit_tokens",
    "lmcache_stored_tokens",
    "mp_lookup_requested_tokens",
    "mp_lookup_hit_tokens",
    "mp_l1_write_chunks",
)
SAMPLE_DERIVED = (
    "prefix_hit_rate",
    "external_hit_rate",
    "lmcache_hit_rate",
    "mp_lookup_hit_rate",
    "prompt_tokens_per_s",
    "generation_tokens_per_s",
    "ttft_p50_s",
    "ttft_p90_s",
)
SAMPLE_FIELDS: tuple[str, ...] = SAMPLE_GAUGES + SAMPLE_COUNTERS + SAMPLE_DERIVED


class Sample(BaseModel):
    """One scrape of one target by the :class:`Sampler`.

    Counters are cumulative; the ``*_rate`` / ``*_per_s`` / ``ttft_p*`` values cover the interval
    since the previous successful sample of the same target (None on the first one, or when there
    was no traffic).
    """

    t: float
    elapsed_s: float
    target: str
    url: str
    ok: bool
    error: str | None = None
    values: dict[str, float | None] = Field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        r: dict[str, Any] = {
            "t": round(self.t, 6),
            "elapsed_s": round(self.elapsed_s, 6),
            "target": self.target,
            "ok": self.ok,
            "error": self.error or "",
        }
        for f in SAMPLE_FIELDS:
            v = self.values.get(f)
            r[f] = v if v is None or math.isfinite(v) else None
        return r


def sample_values(prev: Snapshot | None, snap: Snapshot) -> dict[str, float | None]:
    """The values of one :class:`Sample` from this scrape and the previous one of that target."""
    v: dict[str, float | None] = {}
    for g in SAMPLE_GAUGES + SAMPLE_COUNTERS:
        v[g] = snap.value(g)
    if prev is not None:
        d = delta(prev, snap, SAMPLE_COUNTERS)
        rates = hit_rates(d)
        for k in ("prefix_hit_rate", "external_hit_rate", "lmcache_hit_rate", "mp_lookup_hit_rate"):
            v[k] = rates.get(k)
        dt = snap.t - prev.t
        for c, out in (
            ("prompt_tokens", "prompt_tokens_per_s"),
            ("generation_tokens", "generation_tokens_per_s"),
        ):
            v[out] = (d[c] / dt) if (c in d and dt > 0) else None
        h = histogram_delta(prev, snap, "ttft_seconds")
        v["ttft_p50_s"] = h.quantile(0.5) if h is not None else None
        v["ttft_p90_s"] = h.quantile(0.9) if h is not None else None
    return v


class Sampler:
    """Scrape ``targets`` (name → /metrics URL) every ``interval_s`` in a background thread.

    Bounded: it stops by itself after ``max_duration_s`` and keeps at most ``max_samples`` (the
    oldest are dropped). A failed scrape is a sample with ``ok=False`` and the error; it never
    stops the sampler. Use as a context manager or ``start()`` / ``stop()``::

        with Sampler({"prefill": url1, "decode": url2}, interval_s=0.5) as s:
            ...run the workload...
        series = s.samples()
    """

    def __init__(
        self,
        targets: Mapping[str, str],
        interval_s: float = 1.0,
        *,
        max_duration_s: float = 3600.0,
        max_samples: int = 100_000,
        timeout_s: float | None = None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        self.targets = dict(targets)
        self.interval_s = interval_s
        self.max_duration_s = max_duration_s
        self.timeout_s = timeout_s if timeout_s is not None else max(0.2, min(5.0, interval_s))
        self._samples: deque[Sample] = deque(maxlen=max_samples)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._prev: dict[str, Snapshot] = {}
        self._last: dict[str, Snapshot] = {}
        self._t0 = 0.0
        self.dropped = 0

    # -- lifecycle
    def start(self) -> Sampler:
        if self._thread is not None:
            raise RuntimeError("sampler already started")
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="kvorch-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[Sample]:
        """Stop (waits for the scrape under way, at most one timeout) and return the series."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout_s + self.interval_s + 5.0)
        return self.samples()

    def __enter__(self) -> Sampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def samples(self) -> list[Sample]:
        with self._lock:
            return list(self._samples)

    # -- work
    def sample_once(
        self, client: httpx.Client, pool: ThreadPoolExecutor | None = None
    ) -> list[Sample]:
        names = list(self.targets)

        def one(name: str) -> Sample:
            url = self.targets[name]
            t = time.time()
            elapsed = time.monotonic() - self._t0
            try:
                snap = scrape(url, timeout=self.timeout_s, client=client)
            except ScrapeError as e:
                return Sample(t=t, elapsed_s=elapsed, target=name, url=url, ok=False, error=str(e))
            with self._lock:
                prev = self._last.get(name)
                self._last[name] = snap
            return Sample(
                t=t,
                elapsed_s=elapsed,
                target=name,
                url=url,
                ok=True,
                values=sample_values(prev, snap),
            )

        if pool is not None and len(names) > 1:
            out = list(pool.map(one, names))
        else:
            out = [one(n) for n in names]
        with self._lock:
            for s in out:
                if len(self._samples) == self._samples.maxlen:
                    self.dropped += 1
                self._samples.append(s)
        return out

    def _run(self) -> None:
        deadline = self._t0 + self.max_duration_s
        workers = max(1, min(16, len(self.targets)))
        with httpx.Client(trust_env=False) as client, ThreadPoolExecutor(workers) as pool:
            next_t = time.monotonic()
            while not self._stop.is_set() and time.monotonic() < deadline:
                self.sample_once(client, pool)
                next_t += self.interval_s
                wait = next_t - time.monotonic()
                if wait < 0:  # scrapes slower than the interval: do not try to catch up
                    next_t = time.monotonic()
                    wait = 0.0
                if self._stop.wait(wait):
                    break

    # -- output
    def save_jsonl(self, path: str | Path) -> Path:
        return save_jsonl(self.samples(), path)

    def save_csv(self, path: str | Path) -> Path:
        return save_csv(self.samples(), path)


def save_jsonl(samples: Sequence[Sample], path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", encoding="utf-8") as f:
        for s in samples:
            f.write(json.dumps(s.row(), allow_nan=False, default=str) + "\n")
    return p


def save_csv(samples: Sequence[Sample], path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    cols = ["t", "elapsed_s", "target", "ok", "error", *SAMPLE_FIELDS]
    with p.open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for s in samples:
            w.writerow({k: ("" if v is None else v) for k, v in s.row().items()})
    return p
