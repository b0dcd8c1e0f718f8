"""The `orchestrate` command line: parse, call, print. Nothing else lives here.

Heavy modules (fabric, paramiko, httpx, matplotlib) are imported inside the commands that need
them, so ``orchestrate --help`` stays fast.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from ..errors import UserError
from ..session import Session

if TYPE_CHECKING:
    from ..plan import Plan

DEFAULT_INVENTORY = "inventory.yaml"


@dataclass
class Ctx(Session):
    """The library's :class:`~kvorch.session.Session` plus what only the command line has: -v,
    --json, the console, and rich progress as the events."""

    verbose: int = 0
    as_json: bool = False
    _console: Any = field(default=None, repr=False)

    def console(self):  # rich Console on stdout (stderr when --json keeps stdout for JSON)
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=self.as_json, highlight=False, soft_wrap=True)
        return self._console

    def kept_plan(self, *, make_state_root: bool = False) -> "Plan":
        """The plan (and the validated inventory, which :meth:`inventory` then returns) kept by
        the last command for exactly these inputs (:mod:`kvorch.plan_cache`), else built and
        kept. For status, preflight and up (none of them changes the plan or needs it twice:
        ``up`` records each file's sha256 in the run state, and a changed input misses)."""
        from .. import plan_cache

        def build() -> tuple[Any, Any]:
            inv = self.inventory()
            return inv, Session.plan(self)

        self._inventory, plan = plan_cache.load_or_build(self.inventory_path, build, make_state_root=make_state_root)
        return plan

    def inventory(self) -> Any:
        """As :meth:`Session.inventory`; a kept one (:meth:`kept_plan`) is unpickled only now."""
        from ..plan_cache import KeptInventory

        kept = self._inventory
        if kept is None or isinstance(kept, KeptInventory):
            skip_pydantic_plugin_scan()
            if kept is not None:
                self._inventory = kept.load()
        return Session.inventory(self)

    def start_events(self) -> None:
        from .progress import RichEvents

        self.events = RichEvents(self.console, quiet=self.as_json, verbose=self.verbose)

    def emit_json(self, data: Any) -> None:
        click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))

    def emit_text(self, text: str) -> None:
        """Plain text (click.style colours; dropped when stdout is not a terminal)."""
        click.echo(text)


pass_ctx = click.make_pass_decorator(Ctx)


def _json_option(f):
    """`--json` accepted after the command too (`orchestrate status --json`)."""

    def callback(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
        if value:
            ctx.find_object(Ctx).as_json = True

    return click.option("--json", "as_json", is_flag=True, expose_value=False, callback=callback,
                        help="print JSON for scripts")(f)


def skip_pydantic_plugin_scan() -> None:
    """The command line loads no pydantic plugins: finding them reads the entry points of every
    installed distribution (~50 ms in a venv with vLLM), once per start, for plugins (tracing,
    logfire) that have nothing to trace in a short command. ``PYDANTIC_DISABLE_PLUGINS`` set by
    the user is left to pydantic. (The environment is not touched: processes started on a
    local host inherit it unchanged.) The library, imported by a user's program, still loads them."""
    if "PYDANTIC_DISABLE_PLUGINS" in os.environ:
        return
    try:
        from pydantic.plugin import _loader
    except ImportError:  # pragma: no cover - a pydantic without plugin support
        return
    if getattr(_loader, "_plugins", {}) is None:
        _loader._plugins = {}  # what pydantic itself caches after a scan that found none


#: the commands that begin their SSH connections before anything else (:func:`_connect_first`)
CONNECTS_FIRST = frozenset({"status", "preflight", "up"})


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-i", "--inventory", "inventory_path", envvar="ORCHESTRATE_INVENTORY", default=DEFAULT_INVENTORY,
              show_default=True, help="inventory file [env ORCHESTRATE_INVENTORY]")
@click.option("--ssh-config", envvar="ORCHESTRATE_SSH_CONFIG", default=None,
              help="OpenSSH client config to read (default ~/.ssh/config) [env ORCHESTRATE_SSH_CONFIG]")
