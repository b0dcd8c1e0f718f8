"""The processes this tool starts: start, observe, stop — by marker and process group, never by one pid.

A process of ours is started detached in its own session and process group (``HostOps.start_detached``)
with ``ORCHESTRATE_PROCESS=<cluster>/<name>@<workdir id>`` in its environment (:func:`marker_value`).
That marker, inherited by every child, is the truth:

- a process of ours is **alive** while any process carrying its marker, or any member of such a
  process's group, lives — the pid in the pidfile (the small wrapper that leads the group) may be
  gone while the engine it started still serves;
- it is **running** when the group leader is alive and one of ours listens on its port; **degraded**
  when some of it lives but the leader died, or nothing of ours listens there; **dead** when nothing
  of it lives; **foreign** when the pidfile's pid now belongs to a stranger (a reused pid: never
  signalled);
- **stop** signals every marked process and its whole group (SIGTERM, grace, SIGKILL), re-reading
  the set while it waits, so a child forked meanwhile or a grandchild that called ``setsid`` (it
  keeps the marker) is stopped too.

Used by ``up``, ``down``, ``status``, ``restart``, preflight and the scenario runner.
"""

from __future__ import annotations

import hashlib
import posixpath
import shlex
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .plan import Plan, ProcessSpec

if TYPE_CHECKING:
    from .hosts.ops import MarkedProcess, StartRequest, StopResult
    from .nodes import Node

#: env marker that identifies processes this tool started (checked before any signal is sent)
MARKER = "ORCHESTRATE_PROCESS"


def marker_value(plan: Plan, p: ProcessSpec, workdir: str) -> str:
    """``<cluster>/<name>@<id of the host's workdir>``: two clusters of the same name on one host
    (two users, two checkouts: each its own workdir) never take each other's processes for theirs.
    The id is a hash (a workdir may hold spaces; the marker is one word on the probe's lines)."""
    wid = hashlib.sha256(posixpath.normpath(workdir).encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return f"{plan.cluster}/{p.name}@{wid}"


def marker_lines(plan: Plan, p: ProcessSpec, workdir: str) -> tuple[str, str]:
    """The lines the process's ``/proc/PID/environ`` may carry: this version's, and the one an
    orchestrate before workdir ids gave (``<cluster>/<name>``), so that processes it started are
    still seen and stopped (no orphan after an upgrade). No process started now carries the second."""
    return f"{MARKER}={marker_value(plan, p, workdir)}", f"{MARKER}={plan.cluster}/{p.name}"


def exit_path(p: ProcessSpec) -> str:
    return p.pid_path[: -len(".pid")] + ".exit"


# ------------------------------------------------------------------------------------------------
# Health


def http_health(url: str, timeout: float = 2.0) -> tuple[bool, str]:
    """http://…: a 2xx answer; tcp://host:port (a service with no health endpoint): it accepts.

    The standard library's http.client, not httpx: `up` polls every 20 ms and must not pay
    httpx's import (~0.2 s, it pulls in trio when installed) before the first probe."""
    import http.client
    import socket
    from urllib.parse import urlsplit

    if url.startswith("tcp://"):
        host, _, port = url[len("tcp://"):].rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=timeout):
                return True, "accepts connections"
        except OSError as e:
            return False, e.strerror or type(e).__name__

    u = urlsplit(url)
    if u.scheme == "https":
        import ssl

        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # a liveness probe: no data is exchanged
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(u.hostname or "", u.port, timeout=timeout,
                                                                        context=ctx)
    else:
        conn = http.client.HTTPConnection(u.hostname or "", u.port, timeout=timeout)
    try:
        conn.request("GET", (u.path or "/") + (f"?{u.query}" if u.query else ""), headers={"Connection": "close"})
        status = conn.getresponse().status
    except (OSError, http.client.HTTPException) as e:
        return False, type(e).__name__
    finally:
        conn.close()
    return (200 <= status < 300), f"HTTP {status}"


# ------------------------------------------------------------------------------------------------
# What runs now


@dataclass
class Observed:
    spec: ProcessSpec
    pid: int | None  # the group leader recorded in the pidfile
    state: str  # running | degraded | dead | absent | foreign (see the module docstring)
    ours: bool  # something of ours lives (running or degraded)
    uptime_s: float | None = None
    last_line: str | None = None
    pgid: int | None = None
    server_pid: int | None = None  # the process of ours that listens on the spec's port
    members: list[int] = field(default_factory=list)  # every live pid of ours (marked + their groups)
    detail: str = ""  # why degraded / dead, in words

    def to_row(self) -> dict[str, Any]:
        return {"pid": self.pid, "pgid": self.pgid, "server_pid": self.server_pid, "members": self.members,
                "detail": self.detail or None}


