"""The same cluster as values for vLLM production-stack's ``vllm-stack`` Helm chart (0.1.12).

Each engine becomes a ``servingEngineSpec.modelSpec`` entry: its vLLM arguments in ``vllmConfig``
(what the chart has no field for in ``vllmConfig.extraArgs``), its LMCache settings in
``lmcacheConfig`` where the chart has a field (P2P host and init port, controller ports, worker
port, heartbeat, CPU buffer) and as ``LMCACHE_<KEY>`` variables in the model's ``env`` otherwise —
the chart configures LMCache by environment only, never by a config file. The LMCache controller
runs inside the router (``routerSpec.lmcacheController*Port``), which routes KV-aware where the
topology shares KV. What has no Kubernetes counterpart is listed in the notes (README.md).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict

from ..inventory import Inventory
from ..lmcache_config import ENV_PREFIX
from ..plan import Plan, ProcessSpec, build_plan

CHART = "vllm-stack 0.1.12 (vllm-project/production-stack helm/)"
DEFAULT_REPOSITORY = "lmcache/vllm-openai"
DEFAULT_TAG = "latest"

#: LMCache keys the chart sets from ``lmcacheConfig`` fields (deployment-vllm-multi.yaml).
LMCACHE_FIELDS = {
    "enable_controller": "enableController", "lmcache_instance_id": "instanceId",
    "controller_pull_url": "controllerPort", "controller_reply_url": "controllerReplyPort",
    "lmcache_worker_ports": "workerPorts", "p2p_host": "p2pHost", "p2p_init_ports": "p2pInitPorts",
    "lmcache_worker_heartbeat_time": "workerHeartbeatTime",
}
#: Env the plan sets that a pod gets otherwise (or not at all).
ENV_NOT_EXPORTED = {"LMCACHE_CONFIG_FILE", "PROMETHEUS_MULTIPROC_DIR"}
#: vLLM flags with a vllmConfig field: flag → (field, takes a value).
VLLM_FIELDS = {"--max-model-len": ("maxModelLen", int), "--gpu-memory-utilization": ("gpuMemoryUtilization", float),
               "--dtype": ("dtype", str), "--max-num-seqs": ("maxNumSeqs", int)}


class Note(BaseModel):
    model_config = ConfigDict(extra="forbid")
    setting: str
    value: str
    note: str


class HelmExport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    chart: str = CHART
    values: dict[str, Any]
    notes: list[Note]


def k8s_name(name: str) -> str:
    """A DNS-1123 label from an engine name (the chart builds Deployment names from it)."""
    s = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    return s[:40] or "engine"


def env_value(value: Any) -> str:
    """A config value as the ``LMCACHE_<KEY>`` string LMCache 0.5.6 parses back to it."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    s = str(value)
    if s != s.strip() or (s[:1] in ("'", '"')):
        return json.dumps(s)  # LMCache strips env values, and unquotes a quoted one
    return s


def _port_of(url: str) -> int:
    return int(str(url).rsplit(":", 1)[1])


def _engine_config(plan: Plan, p: ProcessSpec) -> dict[str, Any]:
    if p.config_file is None:
        return {}
    f = next(f for f in plan.host(p.host).files if f.path == p.config_file)
    data = yaml.safe_load(f.content) or {}
    return dict(data)


