"""Command line of the simulated engine: the subset of ``vllm serve`` /
``python -m vllm.entrypoints.openai.api_server`` arguments an inventory uses, plus ``--sim-*``
latency/shape flags (each also settable as env ``KVORCH_SIM_<NAME>``, e.g.
``KVORCH_SIM_PREFILL_MS_PER_TOKEN=0.2``; a flag wins over env). Any other argument is rejected
with exit status 2 and a message naming it."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Mapping, Sequence

def _bool(raw: object) -> bool:
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {raw!r}")


_bool.__name__ = "bool"

# name -> (type, default, help). Env: KVORCH_SIM_<NAME upper, '-' -> '_'>.
SIM_FLAGS: dict[str, tuple[type, object, str]] = {
    "prefill-ms-per-token": (float, 0.1, "ms of prefill per computed (uncached) prompt token"),
    "load-ms-per-token": (float, 0.01, "ms per token loaded from LMCache's CPU tier"),
    "disk-load-ms-per-token": (float, 0.03, "ms per token loaded from LMCache's disk tier"),
    "store-ms-per-token": (float, 0.002, "ms per token stored (reported in the Stored line only)"),
    "transfer-mbps": (float, 10000.0, "P2P bandwidth in MB/s applied to the modeled KV size"),
    "ms-per-output-token": (float, 2.0, "ms per generated token after the first"),
    "startup-s": (float, 0.0, "seconds to wait before serving (a model loading)"),
    "load-factor": (float, 1.0, "time multiplier when max-num-seqs requests run (>= 1)"),
    "model-shape": (str, None, "KV shape 'layers,kv_heads,head_dim' (default: from the model)"),
    "kv-bytes-per-token": (int, None, "override the modeled KV bytes per token"),
    "wire-bytes-per-token": (int, 64, "bytes per token actually sent between peers / written to disk"),
    "gpu-memory-gb": (float, 24.0, "simulated GPU memory (sizes vLLM's block pool)"),
    # planted faults (the fault suite): how real engines misbehave
    "fault-children": (int, 0, "start N child processes that stay in the group (like vLLM's EngineCore)"),
    "fault-setsid-grandchild": (int, 0, "1: a child double-forks a grandchild that calls setsid (leaves the group)"),
    "fault-ignore-sigterm": (int, 0, "1: ignore SIGTERM, children too (like vLLM while it is still loading)"),
    "fault-exit-after-s": (float, 0.0, "exit with status 3 this many seconds after serving (a crash mid-run)"),
    "jitter-ms": (float, 0.0, "noise: each request's prefill takes a random extra 0..N ms (uniform)"),
    "corrupt-reused-kv": (_bool, False, "fault: a request that reuses cached KV (prefix cache or LMCache) "
                                        "answers differently from the same prompt computed cold"),
}

VLLM_ARGS_HELP = (
    "model (positional or --model), --host, --port, --max-model-len, --kv-transfer-config, "
    "--gpu-memory-utilization, --dtype, --enforce-eager, --enable-prefix-caching, "
    "--no-enable-prefix-caching, --served-model-name, --max-num-seqs, --max-num-batched-tokens, "
    "--block-size, --tensor-parallel-size/-tp, --pipeline-parallel-size/-pp, --seed, "
    "--trust-remote-code, --tokenizer, --kv-cache-dtype, --swap-space, --num-gpu-blocks-override, "
    "--api-key, --enable-request-id-headers, --enable-prompt-tokens-details, --disable-log-requests, --enable-log-requests, "
    "--disable-log-stats, --disable-uvicorn-access-log, --uvicorn-log-level, --disable-fastapi-docs, "
    "--enable-chunked-prefill, --no-enable-chunked-prefill"
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors (bad values, missing)
        sys.stderr.write(f"kvorch.sim.engine: error: {message}\n")
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m kvorch.sim.engine", allow_abbrev=False,
                description="Simulated vLLM + LMCache engine (OpenAI API, /metrics, LMCache logs).")
    p.add_argument("model_tag", nargs="?", default=None, help="model (like `vllm serve MODEL`)")
    p.add_argument("--model", default=None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--kv-transfer-config", type=json.loads, default=None)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--dtype", default="auto",
                   choices=["auto", "half", "float16", "bfloat16", "float", "float32"])
    p.add_argument("--enforce-eager", action="store_true")
    p.add_argument("--enable-prefix-caching", dest="enable_prefix_caching",
                   action="store_true", default=True)
    p.add_argument("--no-enable-prefix-caching", dest="enable_prefix_caching", action="store_false")
    p.add_argument("--served-model-name", nargs="+", default=None)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-num-batched-tokens", type=int, default=None)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    p.add_argument("--pipeline-parallel-size", "-pp", type=int, default=1)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--kv-cache-dtype", default="auto")
    p.add_argument("--swap-space", type=float, default=4)
    p.add_argument("--num-gpu-blocks-override", type=int, default=None)
    p.add_argument("--api-key", default=None)
    p.add_argument("--enable-request-id-headers", action="store_true")
    p.add_argument("--enable-prompt-tokens-details", action="store_true")
    p.add_argument("--disable-log-requests", action="store_true")
    p.add_argument("--enable-log-requests", action="store_true")
    p.add_argument("--disable-log-stats", action="store_true")
    p.add_argument("--disable-uvicorn-access-log", action="store_true")
    p.add_argument("--uvicorn-log-level", default="info")
    p.add_argument("--disable-fastapi-docs", action="store_true")
    p.add_argument("--enable-chunked-prefill", dest="enable_chunked_prefill", action="store_true",
                   default=None)
    p.add_argument("--no-enable-chunked-prefill", dest="enable_chunked_prefill", action="store_false")
    g = p.add_argument_group("simulation (also env KVORCH_SIM_<NAME>)")
    for name, (typ, _default, help_) in SIM_FLAGS.items():
        g.add_argument(f"--sim-{name}", type=typ, default=None, help=help_)
    return p


def env_name(flag: str) -> str:
    return "KVORCH_SIM_" + flag.upper().replace("-", "_")


def parse_args(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
               ) -> argparse.Namespace:
    environ = os.environ if environ is None else environ
    p = build_parser()
    args, extra = p.parse_known_args(argv)
    if extra:
        sys.stderr.write(
            f"kvorch.sim.engine: error: unsupported vLLM argument(s): {' '.join(extra)}\n"
            f"The simulated engine accepts: {VLLM_ARGS_HELP}, and --sim-* flags "
            f"(see --help).\n")
        sys.exit(2)
    model = args.model or args.model_tag
    if not model:
        p.error("a model is required (positional MODEL or --model)")
    if args.model and args.model_tag and args.model != args.model_tag:
        p.error(f"two different models given: {args.model_tag!r} and --model {args.model!r}")
    args.model = model
    for name, (typ, default, _h) in SIM_FLAGS.items():
        attr = "sim_" + name.replace("-", "_")
        if getattr(args, attr) is None:
            raw = environ.get(env_name(name))
            if raw is not None and raw != "":
                try:
                    setattr(args, attr, typ(raw))
                except ValueError:
                    p.error(f"{env_name(name)}={raw!r} is not a valid {typ.__name__}")
            else:
                setattr(args, attr, default)
    if args.sim_load_factor < 1.0:
        p.error("--sim-load-factor must be >= 1")
    if args.max_num_seqs < 1:
        p.error("--max-num-seqs must be >= 1")
    if not 0 < args.gpu_memory_utilization <= 1:
        p.error("--gpu-memory-utilization must be in (0, 1]")
    ktc = args.kv_transfer_config
    if ktc is not None and not isinstance(ktc, dict):
        p.error("--kv-transfer-config must be a JSON object")
    return args
