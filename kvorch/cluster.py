"""The cluster's lifecycle: a plan executed on its hosts. up, status, logs, down.

Order of ``up``: lock → connect (parallel) → what already runs → preflight → per host, one command:
the bundle check, the files and the first stage's starts (the bundle shipped first where missing) →
state file → wait for health (events) → per host, one command: the stage before still runs, then
this stage's starts (engines) → state file → … → the last stage's health check also reads each
process's members → state file. A failure raises :class:`~kvorch.errors.StartFailed` with the failing
process's log tail, after stopping what this ``up`` started. Nothing here prints: results are
returned, progress goes to the session's :class:`~kvorch.events.Events`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, NamedTuple

from . import interrupts
from .errors import Interrupted, PreflightFailed, StartFailed, UserError
from .nodes import Node, close_all, open_nodes
from .plan import Plan, ProcessSpec
from .processes import expected_members, http_health, leftovers, not_running, observe, start_request, stop_all
from .results import DownResult, LogsResult, StatusResult, UpResult
from .runstate import (ProcessState, HostState, RunState, clear_state, cluster_lock, load_state, new_run_id, now,
                       save_state)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from .events import Events
    from .session import Session

# ------------------------------------------------------------------------------------------------
# up


def _upload(node: Node, plan: Plan) -> dict[str, str]:
    """Write the host's planned files (and run/, logs/); path → sha256 (sweep's changed files)."""
    node.ops.write_files([(f.path, f.content, f.mode) for f in node.plan.files], dirs=("run", "logs"))
    return {f.path: f.sha256 for f in node.plan.files}


class _Provisioned(NamedTuple):
    files: dict[str, str]  # path → sha256 of what was written
    pids: dict[str, int]  # the first stage's processes started on this host
    shipped: Any  # bundle.Shipped, or None when the host runs nothing of this tool


class _HostStepFailed(Exception):
    """A host could not get its files or bundle: the UserError to raise once what this `up`
    started elsewhere is stopped."""

    def __init__(self, error: UserError):
        super().__init__(error.message)
        self.error = error


def _provision(node: Node, plan: Plan, starts: list[ProcessSpec], *, bundle_ready: bool) -> _Provisioned:
    """One host, as soon as its connection is ready: its files written and the first stage's
    processes on it started — over SSH one round trip when the host has this tool's bundle
    already (checked in the same command); when it has not, the bundle is shipped first and the
    command sent again. ``bundle_ready``: shipped already (hosts with prepare commands)."""
    from . import bundle
    from .hosts.base import CommandError
    from .hosts.ops import MissingOnHost

    files = [(f.path, f.content, f.mode) for f in node.plan.files]
    reqs = [start_request(node, plan, p) for p in starts]
    sha = node.plan.bundle
    require = f"{bundle.BUNDLE_ROOT}/{sha}/{bundle.MARKER}" if sha and not bundle_ready else None
    shipped = bundle.Shipped(node.name, sha, False, 0, 0.0) if sha else None

    def write_and_start(require: str | None) -> dict[str, int]:
        try:
            return node.ops.write_and_start(files, ("run", "logs"), reqs, require=require)
        except CommandError as e:
            if e.result.exit_code == 96 or not reqs:
                raise _HostStepFailed(UserError(f"host {node.name}: upload failed: {e}")) from None
            raise _StartFailed(reqs_spec(e), f"could not start: {e}") from None

    def reqs_spec(e: CommandError) -> ProcessSpec:
        started = {ln.split(" ")[1] for ln in e.result.stdout.splitlines() if ln.startswith("PID ")}
        return next((p for p in starts if p.name not in started), starts[0])

    try:
        pids = write_and_start(require)
    except MissingOnHost:
        try:
            shipped = bundle.ensure(node, known_missing=True)
        except Exception as e:  # noqa: BLE001 - reported per host with what to check
            raise _HostStepFailed(UserError(
                f"host {node.name}: shipping orchestrate's bundle failed: {e}",
                hint=f"check that {node.plan.python} runs there and {node.workdir} is writable")) from None
        pids = write_and_start(None)
    return _Provisioned({f.path: f.sha256 for f in node.plan.files}, pids, shipped)


def _ship_bundles(nodes: dict[str, Node]) -> dict[str, Any]:
    """This tool's code for the hosts that run it (kvorch/bundle.py): sent where missing."""
    from . import bundle
    from .hosts.parallel import run_parallel

    res = run_parallel({n: node for n, node in nodes.items() if node.plan.bundle}, bundle.ensure)
    for host, r in res.items():
        if isinstance(r, BaseException):
            raise UserError(f"host {host}: shipping orchestrate's bundle failed: {r}",
                            hint=f"check that {nodes[host].plan.python} runs there and {nodes[host].workdir} is writable")
    return {h: {"sha256": r.sha256, "uploaded": r.uploaded, "bytes": r.bytes_sent} for h, r in res.items()}  # type: ignore[union-attr]


