"""Inventory → Plan: for each host, the files to write and the processes to start, in stages.

The plan is computed completely before anything touches a host (``orchestrate up --dry-run`` prints
it). Paths in the plan are relative to the host's working directory.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .bundle import local_bundle

if TYPE_CHECKING:
    from .inventory import EngineSpec, HostSpec, Inventory

#: Set on every process: nothing here may phone home (and there is no network to do it).
NO_TELEMETRY = {"DO_NOT_TRACK": "1", "LMCACHE_TRACK_USAGE": "false", "VLLM_NO_USAGE_STATS": "1"}

REDACTED = "***"

#: programs of this tool that run on hosts from the shipped bundle (kvorch/bundle.py)
HOST_PROGRAMS = ("sim", "sim_controller")

ProcessKind = Literal["controller", "engine", "lmcache_server", "proxy"]


@dataclass(kw_only=True)
class PlannedFile:
    path: str
    content: str
    mode: int = 0o644
    secret: bool = False

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content.encode()).hexdigest()

    def public(self) -> dict[str, Any]:
        return {"path": self.path, "mode": oct(self.mode), "secret": self.secret, "sha256": self.sha256,
                "content": REDACTED if self.secret else self.content}


@dataclass(kw_only=True)
class ProcessSpec:
    name: str
    kind: ProcessKind
    #: vllm | sim | lmcache_controller | sim_controller | lmcache_server | pd_proxy
    program: str
    role: str
    host: str
    stage: int
    env: dict[str, str]
    #: names only; values live in the secrets file
    secret_env: list[str] = field(default_factory=list)
    argv: list[str]
    launch_script: str
    log_path: str
    pid_path: str
    #: wiped and recreated before start
    fresh_dirs: list[str] = field(default_factory=list)
    bind: str
    #: address clients use to reach it
    address: str
    port: int
    ports: list[int]
    health_url: str
    metrics_url: str | None = None
    api_url: str | None = None
    instance_id: str | None = None
    config_file: str | None = None
    #: workdir-relative dirs the launch script puts first on PYTHONPATH (the bundle)
    python_path: list[str] = field(default_factory=list)


#: Imports of LMCache's disagg_proxy_server.py (0.5.6 examples) when its text cannot be read.
PROXY_IMPORTS = ["fastapi", "httpx", "msgspec", "numpy", "zmq", "uvicorn", "lmcache"]


@dataclass(kw_only=True)
class EngineNeed:
    """A real vLLM engine's LMCache settings that the GPU-host checks (:mod:`kvorch.gpu_checks`) look at."""

    name: str
    blend: bool = False
    enforce_eager: bool = False
    transfer_channel: str | None = None


@dataclass(kw_only=True)
class ProxyNeed:
    #: path of the proxy script on the host (relative: to the workdir)
    script: str
    #: local path `up` uploads it from
    uploaded_from: str | None = None
    imports: list[str] = field(default_factory=lambda: list(PROXY_IMPORTS))


@dataclass(kw_only=True)
class HostNeeds:
    """What one host must have, read from the inventory and plan when the plan is built
    (:func:`kvorch.gpu_checks.needs_of`): the probe's request and evaluate's other input. Kept in
    the plan so that preflight on a kept plan needs no inventory."""

    host: str
    python: str
    topology: str
    model: str
    lmcache_version: str
    engines: list[EngineNeed] = field(default_factory=list)
    proxy: ProxyNeed | None = None

    @property
    def nixl(self) -> bool:
        return any(e.transfer_channel == "nixl" for e in self.engines)

    @property
    def blend(self) -> bool:
        return any(e.blend for e in self.engines)

    def request(self) -> dict[str, object]:
        return {"ops": bool(self.engines), "nixl": self.nixl, "blend": self.blend,
                "proxy_script": None if self.proxy is None or self.proxy.uploaded_from else self.proxy.script,
                "proxy_imports": self.proxy.imports if self.proxy else []}


