"""Start/stop the simulated engine and controller as real subprocesses on 127.0.0.1."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[2]
MODEL = "meta-llama/Meta-Llama-3.1-8B-Instruct"
KTC = '{"kv_connector":"LMCacheConnectorV1","kv_role":"kv_both"}'
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# One shared client: creating an httpx client costs tens of ms (it builds an SSL context).
HTTP = httpx.Client(timeout=30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(seed: str | None = "123") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LMCACHE_", "KVORCH_SIM_", "VLLM_"))}
    env.pop("PYTHONHASHSEED", None)
    if seed is not None:
        env["PYTHONHASHSEED"] = seed
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(DO_NOT_TRACK="1", LMCACHE_TRACK_USAGE="false", VLLM_NO_USAGE_STATS="1")
    return env


class SimProc:
    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path, port: int,
                 health_path: str = "/health"):
        self.argv, self.env, self.log_path, self.port = argv, env, log_path, port
        self.url = f"http://127.0.0.1:{port}"
        self.health_path = health_path
        self.proc: subprocess.Popen | None = None
        self.startup_s = 0.0

    def start(self, timeout: float = 10.0, wait: bool = True) -> "SimProc":
        self._log = open(self.log_path, "ab")
        self._t0 = time.perf_counter()
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=str(self.log_path.parent), start_new_session=True)
        return self.wait_healthy(timeout) if wait else self

    def wait_healthy(self, timeout: float = 10.0) -> "SimProc":
        t0 = self._t0
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"exited {self.proc.returncode}:\n{self.log()}")
            try:
                if HTTP.get(self.url + self.health_path, timeout=0.5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.perf_counter() - t0 > timeout:
                self.stop()
                raise RuntimeError(f"not healthy after {timeout}s:\n{self.log()}")
            time.sleep(0.01)
        self.startup_s = time.perf_counter() - t0
        return self

    def log(self) -> str:
        try:
            return ANSI.sub("", self.log_path.read_text(errors="replace"))
        except OSError:
            return ""

    def stop(self, timeout: float = 5.0) -> tuple[int | None, float]:
        if self.proc is None or self.proc.poll() is not None:
            return (self.proc.returncode if self.proc else None), 0.0
        t0 = time.perf_counter()
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            rc = self.proc.wait()
        self._log.close()
        return rc, time.perf_counter() - t0

    def metrics(self) -> dict[str, float]:
        return parse_metrics(HTTP.get(self.url + "/metrics", timeout=5).text)


def parse_metrics(text: str) -> dict[str, float]:
    """{'name{labels}': value} plus {'name': sum over label sets}."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, val = line.rpartition(" ")
        out[key] = float(val)
        name = key.split("{", 1)[0]
        if "{" in key:
            out[name] = out.get(name, 0.0) + float(val)
    return out


def engine(tmp: Path, name: str, *, config: dict | None = None, env_extra: dict | None = None,
           args: list[str] | None = None, seed: str | None = "123", port: int | None = None,
           ktc: str | None = KTC, model: str = MODEL, wait: bool = True) -> SimProc:
    port = port or free_port()
    env = base_env(seed)
    env.update(KVORCH_SIM_MS_PER_OUTPUT_TOKEN="0.2")
    if config is not None:
        cfg_path = tmp / f"{name}.yaml"
        cfg_path.write_text(yaml.safe_dump(config))
        env["LMCACHE_CONFIG_FILE"] = str(cfg_path)
    env.update(env_extra or {})
    argv = [sys.executable, "-m", "kvorch.sim.engine", "--model", model, "--host", "127.0.0.1",
            "--port", str(port), "--max-model-len", "4096"]
    if ktc:
        argv += ["--kv-transfer-config", ktc]
    argv += args or []
    return SimProc(argv, env, tmp / f"{name}.log", port).start(wait=wait)


def controller(tmp: Path, name: str = "controller", seed: str | None = "123") -> tuple[SimProc, int, int]:
    port, pull, reply = free_port(), free_port(), free_port()
    argv = [sys.executable, "-m", "kvorch.sim.controller", "--host", "127.0.0.1", "--port", str(port),
            "--monitor-ports", f'{{"pull": {pull}, "reply": {reply}}}']
    return SimProc(argv, base_env(seed), tmp / f"{name}.log", port).start(), pull, reply


def p2p_config(instance: str, pull: int, reply: int, **extra) -> dict:
    cfg = {"chunk_size": 256, "local_cpu": True, "max_local_cpu_size": 5,
           "enable_async_loading": True, "enable_p2p": True, "p2p_host": "127.0.0.1",
           "p2p_init_ports": free_port(), "p2p_lookup_ports": free_port(),
           "transfer_channel": "nixl", "enable_controller": True, "lmcache_instance_id": instance,
           "controller_pull_url": f"127.0.0.1:{pull}", "controller_reply_url": f"127.0.0.1:{reply}",
           "lmcache_worker_ports": free_port(), "extra_config": {"lookup_backoff_time": 0.001}}
    cfg.update(extra)
    return cfg


def words(n: int, salt: str = "zz") -> str:
    """Exactly n tokens of text (" <salt><3 digits>" is one token; salt: 2 letters, n <= 1000
    per call: concatenate calls with different salts for more)."""
    assert len(salt) == 2 and n <= 1000
    return "".join(f" {salt}{i:03d}" for i in range(n))
