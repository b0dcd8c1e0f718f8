"""Metric name mapping, snapshot values, counter deltas, histogram percentiles, the sampler.

Sample expositions use the names and label sets of vLLM 0.32 (``vllm/v1/metrics/loggers.py``:
labels ``model_name``, ``engine``), LMCache 0.5.6 in-process (``lmcache/observability.py``: labels
``model_name, worker_id, role, served_model_name``), the LMCache MP server (OpenTelemetry →
Prometheus: ``lmcache_mp_lookup_hit_tokens_total{cache_salt,model_name}``), the LMCache controller,
and an older vLLM (``gpu_cache_usage_perc``, ``gpu_prefix_cache_*``).
"""

from __future__ import annotations

import csv
import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kvorch.metrics import (
    METRICS,
    Histogram,
    Sampler,
    ScrapeError,
    delta,
    histogram_delta,
    hit_rates,
    parse,
    scrape,
)


def vllm_text(
    *,
    hits: float = 0,
    queries: float = 0,
    ext_hits: float = 0,
    ext_queries: float = 0,
    prompt: float = 0,
    gen: float = 0,
    usage: float = 0.0,
    running: int = 0,
    waiting: int = 0,
    ttft_buckets: tuple[float, ...] = (0, 0, 0, 0, 0),
    lmc_hit: float = 0,
    lmc_req: float = 0,
) -> str:
    """A vLLM 0.32 + LMCache 0.5.6 /metrics page (one engine, model 'tiny')."""
    L = 'engine="0",model_name="tiny"'
    LM = 'model_name="tiny",role="worker",served_model_name="tiny",worker_id="0"'
    b = ttft_buckets
    les = ("0.05", "0.1", "0.25", "0.5", "+Inf")
    ttft = "\n".join(
        f'vllm:time_to_first_token_seconds_bucket{{{L},le="{le}"}} {c}' for le, c in zip(les, b)
    )
    return f"""# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{{L}}} {running}
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{{L}}} {waiting}
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{{{L}}} {usage}
# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{{{L}}} {queries}
vllm:prefix_cache_queries_created{{{L}}} 1.7640e+09
# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of number of cached tokens.
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{{{L}}} {hits}
# HELP vllm:external_prefix_cache_queries_total External prefix cache queries from KV connector cross-instance cache sharing, in terms of number of queried tokens.
# TYPE vllm:external_prefix_cache_queries_total counter
vllm:external_prefix_cache_queries_total{{{L}}} {ext_queries}
# HELP vllm:external_prefix_cache_hits_total External prefix cache hits from KV connector cross-instance cache sharing, in terms of number of cached tokens.
# TYPE vllm:external_prefix_cache_hits_total counter
vllm:external_prefix_cache_hits_total{{{L}}} {ext_hits}
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{{{L}}} {prompt}
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{{{L}}} {gen}
# HELP vllm:request_success_total Count of successfully processed requests.
# TYPE vllm:request_success_total counter
vllm:request_success_total{{{L},finished_reason="stop"}} 3
vllm:request_success_total{{{L},finished_reason="length"}} 4
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
{ttft}
vllm:time_to_first_token_seconds_count{{{L}}} {b[-1]}
vllm:time_to_first_token_seconds_sum{{{L}}} {0.1 * b[-1]}
# HELP lmcache:num_hit_tokens_total Total number of tokens hit in lmcache
# TYPE lmcache:num_hit_tokens_total counter
lmcache:num_hit_tokens_total{{{LM}}} {lmc_hit}
# HELP lmcache:num_requested_tokens_total Total number of tokens requested from lmcache
# TYPE lmcache:num_requested_tokens_total counter
lmcache:num_requested_tokens_total{{{LM}}} {lmc_req}
# HELP lmcache:retrieve_hit_rate The hit rate for retrieve requests since last log
# TYPE lmcache:retrieve_hit_rate gauge
lmcache:retrieve_hit_rate{{{LM}}} 0.0
"""


