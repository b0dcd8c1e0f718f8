"""Restart some processes of a running cluster (engines, mostly): stop → keep the old log → start
→ wait for health → update the run state. Used by scenarios that must start from empty caches
(``cache-bench`` with ``mode: restart``); the same code can back an ``orchestrate restart NAME``.

Only processes this tool started are stopped (the environment marker is checked, as ``down`` does);
a process that is not running is started. The previous log is renamed to
``logs/<name>.<UTC time>.<old pid>.log`` so nothing written before the restart is lost (``start_detached``
truncates the log it starts with).
"""

from __future__ import annotations

import posixpath
import shlex
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .processes import describe_stop, http_health, observe, start_process, stop_process
from .errors import UserError
from .nodes import Node, close_all, open_nodes
from .plan import Plan, ProcessSpec
from .runstate import cluster_lock, load_state, now, save_state

if TYPE_CHECKING:
    from .session import Session


class RestartError(UserError):
    """A process could not be restarted (not ours, did not stop, did not become healthy)."""


def restart(c: Session, plan: Plan, names: Sequence[str], *, timeout: float = 600.0, grace: float = 10.0) -> dict[str, dict[str, Any]]:
    """Restart the named processes of the cluster (connects to their hosts, then
    :func:`restart_processes`)."""
    procs = _resolve(plan, names)
    nodes, _ = open_nodes(plan, c.ssh_config, names=sorted({p.host for p in procs}))
    try:
        return restart_processes(plan, nodes, names, timeout=timeout, grace=grace)
    finally:
        close_all(nodes)


def _resolve(plan: Plan, names: Sequence[str]) -> list[ProcessSpec]:
    known = {p.name: p for p in plan.processes()}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise RestartError(f"no process named {', '.join(unknown)} in cluster {plan.cluster}",
                           hint=f"processes: {', '.join(known)}")
    return [known[n] for n in names]


def restart_processes(plan: Plan, nodes: dict[str, Node], names: Sequence[str], *, timeout: float = 600.0,
                      grace: float = 10.0) -> dict[str, dict[str, Any]]:
    """Restart ``names`` on already connected ``nodes``; stages in order (a controller before the
    engines that register with it), the processes of one stage in parallel.

    Returns per process: old and new pid, how it stopped, where the old log went, seconds until
    healthy. Raises :class:`RestartError` naming every process that failed.
    """
    from .hosts.parallel import run_parallel

    procs = _resolve(plan, names)
    missing = sorted({p.host for p in procs} - set(nodes))
    if missing:
        raise RestartError(f"not connected to host(s) {', '.join(missing)}")
    report: dict[str, dict[str, Any]] = {}
    with cluster_lock(plan.cluster, "restart " + " ".join(names)):
        state = load_state(plan.cluster)
        # stop: engines before the controller (reverse stage order), like `down`
        for stage in sorted({p.stage for p in procs}, reverse=True):
            todo = {p.name: p for p in procs if p.stage == stage}
            for name, r in run_parallel(todo, lambda p: _stop_one(plan, nodes[p.host], p, grace)).items():
                if isinstance(r, BaseException):
                    raise RestartError(f"{name}: could not stop: {r}")
                report[name] = r
        # start: controller before engines
        for stage in sorted({p.stage for p in procs}):
            todo = {p.name: p for p in procs if p.stage == stage}
            started = run_parallel(todo, lambda p: _start_one(plan, nodes[p.host], p))
            for name, r in started.items():
                if isinstance(r, BaseException):
                    raise RestartError(f"{name}: could not start: {r}")
                report[name].update(r)  # type: ignore[arg-type]
            healthy = run_parallel(todo, lambda p: _wait_healthy(nodes[p.host], p, report[p.name]["new_pid"], timeout))
            failed = []
            for name, r in healthy.items():
                if isinstance(r, BaseException) or r is None:
                    failed.append(name)
                    continue
                report[name]["healthy_after_s"] = r
            members: dict[str, list[int]] = {}
            for host, obs in run_parallel({n: nodes[n] for n in {p.host for p in todo.values()}},
                                          lambda n: observe(plan, n)).items():
                if not isinstance(obs, BaseException):
                    members.update({n: o.members for n, o in obs.items() if n in todo and o.state == "running"})  # type: ignore[union-attr]
            if state is not None:
                for name in todo:
                    ps = state.processes.get(name)
                    if ps is not None:
                        ps.pid = report[name]["new_pid"]
                        ps.started_at = report[name]["started_at"]
                        ps.healthy_at = now() if name not in failed else None
                        ps.stopped_at = None
                        ps.exit = None
                        ps.members = members.get(name, [])
                save_state(state)
            if failed:
                p = todo[failed[0]]
                tail = nodes[p.host].ops.tail(nodes[p.host].path(p.log_path), 20)
                raise RestartError(f"{', '.join(failed)} did not become healthy after the restart",
                                   hint=f"`orchestrate logs {failed[0]}`", details=(tail or "(empty log)").splitlines()[-20:])
    return report


def _stop_one(plan: Plan, node: Node, p: ProcessSpec, grace: float) -> dict[str, Any]:
    o = observe(plan, node)[p.name]
    pid = o.pid
    out: dict[str, Any] = {"host": p.host, "old_pid": pid, "stopped": "not running"}
    if o.ours:  # by marker and group: also when its group leader died and the server lives on
        res = stop_process(plan, node, p, grace)
        if res.remaining:
            raise RestartError(f"{p.name}: still running after SIGKILL: {res.remaining}")
        out["stopped"] = describe_stop(res)
        out["stop_s"] = round(res.elapsed_s, 3)
    # keep the old log: start_detached truncates the log it writes to
    log = node.path(p.log_path)
    stem, ext = posixpath.splitext(log)
    kept = f"{stem}.{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.{pid or 'none'}{ext or '.log'}"
    res = node.ops.run(f"[ ! -e {shlex.quote(log)} ] || mv -f -- {shlex.quote(log)} {shlex.quote(kept)}")
    out["previous_log"] = kept if res.ok else None
    return out


def _start_one(plan: Plan, node: Node, p: ProcessSpec) -> dict[str, Any]:
    """Start it exactly as `up` does (same launch script, same marker)."""
    started_at = now()
    return {"new_pid": start_process(node, plan, p), "started_at": started_at}


def _wait_healthy(node: Node, p: ProcessSpec, pid: int, timeout: float) -> float | None:
    t0 = time.monotonic()
    delay = 0.05
    while time.monotonic() - t0 < timeout:
        if http_health(p.health_url, timeout=1.0)[0]:
            return round(time.monotonic() - t0, 3)
        if node.ops.process_state(pid) != "running":
            return None
        time.sleep(delay)
        delay = min(delay * 1.5, 1.0)
    return None