@click.option("-v", "--verbose", count=True, help="more detail (tracebacks, commands run)")
@click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")
@click.version_option(package_name="kvorch", prog_name="orchestrate")
@click.pass_context
def cli(ctx: click.Context, inventory_path: str, ssh_config: str | None, verbose: int, as_json: bool) -> None:
    """Bring up an LMCache + vLLM KV-cache-sharing cluster over SSH, prove the KV cache is
    reused, and bring back every log and number.

    \b
    Typical session:
      orchestrate up                 start controller + engines on every host
      orchestrate run reuse-2node    prove the decode engine reuses the prefill engine's KV cache
      orchestrate collect            pull logs, metrics, configs, versions into logs/<run-id>/
      orchestrate down               stop everything this tool started
    """
    if ctx.invoked_subcommand not in CONNECTS_FIRST:
        skip_pydantic_plugin_scan()  # (those commands do it once their connections are begun)
    ctx.obj = Ctx(inventory_path=inventory_path, ssh_config=ssh_config, verbose=verbose, as_json=as_json)
    ctx.call_on_close(lambda: getattr(ctx.obj.events, "close", lambda: None)())


# ------------------------------------------------------------------------------------------------
# render / plan


@cli.command()
@click.option("--out", "out_dir", default="rendered", show_default=True, type=click.Path(file_okay=False),
              help="directory to write into (one folder per host)")
@_json_option
@pass_ctx
def render(c: Ctx, out_dir: str) -> None:
    """Render every LMCache config and launch script, one folder per host. Touches no host."""
    plan = c.plan()
    written = []
    out = Path(out_dir)
    for host in plan.hosts:
        for f in host.files:
            target = out / host.name / f.path
            target.parent.mkdir(parents=True, exist_ok=True)
            content = f.public()["content"]
            target.write_text(content)
            target.chmod(f.mode if not f.secret else 0o600)
            written.append({"host": host.name, "path": str(target), "sha256": f.sha256, "secret": f.secret})
    if c.as_json:
        c.emit_json({"out": str(out), "files": written})
        return
    con = c.console()
    for w in written:
        note = "  (secret values redacted: `up` sends them to the host only)" if w["secret"] else ""
        con.print(f"wrote {w['path']}{note}")
    con.print(f"[bold]{len(written)} files[/] for {len(plan.hosts)} hosts in {out}/")


@cli.group("export")
def export_group() -> None:
    """The same cluster for another deployment target. Touches no host."""


@export_group.command("helm")
@click.option("--out", "out_dir", default="helm-export", show_default=True, type=click.Path(file_okay=False),
              help="folder for values.yaml and README.md (notes on what has no Kubernetes counterpart)")
@click.option("--repository", default="lmcache/vllm-openai", show_default=True, help="engine image repository")
@click.option("--tag", default="latest", show_default=True, help="engine image tag")
@_json_option
@pass_ctx
def export_helm_command(c: Ctx, out_dir: str, repository: str, tag: str) -> None:
    """Values for vLLM production-stack's vllm-stack chart (engines, LMCache, KV-aware router)."""
    from ..export.helm import export_helm, write_helm

    exp = export_helm(c.inventory(), c.plan(), repository=repository, tag=tag)
    files = write_helm(exp, out_dir)
    if c.as_json:
        c.emit_json({"out": out_dir, "files": [str(f) for f in files], "values": exp.values,
                     "notes": [n.model_dump() for n in exp.notes]})
        return
    con = c.console()
    for f in files:
        con.print(f"wrote {f}")
    con.print(f"[bold]{len(exp.values['servingEngineSpec']['modelSpec'])} engines[/] for {exp.chart}; "
              f"{len(exp.notes)} notes in {files[1]}")


def _print_plan(c: Ctx, plan: Plan) -> None:
    from .views import print_plan

    print_plan(c.console(), plan, verbose=c.verbose)


def _emit(c: Ctx, result: Any, show: Any) -> None:
    """--json: the result's JSON; else ``show(console, result)``. Exit 1 when the result is not ok."""
    if c.as_json:
        c.emit_json(result.to_json())
    else:
        show(c.console(), result)
    if not result.ok:
        sys.exit(1)


def _connect_first(c: Ctx, *, kept_plan: bool = False, pydantic: bool = True,
                   make_state_root: bool = False) -> Plan | None:
    """Begin the SSH handshakes first (the hosts' sshd and login shells then work while this
    process imports, validates and plans): to the hosts this very inventory file connected to
    last time, before it is validated, then to every host of the validated inventory. With
    ``kept_plan`` returns :meth:`Ctx.kept_plan` (read before the inventory is validated: a hit
    validates nothing, and the hosts to connect to are the kept plan's). ``pydantic=False``: the
    command needs no pydantic model (``status`` and ``preflight`` on a kept plan import none)."""
    from ..nodes import connect_early, connect_predicted

    connect_predicted(c.inventory_path, c.ssh_config)  # imports no pydantic: begun ~0.1 s sooner
    if pydantic:
        skip_pydantic_plugin_scan()
    plan = c.kept_plan(make_state_root=make_state_root) if kept_plan else None
    connect_early(plan if plan is not None else c.inventory(), c.ssh_config, inventory_path=c.inventory_path)
    return plan


