"""Human-readable views (rich) of plans, checks and status. JSON views come from the models."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from ..render import shell_argv

if TYPE_CHECKING:
    from ..plan import Plan


def print_plan(con: Console, plan: Plan, *, verbose: int = 0) -> None:
    con.print(f"[bold]Plan[/] for cluster [cyan]{plan.cluster}[/]: topology {plan.topology}, engine {plan.engine}, "
              f"model {plan.model}")
    for stage_no, stage in enumerate(plan.stages()):
        names = ", ".join(f"{p.name}@{p.host}" for p in stage)
        con.print(f"  stage {stage_no}: start {names} in parallel, wait until healthy")
    for host in plan.hosts:
        con.print()
        con.print(f"[bold]host {host.name}[/] ({host.address}, {host.connector}) workdir {host.workdir}, python {host.python}")
        files = Table(show_header=True, header_style="bold", box=None, padding=(0, 2))
        files.add_column("file")
        files.add_column("mode")
        files.add_column("bytes", justify="right")
        files.add_column("sha256")
        for f in host.files:
            files.add_row(f.path + (" (secret)" if f.secret else ""), oct(f.mode)[2:], str(len(f.content)), f.sha256[:12])
        con.print(files)
        if host.bundle:
            from ..bundle import local_bundle

            b = local_bundle()
            con.print(f"  bundle: {b.dir}/ ({len(b.files)} files, {b.size} bytes: "
                      + ", ".join(f"{d} {v}" for d, v in b.versions) + "), shipped by `up` unless there already",
                      markup=False, soft_wrap=True)
        for cmd in host.prepare:
            con.print(f"  prepare: {shell_argv(cmd)}", markup=False, soft_wrap=True)
        for p in host.processes:
            con.print(f"  [green]{p.name}[/] ({p.kind}: {p.program}, role {p.role}, stage {p.stage})")
            con.print(f"    ports {', '.join(map(str, p.ports))}; health {p.health_url}; log {p.log_path}")
            env = " ".join(f"{k}={v}" for k, v in p.env.items())
            if p.secret_env:
                env += " " + " ".join(f"{k}=***" for k in p.secret_env)
            con.print(f"    env  {env}", markup=False, soft_wrap=True)
            con.print(f"    argv {shell_argv(p.argv)}", markup=False, soft_wrap=True)
        if verbose:
            for f in host.files:
                con.print(f"  --- {f.path} ---", markup=False)
                con.print(f.public()["content"], markup=False, soft_wrap=True)
