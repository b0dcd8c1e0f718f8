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

from .errors import UserError

if TYPE_CHECKING:
    from .inventory import Inventory
    from .plan import Plan

DEFAULT_INVENTORY = "inventory.yaml"


@dataclass
class Ctx:
    inventory_path: str
    ssh_config: str | None
    verbose: int
    as_json: bool
    _inventory: Any = field(default=None, repr=False)

    def inventory(self) -> Inventory:
        if self._inventory is None:
            from .inventory import load_inventory

            self._inventory = load_inventory(self.inventory_path)
        return self._inventory

    def plan(self) -> Plan:
        from .plan import build_plan

        return build_plan(self.inventory())

    def console(self):  # rich Console on stdout (stderr when --json keeps stdout for JSON)
        from rich.console import Console

        return Console(stderr=self.as_json, highlight=False, soft_wrap=True)

    def emit_json(self, data: Any) -> None:
        click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


pass_ctx = click.make_pass_decorator(Ctx)


def _json_option(f):
    """`--json` accepted after the command too (`orchestrate status --json`)."""

    def callback(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
        if value:
            ctx.find_object(Ctx).as_json = True

    return click.option("--json", "as_json", is_flag=True, expose_value=False, callback=callback,
                        help="print JSON for scripts")(f)


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
    ctx.obj = Ctx(inventory_path=inventory_path, ssh_config=ssh_config, verbose=verbose, as_json=as_json)


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
    from .export.helm import export_helm, write_helm

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
    if not dry_run:
        from .nodes import connect_early

        connect_early(c.inventory(), c.ssh_config)  # the handshakes overlap building the plan
    plan = c.plan()
    if dry_run:
        if c.as_json:
            c.emit_json(plan.public())
        else:
            _print_plan(c, plan)
        return
    from . import cluster

    result = cluster.up(c, plan, timeout=timeout, preflight=not skip_preflight)
    _finish(c, result)


@cli.command()
@_json_option
@pass_ctx
def preflight(c: Ctx) -> None:
    """Check every host: reachable, versions equal, PYTHONHASHSEED, ports free, GPUs, disk."""
    from . import preflight as preflight_mod
    from .nodes import connect_early

    connect_early(c.inventory(), c.ssh_config)  # the handshakes overlap building the plan

    _finish(c, preflight_mod.preflight_command(c, c.plan()))


@cli.command()
@_json_option
@pass_ctx
def status(c: Ctx) -> None:
    """Per process: running / dead / unhealthy, uptime, port, last log line."""
    from .nodes import connect_early

    connect_early(c.inventory(), c.ssh_config)  # the handshakes overlap building the plan
    from . import cluster

    _finish(c, cluster.status_command(c, c.plan()))


@cli.command()
@click.argument("name", required=False)
@click.option("-f", "--follow", is_flag=True, help="keep printing new lines (Ctrl-C to stop)")
@click.option("-n", "--lines", default=20, show_default=True, help="lines to show from the end of each log")
@_json_option
@pass_ctx
def logs(c: Ctx, name: str | None, follow: bool, lines: int) -> None:
    """Tail one process's log (or all of them), each line prefixed by the process name."""
    from . import cluster

    _finish(c, cluster.logs_command(c, c.plan(), name=name, follow=follow, lines=lines))


@cli.command()
@click.option("--no-collect", is_flag=True, help="do not collect logs and metrics before stopping")
@click.option("--grace", default=10.0, show_default=True, help="seconds between SIGTERM and SIGKILL")
@_json_option
@pass_ctx
def down(c: Ctx, no_collect: bool, grace: float) -> None:
    """Collect, then stop everything this tool started (and only that) on every host."""
    from . import cluster

    _finish(c, cluster.down_command(c, c.plan(), collect=not no_collect, grace=grace))


@cli.command()
@click.argument("names", nargs=-1, required=True)
@click.option("--timeout", default=600.0, show_default=True, help="seconds to wait for each to be healthy again")
@click.option("--grace", default=10.0, show_default=True, help="seconds between SIGTERM and SIGKILL")
@_json_option
@pass_ctx
def restart(c: Ctx, names: tuple[str, ...], timeout: float, grace: float) -> None:
    """Restart processes by name (their old logs are kept beside the new ones)."""
    from .restart import restart as restart_fn

    report = restart_fn(c, c.plan(), list(names), timeout=timeout, grace=grace)
    if c.as_json:
        c.emit_json(report)
        return
    con = c.console()
    for name, r in report.items():
        con.print(f"{name}: pid {r.get('old_pid')} → {r.get('new_pid')} (stopped: {r.get('stopped')}; "
                  f"healthy after {r.get('healthy_after_s')} s; old log {r.get('previous_log')})")


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
    from .scenarios import runner

    _finish(c, runner.run_command(c, scenario, list_=list_, overrides=list(overrides)))


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
    from . import collect as collect_mod

    opts = collect_mod.CollectOptions.from_env(max_log_bytes=max_log_size, compress_over=compress_over,
                                               report=False if no_report else None)
    _finish(c, collect_mod.collect_command(c, c.plan(), run_id=run_id, options=opts))


@cli.command()
@click.argument("run_dir", required=False)
@_json_option
@pass_ctx
def report(c: Ctx, run_dir: str | None) -> None:
    """Rebuild report.md and report.html of a run folder (default: logs/latest)."""
    from . import report as report_mod

    _finish(c, report_mod.report_command(c, run_dir))


@cli.command()
@click.argument("run_a")
@click.argument("run_b")
@_json_option
@pass_ctx
def compare(c: Ctx, run_a: str, run_b: str) -> None:
    """Compare two runs side by side (same scenario, different config)."""
    from . import report as report_mod

    _finish(c, report_mod.compare_command(c, run_a, run_b))


@cli.command()
@click.option("--keep", is_flag=True, help="leave the cluster running afterwards")
@_json_option
@pass_ctx
def demo(c: Ctx, keep: bool) -> None:
    """up → verification scenarios → collect → down, on the inventory (default: the local sim cluster)."""
    from . import cluster

    src = click.get_current_context().parent.get_parameter_source("inventory_path")  # type: ignore[union-attr]
    if src is not None and src.name == "DEFAULT" and not os.environ.get("ORCHESTRATE_INVENTORY"):
        c.inventory_path = str(Path(__file__).resolve().parent.parent / "inventories" / "local.yaml")
    _finish(c, cluster.demo_command(c, c.plan(), keep=keep))


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
    from . import sweep as sweep_mod

    con = c.console()
    res = sweep_mod.run_sweep(sweep_mod.find(file), ssh_config=c.ssh_config, out_dir=Path(out_dir) if out_dir else None,
                              resume=resume, dry_run=dry_run, progress=None if c.as_json else con.print)
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
            con.print(f"best {name} ({b['goal']}): {b['point']} = {b['mean']:.4g}")
        con.print(f"[bold]sweep {res.name}[/]: {len(res.points)} points in {res.wall_s:.1f} s "
                  f"(sum of points {res.points_s:.1f} s) → {res.report}")


def _finish(c: Ctx, result: Any) -> None:
    """Commands return an exit code (int) or None."""
    if isinstance(result, int) and result != 0:
        sys.exit(result)


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
    """SIGTERM / SIGHUP act as Ctrl-C: every command rolls back or stops cleanly on KeyboardInterrupt."""
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> None:
    import signal

    verbose = sum(1 for a in (argv if argv is not None else sys.argv[1:]) if a in ("-v", "--verbose") or a.startswith("-vv"))
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    if verbose:
        import logging

        logging.basicConfig(level=logging.DEBUG if verbose > 1 else logging.WARNING, stream=sys.stderr,
                            format="%(levelname)s %(name)s: %(message)s")
    try:
        try:
            cli.main(args=argv, prog_name="orchestrate", standalone_mode=False)
        finally:  # the work is done (or rolled back): another Ctrl-C must not cut the last words short
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_IGN)
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