def _emit_text(c: Ctx, result: Any, text: Any) -> None:
    """As :func:`_emit`, for results shown as plain text: ``text(result)`` (no rich)."""
    if c.as_json:
        c.emit_json(result.to_json())
    else:
        c.emit_text(text(result))
    if not result.ok:
        sys.exit(1)


# ------------------------------------------------------------------------------------------------
# lifecycle


@cli.command()
@click.option("--dry-run", is_flag=True, help="print the plan (files, processes, env, argv) and touch no host")
@click.option("--timeout", default=600.0, show_default=True, help="seconds to wait for each process to be healthy")
@click.option("--skip-preflight", is_flag=True, help="do not run the preflight checks first")
@_json_option
@pass_ctx
def up(c: Ctx, dry_run: bool, timeout: float, skip_preflight: bool) -> None:
    """Preflight, upload, start the controller, then the engines; wait until all are healthy."""
    if dry_run:
        skip_pydantic_plugin_scan()
        plan = c.plan()
        if c.as_json:
            c.emit_json(plan.public())
        else:
            _print_plan(c, plan)
        return
    # the plan kept for exactly these inputs (else built and kept: for the next up, status,
    # preflight): a hit neither parses, validates nor renders while the SSH shells start, and
    # with --skip-preflight nothing unpickles the kept inventory (no pydantic at all)
    plan = _connect_first(c, kept_plan=True, pydantic=not skip_preflight, make_state_root=True)
    assert plan is not None
    from .. import cluster
    from ..errors import PreflightFailed
    from .plain import format_checks, terminal_width

    c.start_events()
    try:
        result = cluster.up(c, plan, timeout=timeout, preflight=not skip_preflight)
    except PreflightFailed as e:
        if not c.as_json:
            c.emit_text(format_checks(e.checks, terminal_width()))
        raise
    from .plain import format_up  # (plain text: no rich on up's path)

    _emit_text(c, result, lambda r: format_up(plan, r.to_json(), c.verbose, terminal_width()))


@cli.command()
@_json_option
@pass_ctx
def preflight(c: Ctx) -> None:
    """Check every host: reachable, versions equal, PYTHONHASHSEED, ports free, GPUs, disk."""
    plan = _connect_first(c, kept_plan=True, pydantic=False)
    assert plan is not None
    from .. import preflight as preflight_mod
    from .plain import format_checks, terminal_width

    c.start_events()
    _emit_text(c, preflight_mod.preflight(c, plan), lambda r: format_checks(r.checks, terminal_width()))


@cli.command()
@_json_option
@pass_ctx
def status(c: Ctx) -> None:
    """Per process: running / dead / unhealthy, uptime, port, last log line."""
    plan = _connect_first(c, kept_plan=True, pydantic=False)
    assert plan is not None
    from .. import cluster
    from .plain import format_status, terminal_width

    c.start_events()
    _emit_text(c, cluster.status(c, plan), lambda r: format_status(r.to_json(), terminal_width()))