def _prepare(node: Node) -> None:
    from .bundle import prepare_env
    from .render import shell_argv

    for cmd in node.plan.prepare:
        node.ops.run(shell_argv(cmd), timeout=900, check=True, env=prepare_env(node),
                     what=cmd[2] if len(cmd) > 2 else cmd[0])


def _record_start(state: RunState, nodes: dict[str, Node], p: ProcessSpec, pid: int, pids: dict[str, int],
                  started: list[ProcessSpec]) -> None:
    pids[p.name] = pid
    started.append(p)
    state.processes[p.name] = ProcessState(
        name=p.name, host=p.host, pid=pid, started_at=now(), ports=p.ports,
        log_path=nodes[p.host].path(p.log_path), health_url=p.health_url,
        script_sha256=next(f.sha256 for f in nodes[p.host].plan.files if f.path == p.launch_script))


#: health polls: every 5 ms for the first 2 s (the sim answers in a few hundred ms), then 20 ms,
#: 0.1 s after 5 s, 0.5 s after 30 s
def _poll_interval(elapsed: float) -> float:
    return 0.005 if elapsed < 2 else 0.02 if elapsed < 5 else 0.1 if elapsed < 30 else 0.5


def _wait_healthy(ev: Events, plan: Plan, nodes: dict[str, Node], procs: list[ProcessSpec], pids: dict[str, int],
                  timeout: float, *, members: bool = False,
                  check_alive: bool = True) -> tuple[dict[str, str], dict[str, list[int]]]:
    """Wait until every process answers its health URL. Returns (failures: name → reason, and
    with ``members`` every planned process's live pids once these are healthy).

    Health is polled every 5 ms at first (see :func:`_poll_interval`); whether the processes are
    still alive is asked of their hosts once a second."""
    pending = {p.name: p for p in procs}
    failures: dict[str, str] = {}
    t0 = time.monotonic()
    deadline = t0 + timeout
    next_alive_check = t0 + 1.0
    for n, p in pending.items():
        ev.waiting(n, p.health_url)
    try:
        while pending and time.monotonic() < deadline:
            for name, p in list(pending.items()):
                if http_health(p.health_url, timeout=1.0)[0]:
                    ev.healthy(name, round(time.monotonic() - t0, 3))
                    del pending[name]
            if pending and time.monotonic() >= next_alive_check:
                for name, st in not_running(nodes, list(pending.values()), pids).items():
                    failures[name] = st if st.startswith("host ") else f"exited during startup ({st})"
                    del pending[name]
                next_alive_check = time.monotonic() + 1.0
            if pending:
                time.sleep(_poll_interval(time.monotonic() - t0))
    finally:
        ev.waiting_done()
    for name in pending:
        failures[name] = f"not healthy after {timeout:.0f} s ({pending[name].health_url})"
    # Healthy, and still alive: a process that died right away (e.g. could not bind its port while
    # something else listening there answered the health check) is caught here, one round trip
    # per host. (One that dies later is `status`'s to find.) With ``members`` that round trip is
    # the probe that also reads what each process is made of; without ``check_alive`` the caller
    # asks (`up`: in the command that starts the next stage).
    healthy = [p for p in procs if p.name not in failures]
    found: dict[str, list[int]] = {}
    dead: dict[str, str] = {}
    if members:
        dead, found = _alive_and_members(plan, nodes, healthy if check_alive else [], pids)
    elif check_alive:
        dead = not_running(nodes, healthy, pids)
    for name, st in dead.items():
        failures[name] = (f"exited ({st}) although {plan.process(name).health_url} answers: "
                          f"another process serves that port")
    return failures, found


