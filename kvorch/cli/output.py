"""What the longer commands show: rich tables and lines built from the library's results.
The only place (with progress.py, views.py and main.py) that imports rich. ``status`` and
``preflight`` print plain text (plain.py): a short command should not pay rich's imports."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from ..fmt import human_bytes as _human


def print_down(con: Console, cluster: str, data: dict[str, Any]) -> None:
    for name, r in data["stopped"].items():
        con.print(f"{name:>14} on {r.get('host', '?')}: {r['result']}" + (f" ({r['seconds']} s)" if "seconds" in r else ""))
    for host, msg in data["unreachable"].items():
        con.print(f"[red]{host}: unreachable, nothing stopped there:[/] {msg}")
    for item in data["leftovers"]:
        con.print(f"[red]still there:[/] {item}")
    if not data["unreachable"] and not data["leftovers"]:
        con.print(f"cluster [cyan]{cluster}[/] is down: nothing of ours runs, every planned port is free")


def print_scenarios(con: Console, rows: list[dict[str, Any]]) -> None:
    t = Table(title="scenarios", title_justify="left")
    for col in ("name", "kind", "seed", "description"):
        t.add_column(col, overflow="fold")
    for r in rows:
        t.add_row(r["name"], r["kind"], r["seed"] or "", r["description"])
    con.print(t)


def print_restart(con: Console, report: dict[str, Any]) -> None:
    for name, r in report.items():
        con.print(f"{name}: pid {r.get('old_pid')} → {r.get('new_pid')} (stopped: {r.get('stopped')}; "
                  f"healthy after {r.get('healthy_after_s')} s; old log {r.get('previous_log')})")


def print_result(con: Console, result: dict[str, Any]) -> None:
    t = Table(title=f"{result['scenario']}: {result['description']}", title_justify="left", show_lines=False)
    t.add_column("check", overflow="fold")
    t.add_column("", justify="center")
    t.add_column("measured", overflow="fold")
    for ch in result["checks"]:
        v = ch.get("verdict") or ("skip" if ch["passed"] is None else "pass" if ch["passed"] else "fail")
        mark = ("[dim]skip[/]" if v == "skip" else "[green]pass[/]" if v == "pass"
                else "[yellow]warn[/]" if ch["severity"] == "warn" else "[magenta]INCONCLUSIVE[/]" if v == "inconclusive"
                else "[red]FAIL[/]")
        t.add_row(ch["name"], mark, ch["shown"])
    con.print(t)
    nums = Table(box=None, show_header=False, padding=(0, 2))
    nums.add_column("number")
    nums.add_column("value", justify="right")
    for k, v in result["headline"].items():
        if v is not None:
            nums.add_row(k, str(v))
    con.print(nums)
    for n in result.get("notes", []):
        con.print(f"[yellow]note:[/] {n}")
    colour = {"pass": "green", "inconclusive": "magenta"}.get(result["verdict"], "red")
    con.print(f"[bold {colour}]{result['scenario']}: {result['verdict'].upper()}[/] in {result['seconds']:.1f} s → {result['dir']}")


def print_collect(con: Console, summary: dict[str, Any]) -> None:
    from rich.markup import escape as esc
    from rich.table import Table

    if summary.get("superseded_by"):
        con.print(f"[yellow]run {summary['run_id']} was followed by run {summary['superseded_by']}:[/] the hosts now "
                  "hold that run's logs and files, so nothing was pulled; the report was rebuilt from what is here")
    t = Table(title=f"collect run {summary['run_id']} → {summary['run_dir']}", title_justify="left")
    for col in ("process", "host", "now", "exit", "log here", "pulled now", "note"):
        t.add_column(col, overflow="fold")
    for name, p in summary["processes"].items():
        log = p.get("log") or {}
        note = []
        if p.get("exit_note"):
            note.append(f"[yellow]{esc(p['exit_note'])}[/]")
        if log.get("compressed"):
            note.append("gzip")
        if log.get("capped"):
            note.append(f"capped, {_human(log.get('skipped_bytes'))} skipped, tail in {log.get('tail_file')}")
        if log.get("redactions"):
            note.append(f"{log['redactions']} secret(s) redacted")
        if log.get("restarted"):
            note.append("log restarted on the host: previous copy kept")
        if p.get("earlier_logs"):
            note.append(f"+ {len(p['earlier_logs'])} earlier log(s) (restarts)")
        if log.get("error") or (log.get("status") or "").startswith("not collected"):
            note.append(f"[red]{esc(str(log.get('error') or log.get('status')))}[/]")
        st = p.get("state_now") or "?"
        colour = "green" if st == "running" else ("red" if "unreachable" in st else "yellow")
        t.add_row(esc(name), esc(p.get("host") or "?"), f"[{colour}]{esc(st)}[/]",
                  "-" if p.get("exit_code") is None else str(p["exit_code"]),
                  _human(log.get("bytes_here")), _human(log.get("pulled")), "; ".join(note))
    con.print(t)
    bad_metrics = [n for n, m in summary["metrics"].items() if not m.get("ok") and m.get("ok") is not None]
    con.print(f"metrics: {len(summary['metrics']) - len(bad_metrics)} snapshots"
              + (f" ([yellow]not reachable: {', '.join(bad_metrics)}[/])" if bad_metrics else ""))
    rep = summary.get("report") or {}
    if rep.get("html"):
        con.print(f"report: {rep['html']}  ({rep.get('md')})")
    elif rep.get("error"):
        con.print(f"[yellow]report not built:[/] {rep['error']}")
    scan = summary["secret_scan"]
    if scan.get("fixed"):
        con.print(f"[yellow]secrets scrubbed from:[/] {', '.join(scan['fixed'])}")
    if summary["complete"]:
        con.print(f"[bold green]complete[/] in {summary['seconds']:.2f} s, {_human(summary['bytes_pulled'])} pulled")
    else:
        con.print(f"[bold red]PARTIAL[/] in {summary['seconds']:.2f} s: what could not be collected:")
        for r in summary["partial_reasons"]:
            con.print(f"  [red]•[/] {esc(r)}")


def print_report(con: Console, info: dict[str, Any], rd: Any) -> None:
    for v in info["verdicts"]:
        colour = {"pass": "green", "inconclusive": "magenta"}.get(v["verdict"], "red")
        con.print(f"  {v['name']:<28} [{colour}]{v['verdict'].upper()}[/]  ({v['checks']} checks, {v['failed']} failed"
                  + (f", {v['skipped']} skipped" if v["skipped"] else "") + ")")
    if not info["verdicts"]:
        con.print("  (no scenario was run in this run)")
    if info["complete"] is False:
        con.print("[bold red]the collect of this run was PARTIAL[/]: see the report's first section")
    con.print(f"report: {info['html']}\n        {info['md']}  ({len(info['plots'])} plots in {rd}/plots/)")


def print_compare(con: Console, a: Any, b: Any, res: dict[str, Any]) -> None:
    from ..report import _fmt

    from rich.markup import escape as esc

    con.print(f"A = {a.run_id}  ({a.dir})\nB = {b.run_id}  ({b.dir})")
    for name, s in res["scenarios"].items():
        t = Table(title=esc(f"{name}: A {s['a_verdict'].upper()} · B {s['b_verdict'].upper()}"), title_justify="left")
        t.add_column("headline")
        t.add_column("A", justify="right")
        t.add_column("B", justify="right")
        t.add_column("B/A", justify="right")
        t.add_column("B − A of the median [95 % CI]", justify="right")
        t.add_column("significant")
        for h in s["headline"]:
            d = ("–" if h.get("diff") is None else
                 f"{h['diff']:+.3g} [{h['diff_low']:+.3g}, {h['diff_high']:+.3g}]")
            sig = "–" if h.get("significant") is None else ("[bold]yes[/]" if h["significant"] else "no")
            t.add_row(esc(str(h["name"])), esc(_fmt(h["a"], 2)), esc(_fmt(h["b"], 2)),
                      "–" if h["b_over_a"] is None else f"{h['b_over_a']:.2f}×", esc(d), sig)
        con.print(t)
        ct = Table(show_header=True, box=None, padding=(0, 2))
        ct.add_column("check", overflow="fold")
        ct.add_column("A")
        ct.add_column("B")

        marks = {"pass": "[green]pass[/]", "fail": "[red]FAIL[/]", "warn": "[yellow]warn[/]", "skip": "[dim]skip[/]",
                 "absent": "–", "inconclusive": "[magenta]INCONCLUSIVE[/]"}
        for ch in s["checks"]:
            ct.add_row(esc(ch["name"]), marks[ch["a"]], marks[ch["b"]])
        con.print(ct)
        if s["plot"]:
            con.print(f"plot: {s['plot']}")
    if res["config_diff"]:
        dt_ = Table(title="configuration differences", title_justify="left")
        dt_.add_column("setting", overflow="fold")
        dt_.add_column("A", overflow="fold")
        dt_.add_column("B", overflow="fold")
        for d in res["config_diff"][:60]:
            dt_.add_row(esc(d["key"]), esc(str(d["a"])), esc(str(d["b"])))
        con.print(dt_)
        if len(res["config_diff"]) > 60:
            con.print(f"… {len(res['config_diff']) - 60} more in {res['out_dir']}/compare.json")
    elif a.manifest and b.manifest:
        con.print("configuration: no difference in the inventory, argv or env")
    else:
        con.print("[yellow]configuration not compared:[/] run `orchestrate collect` for both runs first")
    for side, names in (("A", res["only_in_a"]), ("B", res["only_in_b"])):
        if names:
            con.print(f"only in {side}: {', '.join(names)}")