@dataclass(kw_only=True)
class HostPlan:
    name: str
    address: str
    connector: Literal["ssh", "local"]
    workdir: str
    python: str
    #: commands run (in order) before starting
    prepare: list[list[str]] = field(default_factory=list)
    #: sha256 of the bundle of this tool `up` ships (kvorch/bundle.py), when the host runs any of
    #: this tool's programs
    bundle: str | None = None
    files: list[PlannedFile]
    processes: list[ProcessSpec]
    #: SSH hosts: what the connection is resolved from (:func:`kvorch.nodes.ssh_settings_of`): the
    #: ssh_config name or address looked up, and the inventory's overrides (no secrets in either)
    ssh_target: str | None = None
    ssh: dict[str, Any] = field(default_factory=dict)
    #: what preflight's GPU-host checks need of this host (None in a plan not made by build_plan)
    needs: HostNeeds | None = None


@dataclass(kw_only=True)
class Plan:
    """What ``up`` does, computed before anything touches a host: plain data (no pydantic), so
    that a command reusing a kept plan (:mod:`kvorch.plan_cache`) imports no validation library."""

    cluster: str
    topology: str
    engine: str
    model: str
    hosts: list[HostPlan]
    #: the LMCache version the inventory targets (preflight compares the hosts' with it)
    lmcache_version: str = ""

    def processes(self) -> list[ProcessSpec]:
        return sorted((p for h in self.hosts for p in h.processes), key=lambda p: (p.stage, p.name))

    def host(self, name: str) -> HostPlan:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)

    def process(self, name: str) -> ProcessSpec:
        for p in self.processes():
            if p.name == name:
                return p
        raise KeyError(name)

    def engines(self) -> list[ProcessSpec]:
        return [p for p in self.processes() if p.kind == "engine"]

    def stages(self) -> list[list[ProcessSpec]]:
        out: dict[int, list[ProcessSpec]] = {}
        for p in self.processes():
            out.setdefault(p.stage, []).append(p)
        return [out[k] for k in sorted(out)]

    def public(self) -> dict[str, Any]:
        """JSON-able view with secret values redacted."""
        data = asdict(self)
        for hd, h in zip(data["hosts"], self.hosts):
            hd["files"] = [f.public() for f in h.files]
        return data


# ------------------------------------------------------------------------------------------------


def _connect_address(bind: str, host: HostSpec) -> str:
    return host.address if bind in ("0.0.0.0", "::", "") else bind