@cli.command()
@click.argument("name", required=False)
@click.option("-f", "--follow", is_flag=True, help="keep printing new lines (Ctrl-C to stop)")
@click.option("-n", "--lines", default=20, show_default=True, help="lines to show from the end of each log")
@_json_option
@pass_ctx
def logs(c: Ctx, name: str | None, follow: bool, lines: int) -> None:
    """Tail one process's log (or all of them), each line prefixed by the process name."""
    from .. import cluster

    c.start_events()
    plan = c.plan()
    if not follow:
        res = cluster.logs(c, plan, name=name, lines=lines)
        if c.as_json:
            c.emit_json(res.to_json())
            return
        width = max(len(n) for n in res.processes)
        for n, t in res.processes.items():
            for line in t["lines"]:
                print(f"{n:>{width}} | {line}", flush=True)
        return
    width = max(len(p.name) for p in plan.processes())
    # --json -f: first the tails as one object (as `logs --json` prints), then one JSON line per new line
    lines_of = cluster.follow(c, plan, name=name, lines=lines,
                              on_tail=(lambda t: print(json.dumps({"processes": t}), flush=True)) if c.as_json else None)
    try:
        for ll in lines_of:
            if c.as_json:
                if not ll.tail:
                    print(json.dumps({"process": ll.process, "host": ll.host, "line": ll.line}), flush=True)
            else:
                print(f"{ll.process:>{width}} | {ll.line}", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        lines_of.close()


@cli.command()
@click.option("--no-collect", is_flag=True, help="do not collect logs and metrics before stopping")
@click.option("--grace", default=10.0, show_default=True, help="seconds between SIGTERM and SIGKILL")
@_json_option
@pass_ctx
def down(c: Ctx, no_collect: bool, grace: float) -> None:
    """Collect, then stop everything this tool started (and only that) on every host."""
    from .. import cluster
    from .output import print_down

    c.start_events()
    plan = c.plan()
    _emit(c, cluster.down(c, plan, collect=not no_collect, grace=grace), lambda con, r: print_down(con, plan.cluster, r.to_json()))


@cli.command()
@click.argument("names", nargs=-1, required=True)
@click.option("--timeout", default=600.0, show_default=True, help="seconds to wait for each to be healthy again")
@click.option("--grace", default=10.0, show_default=True, help="seconds between SIGTERM and SIGKILL")
@_json_option
@pass_ctx
def restart(c: Ctx, names: tuple[str, ...], timeout: float, grace: float) -> None:
    """Restart processes by name (their old logs are kept beside the new ones)."""
    from ..restart import restart as restart_fn

    from .output import print_restart

    c.start_events()
    report = restart_fn(c, c.plan(), list(names), timeout=timeout, grace=grace)
    if c.as_json:
        c.emit_json(report)
        return
    print_restart(c.console(), report)


# ------------------------------------------------------------------------------------------------
# scenarios, collect, report


@cli.command(context_settings={"ignore_unknown_options": False})
@click.argument("scenario", required=False)
@click.option("--list", "list_", is_flag=True, help="list the scenarios with their descriptions")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a scenario parameter")
@_json_option
@pass_ctx
def run(c: Ctx, scenario: str | None, list_: bool, overrides: tuple[str, ...]) -> None:
    """Run a verification or benchmark scenario against the running cluster; print the verdict."""
    from ..scenarios import runner
    from .output import print_scenarios

    if list_ or scenario is None:
        if scenario is None and not list_:
            raise UserError("which scenario?", hint="`orchestrate run --list` shows them; e.g. `orchestrate run reuse`")
        rows = runner.list_scenarios()
        if c.as_json:
            c.emit_json(rows)
        else:
            print_scenarios(c.console(), rows)
        return
    c.start_events()
    sys.exit(_run_scenario(c, scenario, list(overrides)))


def _run_scenario(c: Ctx, scenario: str, overrides: list[str]) -> int:
    from ..scenarios import runner
    from .output import print_result

    spec, params = runner.load_scenario(scenario, overrides)
    try:
        result = runner.run_scenario(c, spec, params)
    except UserError as e:
        if e.exit_code == 2 and not c.as_json:
            c.console().print(f"[bold red]{spec.name}: could not run[/]: {e.message}")
        raise
    finally:
        getattr(c.events, "close", lambda: None)()
    if c.as_json:
        c.emit_json(result)
    else:
        print_result(c.console(), result)
    return runner.VERDICT_EXIT[result["verdict"]]


@cli.command()
@click.option("--run", "run_id", default=None, help="run id (default: the current or latest run)")
@click.option("--max-log-size", default=None, metavar="SIZE",
              help="cap per log file, e.g. 512M (env ORCHESTRATE_COLLECT_MAX_LOG_BYTES; default 512M)")
@click.option("--compress-over", default=None, metavar="SIZE",
              help="keep local log copies larger than this gzipped (env ORCHESTRATE_COLLECT_COMPRESS_OVER; default 8M)")
@click.option("--no-report", is_flag=True, help="do not rebuild report.md/html (faster)")
@_json_option
@pass_ctx
def collect(c: Ctx, run_id: str | None, max_log_size: str | None, compress_over: str | None, no_report: bool) -> None:
    """Pull logs, metrics, rendered configs and versions from every host into logs/<run-id>/."""
    from .. import collect as collect_mod

    from .output import print_collect

    opts = collect_mod.CollectOptions.from_env(max_log_bytes=max_log_size, compress_over=compress_over,
                                               report=False if no_report else None)
    c.start_events()
    summary = collect_mod.collect(c, c.plan(), run_id=run_id, options=opts)
    if c.as_json:
        c.emit_json(summary)
    else:
        print_collect(c.console(), summary)
    if not summary["complete"]:
        sys.exit(1)


@cli.command()
@click.argument("run_dir", required=False)
@_json_option
@pass_ctx
def report(c: Ctx, run_dir: str | None) -> None:
    """Rebuild report.md and report.html of a run folder (default: logs/latest)."""
    from .. import report as report_mod
    from ..runstate import find_run_dir
    from .output import print_report

    rd = find_run_dir(run_dir)
    info = report_mod.build_report(rd)
    if c.as_json:
        c.emit_json(info)
    else:
        print_report(c.console(), info, rd)


@cli.command()
@click.argument("run_a")
@click.argument("run_b")
@_json_option
@pass_ctx
def compare(c: Ctx, run_a: str, run_b: str) -> None:
    """Compare two runs side by side (same scenario, different config)."""
    from .. import report as report_mod
    from ..runstate import find_run_dir
    from .output import print_compare

    a, b = report_mod.load_run(find_run_dir(run_a)), report_mod.load_run(find_run_dir(run_b))
    res = report_mod.compare_runs(a, b)
    if c.as_json:
        c.emit_json(res)
    else:
        print_compare(c.console(), a, b, res)


@cli.command()
@click.option("--keep", is_flag=True, help="leave the cluster running afterwards")
@_json_option
@pass_ctx
def demo(c: Ctx, keep: bool) -> None:
    """up → verification scenarios → collect → down, on the inventory (default: the local sim cluster)."""

    src = click.get_current_context().parent.get_parameter_source("inventory_path")  # type: ignore[union-attr]
    if src is not None and src.name == "DEFAULT" and not os.environ.get("ORCHESTRATE_INVENTORY"):
        c.inventory_path = str(Path(__file__).resolve().parents[2] / "inventories" / "local.yaml")
    c.start_events()
    sys.exit(_demo(c, keep))


def _demo(c: Ctx, keep: bool) -> int:
    from .. import cluster
    from .output import print_down
    from .plain import format_up, terminal_width

    plan = c.plan()
    con = c.console()
    con.print(f"[bold]demo[/] on cluster [cyan]{plan.cluster}[/] ({c.inventory_path})")
    up_result = cluster.up(c, plan)
    if not c.as_json:
        c.emit_text(format_up(plan, up_result.to_json(), c.verbose, terminal_width()))
    from ..scenarios.runner import worst_exit

    codes: list[int] = []
    try:
        for scenario in ("reuse", "reuse-2node"):
            codes.append(_run_scenario(c, scenario, []))
    finally:
        if not keep:
            down = cluster.down(c, plan, collect=True)
            if not c.as_json:
                print_down(con, plan.cluster, down.to_json())
    verdict = worst_exit(codes)
    con.print("[bold green]demo passed[/]" if verdict == 0 else "[bold magenta]demo inconclusive[/] (exit 3)"
              if verdict == 3 else f"[bold red]demo failed[/] (exit {verdict})")
    return verdict


# ------------------------------------------------------------------------------------------------


@cli.command()
@click.argument("file")
@click.option("--dry-run", is_flag=True, help="list the points and the restarts each needs; touch no host")
@click.option("--resume", is_flag=True, help="skip the points (and trials) a previous run of this sweep finished")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False), help="sweep folder (default logs/sweeps/NAME)")
@_json_option
@pass_ctx
def sweep(c: Ctx, file: str, dry_run: bool, resume: bool, out_dir: str | None) -> None:
    """Run a sweep file (sweeps/*.yaml): factors over inventory settings and scenario parameters,
    trials per point; only processes whose rendered files changed are restarted between points."""
    from .. import sweep as sweep_mod

    con = c.console()
    c.start_events()
    res = sweep_mod.run_sweep(sweep_mod.find(file), ssh_config=c.ssh_config, out_dir=Path(out_dir) if out_dir else None,
                              resume=resume, dry_run=dry_run, progress=None if c.as_json else con.print, events=c.events)
    if c.as_json:
        c.emit_json(res.model_dump())
        return
    for p in res.points:
        lv = ", ".join(f"{k}={v}" for k, v in p.levels.items())
        if res.dry_run:
            con.print(f"{p.id}: {lv}: restart {', '.join(p.restarted) or 'nothing'}"
                      + (f" ({p.restart_reason})" if p.restart_reason else ""))
    if not res.dry_run:
        for name, b in res.best.items():
            con.print(f"best {name} ({b['goal']}): {b['point']} = {b['median']:.4g}")
        con.print(f"[bold]sweep {res.name}[/]: {len(res.points)} points in {res.wall_s:.1f} s "
                  f"(sum of points {res.points_s:.1f} s) → {res.report}")


