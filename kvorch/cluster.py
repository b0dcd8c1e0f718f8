"""The cluster's lifecycle: a plan executed on its hosts. up, status, logs, down, demo.

Order of ``up``: lock → connect (parallel) → what already runs → preflight → upload → for each
stage (controller/LMCache server, then engines): start detached in parallel, wait for health
with progress → state file. A failure shows the failing process's log tail, stops what this ``up``
started and exits non-zero.
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import UserError
from .nodes import Node, close_all, open_nodes
from .plan import Plan, ProcessSpec
from .runstate import (ProcessState, HostState, RunState, clear_state, cluster_lock, load_state, new_run_id, now,
                       save_state)

if TYPE_CHECKING:
    from .cli import Ctx

#: env marker that identifies processes this tool started (checked before any signal is sent)
MARKER = "ORCHESTRATE_PROCESS"


def marker_value(plan: Plan, p: ProcessSpec) -> str:
    return f"{plan.cluster}/{p.name}"


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
    pid: int | None
    state: str  # running | dead | zombie | absent | foreign (pid reused by another process)
    ours: bool
    uptime_s: float | None = None
    last_line: str | None = None


def read_pid(node: Node, p: ProcessSpec) -> int | None:
    return node.ops.read_pid(p.pid_path)


def exit_path(p: ProcessSpec) -> str:
    return p.pid_path[: -len(".pid")] + ".exit"


def is_ours(node: Node, pid: int, plan: Plan, p: ProcessSpec) -> bool:
    """The process carries our marker in its environment (a reused pid does not)."""
    marker = shlex.quote(f"{MARKER}={marker_value(plan, p)}")
    return node.ops.run(f"tr '\\0' '\\n' < /proc/{int(pid)}/environ 2>/dev/null | grep -qxF -- {marker}").ok


def observe(plan: Plan, node: Node, *, last_lines: bool = False) -> dict[str, Observed]:
    """State of every planned process on one host — pidfile, /proc state, our marker, uptime and
    (optionally) the last log line — in one round trip."""
    from .hosts.ops import PROC_STATE_FN

    parts = [PROC_STATE_FN]
    for p in node.plan.processes:
        marker = shlex.quote(f"{MARKER}={marker_value(plan, p)}")
        parts.append(f"""pid=$(head -c 32 -- {shlex.quote(node.path(p.pid_path))} 2>/dev/null | tr -dc 0-9)
if [ -z "$pid" ]; then echo "P {p.name} - absent 0 -"; else
  set -- $(_kv_state "$pid"); s=$1; ours=0
  if [ "$s" = running ] && tr '\\0' '\\n' < /proc/$pid/environ 2>/dev/null | grep -qxF -- {marker}; then ours=1; fi
  up=$(ps -o etimes= -p "$pid" 2>/dev/null | tr -dc 0-9); echo "P {p.name} $pid $s $ours ${{up:--}}"