def _alive_and_members(plan: Plan, nodes: dict[str, Node], procs: list[ProcessSpec],
                       pids: dict[str, int]) -> tuple[dict[str, str], dict[str, list[int]]]:
    """One probe per host (by marker, no sockets): of ``procs``, those whose group leader is not
    running (name → state, as :func:`~kvorch.processes.not_running`), and for every planned
    process whose leader runs, its live pids (what the run state records as its members)."""
    from .hosts.base import HostUnreachable
    from .hosts.parallel import run_parallel
    from .processes import probe_marked

    def probe(node: Node) -> dict[str, Any]:
        return probe_marked(plan, node)

    wanted = {p.name for p in procs}
    dead: dict[str, str] = {}
    members: dict[str, list[int]] = {}
    for host, raw in run_parallel(nodes, probe).items():
        if isinstance(raw, BaseException):
            for p in nodes[host].plan.processes:
                if p.name in wanted and isinstance(raw, HostUnreachable):
                    dead[p.name] = f"host {host} lost: {raw}"
            continue
        for name, mp in raw.items():
            leader_ok = mp.leader_state == "running" and (name not in pids or mp.leader_pid == pids[name])
            if name in wanted and not leader_ok:
                dead[name] = mp.leader_state if mp.leader_pid == pids.get(name) else f"pidfile now names {mp.leader_pid}"
            if leader_ok and mp.members:
                members[name] = list(mp.members)
    return dead, members


def _start_wave(plan: Plan, nodes: dict[str, Node], state: RunState, todo: list[ProcessSpec], prev: list[ProcessSpec],
                pids: dict[str, int], started: list[ProcessSpec]) -> None:
    """Start a stage's processes once the one before is healthy: one command per host, which
    first checks that the previous stage's processes there still run (one that died right after
    answering its health URL: another process serves that port) and then starts this stage's."""
    from .hosts.ops import NotRunning
    from .hosts.parallel import run_parallel

    hosts = sorted({p.host for p in todo} | {p.host for p in prev})

    def on_host(h: str) -> dict[str, int]:
        node = nodes[h]
        reqs = [start_request(node, plan, p) for p in todo if p.host == h]
        return node.ops.write_and_start([], (), reqs, alive=[pids[p.name] for p in prev if p.host == h])

    res = run_parallel({h: h for h in hosts}, on_host)
    error: _StartFailed | None = None
    for h in hosts:
        r = res[h]
        if isinstance(r, NotRunning):
            dead = next(p for p in prev if p.host == h and pids[p.name] in r.states)
            error = error or _StartFailed(dead, f"exited ({r.states[pids[dead.name]]}) although {dead.health_url} "
                                                f"answers: another process serves that port")
        elif isinstance(r, BaseException):
            error = error or _StartFailed(next(p for p in todo if p.host == h), f"could not start: {r}")
        else:
            for p in todo:
                if p.host == h:
                    _record_start(state, nodes, p, r[p.name], pids, started)  # type: ignore[index]
    if error is not None:
        raise error