def export_helm(inv: Inventory, plan: Plan | None = None, *, repository: str = DEFAULT_REPOSITORY,
                tag: str = DEFAULT_TAG) -> HelmExport:
    """Values for the chart and the notes on what does not carry over. Touches no host."""
    plan = plan or build_plan(inv)
    notes: list[Note] = []

    def note(setting: str, value: Any, text: str) -> None:
        notes.append(Note(setting=setting, value=str(value), note=text))

    models: list[dict[str, Any]] = []
    for p in plan.engines():
        models.append(_model_spec(inv, plan, p, repository, tag, note))
    values: dict[str, Any] = {"servingEngineSpec": {"enableEngine": True, "modelSpec": models}}

    router: dict[str, Any] = {"enableRouter": True}
    c = inv.controller
    if inv.topology == "p2p" and c is not None:
        router["routingLogic"] = "kvaware"
        mp = c.monitor_ports
        router["lmcacheControllerPort"] = mp.pull
        router["lmcacheControllerReplyPort"] = mp.reply
        if mp.heartbeat is not None:
            router["lmcacheControllerHeartbeatPort"] = mp.heartbeat
        extra = [{"name": f"lmcache-{k}", "port": v, "targetPort": v, "protocol": "TCP"}
                 for k, v in (("pull", mp.pull), ("reply", mp.reply), ("heartbeat", mp.heartbeat))
                 if v is not None and v != 9000]
        if extra:
            router["extraPorts"] = extra  # the router Service publishes only 9000 for LMCache otherwise
        note("controller.port", c.port, "the LMCache controller runs inside the router (KV-aware routing); its HTTP "
             "API port has no chart field: the router answers on routerSpec.servicePort")
        if c.health_check_interval or c.lmcache_worker_timeout or c.args:
            note("controller.health_check_interval / lmcache_worker_timeout / args",
                 " ".join(plan.process("controller").argv[6:]), "the chart starts the controller inside the router with "
                 "its ports only: pass these through routerSpec.extraArgs if your router version accepts them")
        note("controller.host / bind", f"{c.host} / {c.bind or inv.bind}", "the controller is the router Service "
             "(<release>-router-service): engines reach it by that name, not by a host address")
    elif inv.topology == "pd":
        router["routingLogic"] = "disaggregated_prefill"
        pre = [k8s_name(e.name) for e in inv.engines if e.role == "prefill"]
        dec = [k8s_name(e.name) for e in inv.engines if e.role == "decode"]
        router["extraArgs"] = ["--prefill-model-labels", ",".join(pre), "--decode-model-labels", ",".join(dec)]
        if inv.proxy is not None:
            note("proxy", inv.proxy.script or inv.proxy.source, "LMCache's disagg_proxy_server.py is replaced by the "
                 "router's disaggregated_prefill routing; the prefiller's pd_proxy_host/pd_proxy_port (its ZMQ "
                 f"port {inv.proxy.proxy_port}) must point at a proxy or router that listens for it")
    else:
        router["routingLogic"] = "prefixaware"
        if inv.topology == "mp" and inv.lmcache_server is not None:
            note("lmcache_server", f"{inv.lmcache_server.host}:{inv.lmcache_server.port}", "the chart has no "
                 "LMCache multiprocess server (its cacheserverSpec is the older lm:// remote server): run `lmcache "
                 "server` yourself and point lmcache.mp.host in the engines' --kv-transfer-config at it")
    values["routerSpec"] = router

    for name in sorted({n for p in plan.processes() for n in p.secret_env}):
        note(f"env.{name}", "(secret)", "secrets are not exported: give them to the pods through "
             "modelSpec.envFromSecret or hf_token")
    if inv.tiny_model is not None:
        note("tiny_model", inv.model, "the tiny model is made on each host by `up`: in Kubernetes put the model where "
             "modelURL points (a PVC, modelSpec.pvcStorage)")
    note("hosts", ", ".join(f"{n}={h.address}" for n, h in inv.hosts.items()), "Kubernetes schedules the pods: "
         "use modelSpec.nodeName or nodeSelectorTerms to pin an engine to a node")
    note("repository / tag", f"{repository}:{tag}", f"an image with vLLM and LMCache {inv.lmcache_version} "
         "(its compiled ops need a CUDA-13 torch: see `orchestrate preflight`)")
    return HelmExport(values=values, notes=notes)


