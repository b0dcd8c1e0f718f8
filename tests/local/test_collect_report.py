"""collect / report / compare against the local simulated cluster (local connector: seconds),
and the incremental log pull on plain files."""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
import yaml

from clusterkit import free_ports, Orch, write_inventory
from kvorch.collect import CollectOptions, LogEntry, Secrets, pull_log, read_local_log
from kvorch.hosts import HostOps, LocalTransport

SECRET = "hf_PLANTEDsecret_9f3c1b7e"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"




def local_inventory(path: Path, hostwd: Path, sim: dict | None = None) -> Path:
    p = iter(free_ports(12))

    def m(d):
        d["cluster"] = "collecttest"
        d["env"]["HF_TOKEN"] = SECRET
        d["hosts"]["local"]["workdir"] = str(hostwd)
        d["controller"]["port"] = next(p)
        d["controller"]["monitor_ports"] = {"pull": next(p), "reply": next(p), "heartbeat": next(p)}
        for e in d["engines"]:
            e.update(port=next(p), p2p_init_port=next(p), p2p_lookup_port=next(p), worker_port=next(p))
        if sim:
            d["sim"] = sim
    return write_inventory(path, "inventories/local.yaml", m)


def start_cluster(tmp: Path, sim: dict | None = None, scenario: bool = True) -> Orch:
    tmp.mkdir(parents=True, exist_ok=True)
    orch = Orch(tmp, local_inventory(tmp / "inv.yaml", tmp / "host", sim))
    r = orch("up")
    assert r.code == 0, r.err + r.out
    if scenario:
        r = orch("run", "reuse-2node", "--set", "wait_s=0.2")
        assert r.code == 0, r.err + r.out
    return orch


def collect(orch: Orch, *args: str) -> dict:
    r = orch("--json", "collect", *args)
    assert r.code in (0, 1), r.err + r.out
    out = r.json()
    out["_code"] = r.code
    return out


def host_log(orch: Orch, name: str) -> bytes:
    return (orch.workdir / "host" / "logs" / f"{name}.log").read_bytes()


def run_files(run_dir: Path) -> dict[str, bytes]:
    """Every file of a run folder, gzip members decompressed."""
    out = {}
    for p in run_dir.rglob("*"):
        if p.is_file():
            out[str(p.relative_to(run_dir))] = read_local_log(p) if p.suffix == ".gz" else p.read_bytes()
    return out


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    orch = start_cluster(tmp_path_factory.mktemp("collect"))
    try:
        yield orch
    finally:
        orch("down", "--no-collect", "--grace", "2")


@pytest.fixture(scope="module")
def collected(cluster):
    out = collect(cluster)
    assert out["_code"] == 0, out
    return cluster, Path(out["run_dir"]), out


# ---- the run folder ---------------------------------------------------------------------------


def test_collect_writes_manifest_rendered_logs_metrics_and_report(collected):
    orch, run_dir, out = collected
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["complete"] is True and m["partial_reasons"] == []
    assert m["tool"]["version"] and re.fullmatch(r"[0-9a-f]{40}", m["tool"]["git_commit"] or "")
    facts = m["hosts"]["local"]["facts"]
    assert facts["python_version"] and facts["os"] and "lmcache" in facts["packages"]
    prefill = m["processes"]["prefill"]
    assert prefill["argv"][1:3] == ["-m", "kvorch.sim.engine"]
    assert prefill["env"]["PYTHONHASHSEED"] == "123" and prefill["env"]["HF_TOKEN"] == "***"
    assert prefill["started_at"] and prefill["state_now"] == "running" and prefill["pid"]
    assert m["inventory"]["data"]["env"]["HF_TOKEN"] == "***"
    assert m["rendered"]["local"]["example1.yaml"]["matches_deployed"] is True
    assert (run_dir / "rendered" / "local" / "example1.yaml").read_text().startswith(
        (orch.workdir / "host" / "example1.yaml").read_text()[:40])
    for name in ("controller", "prefill", "decode"):
        assert (run_dir / "hosts" / "local" / f"{name}.log").exists()
        assert (run_dir / "metrics" / f"{name}.prom").read_text().startswith("#")
    assert "vllm:prompt_tokens" in (run_dir / "metrics" / "prefill.prom").read_text()
    assert (run_dir / "metrics" / "samples.jsonl").stat().st_size > 0
    assert (run_dir / "report.md").read_text().count("![") >= 4
    assert (orch.workdir / "logs" / "latest").resolve() == run_dir