def up(c: Session, plan: Plan, *, timeout: float = 600.0, preflight: bool = True) -> UpResult:
    """Bring the cluster up (see the module docstring). A second ``up`` with the same files changes
    nothing (``changed`` False)."""
    from .hosts.parallel import run_parallel
    from . import preflight as preflight_mod

    ev = c.events
    t0 = time.monotonic()
    phases: dict[str, float] = {}

    def phase(name: str, since: float) -> float:
        now_ = time.monotonic()
        phases[name] = round(phases.get(name, 0.0) + now_ - since, 3)
        ev.phase(name, phases[name])
        return now_

    with cluster_lock(plan.cluster, "up"):
        nodes, _ = open_nodes(plan, c.ssh_config)
        try:
            observed = run_parallel(nodes, lambda n: observe(plan, n))
            tp = phase("connect_observe", t0)
            for host, obs in observed.items():
                if isinstance(obs, BaseException):
                    raise UserError(f"host {host}: cannot read process state: {obs}")
            obs_all = {name: o for obs in observed.values() for name, o in obs.items()}  # type: ignore[union-attr]
            state = load_state(plan.cluster)
            running = {n for n, o in obs_all.items() if o.ours and o.state == "running"}
            # Remains of ours that are not running as started (a group leader killed, an `up` killed
            # with kill -9 before its engines were healthy): stop them before anything is started.
            stale = {n: o for n, o in obs_all.items() if o.ours and o.state != "running"}
            if stale:
                for n, o in stale.items():
                    ev.info(f"{n} on {o.spec.host} is {o.state} ({o.detail}): stopping what is left of it")
                ev.stopping(list(stale), "stale")
                res = stop_all(plan, nodes, list(stale), grace=5.0)
                bad = [f"{n}: {r['result']}" for n, r in res.items() if str(r.get("result", "")).startswith(("error", "still"))]
                if bad:
                    raise UserError("cannot clean up what an earlier run left", details=bad,
                                    hint="stop those processes by hand, then run `orchestrate up` again")
                tp = phase("clean_stale", tp)

            # Already up with the same files: change nothing.
            if running == set(obs_all) and state is not None:
                same = all(state.hosts.get(h.name) and state.hosts[h.name].files == {f.path: f.sha256 for f in h.files}
                           for h in plan.hosts)
                healthy = all(http_health(o.spec.health_url)[0] for o in obs_all.values())
                if same and healthy:
                    return UpResult({"changed": False, "run_id": state.run_id, "processes": sorted(running)})
                if not same:
                    raise UserError(f"cluster {plan.cluster!r} is running with a different configuration",
                                    hint="run `orchestrate down` first, then `orchestrate up`")
            if running and state is not None:
                changed = [h.name for h in plan.hosts
                           if state.hosts.get(h.name) and state.hosts[h.name].files != {f.path: f.sha256 for f in h.files}]
                if changed:
                    raise UserError(f"cluster {plan.cluster!r} is running with a different configuration on {', '.join(changed)}",
                                    hint="run `orchestrate down` first, then `orchestrate up`")

            tp = time.monotonic()
            if preflight:
                checks = preflight_mod.run_checks(plan, nodes, skip_ports_of=running)
                failed = [ch for ch in checks if ch.status == "fail"]
                if failed:
                    raise PreflightFailed(f"preflight failed: {failed[0].host}: {failed[0].name}: {failed[0].detail}",
                                          hint=failed[0].hint, checks=checks,
                                          details=[f"{ch.host}: {ch.name}: {ch.detail}" for ch in failed[1:]])

            tp = phase("preflight", tp)
            # hosts with prepare commands (the tiny model: made with the bundle's code) get the
            # bundle and run them first; every other host gets everything in _provision
            with_prepare = {n: node for n, node in nodes.items() if node.plan.prepare}
            shipped = _ship_bundles(with_prepare)
            prepared = run_parallel(with_prepare, _prepare)
            for host, res in prepared.items():
                if isinstance(res, BaseException):
                    raise UserError(f"host {host}: preparing failed: {res}", hint="run the command by hand on the host to see why")
            tp = phase("prepare", tp)

            if state is None or not running:
                state = RunState(run_id=new_run_id(plan.cluster), cluster=plan.cluster, inventory=c.inventory_path,
                                 started_at=now())
            started: list[ProcessSpec] = []
            pids: dict[str, int] = {n: obs_all[n].pid for n in running}  # type: ignore[misc]
            stages = plan.stages()
            members_read = False
            try:
                # every host: files written and the first stage's processes on it started, in one
                # round trip per host where it can (see _provision)
                first = [p for p in (stages[0] if stages else []) if p.name not in running]
                prov = run_parallel(nodes, lambda n: _provision(n, plan, [p for p in first if p.host == n.name],
                                                                bundle_ready=n.name in with_prepare))
                step_error: _HostStepFailed | _StartFailed | None = None
                for host, res in prov.items():
                    if isinstance(res, (_HostStepFailed, _StartFailed)):
                        step_error = step_error or res
                        continue
                    if isinstance(res, BaseException):
                        step_error = step_error or _HostStepFailed(UserError(f"host {host}: upload failed: {res}"))
                        continue
                    state.hosts[host] = HostState(name=host, address=nodes[host].plan.address,
                                                  workdir=nodes[host].workdir, files=res.files)  # type: ignore[union-attr]
                    if res.shipped is not None:  # type: ignore[union-attr]
                        shipped[host] = {"sha256": res.shipped.sha256, "uploaded": res.shipped.uploaded,  # type: ignore[union-attr]
                                         "bytes": res.shipped.bytes_sent}  # type: ignore[union-attr]
                    for p in first:
                        if p.name in res.pids:  # type: ignore[union-attr]
                            _record_start(state, nodes, p, res.pids[p.name], pids, started)  # type: ignore[union-attr]
                tp = phase("upload", tp)
                if step_error is not None:
                    raise step_error
                waves = [(i, todo) for i, todo in ((i, [p for p in stage if p.name not in running])
                                                   for i, stage in enumerate(stages)) if todo]
                prev: list[ProcessSpec] = []  # healthy; whether still alive is asked with the next starts
                for k, (i, todo) in enumerate(waves):
                    if i > 0:  # (the first stage was started by _provision)
                        _start_wave(plan, nodes, state, todo, prev, pids, started)
                    save_state(state)
                    tp = phase("start", tp)
                    last = k == len(waves) - 1
                    failures, members = _wait_healthy(ev, plan, nodes, todo, pids, timeout, members=last,
                                                      check_alive=last)
                    members_read = members_read or last
                    tp = phase("wait_healthy", tp)
                    if failures:
                        name, why = next(iter(failures.items()))
                        raise _StartFailed(plan.process(name), why, others=failures)
                    for p in todo:
                        state.processes[p.name].healthy_at = now()
                    for name, m in members.items():
                        if name in state.processes:
                            state.processes[name].members = m
                    if interrupts.requested():  # noted, but swallowed where it was raised
                        raise KeyboardInterrupt
                    prev = todo
            except (_StartFailed, _HostStepFailed, KeyboardInterrupt) as e:
                interrupted = isinstance(e, KeyboardInterrupt)
                tail = ""
                if isinstance(e, _StartFailed):
                    tail = _safe_tail(nodes, e.spec)
                    ev.start_failed(e.spec.name, e.spec.host, e.reason, e.spec.log_path, tail)
                # Everything this `up` may have started (a start still in flight when the interrupt
                # came has no pid here yet: the marker finds it).
                mine = [p.name for p in plan.processes() if p.name not in running]
                ev.info(("interrupted: " if interrupted else "")
                        + f"stopping what this `up` started: {', '.join(p.name for p in started) or 'nothing yet'}")
                ev.stopping(mine, "interrupted" if interrupted else "rollback")
                stopped = _rollback(ev, plan, nodes, mine, grace=5.0)
                for p in started:
                    state.processes[p.name].stopped_at = now()
                if not running:
                    clear_state(plan.cluster)
                    save_state_only_run(state)
                else:
                    save_state(state)
                left = [f"{n}: {r['result']}" for n, r in stopped.items() if r.get("result", "").startswith(("error", "still"))]
                if interrupted:
                    raise Interrupted("up interrupted; stopped what it had started"
                                      + (f" ({', '.join(n for n, r in stopped.items() if r.get('pids'))})"
                                         if any(r.get("pids") for r in stopped.values()) else " (nothing had started)"),
                                      details=left, stopped=stopped) from None
                if isinstance(e, _HostStepFailed):
                    if left:
                        e.error.details = [*e.error.details, *left]
                    raise e.error from None
                assert isinstance(e, _StartFailed)
                details = [f"{n}: {r}" for n, r in e.others.items() if n != e.spec.name] + left
                raise StartFailed(f"{e.spec.name} on host {e.spec.host} failed: {e.reason}",
                                  hint=f"see the log above; `orchestrate logs {e.spec.name}`", details=details,
                                  process=e.spec.name, host=e.spec.host, reason=e.reason, stopped=stopped,
                                  log_tail=tail, log_path=e.spec.log_path) from None
            # what each process is made of once healthy (a child that dies later makes it
            # degraded): read with the last stage's health check; when that stage had nothing to
            # start, here
            if not members_read:
                for name, m in _alive_and_members(plan, nodes, [], pids)[1].items():
                    if name in state.processes:
                        state.processes[name].members = m
            save_state(state)
        finally:
            close_all(nodes)
    took = time.monotonic() - t0
    return UpResult({"changed": True, "run_id": state.run_id, "seconds": round(took, 3), "phases_s": phases,
                     "bundle": shipped,
                     "processes": {n: {"host": s.host, "pid": s.pid, "health_url": s.health_url, "log": s.log_path}
                                   for n, s in state.processes.items()}})


