"""The workload kinds trace, multi-round-qa and long-doc-qa over real SSH (two loopback sshd hosts,
simulated engines, ports and cluster names of their own): each passes on a healthy cluster — with
sessions spread over both hosts, so shared prefixes cross from one host to the other through
LMCache's P2P path — and each fails with a clear verdict on a planted cause: a cluster whose caches
cannot hold a single chunk (vLLM's prefix cache off, LMCache's CPU tier 1 MB while one 256-token
chunk of the 8B model's KV is 32 MiB)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from clusterkit import Orch, write_inventory, give_free_ports

pytestmark = [pytest.mark.ssh, pytest.mark.timeout(900)]


def _cluster(sshd_cluster, tmp: Path, name: str, starve: bool = False) -> Orch:

    def m(d: dict) -> None:
        d["cluster"] = f"{name}-{os.getpid()}"
        for host in d["hosts"].values():
            host["ssh"]["port"] = sshd_cluster.port
            host["workdir"] = str(tmp / "hosts" / host["address"])
        give_free_ports(d)
        if starve:
            d["vllm"]["enable_prefix_caching"] = False
            d["lmcache"]["max_local_cpu_size"] = 0.001

    orch = Orch(tmp, write_inventory(tmp / "inv.yaml", "inventories/loopback.yaml", m), sshd_cluster.ssh_config)
    r = orch("up", timeout=240)
    assert r.code == 0, r.err + r.out
    return orch


@pytest.fixture(scope="module")
def healthy(sshd_cluster, tmp_path_factory):
    orch = _cluster(sshd_cluster, tmp_path_factory.mktemp("wl-ssh"), "wl-ssh")
    yield orch
    orch("down", "--no-collect", "--grace", "2", timeout=240)


@pytest.fixture(scope="module")
def starved(sshd_cluster, tmp_path_factory):
    orch = _cluster(sshd_cluster, tmp_path_factory.mktemp("wl-ssh-starved"), "wl-ssh-starved", starve=True)
    yield orch
    orch("down", "--no-collect", "--grace", "2", timeout=240)


def run(orch: Orch, name: str, *sets: str) -> tuple[int, dict | None, str]:
    args = ["--json", "run", name]
    for s in sets:
        args += ["--set", s]
    r = orch(*args, timeout=300)
    return r.code, (json.loads(r.out) if r.out.strip().startswith("{") else None), r.err


def failed(res: dict) -> dict[str, str]:
    return {c["name"]: c["shown"] for c in res["checks"] if c["passed"] is False and c["severity"] == "fail"}


def hosts_of(res: dict) -> set[str]:
    return {row["engine"] for row in res["results"].get("per_request", [])}


# ---- trace ----------------------------------------------------------------------------------------


def test_trace_shared_hash_blocks_cross_hosts_and_are_served_from_the_cache(healthy):
    code, res, err = run(healthy, "trace", "spread=true")
    assert code == 0, (err, res and failed(res))
    r = res["results"]
    assert r["ok"] == r["trace_requests"] == 10 and set(r["engines"]) == {"prefill", "decode"}
    assert hosts_of(res) == {"prefill", "decode"}
    # the sample shares 9 blocks of 512 tokens with earlier lines; most of them as whole chunks
    assert r["reuse"]["expected_shared_tokens"] == 9 * 512
    assert r["reuse"]["cache_hit_tokens"] >= 0.9 * r["reuse"]["expected_chunk_tokens"], r["reuse"]
    # a line on decode@node97 sharing blocks first sent to prefill@node13 got them over P2P
    rows = {row["line"]: row for row in r["per_request"]}
    cross = [row for row in rows.values() if row["engine"] == "decode" and row["expected_shared_tokens"] > 0]
    assert cross and all((row["log_hit_tokens"] or 0) >= 256 for row in cross), r["per_request"]
    assert r["schedule"]["max_late_s"] <= 1.0


def test_trace_fails_when_the_caches_cannot_hold_a_chunk(starved):
    code, res, err = run(starved, "trace", "timestamps=ignore")
    assert code == 1, (err, res and res["verdict"])
    assert res["results"]["ok"] == 10  # the requests themselves were fine
    assert "the prefixes the trace shares were served from a cache (metrics, any tier; at least half of the shared whole chunks)" in failed(res)
    assert res["results"]["reuse"]["cache_hit_tokens"] == 0


# ---- multi-round-qa -------------------------------------------------------------------------------


def test_multi_round_qa_reuse_grows_with_the_history_over_both_hosts(healthy):
    code, res, err = run(healthy, "multi-round-qa", "users=2", "rounds=3", "spread=true", "qps=8")
    assert code == 0, (err, res and failed(res))
    r = res["results"]
    assert r["ok"] == 6 and set(r["engines"]) == {"prefill", "decode"}
    frac = r["hit_fraction_per_round"]
    assert frac[0] < frac[1] < frac[2] and frac[2] >= 0.5, [(x["prompt_tokens_mean"], x["log_hit_tokens_mean"], x.get("cache_hit_tokens")) for x in r["rounds"]]
    prompt = [x["prompt_tokens_mean"] for x in r["rounds"]]
    assert prompt[0] < prompt[1] < prompt[2]


def test_multi_round_qa_fails_when_the_caches_cannot_hold_a_chunk(starved):
    code, res, err = run(starved, "multi-round-qa", "users=2", "rounds=2", "qps=8")
    assert code == 1, (err, res and res["verdict"])
    assert res["results"]["ok"] == 4
    assert "the last round was served from a cache (at least half of each prompt)" in failed(res)


# ---- long-doc-qa ----------------------------------------------------------------------------------


def test_long_doc_qa_query_round_is_served_from_the_cache_over_ssh(healthy):
    code, res, err = run(healthy, "long-doc-qa", "documents=3", "repeat_mode=tile")
    assert code == 0, (err, res and failed(res))
    r = res["results"]
    assert r["query_order"] == [0, 1, 2, 0, 1, 2]
    assert r["warm_up"]["cache_hit_tokens"] == 0 and r["query"]["hit_rate"] >= 0.5
    assert r["query"]["log_hit_tokens_min"] >= 1024 - 256 and r["ttft_speedup_p50"] > 1.2
    assert Path(res["dir"], "requests.jsonl").read_text().count("\n") == 3 + 6


def test_long_doc_qa_fails_when_the_caches_cannot_hold_a_chunk(starved):
    code, res, err = run(starved, "long-doc-qa", "documents=2", "repeat_count=1")
    assert code == 1, (err, res and res["verdict"])
    shown = failed(res)
    assert "the query round was served from the cache (metrics, any tier)" in shown
    assert "every query request's LMCache line reports hits (log)" in shown