fi""")
        if last_lines:
            parts.append(f"printf 'L {p.name} '; tail -n 1 -- {shlex.quote(node.path(p.log_path))} 2>/dev/null | tr -d '\\n'; echo")
    res = node.ops.run("\n".join(parts), check=True, what="process probe")
    specs = {p.name: p for p in node.plan.processes}
    out: dict[str, Observed] = {n: Observed(p, None, "absent", False) for n, p in specs.items()}
    for line in res.stdout.splitlines():
        kind, _, rest = line.partition(" ")
        name, _, rest = rest.partition(" ")
        if name not in specs:
            continue
        if kind == "P":
            pid_s, state, ours_s, up_s = (rest.split() + ["-"] * 4)[:4]
            pid = int(pid_s) if pid_s.isdigit() else None
            ours = ours_s == "1"
            if state == "running" and not ours:
                state = "foreign"
            out[name] = Observed(specs[name], pid, state, ours, float(up_s) if up_s.isdigit() else None)
        elif kind == "L":
            out[name].last_line = rest or None
    return out


# ------------------------------------------------------------------------------------------------
# up


def _upload(node: Node, plan: Plan) -> dict[str, str]:
    node.ops.mkdirs("run", "logs")
    node.ops.write_files([(f.path, f.content, f.mode) for f in node.plan.files])
    return {f.path: f.sha256 for f in node.plan.files}


def _prepare(node: Node) -> None:
    from .render import shell_argv

    for cmd in node.plan.prepare:
        node.ops.run(shell_argv(cmd), timeout=900, check=True, what=cmd[2] if len(cmd) > 2 else cmd[0])


def start_process(node: Node, plan: Plan, p: ProcessSpec) -> int:
    """Start one planned process detached, with our marker in its environment; its pid."""
    return node.ops.start_detached(
        script=node.path(p.launch_script), log_path=node.path(p.log_path), pid_path=node.path(p.pid_path),
        cwd=node.workdir, env={MARKER: marker_value(plan, p)},
    )


def _wait_healthy(c: Ctx, plan: Plan, nodes: dict[str, Node], procs: list[ProcessSpec], pids: dict[str, int],
                  timeout: float) -> dict[str, str]:
    """Wait until every process answers its health URL. Returns failures: name → reason.

    Health is polled every 20 ms at first (the sim is up in well under a second), backing off to
    0.5 s; whether the processes are still alive is asked of their hosts once a second."""
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    pending = {p.name: p for p in procs}
    failures: dict[str, str] = {}
    t0 = time.monotonic()
    deadline = t0 + timeout
    next_alive_check = t0 + 1.0
    con = c.console()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=con, transient=True, disable=c.as_json) as progress:
        tasks = {n: progress.add_task(f"{n}: waiting for {p.health_url}", total=1) for n, p in pending.items()}
        while pending and time.monotonic() < deadline:
            for name, p in list(pending.items()):
                if http_health(p.health_url, timeout=1.0)[0]:
                    progress.update(tasks[name], completed=1, description=f"{name}: healthy")
                    del pending[name]
            if pending and time.monotonic() >= next_alive_check:
                for name, st in _not_running(nodes, list(pending.values()), pids).items():
                    failures[name] = f"exited during startup ({st})"
                    del pending[name]
                next_alive_check = time.monotonic() + 1.0
            if pending:
                elapsed = time.monotonic() - t0
                time.sleep(0.02 if elapsed < 5 else 0.1 if elapsed < 30 else 0.5)
    for name in pending:
        failures[name] = f"not healthy after {timeout:.0f} s ({pending[name].health_url})"
    # Healthy, and still alive: a process that died right away (e.g. could not bind its port while
    # something else listening there answered the health check) is caught here, one round trip
    # per host. (One that dies later is `status`'s to find.)
    healthy = [p for p in procs if p.name not in failures]
    for name, st in _not_running(nodes, healthy, pids).items():
        failures[name] = (f"exited ({st}) although {plan.process(name).health_url} answers: "
                          f"another process serves that port")
    return failures


def _not_running(nodes: dict[str, Node], procs: list[ProcessSpec], pids: dict[str, int]) -> dict[str, str]:
    """Of ``procs``, those whose process is not running now (name → state): one round trip per
    host, in parallel. A host that cannot answer counts as no news."""
    from .hosts.parallel import run_parallel

    by_host: dict[str, list[ProcessSpec]] = {}
    for p in procs:
        by_host.setdefault(p.host, []).append(p)
    states = run_parallel(by_host, lambda ps: nodes[ps[0].host].ops.process_states([pids[p.name] for p in ps]))
    out: dict[str, str] = {}
    for host, st in states.items():
        if isinstance(st, BaseException):
            continue
        for p in by_host[host]:
            state = st.get(pids[p.name])  # type: ignore[union-attr]
            if state != "running":
                out[p.name] = str(state)
    return out


def up(c: Ctx, plan: Plan, *, timeout: float = 600.0, preflight: bool = True) -> int:
    from .hosts.parallel import run_parallel
    from . import preflight as preflight_mod

    inv = c.inventory()
    con = c.console()
    t0 = time.monotonic()
    phases: dict[str, float] = {}

    def phase(name: str, since: float) -> float:
        now_ = time.monotonic()
        phases[name] = round(phases.get(name, 0.0) + now_ - since, 3)
        return now_

    with cluster_lock(plan.cluster, "up"):
        nodes, _ = open_nodes(inv, plan, c.ssh_config)
        try:
            observed = run_parallel(nodes, lambda n: observe(plan, n))
            tp = phase("connect_observe", t0)
            for host, obs in observed.items():
                if isinstance(obs, BaseException):
                    raise UserError(f"host {host}: cannot read process state: {obs}")
            obs_all = {name: o for obs in observed.values() for name, o in obs.items()}  # type: ignore[union-attr]
            state = load_state(plan.cluster)
            running = {n for n, o in obs_all.items() if o.ours and o.state == "running"}

            # Already up with the same files: change nothing.
            if running == set(obs_all) and state is not None:
                same = all(state.hosts.get(h.name) and state.hosts[h.name].files == {f.path: f.sha256 for f in h.files}
                           for h in plan.hosts)
                healthy = all(http_health(o.spec.health_url)[0] for o in obs_all.values())
                if same and healthy:
                    if c.as_json:
                        c.emit_json({"changed": False, "run_id": state.run_id, "processes": sorted(running)})
                    else:
                        con.print(f"cluster [cyan]{plan.cluster}[/] is already up and healthy (run {state.run_id}): nothing changed")
                    return 0
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
                checks = preflight_mod.run_checks(inv, plan, nodes, skip_ports_of=running)
                failed = [ch for ch in checks if ch.status == "fail"]
                if failed:
                    preflight_mod.print_checks(c, checks)
                    raise UserError(f"preflight failed: {failed[0].host}: {failed[0].name}: {failed[0].detail}",
                                    hint=failed[0].hint, details=[f"{ch.host}: {ch.name}: {ch.detail}" for ch in failed[1:]])

            tp = phase("preflight", tp)
            prepared = run_parallel({n: node for n, node in nodes.items() if node.plan.prepare}, _prepare)
            for host, res in prepared.items():
                if isinstance(res, BaseException):
                    raise UserError(f"host {host}: preparing failed: {res}", hint="run the command by hand on the host to see why")

            if state is None or not running:
                state = RunState(run_id=new_run_id(plan.cluster), cluster=plan.cluster, inventory=c.inventory_path,
                                 started_at=now())
            tp = phase("prepare", tp)
            uploads = run_parallel(nodes, lambda n: _upload(n, plan))
            for host, res in uploads.items():
                if isinstance(res, BaseException):
                    raise UserError(f"host {host}: upload failed: {res}")
                state.hosts[host] = HostState(name=host, address=nodes[host].plan.address, workdir=nodes[host].workdir,
                                              files=res)  # type: ignore[arg-type]

            tp = phase("upload", tp)
            started: list[ProcessSpec] = []
            pids: dict[str, int] = {n: obs_all[n].pid for n in running}  # type: ignore[misc]
            try:
                for stage in plan.stages():
                    todo = [p for p in stage if p.name not in running]
                    if not todo:
                        continue
                    res = run_parallel({p.name: p for p in todo}, lambda p: start_process(nodes[p.host], plan, p))
                    for p in todo:
                        r = res[p.name]
                        if isinstance(r, BaseException):
                            raise _StartFailed(p, f"could not start: {r}")
                        pids[p.name] = r  # type: ignore[assignment]
                        started.append(p)
                        state.processes[p.name] = ProcessState(
                            name=p.name, host=p.host, pid=r, started_at=now(), ports=p.ports,  # type: ignore[arg-type]
                            log_path=nodes[p.host].path(p.log_path), health_url=p.health_url,
                            script_sha256=next(f.sha256 for f in nodes[p.host].plan.files if f.path == p.launch_script))
                    save_state(state)
                    tp = phase("start", tp)
                    failures = _wait_healthy(c, plan, nodes, todo, pids, timeout)
                    tp = phase("wait_healthy", tp)
                    if failures:
                        name, why = next(iter(failures.items()))
                        raise _StartFailed(plan.process(name), why, others=failures)
                    for p in todo:
                        state.processes[p.name].healthy_at = now()
            except _StartFailed as e:
                tail = nodes[e.spec.host].ops.tail(nodes[e.spec.host].path(e.spec.log_path), 30)
                con.print(f"[bold red]{e.spec.name}[/] on {e.spec.host}: {e.reason}; last lines of {e.spec.log_path}:")
                con.print(tail or "(empty log)", markup=False, highlight=False)
                con.print(f"stopping what this `up` started: {', '.join(p.name for p in started) or 'nothing'}")
                _stop(plan, nodes, [p.name for p in started], grace=5.0)
                for p in started:
                    state.processes[p.name].stopped_at = now()
                if not running:
                    clear_state(plan.cluster)
                    save_state_only_run(state)
                else:
                    save_state(state)
                details = [f"{n}: {r}" for n, r in e.others.items() if n != e.spec.name]
                raise UserError(f"{e.spec.name} on host {e.spec.host} failed: {e.reason}",
                                hint=f"see the log above; `orchestrate logs {e.spec.name}`", details=details) from None
            save_state(state)
        finally:
            close_all(nodes)
    took = time.monotonic() - t0
    if c.as_json:
        c.emit_json({"changed": True, "run_id": state.run_id, "seconds": round(took, 3), "phases_s": phases,
                     "processes": {n: {"host": s.host, "pid": s.pid, "health_url": s.health_url, "log": s.log_path}
                                   for n, s in state.processes.items()}})
    else:
        from rich.table import Table

        t = Table(title=f"cluster {plan.cluster} is up (run {state.run_id}, {took:.1f} s)", title_justify="left")
        for col in ("process", "host", "pid", "ports", "health", "log"):
            t.add_column(col)
        for p in plan.processes():
            s = state.processes.get(p.name)
            t.add_row(p.name, p.host, str(s.pid if s else "?"), ",".join(map(str, p.ports)), p.health_url,
                      s.log_path if s else p.log_path)
        con.print(t)
        if c.verbose:
            con.print("phases: " + ", ".join(f"{k} {v:.2f} s" for k, v in phases.items()), style="dim")
    return 0


def save_state_only_run(state: RunState) -> None:
    """Keep the failed run's record in its run folder without making it the current run."""
    from .runstate import write_json

    state.stopped_at = now()
    write_json(state.run_dir() / "state.json", state.model_dump(mode="json"))


