"""Built-in scenarios against the loopback SSH cluster (simulated engines): they pass, and they
fail with a clear verdict when the cause is planted."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from clusterkit import Orch, pids_in_group, write_inventory

pytestmark = pytest.mark.ssh


@pytest.fixture(scope="module")
def cluster(sshd_cluster, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scen")

    def m(d):
        for host in d["hosts"].values():
            host["ssh"]["port"] = sshd_cluster.port
            host["workdir"] = str(tmp / "hosts" / host["address"])
    inv = write_inventory(tmp / "inv.yaml", "inventories/loopback.yaml", m)
    orch = Orch(tmp, inv, sshd_cluster.ssh_config)
    r = orch("up")
    assert r.code == 0, r.err + r.out
    yield orch
    orch("down", "--no-collect", "--grace", "2")


def run(orch: Orch, name: str, *sets: str):
    args = ["--json", "run", name]
    for s in sets:
        args += ["--set", s]
    r = orch(*args, timeout=300)
    return r, (json.loads(r.out) if r.out.strip().startswith("{") else None)


def test_reuse_passes_with_hits_in_logs_and_metrics(cluster):
    r, res = run(cluster, "reuse")
    assert r.code == 0, r.err + r.out
    assert res["verdict"] == "pass"
    assert res["results"]["follow_up"]["log"]["hit_tokens"] >= 256
    assert res["results"]["follow_up"]["ttft_s"] < res["results"]["base"]["ttft_s"]


def test_reuse_2node_proves_decode_side_hits_per_request(cluster):
    r, res = run(cluster, "reuse-2node")
    assert r.code == 0, r.err + r.out
    follow = res["results"]["follow_up"]
    assert follow["engine"] == "decode"
    assert follow["log"]["hit_tokens"] >= 512
    assert any(s.startswith("decode@node97") for s in follow["log"]["lookup_sources"])
    assert follow["request_id"] in " ".join(follow["log"]["server_request_ids"])
    run_dir = Path(res["dir"])
    recs = [json.loads(x) for x in (run_dir / "requests.jsonl").read_text().splitlines()]
    assert follow["request_id"] in {r["request_id"] for r in recs}  # every request of every trial is kept
    assert len(recs) >= 3 * res["results"]["n_trials"]  # base, follow-up, control per trial (+ calibration)
    assert json.loads((run_dir / "evidence.json").read_text())[follow["request_id"]]["found"] is True


def test_prefix_shorter_than_a_chunk_gives_no_reuse_and_fails(cluster):
    r, res = run(cluster, "reuse-2node", "prefix_tokens=200")
    assert r.code == 1
    failed = [c for c in res["checks"] if c["passed"] is False and c["severity"] == "fail"]
    assert any("follow_up.log.hit_tokens = 0" in c["shown"] for c in failed)


def test_decode_restarted_with_another_pythonhashseed_fails_reuse_2node(cluster):
    """The seeds' classic: one engine hashes chunks with another seed → zero decode-side hits."""
    from kvorch.hosts import HostOps, LocalTransport

    state = json.loads((cluster.workdir / "state" / "loopback.json").read_text())
    decode = state["processes"]["decode"]
    workdir = state["hosts"]["node97"]["workdir"]
    os.killpg(decode["pid"], signal.SIGTERM)
    for _ in range(100):
        if not pids_in_group(decode["pid"]):
            break
        time.sleep(0.05)
    script = Path(workdir) / "run" / "decode.sh"
    original = script.read_text()
    script.write_text(original.replace("export PYTHONHASHSEED=123", "export PYTHONHASHSEED=7"))
    ops = HostOps(LocalTransport(), workdir=workdir)
    pid = ops.start_detached("run/decode.sh", "logs/decode.log", "run/decode.pid",
                             env={"ORCHESTRATE_PROCESS": "loopback/decode"})
    try:
        import httpx
        for _ in range(100):
            try:
                if httpx.get("http://127.0.0.97:8011/health", timeout=0.5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        r, res = run(cluster, "reuse-2node")
        assert r.code == 1, r.out
        assert res["verdict"] == "fail"
        shown = {c["name"]: c["shown"] for c in res["checks"] if c["passed"] is False}
        assert any("follow_up.log.hit_tokens = 0" in s for s in shown.values())
        assert any("external_hit_tokens = 0" in s for s in shown.values())
    finally:
        script.write_text(original)
        try:
            os.killpg(pid, signal.SIGTERM)  # the group this test started, and only it
        except ProcessLookupError:
            pass  # gone already
        for _ in range(100):
            if not pids_in_group(pid):
                break
            time.sleep(0.05)
        r = cluster("up")  # heal the module's cluster for the tests after this one
        assert r.code == 0, r.err + r.out


def test_unknown_scenario_exits_2_with_the_list(cluster):
    r = cluster("run", "nope")
    assert r.code == 2 and "reuse-2node" in r.err


def test_bad_override_exits_2_naming_the_flag(cluster):
    r = cluster("run", "reuse", "--set", "prefix_tokens=lots")
    assert r.code == 2 and "--set prefix_tokens" in r.err


@pytest.mark.parametrize("name, sets", [
    ("pd-bench", ["requests=4", "concurrency=2", "warmup=1", "max_tokens=8", "prompt_tokens=600"]),
    ("cache-bench", ["requests=3", "concurrency=1", "prompt_tokens=600", "max_tokens=8"]),
    ("monitor", ["requests=16", "rate_rps=20", "interval_s=0.1", "prefix_tokens=600"]),
])
def test_benchmark_scenarios_pass_over_ssh(cluster, name, sets):
    r, res = run(cluster, name, *sets)
    assert r.code == 0, r.err + r.out
    assert res["verdict"] == "pass" and res["headline"]


def test_blend_passes_over_ssh_on_a_cacheblend_cluster(sshd_cluster, tmp_path):
    def m(d):
        for host in d["hosts"].values():
            host["ssh"]["port"] = sshd_cluster.port
            host["workdir"] = str(tmp_path / "hosts" / host["address"])
        d["cluster"] = "loopback-blend"
        d["topology"] = "blend"
        d.pop("controller")
        d["lmcache"] = {"chunk_size": 256, "local_cpu": True, "max_local_cpu_size": 5, "enable_blending": True,
                        "blend_special_str": " # # ", "use_layerwise": True, "blend_check_layers": [1],
                        "blend_recompute_ratios": [0.15]}
        d["engines"] = [{"name": "blend", "host": "node97", "bind": "127.0.0.97", "role": "both", "port": 8000}]
        d.setdefault("vllm", {})["max_model_len"] = 8192  # three 512-token chunks + system + question
    orch = Orch(tmp_path, write_inventory(tmp_path / "blend.yaml", "inventories/loopback.yaml", m), sshd_cluster.ssh_config)
    try:
        assert orch("up").code == 0
        r, res = run(orch, "blend", "wait_s=0.2")
        assert r.code == 0, r.err + r.out
        assert res["verdict"] == "pass"
    finally:
        orch("down", "--no-collect", "--grace", "2")
