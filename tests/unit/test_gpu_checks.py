"""GPU-host preflight: each way a GPU host breaks first gives its line (with the fix); a host whose
facts are right passes. Host facts are given here as the probe would report them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kvorch.gpu_checks import (MARK, EngineNeed, HostGpuFacts, HostNeeds, ProbeError, ProxyNeed, evaluate, needs_of,
                               parse_probe_output, script_imports)
from kvorch.inventory import load_inventory, parse_inventory
from kvorch.plan import build_plan

ROOT = Path(__file__).resolve().parents[2]

#: A CUDA-13 GPU host with everything in place: lmcache 0.5.6 ops load, nixl imports, vLLM patched.
GOOD = dict(
    packages={"vllm": "0.19.1", "lmcache": "0.5.6", "torch": "2.10.0+cu130", "nixl": "1.3.0"},
    torch_version="2.10.0+cu130", torch_cuda="13.0", cuda_devices=1,
    lmcache_ops_file="/venv/lmcache/cuda_ops.so", lmcache_ops_cudart=["13"], lmcache_ops_loaded=True,
    vllm_worker="/venv/vllm/v1/worker/gpu_worker.py", vllm_registers_model=True, lmcache_registers_model=False,
    vllm_kv_init_in=["initialize_from_config"], vllm_mistral_class="MistralForCausalLM",
    lmcache_blend_classes=["LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"],
    proxy_script_found=True, proxy_missing=[],
)


def facts(**changes) -> HostGpuFacts:
    return HostGpuFacts(**{**GOOD, **changes})


def needs(*, topology="p2p", blend=False, eager=True, channel="nixl", proxy=False, model="meta-llama/Llama-3.1-8B") -> HostNeeds:
    return HostNeeds(host="gpu1", python="/venv/bin/python", topology=topology, model=model, lmcache_version="0.5.6",
                     engines=[EngineNeed(name="e1", blend=blend, enforce_eager=eager, transfer_channel=channel)],
                     proxy=ProxyNeed(script="~/LMCache/examples/disagg_prefill/disagg_proxy_server.py") if proxy else None)


def by_name(checks) -> dict[str, object]:
    return {c.name: c for c in checks}


def test_a_host_whose_facts_are_right_passes_every_check():
    checks = evaluate(needs(blend=True, proxy=True), facts())
    assert {c.name for c in checks} == {"lmcache cuda ops", "nixl", "cacheblend vllm", "pd proxy script", "pd proxy imports"}
    assert all(c.status == "ok" for c in checks), [(c.name, c.detail) for c in checks if c.status != "ok"]


def test_lmcache_ops_built_for_cuda13_against_vllm_011_torch_fails_with_the_fix():
    c = by_name(evaluate(needs(), facts(packages={**GOOD["packages"], "vllm": "0.11.0", "torch": "2.8.0+cu128"},
                                        torch_version="2.8.0+cu128", torch_cuda="12.8", lmcache_ops_loaded=False,
                                        lmcache_ops_error="ImportError: libcudart.so.13: cannot open shared object file")))["lmcache cuda ops"]
    assert c.status == "fail"
    assert "CUDA 13 (libcudart.so.13)" in c.detail and "CUDA 12.8" in c.detail and "vLLM 0.11.0 pins torch 2.8.0" in c.detail
    assert "--no-binary lmcache lmcache==0.5.6" in c.hint and "CUDA 13 torch" in c.hint


def test_lmcache_ops_that_do_not_load_for_another_reason_fail_with_the_error():
    c = by_name(evaluate(needs(), facts(lmcache_ops_loaded=False, lmcache_ops_error="ImportError: libcuda.so.1: cannot open")))["lmcache cuda ops"]
    assert c.status == "fail" and "libcuda.so.1" in c.detail and "ldd /venv/lmcache/cuda_ops.so" in c.hint


def test_cpu_torch_fails_in_process_connector_but_passes_in_mp_mode():
    cpu = dict(torch_version="2.13.0+cpu", torch_cuda=None, cuda_devices=0, lmcache_ops_loaded=False)
    assert by_name(evaluate(needs(), facts(**cpu)))["lmcache cuda ops"].status == "fail"
    assert by_name(evaluate(needs(topology="mp", channel=None), facts(**cpu)))["lmcache cuda ops"].status == "ok"


def test_nixl_channel_without_nixl_fails_with_the_extra_to_install():
    c = by_name(evaluate(needs(), facts(nixl_error="ModuleNotFoundError: No module named 'nixl'")))["nixl"]
    assert c.status == "fail" and "lmcache[nixl]==0.5.6" in c.hint


def test_no_nixl_check_without_the_nixl_channel():
    assert "nixl" not in by_name(evaluate(needs(channel=None), facts(nixl_error="ModuleNotFoundError")))


def test_cacheblend_on_unpatched_new_vllm_fails_with_the_initialize_from_config_patch():
    c = by_name(evaluate(needs(blend=True), facts(vllm_registers_model=False)))["cacheblend vllm"]
    assert c.status == "fail" and "vllm model for vllm-instance not found" in c.detail
    assert "initialize_from_config" in c.hint and "VLLMModelTracker.register_model(ENGINE_NAME, self.model_runner.model)" in c.hint
    assert "load_model" not in c.hint


def test_cacheblend_on_unpatched_vllm_011_fails_with_the_load_model_patch():
    c = by_name(evaluate(needs(blend=True), facts(packages={**GOOD["packages"], "vllm": "0.11.0"}, vllm_registers_model=False,
                                                  vllm_kv_init_in=["init_worker_distributed_environment"])))["cacheblend vllm"]
    assert c.status == "fail" and "end of Worker.load_model" in c.hint
    assert "comment out ensure_kv_transfer_initialized(vllm_config)" in c.hint


def test_lmcache_that_registers_the_model_itself_needs_no_patch():
    c = by_name(evaluate(needs(blend=True), facts(vllm_registers_model=False, lmcache_registers_model=True)))["cacheblend vllm"]
    assert c.status == "ok"


def test_cacheblend_with_mistral_on_a_vllm_with_its_own_mistral_class_warns():
    c = by_name(evaluate(needs(blend=True, model="mistralai/Mistral-7B-Instruct-v0.2"), facts()))["cacheblend model"]
    assert c.status == "warn" and "MistralForCausalLM" in c.detail and "LlamaForCausalLM" in c.detail


def test_cacheblend_with_mistral_where_vllm_runs_it_as_llama_passes():
    checks = by_name(evaluate(needs(blend=True, model="mistralai/Mistral-7B-Instruct-v0.2"), facts(vllm_mistral_class="LlamaForCausalLM")))
    assert "cacheblend model" not in checks


def test_cacheblend_without_enforce_eager_warns():
    c = by_name(evaluate(needs(blend=True, eager=False), facts()))["cacheblend eager e1"]
    assert c.status == "warn" and "#2639" in c.detail


def test_pd_proxy_script_missing_on_the_host_fails_with_the_source_fix():
    c = by_name(evaluate(needs(proxy=True), facts(proxy_script_found=False)))["pd proxy script"]
    assert c.status == "fail" and "proxy.source" in c.hint


def test_pd_proxy_imports_missing_fail_with_the_pip_names():
    c = by_name(evaluate(needs(proxy=True), facts(proxy_missing=["msgspec", "zmq"])))["pd proxy imports"]
    assert c.status == "fail" and c.hint.endswith("-m pip install msgspec pyzmq")


def test_probe_output_is_found_among_other_lines():
    line = 'KVORCH-GPU-FACTS {"python": "3.11.7", "torch_cuda": "13.0"}'
    assert parse_probe_output("login banner\n" + line + "\n").torch_cuda == "13.0"


def test_probe_output_of_a_good_host_reads_back_as_its_facts():
    import json

    assert parse_probe_output(MARK + json.dumps(GOOD)) == facts()


@pytest.mark.parametrize("output, named", [
    ('{"torch_cuda": 13}', "torch_cuda"),                      # a number where a string belongs
    ('{"packages": {"torch": 2}}', "packages"),                # a version that is no string
    ('{"lmcache_ops_cudart": "13"}', "lmcache_ops_cudart"),    # a string where a list belongs
    ('{"cuda_devices": "one"}', "cuda_devices"),
    ('{"proxy_script_found": 1}', "proxy_script_found"),
    ('{"python": "3.11", "gpu_count": 1}', "gpu_count: unknown field"),
    ('["not", "an", "object"]', "not an object"),
    ('{"python": ', "not JSON"),
])
def test_probe_output_of_unknown_fields_or_wrong_types_is_refused_naming_the_field(output, named):
    # the host's output is the host's word: what does not fit the facts is refused, never evaluated
    with pytest.raises(ProbeError) as info:
        parse_probe_output("banner\n" + MARK + output + "\n")
    assert named in str(info.value)


# ---- from the plan --------------------------------------------------------------------------


def test_seed_needs_lmcache_ops_and_nixl_on_both_engine_hosts():
    inv = load_inventory(ROOT / "inventory.yaml")
    plan = build_plan(inv)
    for host in ("node13", "node97"):
        n = needs_of(inv, plan, host)
        assert [e.transfer_channel for e in n.engines] == ["nixl"] and not n.blend and n.proxy is None


def test_seed_blend_engine_gets_enforce_eager_and_needs_the_blend_checks():
    inv = load_inventory(ROOT / "inventories/seed-blend.yaml")
    plan = build_plan(inv)
    assert "--enforce-eager" in plan.process("blend").argv
    n = needs_of(inv, plan, "node13")
    assert n.blend and n.engines[0].enforce_eager


def test_blend_engine_with_enforce_eager_false_is_rendered_so_and_warned():
    data = yaml.safe_load((ROOT / "inventories/seed-blend.yaml").read_text())
    data["vllm"]["enforce_eager"] = False
    inv = parse_inventory(yaml.safe_dump(data), "b.yaml")
    plan = build_plan(inv)
    assert "--enforce-eager" not in plan.process("blend").argv
    checks = by_name(evaluate(needs_of(inv, plan, "node13"), facts()))
    assert checks["cacheblend eager blend"].status == "warn"


def test_pd_proxy_source_is_uploaded_and_run_from_the_workdir(tmp_path):
    src = tmp_path / "disagg_proxy_server.py"
    src.write_text("import json\nimport httpx\nfrom fastapi import FastAPI\nimport zmq.asyncio\n")
    data = yaml.safe_load((ROOT / "inventories/seed-pd.yaml").read_text())
    data["proxy"].pop("script")
    data["proxy"]["source"] = str(src)
    inv = parse_inventory(yaml.safe_dump(data), "pd.yaml")
    plan = build_plan(inv)
    uploaded = next(f for f in plan.host("node13").files if f.path == "proxy/disagg_proxy_server.py")
    assert uploaded.content == src.read_text()
    assert plan.process("proxy").argv[1] == "proxy/disagg_proxy_server.py"
    n = needs_of(inv, plan, "node13")
    assert n.proxy is not None and n.proxy.uploaded_from == str(src) and n.proxy.imports == ["fastapi", "httpx", "zmq"]
    assert n.request()["proxy_script"] is None  # nothing to look for on the host: up brings it


def test_pd_proxy_source_that_does_not_exist_names_the_field(tmp_path):
    from kvorch.errors import InventoryError

    data = yaml.safe_load((ROOT / "inventories/seed-pd.yaml").read_text())
    data["proxy"].pop("script")
    data["proxy"]["source"] = str(tmp_path / "missing.py")
    with pytest.raises(InventoryError) as info:
        parse_inventory(yaml.safe_dump(data), "pd.yaml")
    assert any("proxy.source" in line and "no such file" in line for line in [info.value.message, *info.value.details])


def test_script_imports_leave_the_standard_library_out():
    assert script_imports("import os, json\nimport numpy as np\nfrom lmcache.v1 import x\nfrom . import y\n") == ["lmcache", "numpy"]