class _StartFailed(Exception):
    def __init__(self, spec: ProcessSpec, reason: str, others: dict[str, str] | None = None):
        super().__init__(reason)
        self.spec = spec
        self.reason = reason
        self.others = others or {}


# ------------------------------------------------------------------------------------------------
# down


def _stop(plan: Plan, nodes: dict[str, Node], names: list[str] | None, grace: float) -> dict[str, dict[str, Any]]:
    """Stop our processes (all planned ones, or ``names``): engines first, then the controller.
    A pid that no longer carries our marker is never signalled."""
    from .hosts.parallel import run_parallel

    observed: dict[str, Observed] = {}
    for host, obs in run_parallel(nodes, lambda n: observe(plan, n)).items():
        if isinstance(obs, BaseException):
            raise UserError(f"host {host}: cannot read process state: {obs}")
        observed.update(obs)  # type: ignore[arg-type]
    results: dict[str, dict[str, Any]] = {}
    for stage in reversed(plan.stages()):
        todo = [p for p in stage if (names is None or p.name in names) and p.name in observed]

        def stop_one(p: ProcessSpec) -> dict[str, Any]:
            node, o = nodes[p.host], observed[p.name]
            if o.pid is None:
                return {"host": p.host, "pid": None, "result": "not started"}
            if o.state == "foreign":
                _forget(node, p)
                return {"host": p.host, "pid": o.pid, "result": "pid now belongs to another process: left alone"}
            if not o.ours:
                _forget(node, p)
                return {"host": p.host, "pid": o.pid, "result": "already stopped", "exit_code": node.ops.read_exit_code(exit_path(p))}
            res = node.ops.stop_group(o.pid, grace, exit_path=exit_path(p))
            _forget(node, p)
            how = "not running" if res.signal is None else ("SIGKILL after grace" if res.forced else "SIGTERM")
            if res.remaining:
                how = f"still running after SIGKILL: {res.remaining}"
            return {"host": p.host, "pid": o.pid, "result": how, "seconds": round(res.elapsed_s, 2), "exit_code": res.exit_code}

        for name, r in run_parallel({p.name: p for p in todo}, stop_one).items():
            results[name] = r if isinstance(r, dict) else {"result": f"error: {r}"}
    return results