MP_TEXT = """# HELP target_info Target metadata
# TYPE target_info gauge
target_info{service_name="lmcache-mp",telemetry_sdk_language="python"} 1.0
# HELP lmcache_mp_lookup_requested_tokens_total Total tokens submitted for lookup (denominator of the L1+L2 token-level hit rate). Only chunk-aligned tokens are counted.
# TYPE lmcache_mp_lookup_requested_tokens_total counter
lmcache_mp_lookup_requested_tokens_total{cache_salt="",model_name="tiny"} 2560.0
# HELP lmcache_mp_lookup_hit_tokens_total Total tokens found in L1+L2 during lookup (numerator of the L1+L2 token-level hit rate). Counts the contiguous prefix hit only.
# TYPE lmcache_mp_lookup_hit_tokens_total counter
lmcache_mp_lookup_hit_tokens_total{cache_salt="",model_name="tiny"} 1280.0
# HELP lmcache_mp_l1_write_chunks_total Total chunks written to L1
# TYPE lmcache_mp_l1_write_chunks_total counter
lmcache_mp_l1_write_chunks_total{cache_salt=""} 5.0
# HELP lmcache_mp_num_chunks_loaded_total Total number of LMCache chunks loaded into the engine (summed across all retrieve operations).
# TYPE lmcache_mp_num_chunks_loaded_total counter
lmcache_mp_num_chunks_loaded_total{worker_id="0"} 5.0
"""

OLD_VLLM_TEXT = """# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="m"} 0.5
# TYPE vllm:gpu_prefix_cache_queries_total counter
vllm:gpu_prefix_cache_queries_total{model_name="m"} 200
# TYPE vllm:gpu_prefix_cache_hits_total counter
vllm:gpu_prefix_cache_hits_total{model_name="m"} 50
"""

CONTROLLER_TEXT = """# HELP lmcache:cache_controller_registered_workers_count The total number of registered workers
# TYPE lmcache:cache_controller_registered_workers_count gauge
lmcache:cache_controller_registered_workers_count{instance="controller"} 2.0
# HELP lmcache:cache_controller_kv_pool_keys_count The number of keys in the KV pool
# TYPE lmcache:cache_controller_kv_pool_keys_count gauge
lmcache:cache_controller_kv_pool_keys_count{instance="controller"} 10.0
"""


def test_mapping_is_well_formed() -> None:
    for name, spec in METRICS.items():
        assert name.isidentifier(), name
        assert spec.names, name
        for n in spec.names:
            assert not n.endswith("_total") or spec.kind != "counter", (name, n)


def test_values_current_vllm_and_lmcache() -> None:
    s = parse(
        vllm_text(
            hits=512,
            queries=1024,
            ext_hits=1280,
            ext_queries=1501,
            usage=0.25,
            running=1,
            waiting=2,
            lmc_hit=1280,
            lmc_req=1501,
        )
    )
    assert s.value("kv_cache_usage") == 0.25
    assert s.resolve("kv_cache_usage") == "vllm:kv_cache_usage_perc"
    assert s.value("requests_running") == 1 and s.value("requests_waiting") == 2
    assert s.value("prefix_cache_hits") == 512
    assert s.value("external_prefix_cache_hits") == 1280
    assert s.value("lmcache_hit_tokens") == 1280
    assert s.value("lmcache_requested_tokens") == 1501
    assert s.value("request_success") == 7  # summed across label sets
    assert s.value("request_success", {"finished_reason": "length"}) == 4
    assert s.value("request_success", {"finished_reason": "abort"}) is None
    assert s.value("mp_lookup_hit_tokens") is None  # not exported here: None, not 0
    assert s.value("ttft_seconds") == 0  # histogram → its count
    assert s.value("lmcache_retrieve_hit_rate_gauge") == 0.0
    assert "vllm:prefix_cache_queries_created" not in s.samples


def test_values_old_vllm_names() -> None:
    s = parse(OLD_VLLM_TEXT)
    assert s.value("kv_cache_usage") == 0.5
    assert s.resolve("prefix_cache_hits") == "vllm:gpu_prefix_cache_hits"
    assert hit_rates(delta(None, s))["prefix_hit_rate"] == 0.25


