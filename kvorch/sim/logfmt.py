"""Log lines in the formats vLLM 0.32 and LMCache 0.5.6 print.

vLLM (``vllm/logger.py``), to stdout::

    (APIServer pid=4242) INFO 11-24 20:10:00 [api_utils.py:327] vLLM server version 0.32.0, serving model M

LMCache (``lmcache/logging.py``), to stderr, colours always on (that is what LMCache does)::

    \\x1b[32;20m[2026-11-24 20:10:00,123] LMCache INFO:\\x1b[0m <message> \\x1b[3m(vllm_v1_adapter.py:1476:lmcache.integration.vllm.vllm_v1_adapter)\\x1b[0m

Set ``KVORCH_SIM_LOG_COLOR=0`` to drop the ANSI codes (the real LMCache has no such switch).
"""

from __future__ import annotations

import os
import sys
import time
from datetime import datetime

_LMC_COLORS = {
    "DEBUG": "\x1b[1m",
    "INFO": "\x1b[32;20m",
    "WARNING": "\x1b[33;20m",
    "ERROR": "\x1b[31;20m",
    "CRITICAL": "\x1b[31;1m",
}
_RESET = "\x1b[0m"
_ITALIC = "\x1b[3m"

# (filename, lineno, logger) of the LMCache 0.5.6 statements the sim reproduces.
LMC_REQID = ("vllm_v1_adapter.py", 1476, "lmcache.integration.vllm.vllm_v1_adapter")
LMC_RETRIEVED = ("cache_engine.py", 985, "lmcache.v1.cache_engine")
LMC_STORED = ("cache_engine.py", 588, "lmcache.v1.cache_engine")
LMC_CONFIG_LOAD = ("utils.py", 198, "lmcache.integration.vllm.utils")
LMC_NO_CONFIG = ("utils.py", 183, "lmcache.integration.vllm.utils")
LMC_NO_CONFIG2 = ("utils.py", 187, "lmcache.integration.vllm.utils")
LMC_CONTROLLER = ("__main__.py", 519, "lmcache.v1.api_server.__main__")
LMC_CONTROLLER_MANAGER = ("controller_manager.py", 534, "lmcache.v1.cache_controller.controller_manager")
LMC_REGISTER = ("registration_controller.py", 163, "lmcache.v1.cache_controller.controllers.registration_controller")
LMC_DEREGISTER = ("registration_controller.py", 190, "lmcache.v1.cache_controller.controllers.registration_controller")
LMC_SIM = ("sim", 0, "kvorch.sim")


def _color() -> bool:
    return os.environ.get("KVORCH_SIM_LOG_COLOR", "1") not in ("0", "false", "False", "no")


class Logger:
    """Writes vLLM-style lines to stdout and LMCache-style lines to stderr."""

    def __init__(self, process_name: str = "APIServer", vllm_stream=None, lmc_stream=None):
        self.process_name = process_name
        self.pid = os.getpid()
        self.vllm_stream = vllm_stream or sys.stdout
        self.lmc_stream = lmc_stream or sys.stderr
        self.color = _color()

    # vLLM: "(APIServer pid=%(process)d) %(levelname)s %(asctime)s [%(fileinfo)s:%(lineno)d] %(message)s"
    def vllm(self, level: str, fileinfo: str, lineno: int, msg: str) -> None:
        ts = time.strftime("%m-%d %H:%M:%S")
        self._write(self.vllm_stream,
                    f"({self.process_name} pid={self.pid}) {level} {ts} [{fileinfo}:{lineno}] {msg}\n")

    def info(self, fileinfo: str, lineno: int, msg: str) -> None:
        self.vllm("INFO", fileinfo, lineno, msg)

    def warning(self, fileinfo: str, lineno: int, msg: str) -> None:
        self.vllm("WARNING", fileinfo, lineno, msg)

    # LMCache: "[%(asctime)s] LMCache %(levelname)s: %(message)s (%(filename)s:%(lineno)d:%(name)s)"
    def lmcache(self, level: str, origin: tuple[str, int, str], msg: str) -> None:
        self._write(self.lmc_stream, format_lmcache(level, origin, msg, self.color) + "\n")

    @staticmethod
    def _write(stream, line: str) -> None:
        try:
            stream.write(line)
            stream.flush()
        except (ValueError, OSError):  # closed at shutdown
            pass


def format_lmcache(level: str, origin: tuple[str, int, str], msg: str, color: bool = True) -> str:
    now = datetime.now()
    asctime = now.strftime("%Y-%m-%d %H:%M:%S") + f",{now.microsecond // 1000:03d}"
    filename, lineno, name = origin
    if color:
        return (f"{_LMC_COLORS.get(level, '')}[{asctime}] LMCache {level}:{_RESET} {msg} "
                f"{_ITALIC}({filename}:{lineno}:{name}){_RESET}")
    return f"[{asctime}] LMCache {level}: {msg} ({filename}:{lineno}:{name})"


# ---- the three per-request LMCache lines (exact 0.5.6 wording) ----
def reqid_line(req_id: str, total: int, computed: int, hit: int, need: int) -> str:
    return (f"Reqid: {req_id}, Total tokens {total}, Inference Engine computed tokens: {computed}, "
            f"LMCache hit tokens: {hit}, need to load: {need}")


def retrieved_line(req_id: str, retrieved: int, required: int, total: int, size_gb: float,
                   cost_s: float) -> str:
    tp = size_gb / cost_s if cost_s > 0 else 0
    return (f"[req_id={req_id}] Retrieved {retrieved} out of {required} required tokens "
            f"(from {total} total tokens). size: {size_gb:.4f} gb, cost {cost_s * 1000:.4f} ms, "
            f"throughput: {tp:.4f} GB/s;")


def stored_line(req_id: str, stored: int, total: int, size_gb: float, cost_s: float) -> str:
    tp = size_gb / cost_s if cost_s > 0 else 0
    return (f"[req_id={req_id}] Stored {stored} out of total {total} tokens. size: {size_gb:.4f} GB, "
            f"cost {cost_s * 1000:.4f} ms, throughput: {tp:.4f} GB/s; offload_time: "
            f"{cost_s * 1000 * 0.6:.4f} ms, put_time: {cost_s * 1000 * 0.4:.4f} ms")