def test_collected_logs_equal_the_bytes_on_the_host(collected):
    orch, run_dir, _ = collected
    out = collect(orch)
    for name in ("controller", "prefill", "decode"):
        here = read_local_log(run_dir / "hosts" / "local" / f"{name}.log")
        assert len(here) == out["processes"][name]["log"]["bytes_here"] == out["processes"][name]["log"]["host_size"]
        assert here == host_log(orch, name)[: len(here)]  # (the host's copy may have grown since)


def test_secret_planted_in_env_appears_nowhere_in_the_run_folder(collected):
    orch, run_dir, _ = collected
    assert SECRET in (orch.workdir / "host" / "run" / "prefill.secrets.env").read_text()  # it did reach the host
    files = run_files(run_dir)
    assert len(files) > 20
    leaks = [name for name, data in files.items() if SECRET.encode() in data]
    assert leaks == []
    assert "HF_TOKEN=***" in files["rendered/local/run/prefill.secrets.env"].decode()


def test_report_html_embeds_the_plots_as_valid_pngs(collected):
    from PIL import Image
    import matplotlib.image as mpimg

    _, run_dir, _ = collected
    html = (run_dir / "report.html").read_text()
    assert "<script" not in html and 'src="http' not in html  # self-contained, nothing to fetch
    uris = re.findall(r'<img class="plot"[^>]*src="data:image/png;base64,([^"]+)"', html)
    assert len(uris) >= 4  # TTFT, hits, timeline for reuse-2node + latency percentiles
    for b64 in uris:
        data = base64.b64decode(b64)
        assert data.startswith(PNG_SIGNATURE)
        Image.open(io.BytesIO(data)).verify()
        assert mpimg.imread(io.BytesIO(data), format="png").shape[0] > 100
    files = sorted((run_dir / "plots").glob("*.png"))
    assert {f.name for f in files} >= {"reuse-2node-1-ttft.png", "reuse-2node-1-hits.png",
                                       "reuse-2node-1-timeline.png", "latency-percentiles.png"}
    assert "reuse-2node-1" in html and "PASS" in html


def test_second_collect_pulls_only_the_new_bytes(collected):
    import httpx

    orch, run_dir, _ = collected
    first = collect(orch)
    before = {n: p["log"]["host_size"] for n, p in first["processes"].items()}
    api = json.loads((run_dir / "manifest.json").read_text())["processes"]["prefill"]["api_url"]
    httpx.post(api + "/completions", timeout=30,
               json={"model": "meta-llama/Meta-Llama-3.1-8B-Instruct", "prompt": "hello " * 300, "max_tokens": 4})
    second = collect(orch)
    for name, p in second["processes"].items():
        log = p["log"]
        assert log["pulled"] == log["new"] == log["host_size"] - before[name]
        assert read_local_log(run_dir / "hosts" / "local" / log["file"]) == host_log(orch, name)[: log["bytes_here"]]
    assert second["processes"]["prefill"]["log"]["pulled"] > 500  # the request's log lines
    assert second["bytes_pulled"] < sum(before.values()) / 2


def test_collect_twice_in_a_row_is_idempotent(collected):
    orch, run_dir, _ = collected
    a = collect(orch)
    files_a = run_files(run_dir)
    b = collect(orch)
    files_b = run_files(run_dir)
    assert a["_code"] == b["_code"] == 0
    assert set(files_a) == set(files_b)
    for name in ("controller", "prefill", "decode"):  # only the GET /metrics line of the second collect is new
        rel = f"hosts/local/{name}.log"
        assert files_b[rel].startswith(files_a[rel])
        assert b["processes"][name]["log"]["pulled"] < 400
    for rel in files_a:
        if rel.startswith(("rendered/", "scenarios/", "plots/")) and rel.endswith((".yaml", ".sh", ".json", ".png")):
            assert files_a[rel] == files_b[rel], rel
    m = json.loads((run_dir / "manifest.json").read_text())
    assert len(m["collections"]) >= 2 and m["collections"][-1]["complete"]