def _model_spec(inv: Inventory, plan: Plan, p: ProcessSpec, repository: str, tag: str, note) -> dict[str, Any]:
    name = k8s_name(p.name)
    argv = p.argv
    if p.program != "vllm":
        note(f"engines[{p.name}].kind", p.program, "the simulated engine has no image: exported as vLLM")
    # vLLM arguments after the model and --host/--port
    try:
        start = argv.index("--port") + 2
    except ValueError:
        start = len(argv)
    rest = argv[start:]
    vcfg: dict[str, Any] = {}
    extra: list[str] = []
    i = 0
    prefix_caching: bool | None = None
    while i < len(rest):
        a = rest[i]
        if a in VLLM_FIELDS and i + 1 < len(rest):
            field, typ = VLLM_FIELDS[a]
            vcfg[field] = typ(rest[i + 1])
            i += 2
            continue
        if a in ("--enable-prefix-caching", "--no-enable-prefix-caching"):
            prefix_caching = a == "--enable-prefix-caching"
        elif a == "--kv-transfer-config" and i + 1 < len(rest):
            if inv.topology in ("pd", "mp"):  # the chart's own flag carries no extra config: pass ours
                extra += [a, rest[i + 1]]
            i += 2
            continue
        elif p.program == "sim" and a.startswith("--sim-"):
            i += 2
            continue
        else:
            extra.append(a)
        i += 1
    # the chart always passes one of the two flags; vLLM's own default is on
    vcfg["enablePrefixCaching"] = True if prefix_caching is None else prefix_caching
    if extra:
        vcfg["extraArgs"] = extra

    cfg = _engine_config(plan, p)
    lmc: dict[str, Any] = {"enabled": inv.topology in ("p2p", "blend")}
    env: list[dict[str, str]] = []
    for key, value in cfg.items():
        if key in LMCACHE_FIELDS and inv.topology == "p2p":
            field = LMCACHE_FIELDS[key]
            lmc[field] = _port_of(value) if key.startswith("controller_") else value
            if key == "p2p_host":
                lmc[field] = "$(POD_IP)"  # the pod's own address (Kubernetes expands $(VAR) of earlier env)
                note(f"engines[{p.name}].p2p_host", value, "derived from the pod: $(POD_IP)")
            elif key.startswith("controller_"):
                note(f"engines[{p.name}].{key}", value, "the controller is the router Service: "
                     f"<release>-router-service:{_port_of(value)}")
            continue
        if key == "max_local_cpu_size" and cfg.get("local_cpu") is True and float(value) > 0:
            lmc["cpuOffloadingBufferSize"] = value
            continue
        if key == "local_cpu" and value is True and float(cfg.get("max_local_cpu_size") or 0) > 0:
            continue  # the chart sets LMCACHE_LOCAL_CPU=True with the buffer size
        env.append({"name": ENV_PREFIX + key.upper(), "value": env_value(value)})
    for k, v in p.env.items():
        if k in ENV_NOT_EXPORTED or (k == "PYTHONHASHSEED" and v == "123"):
            continue  # the chart sets PYTHONHASHSEED=123 and PROMETHEUS_MULTIPROC_DIR itself
        env.append({"name": k, "value": v})
    if p.config_file:
        note(f"engines[{p.name}].config_file", p.config_file, "the chart configures LMCache by LMCACHE_* env only: "
             "every key of the file is in lmcacheConfig or the model's env")
    note(f"engines[{p.name}] PROMETHEUS_MULTIPROC_DIR", p.env.get("PROMETHEUS_MULTIPROC_DIR", ""),
         "a new container starts with an empty /tmp: vllmConfig.prometheusMultiprocDir is /tmp/<engine>")
    vcfg["prometheusMultiprocDir"] = f"/tmp/prometheus-{name}"
    spec: dict[str, Any] = {
        "name": name, "repository": repository, "tag": tag, "modelURL": inv.model, "replicaCount": 1,
        "requestCPU": 8, "requestMemory": "32Gi", "requestGPU": 1, "vllmConfig": vcfg, "lmcacheConfig": lmc,
        "env": env,
    }
    return spec


def write_helm(export: HelmExport, out: str | Path) -> list[Path]:
    """Write values.yaml and README.md (the notes) into ``out``."""
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    values = d / "values.yaml"
    values.write_text(f"# Values for {export.chart}, exported by `orchestrate export helm`.\n"
                      "# helm install <release> vllm/vllm-stack -f values.yaml\n"
                      + yaml.safe_dump(export.values, sort_keys=False))
    lines = [f"# Exported for {export.chart}", "",
             "`helm install <release> vllm/vllm-stack -f values.yaml`. Settings of the inventory with no "
             "Kubernetes counterpart, or that change meaning there:", "",
             "| setting | value | in Kubernetes |", "|---|---|---|"]
    lines += [f"| `{n.setting}` | `{n.value}` | {n.note} |" for n in export.notes]
    readme = d / "README.md"
    readme.write_text("\n".join(lines) + "\n")
    return [values, readme]


__all__ = ["HelmExport", "Note", "export_helm", "write_helm", "env_value", "k8s_name"]