def classify(p: ProcessSpec, mp: MarkedProcess, expected: list[int] | None = None) -> Observed:
    """Turn what the host said (:class:`~kvorch.hosts.ops.MarkedProcess`) into a verdict.
    ``expected``: its members when it was healthy (a child that died since makes it degraded)."""
    members = mp.members
    servers = mp.listeners.get(p.port, [])
    server = min(servers) if servers else None
    pgid = next(iter(sorted(set(mp.marked.values()))), None) if mp.marked else mp.leader_pgid
    if mp.leader_marked:
        pgid = mp.leader_pgid
    obs = Observed(p, mp.leader_pid, "absent", bool(members), mp.uptime_s if mp.leader_marked else None,
                   mp.last_line, pgid, server, list(members))
    if not members:
        if mp.leader_pid is None:
            obs.state = "absent"
        elif mp.leader_state == "running":
            obs.state, obs.detail = "foreign", f"pid {mp.leader_pid} now belongs to another process"
        else:
            obs.state, obs.detail = "dead", f"nothing of {p.name} runs (pid {mp.leader_pid} {mp.leader_state})"
        return obs
    problems = []
    if mp.leader_pid is None:
        problems.append("no pidfile")
    elif not mp.leader_marked:
        problems.append(f"group leader {mp.leader_pid} is gone")
    if server is None:
        problems.append(f"nothing of ours listens on port {p.port}")
    # the members recorded when it became healthy, if this is still that incarnation (same leader)
    gone = [x for x in (expected or []) if x not in members] if mp.leader_pid in (expected or []) else []
    if gone and mp.leader_marked:
        problems.append(f"process(es) {', '.join(map(str, gone))} of its group exited")
    others = [m for m in members if m not in (mp.leader_pid, server)]
    if problems:
        obs.state = "degraded"
        alive = f"{server} still serves port {p.port}" if server else f"still alive: {', '.join(map(str, members))}"
        obs.detail = "; ".join(problems) + f"; {alive}"
    else:
        obs.state = "running"
        if others:
            obs.detail = f"{len(others)} more process(es) in its group"
    return obs


def probe_marked(plan: Plan, node: Node, **kw: Any) -> dict[str, MarkedProcess]:
    """What the host says of every planned process of it (:meth:`HostOps.probe_marked` with each
    one's marker lines and pidfile); ``kw``: its ``ports`` / ``last_lines``."""
    procs = node.plan.processes
    return node.ops.probe_marked({p.name: marker_lines(plan, p, node.workdir) for p in procs},
                                 {p.name: p.pid_path for p in procs}, **kw)


def observe(plan: Plan, node: Node, *, last_lines: bool = False,
            expected: dict[str, list[int]] | None = None) -> dict[str, Observed]:
    """State of every planned process on one host, in one round trip. ``expected``: name → the
    members recorded when it became healthy (the run state's), to notice a child that died."""
    procs = node.plan.processes
    raw = probe_marked(plan, node, ports=[p.port for p in procs],
                       last_lines={p.name: p.log_path for p in procs} if last_lines else None)
    expected = expected or {}
    return {p.name: classify(p, raw[p.name], expected.get(p.name)) for p in procs}


def expected_members(state: Any) -> dict[str, list[int]]:
    """From a run state: each process's members when it became healthy (for :func:`observe`)."""
    if state is None:
        return {}
    return {n: list(ps.members) for n, ps in state.processes.items() if ps.members and ps.stopped_at is None}


def leftover_processes(plan: Plan, node: Node) -> list[str]:
    """What of ours still lives on this host (by marker and group), in words."""
    out = []
    for name, o in observe(plan, node).items():
        if o.ours:
            out.append(f"{node.name}: {name} still has live processes {', '.join(map(str, o.members))}")
    return out


# ------------------------------------------------------------------------------------------------
# start / stop


def start_request(node: Node, plan: Plan, p: ProcessSpec) -> StartRequest:
    """What starting one planned process on its host takes: its launch script, log and pidfile in
    the host's workdir, our marker in its environment."""
    from .hosts.ops import StartRequest

    return StartRequest(p.name, node.path(p.launch_script), node.path(p.log_path), node.path(p.pid_path),
                        node.workdir, {MARKER: marker_value(plan, p, node.workdir)})


def start_process(node: Node, plan: Plan, p: ProcessSpec) -> int:
    """Start one planned process detached, with our marker in its environment; its pid (= pgid)."""
    r = start_request(node, plan, p)
    return node.ops.start_detached(script=r.script, log_path=r.log_path, pid_path=r.pid_path, cwd=r.cwd, env=r.env)


def stop_process(plan: Plan, node: Node, p: ProcessSpec, grace: float) -> StopResult:
    """Stop everything of ``p`` on its host (marker + groups), then forget its pidfile."""
    res = node.ops.stop_marked(marker_lines(plan, p, node.workdir), grace, exit_path=exit_path(p))
    forget(node, p)
    return res