def save_state_only_run(state: RunState) -> None:
    """Keep the failed run's record in its run folder without making it the current run."""
    from .runstate import write_json

    state.stopped_at = now()
    write_json(state.run_dir() / "state.json", state.to_json())


def _safe_tail(nodes: dict[str, Node], p: ProcessSpec, n: int = 30) -> str:
    try:
        return nodes[p.host].ops.tail(nodes[p.host].path(p.log_path), n)
    except Exception as e:  # noqa: BLE001 - the host may be the reason it failed
        return f"(cannot read the log: {e})"


def _rollback(ev: Events, plan: Plan, nodes: dict[str, Node], names: list[str], grace: float) -> dict[str, dict[str, Any]]:
    """Stop ``names`` (by marker and group: a start still in flight is found too). A second
    interrupt skips the grace period, but the stop still runs to the end: nothing is left."""
    while True:
        try:
            return stop_all(plan, nodes, names, grace, strict=False)
        except KeyboardInterrupt:
            if grace == 0:
                ev.info("still stopping (SIGKILL): nothing of this `up` will be left")
            else:
                ev.info("second interrupt: stopping without the grace period (SIGKILL)")
            grace = 0.0


class _StartFailed(Exception):
    def __init__(self, spec: ProcessSpec, reason: str, others: dict[str, str] | None = None):
        super().__init__(reason)
        self.spec = spec
        self.reason = reason
        self.others = others or {}