def _fail(e: UserError, verbose: int) -> NoReturn:
    from rich.console import Console

    con = Console(stderr=True, highlight=False)
    con.print(f"[bold red]error:[/] {e.message}", markup=True, soft_wrap=True)
    for d in e.details:
        con.print(f"  {d}", markup=False, soft_wrap=True)
    if e.hint:
        con.print(f"[yellow]hint:[/] {e.hint}", soft_wrap=True)
    if verbose:
        import traceback

        traceback.print_exception(e, file=sys.stderr)
    sys.exit(e.exit_code)


def _interrupt(signum: int, _frame: Any) -> None:
    """SIGINT / SIGTERM / SIGHUP: every command rolls back or stops cleanly on KeyboardInterrupt
    (noted too, for the places where Python swallows it)."""
    from .. import interrupts

    interrupts.note(signum)
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> None:
    """The command line. As the program (``argv`` None) it ends with :func:`_exit` (the
    interpreter's teardown skipped); called with ``argv`` (a test, a user's program) it returns or
    raises ``SystemExit`` as any function."""
    if argv is not None:
        _main(argv)
        return
    try:
        _main(None)
    except SystemExit as e:
        _exit(e.code)
    _exit(0)


def _exit(code: Any) -> NoReturn:
    """End the program as Python's own shutdown would, minus its teardown: non-daemon threads
    joined (``threading._shutdown``: executors too), the atexit handlers run (paramiko's transports,
    tempfile finalizers, logging), stdout and stderr flushed, then ``os._exit``. The teardown it
    skips (freeing every module and object, ~15 ms after the last line for `status` and `up`)
    leaves nothing behind a process exit does not clean. ``code`` as ``SystemExit.code``: None is
    0, a non-int is printed to stderr and is 1; a flush that fails (stdout closed: ``| head``) is
    120, as Python's."""
    import atexit
    import threading

    if code is None:
        code = 0
    elif not isinstance(code, int):
        try:
            print(code, file=sys.stderr)
        except Exception:  # noqa: BLE001 - stderr gone: the code still tells
            pass
        code = 1
    try:
        threading._shutdown()  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - as Python's shutdown: reported, not fatal
        pass
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:  # noqa: BLE001 - a closed pipe (`orchestrate status | head`)
            code = code or 120
    os._exit(code)


