"""Prometheus metrics of the simulated engine, with vLLM 0.32's and LMCache 0.5.6's names,
types, labels and buckets (read from ``vllm/v1/metrics/loggers.py``, ``buckets.py`` and
``lmcache/observability.py``). Counters are exposed with the ``_total`` suffix, as
prometheus_client does for the real ones."""

from __future__ import annotations

import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]
ITL_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
               10.0, 20.0, 40.0, 80.0]
LATENCY_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
                   120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0]
LMC_TIME_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                    7.5, 10.0]
LMC_LOOKUP_BUCKETS = [0.00001 * 2 ** i for i in range(20)]
FINISH_REASONS = ("stop", "length", "abort")


def build_1_2_5_buckets(max_value: int) -> list[float]:
    out: list[float] = []
    exp = 0
    while True:
        for m in (1, 2, 5):
            v = m * 10 ** exp
            if v > max_value:
                return out
            out.append(v)
        exp += 1


class EngineMetrics:
    def __init__(self, model_name: str, max_model_len: int, lmcache: bool):
        # Like LMCache, create PROMETHEUS_MULTIPROC_DIR when it is set but missing (prometheus_client
        # then keeps values in files there; this registry still only shows this process's metrics).
        mp_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if mp_dir:
            os.makedirs(mp_dir, exist_ok=True)
        self.registry = r = CollectorRegistry()
        ln = ["model_name", "engine"]
        lv = (model_name, "0")

        def g(name, doc):
            return Gauge(name, doc, ln, registry=r, multiprocess_mode="mostrecent").labels(*lv)

        def c(name, doc):
            return Counter(name, doc, ln, registry=r).labels(*lv)

        def h(name, doc, buckets):
            return Histogram(name, doc, ln, registry=r, buckets=buckets).labels(*lv)

        self.running = g("vllm:num_requests_running", "Number of requests in model execution batches.")
        self.waiting = g("vllm:num_requests_waiting", "Number of requests waiting to be processed.")
        self.kv_usage = g("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.")
        self.prefix_queries = c("vllm:prefix_cache_queries",
                                "Prefix cache queries, in terms of number of queried tokens.")
        self.prefix_hits = c("vllm:prefix_cache_hits",
                             "Prefix cache hits, in terms of number of cached tokens.")
        self.ext_queries = c("vllm:external_prefix_cache_queries",
                             "External prefix cache queries from KV connector cross-instance cache "
                             "sharing, in terms of number of queried tokens.")
        self.ext_hits = c("vllm:external_prefix_cache_hits",
                          "External prefix cache hits from KV connector cross-instance cache "
                          "sharing, in terms of number of cached tokens.")
        self.preemptions = c("vllm:num_preemptions", "Cumulative number of preemption from the engine.")
        self.prompt_tokens = c("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.prompt_tokens_cached = c("vllm:prompt_tokens_cached",
                                      "Number of cached prompt tokens (local + external).")
        self.generation_tokens = c("vllm:generation_tokens", "Number of generation tokens processed.")
        succ = Counter("vllm:request_success", "Count of successfully processed requests.",
                       ln + ["finished_reason"], registry=r)
        self.success = {fr: succ.labels(*lv, fr) for fr in FINISH_REASONS}
        tok_buckets = build_1_2_5_buckets(max_model_len)
        self.req_prompt_tokens = h("vllm:request_prompt_tokens",
                                   "Number of prefill tokens processed.", tok_buckets)
        self.req_gen_tokens = h("vllm:request_generation_tokens",
                                "Number of generation tokens processed.", tok_buckets)
        self.ttft = h("vllm:time_to_first_token_seconds",
                      "Histogram of time to first token in seconds.", TTFT_BUCKETS)
        self.itl = h("vllm:inter_token_latency_seconds",
                     "Histogram of inter-token latency in seconds.", ITL_BUCKETS)
        self.tpot = h("vllm:request_time_per_output_token_seconds",
                      "Histogram of time_per_output_token_seconds per request.", ITL_BUCKETS)
        self.e2e = h("vllm:e2e_request_latency_seconds",
                     "Histogram of e2e request latency in seconds.", LATENCY_BUCKETS)
        self.queue_time = h("vllm:request_queue_time_seconds",
                            "Histogram of time spent in WAITING phase for request.", LATENCY_BUCKETS)
        self.inference_time = h("vllm:request_inference_time_seconds",
                                "Histogram of time spent in RUNNING phase for request.", LATENCY_BUCKETS)
        self.prefill_time = h("vllm:request_prefill_time_seconds",
                              "Histogram of time spent in PREFILL phase for request.", LATENCY_BUCKETS)
        self.decode_time = h("vllm:request_decode_time_seconds",
                             "Histogram of time spent in DECODE phase for request.", LATENCY_BUCKETS)

        self.lmcache = lmcache
        if lmcache:
            lln = ["model_name", "worker_id", "role", "served_model_name"]
            llv = (model_name, "0", "worker", model_name)

            def lc(name, doc):
                return Counter(name, doc, lln, registry=r).labels(*llv)

            def lg(name, doc, mode="livemostrecent"):
                return Gauge(name, doc, lln, registry=r, multiprocess_mode=mode).labels(*llv)

            def lh(name, doc, buckets):
                return Histogram(name, doc, lln, registry=r, buckets=buckets).labels(*llv)

            self.l_retrieve_requests = lc("lmcache:num_retrieve_requests", "Total number of retrieve requests sent to lmcache")
            self.l_store_requests = lc("lmcache:num_store_requests", "Total number of store requests sent to lmcache")
            self.l_lookup_requests = lc("lmcache:num_lookup_requests", "Total number of lookup requests sent to lmcache")
            self.l_requested_tokens = lc("lmcache:num_requested_tokens", "Total number of tokens requested from lmcache")
            self.l_hit_tokens = lc("lmcache:num_hit_tokens", "Total number of tokens hit in lmcache")
            self.l_stored_tokens = lc("lmcache:num_stored_tokens", "Total number of tokens stored in lmcache")
            self.l_lookup_tokens = lc("lmcache:num_lookup_tokens", "Total number of tokens requested in lookup from lmcache")
            self.l_lookup_hits = lc("lmcache:num_lookup_hits", "Total number of tokens hit in lookup from lmcache")
            self.l_vllm_hit_tokens = lc("lmcache:num_vllm_hit_tokens", "Number of hit tokens in vllm")
            self.l_prompt_tokens = lc("lmcache:num_prompt_tokens", "Number of prompt tokens in lmcache")
            self.l_evict = lc("lmcache:local_cpu_evict_count", "Total number of evictions in local cpu backend")
            self.l_lookup_0_hit = lc("lmcache:lookup_0_hit_requests", "Total number of lookup requests with 0 hit tokens")
            self.l_retrieve_hit_rate = lg("lmcache:retrieve_hit_rate", "Hit rate of lmcache retrieve requests since last log")
            self.l_lookup_hit_rate = lg("lmcache:lookup_hit_rate", "Hit rate of lmcache lookup requests since last log")
            self.l_local_cache_usage = lg("lmcache:local_cache_usage", "Local cache usage (bytes) of lmcache", "sum")
            self.l_local_storage_usage = lg("lmcache:local_storage_usage", "Local storage usage (bytes) of lmcache", "sum")
            self.l_healthy = lg("lmcache:lmcache_is_healthy", "Whether LMCache is healthy (1) or not (0)")
            self.l_time_to_retrieve = lh("lmcache:time_to_retrieve", "Time to retrieve from lmcache (seconds)", LMC_TIME_BUCKETS)
            self.l_time_to_store = lh("lmcache:time_to_store", "Time to store to lmcache (seconds)", LMC_TIME_BUCKETS)
            self.l_time_to_lookup = lh("lmcache:time_to_lookup", "Time to lookup in lmcache (seconds)", LMC_LOOKUP_BUCKETS)
            self.l_p2p_time = lh("lmcache:p2p_time_to_transfer", "Time to transfer via P2P (seconds)", LMC_TIME_BUCKETS)
            self.l_healthy.set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