def test_values_mp_server_and_controller() -> None:
    s = parse(MP_TEXT)
    assert s.value("mp_lookup_hit_tokens") == 1280
    assert s.value("mp_lookup_requested_tokens") == 2560
    assert s.value("mp_l1_write_chunks") == 5
    assert s.value("mp_chunks_loaded") == 5
    assert hit_rates(delta(None, s))["mp_lookup_hit_rate"] == 0.5
    c = parse(CONTROLLER_TEXT)
    assert c.value("controller_registered_workers") == 2
    assert c.value("controller_kv_pool_keys") == 10


def test_untyped_counter_without_total_suffix() -> None:
    s = parse("lmcache_mp_l1_write 7\n")
    assert s.value("mp_l1_write_chunks") == 7


def test_delta_and_rates() -> None:
    b = parse(
        vllm_text(
            hits=0, queries=100, ext_hits=0, ext_queries=100, prompt=100, lmc_hit=0, lmc_req=0
        )
    )
    a = parse(
        vllm_text(
            hits=256,
            queries=1601,
            ext_hits=1280,
            ext_queries=1501,
            prompt=1601,
            lmc_hit=1280,
            lmc_req=1501,
        )
    )
    d = delta(b, a)
    assert d["external_prefix_cache_hits"] == 1280
    assert d["external_prefix_cache_queries"] == 1401
    assert d["prefix_cache_hits"] == 256
    assert d["prompt_tokens"] == 1501
    assert "mp_lookup_hit_tokens" not in d  # absent ≠ zero
    assert "kv_cache_usage" not in d  # gauges are not deltas
    r = hit_rates(d)
    assert r["lmcache_hit_rate"] == pytest.approx(1280 / 1501)
    assert r["mp_lookup_hit_rate"] is None


def test_delta_counter_reset_and_new_series() -> None:
    b = parse(
        '# TYPE vllm:prompt_tokens_total counter\nvllm:prompt_tokens_total{engine="0"} 5000\n'
    )
    # engine restarted (5000 → 300) and a second engine appeared (0 → 200)
    a = parse(
        '# TYPE vllm:prompt_tokens_total counter\nvllm:prompt_tokens_total{engine="0"} 300\n'
        'vllm:prompt_tokens_total{engine="1"} 200\n'
    )
    assert delta(b, a)["prompt_tokens"] == 500
    assert delta(None, a)["prompt_tokens"] == 500


def test_histogram_quantiles_like_prometheus() -> None:
    # 10 observations: 2 ≤ 0.05, 6 in (0.05, 0.1], 1 in (0.1, 0.25], 1 in (0.25, 0.5]
    s = parse(vllm_text(ttft_buckets=(2, 8, 9, 10, 10)))
    h = s.histogram("ttft_seconds")
    assert h is not None and h.count == 10
    assert h.buckets[-1] == (math.inf, 10)
    # p50: rank 5 → in (0.05, 0.1]: 0.05 + 0.05 * (5-2)/6
    assert h.quantile(0.5) == pytest.approx(0.075)
    # p90: rank 9 → exactly the top of (0.1, 0.25]
    assert h.quantile(0.9) == pytest.approx(0.25)
    # p10: rank 1 → first bucket, lower bound 0: 0.05 * 1/2
    assert h.quantile(0.1) == pytest.approx(0.025)
    assert h.percentiles()["p50"] == pytest.approx(0.075)
    assert h.mean == pytest.approx(0.1)
    # everything above the largest finite bucket → that bound
    top = Histogram([(0.1, 0), (0.5, 0), (math.inf, 3)], 9.0, 3)
    assert top.quantile(0.99) == 0.5
    assert Histogram([(0.1, 0), (math.inf, 0)], 0.0, 0).quantile(0.5) is None


def test_histogram_delta() -> None:
    b = parse(vllm_text(ttft_buckets=(2, 8, 9, 10, 10)))
    a = parse(vllm_text(ttft_buckets=(2, 8, 13, 14, 14)))
    h = histogram_delta(b, a, "ttft_seconds")
    assert h is not None and h.count == 4
    assert dict(h.buckets)[0.25] == 4
    assert h.quantile(0.5) == pytest.approx(0.1 + 0.15 * 0.5)
    # reset: the after-histogram alone
    h2 = histogram_delta(a, b, "ttft_seconds")
    assert h2 is not None and h2.count == 10