def _main(argv: list[str] | None) -> None:
    import gc
    import signal

    # Start-up allocates ~45k objects that live as long as the process (modules, models, their
    # schemas): with the default threshold (700) the collector walks them dozens of times while
    # importing (~10 % of a short command's CPU). The program (not a caller's process: argv given)
    # collects rarely instead, and leaves them out of every later collection, the one at exit
    # included (gc.freeze in the finally below).
    program = argv is None
    if program:
        gc.set_threshold(max(gc.get_threshold()[0], 50_000), *gc.get_threshold()[1:])

    verbose = sum(1 for a in (argv if argv is not None else sys.argv[1:]) if a in ("-v", "--verbose") or a.startswith("-vv"))
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    before = {sig: signal.getsignal(sig) for sig in signals}
    for sig in signals:
        signal.signal(sig, _interrupt)
    try:
        _run(argv, program, verbose, signals)
    finally:
        if not program:  # a caller's process gets its own handlers back (not SIG_IGN: processes it
            for sig, handler in before.items():  # starts afterwards would inherit "ignore SIGTERM")
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def _run(argv: list[str] | None, program: bool, verbose: int, signals: tuple[Any, ...]) -> None:
    import gc
    import signal

    if verbose:
        import logging

        logging.basicConfig(level=logging.DEBUG if verbose > 1 else logging.WARNING, stream=sys.stderr,
                            format="%(levelname)s %(name)s: %(message)s")
    try:
        try:
            cli.main(args=argv, prog_name="orchestrate", standalone_mode=False)
        finally:  # the work is done (or rolled back): another Ctrl-C must not cut the last words short
            for sig in signals:
                signal.signal(sig, signal.SIG_IGN)
            if program:
                gc.freeze()
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except UserError as e:
        _fail(e, verbose)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # a bug, not a user mistake: one line, the traceback with -v
        if verbose:
            raise
        click.echo(f"error: internal error: {type(e).__name__}: {e} (run with -v for the traceback)", err=True)
        sys.exit(70)