# ------------------------------------------------------------------------------------------------
# down


def down(c: Session, plan: Plan, *, collect: bool = True, grace: float = 10.0) -> DownResult:
    """Collect (unless told not to), stop everything of ours on every host (marker and groups),
    check nothing is left and every planned port is free, collect again (the shutdown lines)."""
    with cluster_lock(plan.cluster, "down"):
        state = load_state(plan.cluster)
        collect_mod = None
        if collect and state is not None:
            from . import collect as collect_mod

            collect_mod.collect_quietly(c, plan, run_id=state.run_id)  # never raises
        nodes, errors = open_nodes(plan, c.ssh_config, strict=False)
        try:
            c.events.stopping([p.name for p in plan.processes()], "down")
            results = stop_all(plan, nodes, None, grace, strict=False)
            left = leftovers(plan, nodes)
        finally:
            close_all(nodes)
        if state is not None:
            for name, r in results.items():
                if name in state.processes and r.get("pid"):
                    state.processes[name].stopped_at = now()
                    state.processes[name].exit = r["result"]
            state.stopped_at = now()
            save_state_only_run(state)
            if collect and collect_mod is not None:  # again: the shutdown lines and the exit codes
                collect_mod.collect_quietly(c, plan, run_id=state.run_id)
        if not errors:
            clear_state(plan.cluster)
    failed = any(str(r.get("result", "")).startswith(("error", "still")) for r in results.values())
    return DownResult({"stopped": results, "unreachable": {k: v.message for k, v in errors.items()}, "leftovers": left},
                      ok=not (errors or left or failed))


# ------------------------------------------------------------------------------------------------
# status and logs