def down_command(c: Ctx, plan: Plan, *, collect: bool = True, grace: float = 10.0) -> int:
    inv = c.inventory()
    con = c.console()
    with cluster_lock(plan.cluster, "down"):
        state = load_state(plan.cluster)
        collect_mod = None
        if collect and state is not None:
            from . import collect as collect_mod

            collect_mod.collect_command(c, plan, run_id=state.run_id, quiet=True)  # quiet: never raises
        nodes, errors = open_nodes(inv, plan, c.ssh_config, strict=False)
        try:
            results = _stop(plan, nodes, None, grace)
            leftovers = _leftovers(plan, nodes)
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
                collect_mod.collect_command(c, plan, run_id=state.run_id, quiet=True)
        if not errors:
            clear_state(plan.cluster)
    if c.as_json:
        c.emit_json({"stopped": results, "unreachable": {k: v.message for k, v in errors.items()}, "leftovers": leftovers})
    else:
        for name, r in results.items():
            con.print(f"{name:>14} on {r.get('host', '?')}: {r['result']}" + (f" ({r['seconds']} s)" if "seconds" in r else ""))
        for host, e in errors.items():
            con.print(f"[red]{host}: unreachable, nothing stopped there:[/] {e.message}")
        for item in leftovers:
            con.print(f"[red]still there:[/] {item}")
        if not errors and not leftovers:
            con.print(f"cluster [cyan]{plan.cluster}[/] is down: nothing of ours runs, every planned port is free")
    return 1 if errors or leftovers else 0