def test_report_command_rebuilds_the_report_from_the_run_folder(collected):
    orch, run_dir, _ = collected
    for p in [run_dir / "report.html", run_dir / "report.md", *(run_dir / "plots").glob("*")]:
        p.unlink()
    r = orch("--json", "report", str(run_dir))
    assert r.code == 0, r.err
    out = r.json()
    assert Path(out["html"]).exists() and Path(out["md"]).exists()
    assert len(out["plots"]) >= 4 and all((run_dir / p).read_bytes().startswith(PNG_SIGNATURE) for p in out["plots"])
    assert out["verdicts"][0]["verdict"] == "pass"
    assert orch("report").code == 0  # default: logs/latest


def test_unreachable_host_makes_a_partial_collect_with_exit_code_1(collected, tmp_path):
    orch, run_dir, _ = collected
    good = collect(orch)
    inv = yaml.safe_load(orch.inventory.read_text())  # the same cluster, its host now unreachable
    inv["hosts"]["local"].update(connector="ssh", ssh={"port": free_ports(1)[0], "user": "nobody", "connect_timeout": 2})
    down_inv = tmp_path / "unreachable.yaml"
    down_inv.write_text(yaml.safe_dump(inv))
    unreachable = Orch(orch.workdir, down_inv)
    r = unreachable("collect")
    assert r.code == 1, r.out + r.err
    assert "PARTIAL" in r.out and "local unreachable" in r.out
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["complete"] is False and any("local" in reason for reason in m["partial_reasons"])
    host = m["hosts"]["local"]
    assert host["reachable"] is False and host["error"] and host["facts"]  # the facts of the last good collect stay
    assert m["processes"]["prefill"]["state_now"].startswith("unknown")
    here = read_local_log(run_dir / "hosts" / "local" / "prefill.log")  # what was pulled before is kept
    assert len(here) == good["processes"]["prefill"]["log"]["bytes_here"]
    assert "PARTIAL COLLECT" in (run_dir / "report.html").read_text()
    j = unreachable("--json", "collect")
    assert j.code == 1 and j.json()["complete"] is False and j.json()["unreachable"] == ["local"]
    assert collect(orch)["_code"] == 0  # reachable again: complete again


def test_a_restarted_engine_keeps_both_of_its_logs_whole(collected, monkeypatch):
    from kvorch.cli import Ctx
    from kvorch.restart import restart

    orch, run_dir, _ = collected
    before = collect(orch)["processes"]["decode"]["log"]
    for k, v in orch.env().items():
        if k.startswith("ORCHESTRATE_"):
            monkeypatch.setenv(k, v)
    c = Ctx(inventory_path=str(orch.inventory), ssh_config=None, verbose=0, as_json=True)
    old_log = restart(c, c.plan(), ["decode"], grace=2)["decode"]["previous_log"]
    out = collect(orch)
    decode = out["processes"]["decode"]
    assert [Path(x["host_path"]).name for x in decode["earlier_logs"]] == [Path(old_log).name]
    earlier = decode["earlier_logs"][0]
    assert earlier["pulled"] < before["bytes_here"]  # went on from where the last collect was
    here = run_dir / "hosts" / "local"
    assert read_local_log(here / earlier["file"]) == Path(old_log).read_bytes()
    assert read_local_log(here / decode["log"]["file"]) == host_log(orch, "decode")[: decode["log"]["bytes_here"]]
    assert collect(orch)["processes"]["decode"]["earlier_logs"][0]["pulled"] == 0


# ---- crashes ----------------------------------------------------------------------------------