def status_rows(plan: Plan, nodes: dict[str, Node], expected: dict[str, list[int]] | None = None) -> list[dict[str, Any]]:
    from .fmt import strip_ansi
    from .hosts.parallel import run_parallel

    def host_rows(node: Node) -> list[dict[str, Any]]:
        rows = []
        for name, o in observe(plan, node, last_lines=True, expected=expected).items():
            p = o.spec
            row: dict[str, Any] = {"process": name, "host": p.host, "pid": o.pid, "port": p.port, "state": o.state,
                                   "health_url": p.health_url, "uptime_s": o.uptime_s if o.ours else None,
                                   "last_log_line": strip_ansi(o.last_line).strip() if o.last_line else None,
                                   "pgid": o.pgid, "server_pid": o.server_pid, "members": o.members,
                                   "detail": o.detail or None}
            if o.state == "running":
                healthy, detail = http_health(p.health_url)
                if not healthy:
                    row["state"] = f"unhealthy ({detail})"
            rows.append(row)
        return rows

    res = run_parallel(nodes, host_rows)
    rows: list[dict[str, Any]] = []
    for host, r in res.items():
        if isinstance(r, BaseException):
            rows.append({"process": "*", "host": host, "state": f"error: {r}"})
        else:
            rows.extend(r)  # type: ignore[arg-type]
    order = {p.name: i for i, p in enumerate(plan.processes())}
    return sorted(rows, key=lambda r: order.get(r["process"], -1))


def status(c: Session, plan: Plan) -> StatusResult:
    """Every process: running / degraded / dead / unhealthy, pid, serving pid, uptime, last log line.
    ``ok`` when every process runs and answers its health URL."""
    state = load_state(plan.cluster)
    nodes, errors = open_nodes(plan, c.ssh_config, strict=False)
    try:
        rows = status_rows(plan, nodes, expected_members(state))
    finally:
        close_all(nodes)
    for host, e in errors.items():
        rows.append({"process": "*", "host": host, "state": "unreachable", "error": e.message})
    return StatusResult({"cluster": plan.cluster, "run_id": state.run_id if state else None, "processes": rows},
                        ok=all(r["state"] == "running" for r in rows))


def _log_procs(plan: Plan, name: str | None) -> list[ProcessSpec]:
    procs = plan.processes()
    if name is not None:
        if name not in {p.name for p in procs}:
            raise UserError(f"no process named {name!r}", hint=f"one of: {', '.join(p.name for p in procs)}")
        procs = [p for p in procs if p.name == name]
    return procs


def logs(c: Session, plan: Plan, *, name: str | None = None, lines: int = 20) -> LogsResult:
    """The last ``lines`` of each process's log (or of ``name``'s): ``processes`` → host, log, lines."""
    procs = _log_procs(plan, name)
    nodes, _ = open_nodes(plan, c.ssh_config, names=sorted({p.host for p in procs}))
    try:
        tails = {p.name: {"host": p.host, "log": nodes[p.host].path(p.log_path),
                          "lines": (nodes[p.host].ops.tail(p.log_path, lines) or "").splitlines()} for p in procs}
    finally:
        close_all(nodes)
    return LogsResult({"processes": tails})


class LogLine(NamedTuple):
    process: str
    host: str
    line: str
    tail: bool  # one of the last lines that were there already (else: written since)


def follow(c: Session, plan: Plan, *, name: str | None = None, lines: int = 20, poll_s: float = 0.5,
           on_tail: Callable[[dict[str, Any]], None] | None = None) -> Iterator[LogLine]:
    """The last ``lines`` of each log (``tail`` True), then every new complete line as it is
    written, until the caller stops iterating (close the generator, or Ctrl-C). ``on_tail`` is
    called with ``{process: {host, lines}}`` once the tails are read, before following starts."""
    procs = _log_procs(plan, name)
    nodes, _ = open_nodes(plan, c.ssh_config, names=sorted({p.host for p in procs}))
    try:
        offsets: dict[str, int] = {}
        tails: dict[str, Any] = {}
        for p in procs:
            node = nodes[p.host]
            offsets[p.name] = node.ops.file_size(p.log_path) or 0  # before the tail: no line is missed
            tails[p.name] = {"host": p.host, "lines": (node.ops.tail(p.log_path, lines) or "").splitlines()}
        if on_tail is not None:
            on_tail(tails)
        for p in procs:
            for line in tails[p.name]["lines"]:
                yield LogLine(p.name, p.host, line, True)
        while True:
            time.sleep(poll_s)
            for p in procs:
                data = nodes[p.host].ops.read_from(p.log_path, offsets[p.name])
                complete = data.rfind(b"\n") + 1
                if not complete:
                    continue
                offsets[p.name] += complete
                for line in data[:complete].decode(errors="replace").splitlines():
                    yield LogLine(p.name, p.host, line, False)
    finally:
        close_all(nodes)