def _forget(node: Node, p: ProcessSpec) -> None:
    node.ops.run(f"rm -f -- {shlex.quote(node.path(p.pid_path))}")


def _leftovers(plan: Plan, nodes: dict[str, Node]) -> list[str]:
    """Ports still held on any host after down (by anyone: the user needs to know)."""
    from .hosts.parallel import run_parallel

    def check(node: Node) -> list[str]:
        owner = {port: p.name for p in node.plan.processes for port in p.ports}
        held = node.ops.ports_in_use(list(owner), None)
        return [f"{node.name}: port {port} ({owner[port]}) held by {holder}" for port, holder in sorted(held.items())]

    out: list[str] = []
    for host, r in run_parallel(nodes, check).items():
        out.extend(r if isinstance(r, list) else [f"{host}: cannot check ports: {r}"])
    return out


# ------------------------------------------------------------------------------------------------
# status and logs


def status_rows(plan: Plan, nodes: dict[str, Node]) -> list[dict[str, Any]]:
    from .evidence import strip_ansi
    from .hosts.parallel import run_parallel

    def host_rows(node: Node) -> list[dict[str, Any]]:
        rows = []
        for name, o in observe(plan, node, last_lines=True).items():
            p = o.spec
            row: dict[str, Any] = {"process": name, "host": p.host, "pid": o.pid, "port": p.port, "state": o.state,
                                   "health_url": p.health_url, "uptime_s": o.uptime_s if o.ours else None,
                                   "last_log_line": strip_ansi(o.last_line).strip() if o.last_line else None}
            if o.ours:
                healthy, detail = http_health(p.health_url)
                row["state"] = "running" if healthy else f"unhealthy ({detail})"
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