def test_unknown_canonical_name() -> None:
    with pytest.raises(KeyError, match="unknown canonical metric"):
        parse("").value("no_such_metric")


# ------------------------------------------------------------------------------ live endpoints


class _Counters:
    def __init__(self) -> None:
        self.n = 0
        self.lock = threading.Lock()


def _serve(counters: _Counters) -> tuple[ThreadingHTTPServer, str]:
    class H(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if self.path != "/metrics":
                self.send_error(404)
                return
            with counters.lock:
                counters.n += 1
                n = counters.n
            # every scrape: +100 queried tokens, +50 hits (rate 0.5), +25 external hits of 100
            body = vllm_text(
                hits=50 * n,
                queries=100 * n,
                ext_hits=25 * n,
                ext_queries=100 * n,
                prompt=100 * n,
                gen=10 * n,
                usage=min(1.0, 0.1 * n),
                running=n % 3,
                ttft_buckets=(n, 2 * n, 2 * n, 2 * n, 2 * n),
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}/metrics"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_scrape_live_and_errors() -> None:
    srv, url = _serve(_Counters())
    try:
        s = scrape(url, timeout=2)
        assert s.value("prefix_cache_queries") == 100
        assert s.url == url
        with pytest.raises(ScrapeError, match="cannot read metrics"):
            scrape(url.replace("/metrics", "/nope"), timeout=2)
    finally:
        srv.shutdown()
        srv.server_close()
    with pytest.raises(ScrapeError):
        scrape(f"http://127.0.0.1:{_free_port()}/metrics", timeout=1)


def test_sampler_series_rates_and_files(tmp_path) -> None:
    srv, url = _serve(_Counters())
    dead = f"http://127.0.0.1:{_free_port()}/metrics"
    try:
        s = Sampler({"engine": url, "dead": dead}, interval_s=0.05, timeout_s=0.5)
        with s:
            time.sleep(0.45)
        samples = s.samples()
    finally:
        srv.shutdown()
        srv.server_close()
    assert not s.running
    ok = [x for x in samples if x.target == "engine"]
    bad = [x for x in samples if x.target == "dead"]
    assert len(ok) >= 4, len(ok)
    assert bad and all(not x.ok and "cannot read metrics" in (x.error or "") for x in bad)
    assert all(x.ok for x in ok)
    assert ok[0].values.get("prefix_hit_rate") is None  # first sample: no interval yet
    for x in ok[1:]:
        assert x.values["prefix_hit_rate"] == pytest.approx(0.5)
        assert x.values["external_hit_rate"] == pytest.approx(0.25)
        assert x.values["prompt_tokens_per_s"] > 0
        assert x.values["ttft_p50_s"] is not None
    assert [x.values["prefix_cache_queries"] for x in ok] == sorted(
        x.values["prefix_cache_queries"] for x in ok
    )
    assert ok[-1].values["kv_cache_usage"] is not None

    j = s.save_jsonl(tmp_path / "samples.jsonl")
    rows = [json.loads(line) for line in j.read_text().splitlines()]
    assert len(rows) == len(samples) and rows[1]["target"] in ("engine", "dead")
    c = s.save_csv(tmp_path / "samples.csv")
    with c.open() as f:
        crow = list(csv.DictReader(f))
    assert len(crow) == len(samples)
    assert {"t", "target", "kv_cache_usage", "prefix_hit_rate", "requests_waiting"} <= set(crow[0])


def test_sampler_is_bounded() -> None:
    srv, url = _serve(_Counters())
    try:
        s = Sampler({"e": url}, interval_s=0.02, max_duration_s=0.3, max_samples=5)
        s.start()
        t0 = time.monotonic()
        while s.running and time.monotonic() - t0 < 3:
            time.sleep(0.02)
        assert not s.running, "the sampler must stop by itself at max_duration_s"
        out = s.stop()
    finally:
        srv.shutdown()
        srv.server_close()
    assert len(out) == 5
    assert s.dropped > 0