def test_collect_after_kill_9_of_an_engine_still_brings_its_whole_log(tmp_path):
    orch = start_cluster(tmp_path / "kill", scenario=False)
    try:
        state = json.loads((orch.workdir / "state" / "collecttest.json").read_text())
        pgid = state["processes"]["decode"]["pid"]
        os.killpg(pgid, signal.SIGKILL)
        time.sleep(0.3)
        out = collect(orch)
        assert out["_code"] == 0, out
        run_dir = Path(out["run_dir"])
        decode = out["processes"]["decode"]
        assert decode["state_now"] in ("dead", "zombie") and "kill" in decode["exit_note"]
        assert read_local_log(run_dir / "hosts" / "local" / "decode.log") == host_log(orch, "decode")
        assert b"orchestrate: starting decode" in host_log(orch, "decode")
        m = json.loads((run_dir / "manifest.json").read_text())
        assert m["metrics"]["decode"]["ok"] is False and m["metrics"]["prefill"]["ok"] is True
    finally:
        orch("down", "--no-collect", "--grace", "2")


def test_collect_flags_cap_and_compress_the_logs_and_skip_the_report(tmp_path):
    orch = start_cluster(tmp_path / "flags", scenario=False)
    try:
        bad = orch("collect", "--max-log-size", "lots")
        assert bad.code == 2 and "lots" in bad.err and "Traceback" not in bad.err
        out = collect(orch, "--max-log-size", "1K", "--compress-over", "100", "--no-report")
        assert out["_code"] == 0, out
        run_dir = Path(out["run_dir"])
        for name, p in out["processes"].items():
            log = p["log"]
            assert log["capped"] and log["compressed"] and log["bytes_here"] == 1024, (name, log)
            assert read_local_log(run_dir / "hosts" / p["host"] / log["file"]) == host_log(orch, name)[:1024]
        assert out["report"] == {} and not (run_dir / "report.html").exists()
    finally:
        orch("down", "--no-collect", "--grace", "2")


# ---- compare ----------------------------------------------------------------------------------


def test_compare_shows_the_same_scenario_of_two_runs_side_by_side(collected, tmp_path):
    import shutil

    orch, run_a, _ = collected
    # run B: the same run folder as if the engines had been given a 3× slower prefill
    run_b = orch.workdir / "logs" / "collecttest-run-b"
    shutil.rmtree(run_b, ignore_errors=True)
    shutil.copytree(run_a, run_b)
    res = run_b / "scenarios" / "reuse-2node-1" / "result.json"
    r = json.loads(res.read_text())
    r["headline"]["base TTFT (ms)"] *= 3
    r["checks"][0]["passed"] = False
    res.write_text(json.dumps(r))
    m = json.loads((run_b / "manifest.json").read_text())
    m["run_id"] = "collecttest-run-b"
    m["inventory"]["data"]["sim"]["prefill_ms_per_token"] = 0.3
    m["processes"]["prefill"]["argv"] += ["--sim-prefill-ms-per-token", "0.3"]
    (run_b / "manifest.json").write_text(json.dumps(m))

    out = orch("compare", str(run_a), "collecttest-run-b")
    assert out.code == 0, out.err
    assert "reuse-2node" in out.out and "base TTFT (ms)" in out.out and "3.00×" in out.out and "FAIL" in out.out
    assert "--sim-prefill-ms-per-token 0.3" in out.out  # only the argv words that differ
    j = orch("--json", "compare", str(run_a), str(run_b)).json()
    s = j["scenarios"]["reuse-2node"]
    assert next(h for h in s["headline"] if h["name"] == "base TTFT (ms)")["b_over_a"] == pytest.approx(3.0)
    assert s["checks"][0]["a"] == "pass" and s["checks"][0]["b"] == "fail"
    assert Path(s["plot"]).read_bytes().startswith(PNG_SIGNATURE)
    assert {d["key"] for d in j["config_diff"]} == {"inventory.sim.prefill_ms_per_token", "process[prefill].argv"}
    assert orch("compare", str(run_a), str(orch.workdir)).code == 2  # not a run folder: a clear error


# ---- the incremental pull, on plain files -----------------------------------------------------