def forget(node: Node, p: ProcessSpec) -> None:
    node.ops.run(f"rm -f -- {shlex.quote(node.path(p.pid_path))}")


def describe_stop(res: StopResult) -> str:
    if res.remaining:
        return f"still running after SIGKILL: {res.remaining}"
    if res.signal is None:
        return "not running"
    return "SIGKILL after grace" if res.forced else "SIGTERM"


def stop_all(plan: Plan, nodes: dict[str, Node], names: list[str] | None, grace: float, *,
             strict: bool = True) -> dict[str, dict[str, Any]]:
    """Stop our processes (all planned ones, or ``names``): engines first, then the controller.
    Found by marker and group, so an engine whose group leader died is stopped too; a pid that
    carries no marker of ours (reused) is never signalled. A host that cannot be read raises
    (``strict``) or gets an ``error:`` result for each of its processes while the others are
    stopped (a rollback must not stop half-way)."""
    from .errors import UserError
    from .hosts.parallel import run_parallel

    observed: dict[str, Observed] = {}
    results: dict[str, dict[str, Any]] = {}
    for host, obs in run_parallel(nodes, lambda n: observe(plan, n)).items():
        if isinstance(obs, BaseException):
            if strict:
                raise UserError(f"host {host}: cannot read process state: {obs}")
            for p in nodes[host].plan.processes:
                if names is None or p.name in names:
                    results[p.name] = {"host": host, "pid": None,
                                       "result": f"error: host {host} cannot be reached, not stopped there: {obs}"}
            continue
        observed.update(obs)  # type: ignore[arg-type]
    for stage in reversed(plan.stages()):
        todo = [p for p in stage if (names is None or p.name in names) and p.name in observed]

        def stop_one(p: ProcessSpec) -> dict[str, Any]:
            node, o = nodes[p.host], observed[p.name]
            if not o.ours:
                if o.pid is None:
                    return {"host": p.host, "pid": None, "result": "not started"}
                forget(node, p)
                if o.state == "foreign":
                    return {"host": p.host, "pid": o.pid, "result": "pid now belongs to another process: left alone"}
                return {"host": p.host, "pid": o.pid, "result": "already stopped",
                        "exit_code": node.ops.read_exit_code(exit_path(p))}
            res = stop_process(plan, node, p, grace)
            out = {"host": p.host, "pid": o.pid, "result": describe_stop(res), "seconds": round(res.elapsed_s, 2),
                   "exit_code": res.exit_code, "pids": res.pids}
            if o.state == "degraded":
                out["was"] = f"degraded: {o.detail}"
            return out

        for name, r in run_parallel({p.name: p for p in todo}, stop_one).items():
            results[name] = r if isinstance(r, dict) else {"result": f"error: {r}"}
    return results


def not_running(nodes: dict[str, Node], procs: list[ProcessSpec], pids: dict[str, int]) -> dict[str, str]:
    """Of ``procs``, those whose group leader is not running now (name → state): one round trip
    per host, in parallel. The leader is the wrapper that waits for the process: it exits when the
    process does. A host whose connection is lost (HostUnreachable) fails its processes; another
    error counts as no news."""
    from .hosts.parallel import run_parallel

    by_host: dict[str, list[ProcessSpec]] = {}
    for p in procs:
        by_host.setdefault(p.host, []).append(p)
    from .hosts.base import HostUnreachable

    states = run_parallel(by_host, lambda ps: nodes[ps[0].host].ops.process_states([pids[p.name] for p in ps]))
    out: dict[str, str] = {}
    for host, st in states.items():
        if isinstance(st, HostUnreachable):  # the host itself is gone: its processes cannot be watched
            for p in by_host[host]:
                out[p.name] = f"host {host} lost: {st}"
            continue
        if isinstance(st, BaseException):
            continue
        for p in by_host[host]:
            state = st.get(pids[p.name])  # type: ignore[union-attr]
            if state != "running":
                out[p.name] = str(state)
    return out


def leftovers(plan: Plan, nodes: dict[str, Node]) -> list[str]:
    """After a stop: processes of ours still alive (by marker and group) and planned ports still
    held (by anyone: the user needs to know)."""
    from .hosts.parallel import run_parallel

    def check(node: Node) -> list[str]:
        out = leftover_processes(plan, node)
        owner = {port: p.name for p in node.plan.processes for port in p.ports}
        held = node.ops.ports_in_use(list(owner), None)
        return out + [f"{node.name}: port {port} ({owner[port]}) held by {holder}" for port, holder in sorted(held.items())]

    out: list[str] = []
    for host, r in run_parallel(nodes, check).items():
        out.extend(r if isinstance(r, list) else [f"{host}: cannot check: {r}"])
    return out
