"""Plain-text tables for the short commands (``status``, ``preflight``, ``up``): no rich.

rich costs ~60–100 ms of imports, a fifth of a cold ``status``; these tables need none of it.
Cells may carry ANSI styles (``click.style``); widths count visible characters only, and
``click.echo`` drops the styles when the output is not a terminal. Columns named in ``wrap``
fold at word boundaries when the table is wider than ``width``."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_GAP = "  "
_MIN_WRAPPED = 12


def visible_len(text: str) -> int:
    return len(_ANSI.sub("", text))


def _pad(text: str, width: int) -> str:
    return text + " " * (width - visible_len(text))


def _fit(natural: list[int], wrap: set[int], width: int | None) -> list[int]:
    """Column widths: the natural ones, the wrappable ones narrowed (widest first) until the
    table fits ``width`` or each is at its minimum."""
    widths = list(natural)
    if width is None:
        return widths
    total = lambda: sum(widths) + len(_GAP) * (len(widths) - 1)  # noqa: E731
    while total() > width:
        flexible = [i for i in wrap if widths[i] > _MIN_WRAPPED]
        if not flexible:
            break
        i = max(flexible, key=lambda j: widths[j])
        widths[i] = max(_MIN_WRAPPED, widths[i] - (total() - width))
    return widths


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, title: str | None = None,
          width: int | None = None, wrap: Sequence[str] = (), style_header=None) -> str:
    """The rows under their headers, columns left-aligned and two spaces apart."""
    n = len(headers)
    wrap_idx = {headers.index(h) for h in wrap if h in headers}
    natural = [max([visible_len(headers[i])] + [visible_len(r[i]) for r in rows]) for i in range(n)]
    widths = _fit(natural, wrap_idx, width)
    out: list[str] = []
    if title:
        out.append(title)
    head = [(_pad(h, widths[i]) if style_header is None else style_header(_pad(h, widths[i])))
            for i, h in enumerate(headers)]
    out.append(_GAP.join(head).rstrip())
    out.append(_GAP.join("─" * w for w in widths))
    for r in rows:
        cells = [textwrap.wrap(r[i], widths[i], break_on_hyphens=False) or [""]
                 if i in wrap_idx and visible_len(r[i]) > widths[i] else [r[i]] for i in range(n)]
        for k in range(max(len(c) for c in cells)):
            out.append(_GAP.join(_pad(c[k] if k < len(c) else "", widths[i]) for i, c in enumerate(cells)).rstrip())
    return "\n".join(out)


# ---- the views ------------------------------------------------------------------------------


def _style(text: str, colour: str | None = None, **kw) -> str:
    import click

    return click.style(text, fg=colour, **kw)


def format_status(data: dict, width: int | None = None) -> str:
    """``orchestrate status``: one row per process, then one line per host that failed."""
    rows = []
    for r in data["processes"]:
        if r["process"] == "*":
            continue
        st = r["state"]
        colour = "green" if st == "running" else ("yellow" if st in ("absent",) else "red")
        shown = _style(st, colour) + (" " + _style(str(r["detail"]), dim=True)
                                      if r.get("detail") and st != "running" else "")
        up_s = r.get("uptime_s")
        rows.append([r["process"], r["host"], str(r.get("pid") or "-"), str(r.get("server_pid") or "-"),
                     str(r.get("port") or "-"), shown, f"{up_s:.0f} s" if up_s is not None else "-",
                     (r.get("last_log_line") or r.get("error") or "")[:120]])
    title = f"cluster {data['cluster']}" + (f" (run {data['run_id']})" if data.get("run_id") else "")
    out = [table(["process", "host", "pid", "serves", "port", "state", "uptime", "last log line"], rows,
                 title=title, width=width, wrap=["last log line"], style_header=lambda h: _style(h, bold=True))
           ] if rows else [title]
    for r in data["processes"]:
        if r["process"] == "*":
            out.append(_style(f"{r['host']}:", "red") + f" {r.get('error') or r['state']}")
    return "\n".join(out)


def format_checks(checks: list, width: int | None = None) -> str:
    """``orchestrate preflight``: one row per check (host, check, ok/warn/fail, detail, fix)."""
    colour = {"ok": "green", "warn": "yellow", "fail": "red"}
    rows = [[ch.host, ch.name, _style(ch.status, colour.get(ch.status)), ch.detail, ch.hint or ""] for ch in checks]
    return table(["host", "check", "", "detail", "fix"], rows, title="preflight", width=width,
                 wrap=["detail", "fix"], style_header=lambda h: _style(h, bold=True))


def format_up(plan, data: dict, verbose: int = 0, width: int | None = None) -> str:
    """``orchestrate up``: one row per process (pid, ports, health URL, log), the phases with -v."""
    if not data.get("changed", True):
        return (f"cluster {_style(plan.cluster, 'cyan')} is already up and healthy (run {data['run_id']}): "
                "nothing changed")
    procs = data.get("processes") or {}
    rows = []
    for p in plan.processes():
        s = procs.get(p.name)
        rows.append([p.name, p.host, str(s["pid"] if s else "?"), ",".join(map(str, p.ports)), p.health_url,
                     s["log"] if s else p.log_path])
    out = [table(["process", "host", "pid", "ports", "health", "log"], rows,
                 title=f"cluster {plan.cluster} is up (run {data['run_id']}, {data['seconds']:.1f} s)", width=width,
                 wrap=["health", "log"], style_header=lambda h: _style(h, bold=True))]
    if verbose:
        out.append(_style("phases: " + ", ".join(f"{k} {v:.2f} s" for k, v in data.get("phases_s", {}).items()), dim=True))
        for host, b in (data.get("bundle") or {}).items():
            out.append(_style(f"bundle {b['sha256'][:12]} on {host}: "
                              + (f"sent {b['bytes']} bytes" if b["uploaded"] else "there already"), dim=True))
    return "\n".join(out)


def terminal_width(err: bool = False) -> int | None:
    """The terminal's width when that stream is one, else None (no folding: pipes and files
    get whole lines)."""
    import os
    import shutil
    import sys

    stream = sys.stderr if err else sys.stdout
    try:
        if not stream.isatty():
            return None
    except (AttributeError, ValueError):
        return None
    return shutil.get_terminal_size((100, 24)).columns if os.environ.get("COLUMNS") is None else int(os.environ["COLUMNS"])
