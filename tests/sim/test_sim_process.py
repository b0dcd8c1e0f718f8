"""Process behaviour: fast startup, clean SIGTERM, argument and config errors."""

import subprocess
import sys
import time

from simproc import HTTP, ROOT, base_env, controller, engine, free_port, p2p_config


def test_startup_under_a_second_and_clean_sigterm(tmp_path):
    p = engine(tmp_path, "fast", config={"chunk_size": 256})
    try:
        assert p.startup_s < 10.0, p.startup_s  # a bound against hangs; speed is measured in bench/
        # a request is in flight while we stop it: still within a second
        with HTTP.stream("POST", p.url + "/v1/completions", timeout=10,
                          json={"prompt": "x", "max_tokens": 2000, "ignore_eos": True,
                                "stream": True}) as r:
            next(r.iter_lines())
            rc, took = p.stop()
    finally:
        p.stop()
    assert rc == 0 and took < 10.0, (rc, took)
    log = p.log()
    assert "Application startup complete." in log
    assert "[sim] kvorch simulated engine stopped after" in log
    assert "Finished server process" in log


def test_controller_starts_fast_and_exits_143(tmp_path):
    ctl, pull, reply = controller(tmp_path)
    assert ctl.startup_s < 10.0  # a bound against hangs; speed is measured in bench/
    for port in (pull, reply):  # the monitor ports answer too
        assert HTTP.get(f"http://127.0.0.1:{port}/health").status_code == 200
    rc, took = ctl.stop()
    assert rc == 143 and took < 10.0
    assert "Starting LMCache controller at 127.0.0.1:" in ctl.log()


def _run(args, env=None, timeout=10):
    return subprocess.run([sys.executable, "-m", "kvorch.sim.engine", *args], cwd=ROOT,
                          env=env or base_env(), capture_output=True, text=True, timeout=timeout)


def test_unknown_vllm_argument_is_rejected():
    r = _run(["--model", "m", "--port", str(free_port()), "--bogus-flag=3"])
    assert r.returncode == 2
    assert "unsupported vLLM argument(s): --bogus-flag=3" in r.stderr


def test_accepts_the_inventory_subset():
    r = _run(["--model", "m", "--dtype", "bfloat16", "--enforce-eager", "--enable-prefix-caching",
              "--served-model-name", "a", "b", "--max-num-seqs", "4", "--gpu-memory-utilization",
              "0.5", "--max-model-len", "1600", "--kv-transfer-config", "{}", "--help"])
    assert r.returncode == 0 and "--sim-prefill-ms-per-token" in r.stdout


def test_invalid_lmcache_config_stops_the_engine(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("chunk_size: 256\nenable_p2p: true\n")  # P2P without controller & ports
    env = base_env()
    env["LMCACHE_CONFIG_FILE"] = str(cfg)
    r = _run(["--model", "m", "--port", str(free_port()), "--kv-transfer-config",
              '{"kv_connector":"LMCacheConnectorV1","kv_role":"kv_both"}'], env=env)
    assert r.returncode == 1
    assert "enable_p2p=True requires enable_controller=True" in r.stdout + r.stderr


def test_engine_registers_even_when_controller_comes_later(tmp_path):
    pull, reply, api = free_port(), free_port(), free_port()
    e = engine(tmp_path, "early", config=p2p_config("late_ctl", pull, reply))
    try:
        argv = [sys.executable, "-m", "kvorch.sim.controller", "--host", "127.0.0.1", "--port",
                str(api), "--monitor-ports", f'{{"pull": {pull}, "reply": {reply}}}']
        from simproc import SimProc
        ctl = SimProc(argv, base_env(), tmp_path / "ctl.log", api).start()
        try:
            deadline = time.time() + 5
            while time.time() < deadline:
                if HTTP.get(ctl.url + "/controller/workers").json()["total_count"] == 1:
                    break
                time.sleep(0.05)
            assert HTTP.get(ctl.url + "/controller/workers").json()["total_count"] == 1
        finally:
            ctl.stop()
    finally:
        e.stop()
