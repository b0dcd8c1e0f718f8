"""The scenario kinds pd-bench, blend, cache-bench and monitor against local simulated clusters
brought up by this module on free ports of their own: each passes, and fails (or cannot run)
with a clear verdict when its cause is planted."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from clusterkit import free_ports, Orch, write_inventory, give_free_ports

pytestmark = pytest.mark.timeout(600)




def _up(tmp_path_factory, base: str, name: str, mutate) -> tuple[Orch, Path]:
    d = tmp_path_factory.mktemp(name)

    def m(data: dict) -> None:
        data["cluster"] = f"{name}-{os.getpid()}"
        for h in data["hosts"].values():
            h["workdir"] = str(d / "work")
        mutate(data)

    inv = write_inventory(d / "inventory.yaml", base, m)
    orch = Orch(d, inv)
    r = orch("up", timeout=180)
    assert r.code == 0, r.out + r.err
    return orch, d


@pytest.fixture(scope="module")
def p2p(tmp_path_factory):

    def mutate(data: dict) -> None:
        give_free_ports(data)

    orch, _ = _up(tmp_path_factory, "inventories/local.yaml", "kinds-p2p", mutate)
    try:
        yield orch
    finally:
        orch("down", "--no-collect", timeout=180)


@pytest.fixture(scope="module")
def blend_cluster(tmp_path_factory):
    port = free_ports(1)[0]

    def mutate(data: dict) -> None:
        data["engines"][0]["port"] = port

    orch, _ = _up(tmp_path_factory, "inventories/local-blend.yaml", "kinds-blend", mutate)
    try:
        yield orch
    finally:
        orch("down", "--no-collect", timeout=180)


def run(orch: Orch, scenario: str, *sets: str, timeout: float = 300) -> tuple[int, dict | None, str]:
    args = ["--json", "run", scenario]
    for s in sets:
        args += ["--set", s]
    r = orch(*args, timeout=timeout)
    data = None
    if r.code in (0, 1, 3):  # 3: inconclusive (a timing check's interval straddles its threshold)
        data = json.loads(r.out)
    return r.code, data, r.err


def failed_checks(result: dict) -> dict[str, str]:
    return {c["name"]: c["shown"] for c in result["checks"] if not c["passed"]}


def records(result: dict) -> list[dict]:
    return [json.loads(line) for line in (Path(result["dir"]) / "requests.jsonl").read_text().splitlines()]


def pcts_present(d: dict) -> bool:
    return all(d.get(q) is not None for q in ("p50", "p90", "p99"))


# ---- pd-bench ---------------------------------------------------------------------------------------


def test_pd_bench_reports_every_number_with_percentiles(p2p):
    code, res, err = run(p2p, "pd-bench", "requests=6", "concurrency=2", "warmup=1", "max_tokens=16", "prompt_tokens=768")
    assert code == 0, (err, res and failed_checks(res))
    r = res["results"]
    n = r["n_trials"]  # trials of 6 pipelines each: counts per trial, distributions over all of them
    assert n == 3 and r["completed"] == 6 and r["failed"] == 0 and r["pipelines"]["completed"] == 6 * n
    for d in (r["prefill"]["ttft_s"], r["decode"]["ttft_s"], r["decode"]["decode_time_s"], r["decode"]["itl_s"],
              r["decode"]["tpot_s"], r["pipeline"]["ttft_s"], r["kv_transfer_s"]):
        assert pcts_present(d), d
    assert r["kv_transfer"]["source"].startswith("lmcache:p2p_time_to_transfer")
    assert r["kv_transfer"]["p2p_histogram"]["count"] == 6 * n
    assert r["kv_transfer"]["log_retrieve_cost_s"]["n"] == 6 * n and r["kv_transfer"]["estimate_s"]["n"] == 6 * n
    assert r["decode"]["hit_fraction"] == 1.0 and r["decode"]["hit_tokens"]["min"] >= 512
    assert r["throughput"]["output_tokens_per_s"] > 0 and r["decode"]["output_tokens"]["min"] == 16  # ignore_eos
    assert r["store"]["timeouts"] == 0 and r["store"]["method"].startswith("controller lookup")
    phases = [x["tags"]["phase"] for x in records(res)]
    assert phases.count("prefill") == phases.count("decode") == phases.count("local_baseline") == 6 * n
    assert res["headline"]["KV transfer p50 / p99 (ms)"] and "p2p_time_to_transfer" in res["headline"]["KV transfer from"]


def test_pd_bench_is_bounded_in_time_and_says_what_did_not_run(p2p):
    code, res, err = run(p2p, "pd-bench", "requests=500", "rate_rps=3", "max_duration_s=2", "warmup=0",
                         "max_tokens=8", "prompt_tokens=600")
    assert code == 1, err
    r = res["results"]
    assert 0 < r["started"] < 500 and r["not_started"] == 500 - r["started"]
    assert r["seconds"] < 2 + 10
    assert "every pipeline (prefill, then decode) completed" in failed_checks(res)


# ---- cache-bench -----------------------------------------------------------------------------------


def test_cache_bench_cold_vs_warm_with_every_tier_reset(p2p):
    code, res, err = run(p2p, "cache-bench", "requests=5", "concurrency=1", "prompt_tokens=700", "max_tokens=8")
    assert code == 0, (err, res and failed_checks(res))
    r = res["results"]
    reset = r["reset"]
    # the sim engines run without VLLM_SERVER_DEV_MODE: the API reset is refused, auto restarts them
    assert sorted(reset["restarted"]) == ["decode", "prefill"]
    for name in ("prefill", "decode"):
        assert reset["actions"][name]["vLLM prefix cache"].startswith("engine restarted")
        assert "HTTP 404" in reset["actions"][name]["vLLM prefix cache"]
        assert reset["probe_before"][name]["vllm_prefix_hit_tokens"] > 0
        assert reset["probe_before"][name]["lmcache_log_hit_tokens"] > 0
        assert reset["probe_after"][name]["vllm_prefix_hit_tokens"] == 0
        assert reset["probe_after"][name]["lmcache_log_hit_tokens"] == 0
    assert reset["tiers_not_reset"] == [] and reset["probe_sensitive"] is True
    assert r["cold"]["cache_hit_tokens"] == 0 and r["warm"]["hit_rate"] > 0.9
    assert pcts_present(r["cold"]["ttft_s"]) and pcts_present(r["warm"]["ttft_s"])
    assert r["ttft_speedup_p50"] > 1.5
    # a restart keeps the log written before it
    logs = Path(p2p.workdir / "work" / "logs")
    assert any(re.fullmatch(r"prefill\.\d{8}T\d{6}Z\.\d+\.log", p.name) for p in logs.iterdir())
    cold = [x for x in records(res) if x["tags"].get("phase") == "cold"]
    assert len(cold) == 5 * r["n_trials"]  # (the nonce is in the prompt, which records do not keep)
    assert r["n_trials"] == 3 and all(t["cold"]["cache_hit_tokens"] == 0 for t in r["trials"])


def test_cache_bench_names_the_tier_a_refused_reset_left_warm(p2p):
    code, res, err = run(p2p, "cache-bench", "mode=reset", "requests=2", "prompt_tokens=600", "max_tokens=4")
    assert code == 1, err
    failed = failed_checks(res)
    shown = failed["after the warm-up every cache tier of every engine was empty (probe found nothing)"]
    assert "prefill: vLLM prefix cache still held the probe" in shown and "HTTP 404" in shown
    assert "LMCache still held" not in shown  # the controller did clear LMCache
    assert "NOT reset" in res["headline"]["reset"]


def test_cache_bench_without_nonce_and_reset_measures_a_warm_cold_phase(p2p):
    code, res, err = run(p2p, "cache-bench", "mode=none", "nonce=false", "requests=2", "prompt_tokens=600",
                         "max_tokens=4", "probe=false")
    assert code == 1, err
    failed = failed_checks(res)
    assert "the cold phase was served from no cache (metrics, all tiers)" in failed
    assert "the cold phase had no LMCache hits (log lines)" in failed
    assert res["results"]["cold"]["cache_hit_tokens"] > 0


# ---- monitor ---------------------------------------------------------------------------------------


def test_monitor_reports_the_progression(p2p):
    code, res, err = run(p2p, "monitor", "requests=24", "rate_rps=20", "interval_s=0.1", "prefix_tokens=600")
    assert code == 0, (err, res and failed_checks(res))
    r = res["results"]
    assert r["rounds"] >= 5 and r["samples"] == 2 * r["rounds"]
    s = r["series"]
    assert len(s["elapsed_s"]) == len(s["cache_hit_rate"]) == len(s["kv_cache_usage_max"]) == r["rounds"]
    assert r["cache_hit_rate"]["first"] < r["cache_hit_rate"]["last"] and r["cache_hit_rate"]["rose"]
    assert r["external_hit_rate"]["max"] > 0 and r["kv_cache_usage"]["max"] > 0
    out = Path(res["dir"])
    assert (out / "monitor-series.csv").read_text().startswith("elapsed_s,cache_hit_rate")
    assert len((out / "monitor-samples.jsonl").read_text().splitlines()) == r["samples"]


def test_monitor_fails_when_nothing_is_shared(p2p):
    code, res, err = run(p2p, "monitor", "requests=12", "prefix_groups=12", "rate_rps=20", "interval_s=0.1",
                         "prefix_tokens=600")
    assert code == 1, err
    assert "the cache hit rate rose while the shared prefixes were reused" in failed_checks(res)


# ---- blend ----------------------------------------------------------------------------------------


def test_blend_cannot_run_without_cacheblend(p2p):
    code, _, err = run(p2p, "blend")
    assert code == 2
    assert "CacheBlend is not enabled on engine" in err and "enable_blending is False" in err


def test_blend_reordered_chunks_are_reused(blend_cluster):
    code, res, err = run(blend_cluster, "blend", "wait_s=0.2")
    assert code == 0, (err, res and failed_checks(res))
    r = res["results"]
    assert r["separator"] == r["engine_separator"] == " # # " and "blend.yaml" in r["separator_from"]
    assert [v["order"] for v in r["requests"]] == [[0, 1, 2], [1, 2, 0], [2, 1, 0]]
    assert r["first_hit_tokens"] < 256 and r["later_min_hit_tokens"] >= r["chunks_tokens"]
    assert r["min_speedup"] > 1.5


def test_blend_refuses_prompts_longer_than_the_engine_takes_and_says_what_fits(blend_cluster):
    code, _, err = run(blend_cluster, "blend", "chunk_tokens=3000")
    assert code == 2, err
    assert "max-model-len 8192" in err and "--set chunk_tokens=" in err and "Traceback" not in err


def test_blend_with_another_separator_fails_clearly(blend_cluster):
    code, res, err = run(blend_cluster, "blend", 'separator=" ## "', "wait_s=0.2", "control=false")
    assert code == 1, err
    failed = failed_checks(res)
    assert "separator = ' ## ' == engine_separator = ' # # '" in failed["the prompts use the engine's own blend separator"]
    assert any(k.startswith("TTFT of every reordered request") for k in failed)
    assert res["results"]["later_min_hit_tokens"] == 0


# ---- planted: the decode engine restarted with another PYTHONHASHSEED (last: it changes the cluster)


def test_pd_bench_fails_when_the_decode_engine_hashes_differently(p2p, monkeypatch):
    from kvorch.restart import restart
    from kvorch.session import Session

    monkeypatch.setenv("ORCHESTRATE_STATE", str(p2p.workdir / "state"))
    c = Session(str(p2p.inventory))
    script = p2p.workdir / "work" / "run" / "decode.sh"
    original = script.read_text()
    assert "export PYTHONHASHSEED=123" in original
    try:
        script.write_text(original.replace("export PYTHONHASHSEED=123", "export PYTHONHASHSEED=999"))
        rep = restart(c, c.plan(), ["decode"], timeout=120)
        assert rep["decode"]["new_pid"] != rep["decode"]["old_pid"] and rep["decode"]["stopped"] == "SIGTERM"
        code, res, err = run(p2p, "pd-bench", "requests=3", "concurrency=1", "warmup=0", "max_tokens=8", "prompt_tokens=600")
        assert code == 1, err
        failed = failed_checks(res)
        assert failed["the decode engine loaded each prompt's KV from LMCache (its log line reports >= 1 chunk of hits)"] \
            == "trial 1 of 3: decode.hit_fraction = 0 >= 0.9"
        assert res["results"]["decode"]["with_hits"] == 0
    finally:
        script.write_text(original)
        restart(c, c.plan(), ["decode"], timeout=120)
    code, res, err = run(p2p, "pd-bench", "requests=2", "concurrency=1", "warmup=0", "max_tokens=8", "prompt_tokens=600")
    assert code == 0, (err, res and failed_checks(res))