def status_command(c: Ctx, plan: Plan) -> int:
    nodes, errors = open_nodes(c.inventory(), plan, c.ssh_config, strict=False)
    try:
        rows = status_rows(plan, nodes)
    finally:
        close_all(nodes)
    for host, e in errors.items():
        rows.append({"process": "*", "host": host, "state": "unreachable", "error": e.message})
    state = load_state(plan.cluster)
    if c.as_json:
        c.emit_json({"cluster": plan.cluster, "run_id": state.run_id if state else None, "processes": rows})
    else:
        from rich.table import Table

        t = Table(title=f"cluster {plan.cluster}" + (f" (run {state.run_id})" if state else ""), title_justify="left")
        for col in ("process", "host", "pid", "port", "state", "uptime", "last log line"):
            t.add_column(col, overflow="fold")
        for r in rows:
            st = r["state"]
            colour = "green" if st == "running" else ("yellow" if st in ("absent",) else "red")
            up_s = r.get("uptime_s")
            t.add_row(r["process"], r["host"], str(r.get("pid") or "-"), str(r.get("port") or "-"),
                      f"[{colour}]{st}[/]", f"{up_s:.0f} s" if up_s is not None else "-",
                      (r.get("last_log_line") or r.get("error") or "")[:120])
        c.console().print(t)
    ok = all(r["state"] == "running" for r in rows)
    return 0 if ok else 1


def logs_command(c: Ctx, plan: Plan, *, name: str | None, follow: bool, lines: int) -> int:
    """Print the last ``lines`` of each process's log, prefixed by its name (``--json``: one object
    per process; with ``-f``, then one JSON line per new log line)."""
    procs = plan.processes()
    if name is not None:
        if name not in {p.name for p in procs}:
            raise UserError(f"no process named {name!r}", hint=f"one of: {', '.join(p.name for p in procs)}")
        procs = [p for p in procs if p.name == name]
    hosts = sorted({p.host for p in procs})
    nodes, _ = open_nodes(c.inventory(), plan, c.ssh_config, names=hosts)
    width = max(len(p.name) for p in procs)

    def show(p: ProcessSpec, text: str) -> None:
        for line in text.splitlines():
            if c.as_json and follow:
                print(json.dumps({"process": p.name, "host": p.host, "line": line}), flush=True)
            elif not c.as_json:
                print(f"{p.name:>{width}} | {line}", flush=True)

    try:
        offsets: dict[str, int] = {}
        tails: dict[str, Any] = {}
        for p in procs:
            node = nodes[p.host]
            offsets[p.name] = node.ops.file_size(p.log_path) or 0  # before the tail: no line is missed
            text = node.ops.tail(p.log_path, lines) or ""
            tails[p.name] = {"host": p.host, "log": node.path(p.log_path), "lines": text.splitlines()}
            if not c.as_json:
                show(p, text)
        if c.as_json and follow:
            print(json.dumps({"processes": tails}), flush=True)
        elif c.as_json:
            c.emit_json({"processes": tails})
        while follow:
            time.sleep(0.5)
            for p in procs:
                data = nodes[p.host].ops.read_from(p.log_path, offsets[p.name])
                complete = data.rfind(b"\n") + 1
                if not complete:
                    continue
                offsets[p.name] += complete
                show(p, data[:complete].decode(errors="replace"))
    except KeyboardInterrupt:
        pass
    finally:
        close_all(nodes)
    return 0


# ------------------------------------------------------------------------------------------------
# demo


def demo_command(c: Ctx, plan: Plan, *, keep: bool = False) -> int:
    con = c.console()
    con.print(f"[bold]demo[/] on cluster [cyan]{plan.cluster}[/] ({c.inventory_path})")
    code = up(c, plan)
    if code:
        return code
    verdict = 0
    try:
        from .scenarios import runner

        for scenario in ("reuse", "reuse-2node"):
            verdict = runner.worst_exit([verdict, runner.run_command(c, scenario, list_=False, overrides=[]) or 0])
    finally:
        if not keep:
            down_command(c, plan, collect=True)
    con.print("[bold green]demo passed[/]" if verdict == 0 else "[bold magenta]demo inconclusive[/] (exit 3)"
              if verdict == 3 else f"[bold red]demo failed[/] (exit {verdict})")
    return verdict