def _pull(ops, src: Path, dest: Path, prev: LogEntry | None, secrets: Secrets | None = None, **opts):
    o = CollectOptions(**{"compress_over": 1 << 30, **opts})
    res = pull_log(ops, str(src), dest, "proc", prev, o, secrets or Secrets([], []))
    return res


@pytest.fixture
def ops(tmp_path):
    return HostOps(LocalTransport(), workdir=str(tmp_path))


def test_log_beyond_the_compress_threshold_is_gzip_and_byte_exact_across_collects(ops, tmp_path):
    src, dest = tmp_path / "host.log", tmp_path / "here"
    src.write_bytes(b"".join(b"line %d of the engine log\n" % i for i in range(200)))
    r1 = _pull(ops, src, dest, None, compress_over=1000)
    assert r1.entry.local_file == "proc.log.gz" and not (dest / "proc.log").exists()
    with src.open("ab") as f:
        f.write(b"a line still being writ")  # no newline yet
    r2 = _pull(ops, src, dest, r1.entry, compress_over=1000)
    assert read_local_log(dest / "proc.log.gz") == src.read_bytes()
    with src.open("ab") as f:
        f.write(b"ten\n" + b"more\n" * 50)
    r3 = _pull(ops, src, dest, r2.entry, compress_over=1000)
    assert read_local_log(dest / "proc.log.gz") == src.read_bytes()
    assert r3.pulled == len(b"a line still being written\n" + b"more\n" * 50)  # the cut line is read again, once
    assert (dest / "proc.log.gz").stat().st_size < src.stat().st_size / 3
    with gzip.open(dest / "proc.log.gz") as fh:  # a plain gzip reader reads the multi-member file
        assert fh.read().count(b"\n") == 251


def test_log_beyond_the_cap_keeps_its_head_and_its_tail(ops, tmp_path):
    src, dest = tmp_path / "host.log", tmp_path / "here"
    src.write_bytes(b"".join(b"%06d crash dump line\n" % i for i in range(1000)))
    r = _pull(ops, src, dest, None, max_log_bytes=5000, tail_bytes=2000)
    data = src.read_bytes()
    assert (dest / "proc.log").read_bytes() == data[:5000]
    tail = (dest / "proc.tail.log").read_bytes()
    assert tail.endswith(data[-1500:]) and b"skipped" in tail.splitlines()[0]
    s = r.summary()
    assert s["capped"] and s["skipped_bytes"] > 0 and r.entry.remote_committed == 5000
    with src.open("ab") as f:
        f.write(b"the very last line\n")
    r2 = _pull(ops, src, dest, r.entry, max_log_bytes=5000, tail_bytes=2000)
    assert r2.pulled < 2100  # the tail again, never the head
    assert (dest / "proc.log").read_bytes() == data[:5000]
    assert (dest / "proc.tail.log").read_bytes().endswith(b"the very last line\n")


def test_a_log_started_over_on_the_host_keeps_the_previous_copy(ops, tmp_path):
    src, dest = tmp_path / "host.log", tmp_path / "here"
    src.write_bytes(b"orchestrate: starting proc, pid 1\n" + b"first life\n" * 100)
    r1 = _pull(ops, src, dest, None)
    src.write_bytes(b"orchestrate: starting proc, pid 2\nsecond life\n")
    r2 = _pull(ops, src, dest, r1.entry)
    assert r2.restarted and r2.entry.previous == ["proc.0.log"]
    assert (dest / "proc.0.log").read_bytes().count(b"first life") == 100
    assert (dest / "proc.log").read_bytes() == src.read_bytes()


def test_a_secret_printed_in_a_log_is_redacted_and_counted(ops, tmp_path):
    src, dest = tmp_path / "host.log", tmp_path / "here"
    src.write_bytes(b"starting\nenv: HF_TOKEN=" + SECRET.encode() + b" done\nok\n")
    r = _pull(ops, src, dest, None, secrets=Secrets(["HF_TOKEN"], [SECRET]))
    here = (dest / "proc.log").read_bytes()
    assert SECRET.encode() not in here and b"HF_TOKEN=*** done" in here
    assert r.entry.redactions == 1