def _bin(python: str, program: str) -> str:
    """The console script ``program`` next to the host's python (a venv), or on PATH."""
    if "/" in python:
        return posixpath.join(posixpath.dirname(python), program)
    return program


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class _Builder:
    def __init__(self, inv: Inventory):
        self.inv = inv
        self.files: dict[str, list[PlannedFile]] = {h: [] for h in inv.hosts}
        self.procs: dict[str, list[ProcessSpec]] = {h: [] for h in inv.hosts}

    # -- env ---------------------------------------------------------------------------------
    def env_for(self, host: str, own: dict[str, str], extra: dict[str, str], *, allow_secrets: bool) -> tuple[dict[str, str], dict[str, str]]:
        merged = {**NO_TELEMETRY, **self.inv.env, **self.inv.hosts[host].env, **extra, **own}
        public = {k: v for k, v in merged.items() if not self.inv.is_secret(k)}
        secrets = {k: v for k, v in merged.items() if self.inv.is_secret(k)} if allow_secrets else {}
        return public, secrets

    # -- one process -------------------------------------------------------------------------
    def add_process(self, *, name: str, kind: ProcessKind, program: str, role: str, host: str, stage: int,
                    own_env: dict[str, str], extra_env: dict[str, str], argv: list[str], bind: str, port: int,
                    ports: list[int], health_path: str, health_port: int | None = None, metrics_path: str | None = "/metrics",
                    api: bool = False, allow_secrets: bool = True, fresh_dirs: list[str] | None = None,
                    instance_id: str | None = None, config_file: str | None = None,
                    health: Literal["http", "tcp"] = "http") -> ProcessSpec:
        hs = self.inv.hosts[host]
        env, secrets = self.env_for(host, own_env, extra_env, allow_secrets=allow_secrets)
        python_path = local_bundle().python_path if program in HOST_PROGRAMS else []
        addr = _connect_address(bind, hs)
        hp = health_port or port
        spec = ProcessSpec(
            name=name, kind=kind, program=program, role=role, host=host, stage=stage, env=env,
            secret_env=sorted(secrets), argv=argv, launch_script=f"run/{name}.sh", log_path=f"logs/{name}.log",
            pid_path=f"run/{name}.pid", fresh_dirs=fresh_dirs or [], bind=bind, address=addr, port=port,
            ports=ports, health_url=f"{'http' if health == 'http' else 'tcp'}://{addr}:{hp}{health_path}",
            metrics_url=f"http://{addr}:{hp}{metrics_path}" if metrics_path else None,
            api_url=f"http://{addr}:{port}/v1" if api else None, instance_id=instance_id, config_file=config_file,
            python_path=python_path,
        )
        secrets_file = f"run/{name}.secrets.env"
        if secrets:
            body = "".join(f"{k}={_shell_single(v)}\n" for k, v in sorted(secrets.items()))
            self.files[host].append(PlannedFile(path=secrets_file, content=body, mode=0o600, secret=True))
        from .render import render_template  # (Jinja2: not imported by a command that reuses a kept plan)

        script = render_template("launch.sh.j2", p=spec, host={"name": host, "address": hs.address}, secrets_file=secrets_file)
        self.files[host].append(PlannedFile(path=spec.launch_script, content=script, mode=0o755))
        self.procs[host].append(spec)
        return spec

    # -- the cluster's services --------------------------------------------------------------
    def controller(self) -> None:
        c = self.inv.controller
        if c is None:
            return
        bind = c.bind or self.inv.bind
        monitor = {"pull": c.monitor_ports.pull, "reply": c.monitor_ports.reply}
        if c.monitor_ports.heartbeat is not None:
            monitor["heartbeat"] = c.monitor_ports.heartbeat
        python = self.inv.hosts[c.host].interpreter()
        kind = self.inv.controller_kind()
        head = [python, "-m", "kvorch.sim.controller"] if kind == "sim" else [_bin(python, "lmcache_controller")]
        argv = head + ["--host", bind, "--port", str(c.port), "--monitor-ports", _json(monitor)]
        if c.health_check_interval is not None:
            argv += ["--health-check-interval", str(c.health_check_interval)]
        if c.lmcache_worker_timeout is not None:
            argv += ["--lmcache-worker-timeout", str(c.lmcache_worker_timeout)]
        argv += c.args
        self.add_process(
            name="controller", kind="controller", program="sim_controller" if kind == "sim" else "lmcache_controller",
            role="controller", host=c.host, stage=0, own_env=c.env, extra_env={}, argv=argv, bind=bind, port=c.port,
            ports=[c.port, *monitor.values()], health_path="/controller/workers", allow_secrets=False,
        )

    def lmcache_server(self) -> None:
        s = self.inv.lmcache_server
        if s is None:
            return
        bind = s.bind or self.inv.bind
        chunk = self.inv.lmcache.get("chunk_size", 256)
        python = self.inv.hosts[s.host].interpreter()
        argv = [_bin(python, "lmcache"), "server", "--host", bind, "--port", str(s.port), "--chunk-size", str(chunk),
                "--l1-size-gb", _num(s.l1_size_gb), "--l1-init-size-gb", _num(s.l1_size_gb), "--eviction-policy",
                s.eviction_policy, "--supported-transfer-mode", "auto", "--http-host", bind, "--http-port",
                str(s.http_port)] + s.args
        self.add_process(
            name="lmcache-server", kind="lmcache_server", program="lmcache_server", role="kv_store", host=s.host,
            stage=0, own_env=s.env, extra_env={}, argv=argv, bind=bind, port=s.port, ports=[s.port, s.http_port],
            health_path="/healthcheck", health_port=s.http_port,
        )

    def kv_transfer_config(self, e: EngineSpec) -> dict[str, Any]:
        topo = self.inv.topology
        if topo == "mp":
            s = self.inv.lmcache_server
            assert s is not None
            addr = _connect_address(s.bind or self.inv.bind, self.inv.hosts[s.host])
            return {"kv_connector": "LMCacheMPConnector", "kv_role": "kv_both",
                    "kv_connector_extra_config": {"lmcache.mp.host": f"tcp://{addr}", "lmcache.mp.port": s.port}}
        if topo == "pd":  # as LMCache's examples/disagg_prefill/1p1d launcher
            extra: dict[str, Any] = {"discard_partial_chunks": False, "lmcache_rpc_port": e.name}
            if e.role == "decode":
                extra["skip_last_n_tokens"] = 1
            return {"kv_connector": "LMCacheConnectorV1", "kv_role": "kv_producer" if e.role == "prefill" else "kv_consumer",
                    "kv_connector_extra_config": extra}
        return {"kv_connector": "LMCacheConnectorV1", "kv_role": "kv_both"}

    def engine(self, e: EngineSpec) -> None:
        inv = self.inv
        hs = inv.hosts[e.host]
        kind = inv.engine_kind(e)
        bind = e.bind or inv.bind
        v = inv.vllm
        ov = e.vllm
        python = hs.interpreter()
        if kind == "sim":
            head = [python, "-m", "kvorch.sim.engine", "--model", inv.model]
        elif v.launcher == "serve":
            head = [_bin(python, "vllm"), "serve", inv.model]
        else:
            head = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", inv.model]
        argv = head + ["--host", bind, "--port", str(e.port)]

        def pick(field: str) -> Any:
            o = getattr(ov, field)
            return o if o is not None else getattr(v, field)

        if v.served_model_name:
            argv += ["--served-model-name", v.served_model_name]
        if (n := pick("max_model_len")) is not None:
            argv += ["--max-model-len", str(n)]
        if (g := pick("gpu_memory_utilization")) is not None:
            argv += ["--gpu-memory-utilization", _num(g)]
        if (d := pick("dtype")) is not None:
            argv += ["--dtype", d]
        if pick("enforce_eager") or (pick("enforce_eager") is None and kind == "vllm" and self.blending(e)):
            # CacheBlend as upstream runs it (examples/blend_kv_v1/blend.py: enforce_eager=True)
            argv += ["--enforce-eager"]
        if (pc := pick("enable_prefix_caching")) is not None:
            argv += ["--enable-prefix-caching" if pc else "--no-enable-prefix-caching"]
        if (m := pick("max_num_seqs")) is not None:
            argv += ["--max-num-seqs", str(m)]
        argv += ["--kv-transfer-config", _json(self.kv_transfer_config(e))]
        if kind == "sim":
            for key, value in inv.sim.model_dump(exclude_none=True).items():
                argv += ["--sim-" + key.replace("_", "-"), _num(value)]
        argv += v.extra_args + e.args

        extra_env: dict[str, str] = {}
        fresh: list[str] = []
        own = dict(e.env)
        config_file = None
        if inv.topology != "mp":
            config_file = inv.config_file(e)
            self.files[e.host].append(PlannedFile(path=config_file, content=self.lmcache_config(e)))
            extra_env["LMCACHE_CONFIG_FILE"] = config_file
        metrics_dir = {**inv.env, **hs.env, **own}.get("PROMETHEUS_MULTIPROC_DIR")
        if metrics_dir is None:
            metrics_dir = f"prometheus/{e.name}"
            extra_env["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        fresh.append(metrics_dir)
        ports = [e.port] + [p for p in (e.p2p_init_port, e.p2p_lookup_port, e.worker_port, e.pd_peer_init_port,
                                        e.pd_peer_alloc_port) if p is not None]
        self.add_process(
            name=e.name, kind="engine", program=kind, role=e.role, host=e.host, stage=1, own_env=own,
            extra_env=extra_env, argv=argv, bind=bind, port=e.port, ports=ports, health_path="/health", api=True,
            fresh_dirs=fresh, instance_id=inv.instance_id(e) if inv.topology != "mp" else None, config_file=config_file,
        )

    def blending(self, e: EngineSpec) -> bool:
        env = {**self.inv.env, **self.inv.hosts[e.host].env, **e.env}
        if "LMCACHE_ENABLE_BLENDING" in env:
            return env["LMCACHE_ENABLE_BLENDING"].strip().lower() in ("1", "true", "yes", "on")
        return self.inv.topology == "blend" or bool(self.inv.engine_lmcache(e).get("enable_blending"))

    def lmcache_config(self, e: EngineSpec) -> str:
        from .inventory import HEARTBEAT_KEY, heartbeat_time_of

        inv = self.inv
        hs = inv.hosts[e.host]
        settings = inv.engine_lmcache(e)
        if (hb := heartbeat_time_of(inv, e)) is not None and HEARTBEAT_KEY not in settings:
            settings[HEARTBEAT_KEY] = hb  # the controller has a heartbeat port: engines send heartbeats
        if isinstance(inv.lmcache.get("extra_config"), dict) and isinstance(e.lmcache.get("extra_config"), dict):
            settings["extra_config"] = {**inv.lmcache["extra_config"], **e.lmcache["extra_config"]}
        proxy = None
        if inv.proxy is not None:
            proxy = {"address": inv.hosts[inv.proxy.host].address, "proxy_port": inv.proxy.proxy_port}
        controller = None
        if inv.controller is not None and inv.topology == "p2p":
            c = inv.controller
            controller = {"address": inv.hosts[c.host].address, "pull_port": c.monitor_ports.pull,
                          "reply_port": c.monitor_ports.reply}
        from .render import check_lmcache_config, render_template

        text = render_template(
            "lmcache-config.yaml.j2", lmcache_version=inv.lmcache_version, engine=e,
            host={"name": e.host, "address": hs.address}, topology=inv.topology, settings=settings,
            controller=controller, instance_id=inv.instance_id(e), proxy=proxy,
        )
        check_lmcache_config(text, f"{inv.config_file(e)} (engine {e.name})")
        return text

    def proxy(self) -> None:
        """LMCache's disaggregated-prefill proxy (examples/disagg_prefill/disagg_proxy_server.py)."""
        x = self.inv.proxy
        if x is None:
            return
        bind = x.bind or self.inv.bind
        hs = self.inv.hosts

        def endpoints(role: str) -> list[EngineSpec]:
            return [e for e in self.inv.engines if e.role == role]

        pre, dec = endpoints("prefill"), endpoints("decode")
        script = x.script or ""
        if x.source is not None:  # uploaded with the other files, run from the workdir
            src = Path(x.source).expanduser()
            script = f"proxy/{src.name}"
            self.files[x.host].append(PlannedFile(path=script, content=src.read_text()))
        argv = [hs[x.host].interpreter(), script, "--host", bind, "--port", str(x.port),
                "--prefiller-host", ",".join(hs[e.host].address for e in pre),
                "--prefiller-port", ",".join(str(e.port) for e in pre), "--num-prefillers", str(len(pre)),
                "--decoder-host", ",".join(hs[e.host].address for e in dec),
                "--decoder-port", ",".join(str(e.port) for e in dec),
                "--decoder-init-port", ",".join(str(e.pd_peer_init_port) for e in dec),
                "--decoder-alloc-port", ",".join(str(e.pd_peer_alloc_port) for e in dec),
                "--num-decoders", str(len(dec)), "--proxy-host", hs[x.host].address,
                "--proxy-port", str(x.proxy_port)] + x.args
        self.add_process(
            name="proxy", kind="proxy", program="pd_proxy", role="proxy", host=x.host, stage=2, own_env=x.env,
            extra_env={}, argv=argv, bind=bind, port=x.port, ports=[x.port, x.proxy_port], health_path="",
            metrics_path=None, api=True, health="tcp",
        )

    def build(self) -> Plan:
        self.controller()
        self.lmcache_server()
        for e in self.inv.engines:
            self.engine(e)
        self.proxy()
        hosts = []
        for name, hs in self.inv.hosts.items():
            prepare = []
            tm = self.inv.tiny_model
            if tm is not None and any(p.kind == "engine" and p.program == "vllm" for p in self.procs[name]):
                prepare.append([hs.interpreter(), "-m", "kvorch.tinymodel", self.inv.model, "--layers", str(tm.layers),
                                "--hidden", str(tm.hidden), "--vocab", str(tm.vocab), "--seed", str(tm.seed)])
            needs_bundle = bool(prepare) or any(p.python_path for p in self.procs[name])
            hosts.append(HostPlan(name=name, address=hs.address, connector=hs.connector, workdir=hs.workdir,
                                  python=hs.interpreter(), prepare=prepare,
                                  bundle=local_bundle().sha256 if needs_bundle else None, files=self.files[name],
                                  processes=self.procs[name],
                                  ssh_target=hs.ssh_target() if hs.connector == "ssh" else None,
                                  ssh=hs.ssh_overrides() if hs.connector == "ssh" else {}))
        plan = Plan(cluster=self.inv.cluster, topology=self.inv.topology, engine=self.inv.engine, model=self.inv.model,
                    hosts=hosts, lmcache_version=self.inv.lmcache_version)
        for hp in plan.hosts:
            hp.needs = needs_of(self.inv, plan, hp.name)
        return plan


# ------------------------------------------------------------------------------------------------
# Plan → what the GPU-host checks need of a host (kvorch.gpu_checks)


def _blending(settings: dict[str, object], env: dict[str, str], topology: str) -> bool:
    flag = env.get("LMCACHE_ENABLE_BLENDING")
    if flag is not None:
        return flag.strip().lower() in ("1", "true", "yes", "on")
    return topology == "blend" or bool(settings.get("enable_blending"))


def needs_of(inv: Inventory, plan: Plan, host: str) -> HostNeeds:
    """What ``host`` must have for its real vLLM engines and the PD proxy (a proxy's ``source:``
    is read for its imports: :mod:`kvorch.plan_cache` records it)."""
    hp = plan.host(host)
    specs = {e.name: e for e in inv.engines}
    engines: list[EngineNeed] = []
    for p in hp.processes:
        if p.kind != "engine" or p.program != "vllm":
            continue
        settings = inv.engine_lmcache(specs[p.name])
        channel = p.env.get("LMCACHE_TRANSFER_CHANNEL") or settings.get("transfer_channel")
        engines.append(EngineNeed(name=p.name, blend=_blending(settings, p.env, inv.topology),
                                  enforce_eager="--enforce-eager" in p.argv,
                                  transfer_channel=str(channel) if channel else None))
    proxy = None
    x = inv.proxy
    if x is not None and x.host == host:
        proc = next((p for p in hp.processes if p.kind == "proxy"), None)
        script = proc.argv[1] if proc is not None and len(proc.argv) > 1 else (x.script or "")
        imports = PROXY_IMPORTS
        if x.source:
            imports = script_imports(Path(x.source).expanduser().read_text()) or PROXY_IMPORTS
        proxy = ProxyNeed(script=script, uploaded_from=x.source, imports=imports)
    return HostNeeds(host=host, python=hp.python, topology=inv.topology, model=inv.model,
                     lmcache_version=inv.lmcache_version, engines=engines, proxy=proxy)


def script_imports(text: str) -> list[str]:
    """Top-level module names a Python script imports (standard library left out)."""
    import ast
    import sys

    try:
        tree = ast.parse(text)
    except SyntaxError:
        return []
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module.split(".")[0])
    stdlib = getattr(sys, "stdlib_module_names", frozenset())
    return sorted({n for n in names if n not in stdlib and n != "__future__"})


def _num(x: float | int) -> str:
    return str(int(x)) if isinstance(x, float) and x.is_integer() and x >= 1 else str(x)


def _shell_single(value: str) -> str:
    return "'" + value.replace("'", "'\"'\"'") + "'"


def build_plan(inv: Inventory) -> Plan:
    return _Builder(inv).build()
