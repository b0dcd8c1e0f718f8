"""`orchestrate run SCENARIO`: load, run against the running cluster, check, write, print.

Exit codes: 0 every check passed, 1 a check failed, 2 the scenario could not run (with the reason),
3 inconclusive (a timing check's interval straddles its threshold; the result says what to change).
Results go to ``logs/<run-id>/scenarios/<scenario>-<n>/``: result.json (results, checks, headline),
requests.jsonl (per-request records), evidence.json (per-request log evidence), samples.jsonl.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from ..runstate import load_state, now, save_state
from . import spec as spec_mod
from .verdicts import judge_checks

if TYPE_CHECKING:
    from ..cli import Ctx

#: the exit code of each verdict (2 is "could not run", raised as a UserError)
VERDICT_EXIT = {"pass": 0, "fail": 1, "inconclusive": 3}


def worst_exit(codes: list[int]) -> int:
    """Several scenario runs' exit codes as one: a failure (1) beats inconclusive (3) beats pass (0)."""
    for code in (1, 2, 3):
        if code in codes:
            return code
    return max(codes, default=0)


def list_scenarios(c: Ctx) -> int:
    rows = []
    for name, path in sorted(spec_mod.available().items()):
        try:
            s, _ = spec_mod.load(path)
            rows.append({"name": name, "kind": s.kind, "seed": s.seed, "description": s.description, "path": str(path)})
        except UserError as e:
            rows.append({"name": name, "kind": "?", "seed": None, "description": f"(invalid: {e.message})", "path": str(path)})
    if c.as_json:
        c.emit_json(rows)
        return 0
    from rich.table import Table

    t = Table(title="scenarios", title_justify="left")
    for col in ("name", "kind", "seed", "description"):
        t.add_column(col, overflow="fold")
    for r in rows:
        t.add_row(r["name"], r["kind"], r["seed"] or "", r["description"])
    c.console().print(t)
    return 0


def _next_dir(base: Path, name: str) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    n = 1
    while (base / f"{name}-{n}").exists():
        n += 1
    d = base / f"{name}-{n}"
    d.mkdir()
    return d


def run_command(c: Ctx, scenario: str | None, *, list_: bool, overrides: list[str]) -> int:
    if list_ or scenario is None:
        if scenario is None and not list_:
            raise UserError("which scenario?", hint="`orchestrate run --list` shows them; e.g. `orchestrate run reuse`")
        return list_scenarios(c)
    path = spec_mod.find(scenario)
    spec, params = spec_mod.load(path, overrides)
    try:
        return _run(c, spec, params)
    except UserError as e:
        if e.exit_code == 2 and not c.as_json:
            c.console().print(f"[bold red]{spec.name}: could not run[/]: {e.message}")
        raise


def _run(c: Ctx, spec: spec_mod.ScenarioSpec, params: Any) -> int:
    from ..cluster import http_health
    from ..nodes import close_all, open_nodes
    from ..metrics import save_jsonl
    from .kinds import KINDS
    from .workbench import ScenarioCannotRun, Workbench

    inv = c.inventory()
    plan = c.plan()
    state = load_state(plan.cluster)
    if state is None:
        raise ScenarioCannotRun(f"cluster {plan.cluster!r} is not up", hint="run `orchestrate up` first")
    sick = [p.name for p in plan.processes() if not http_health(p.health_url)[0]]
    if sick:
        raise ScenarioCannotRun(f"not healthy: {', '.join(sick)}", hint="`orchestrate status` and `orchestrate logs NAME` show why")
    out = _next_dir(state.run_dir() / "scenarios", spec.name)
    nodes, _ = open_nodes(inv, plan, c.ssh_config, names=sorted({p.host for p in plan.processes()}))
    random_weights = inv.tiny_model is not None or _made_by_tinymodel(nodes, plan, inv.model)
    wb = Workbench(inv, plan, nodes, out)
    con = c.console()
    started = now()
    t0 = time.monotonic()
    sampler = None
    try:
        if spec.sample_interval_s:
            sampler = wb.sampler(spec.sample_interval_s, max_duration_s=3600).start()
        with con.status(f"running {spec.name} ({spec.kind}) on cluster {plan.cluster}…", spinner="dots") if not c.as_json else _null():
            outcome = KINDS[spec.kind].run(wb, spec, params)
    finally:
        samples = sampler.stop() if sampler else []
        wb.close()
        close_all(nodes)
    took = time.monotonic() - t0

    env = {"topology": plan.topology, "engine": plan.engine,
           "random_weights": random_weights,  # a locally made model: its text means nothing
           **outcome.results, "params": params.model_dump()}
    trials = outcome.results.get("trials") if isinstance(outcome.results.get("trials"), list) else None
    checks, verdict = judge_checks(spec.checks, env, trials, outcome.results.get("calibration"))

    result = {"scenario": spec.name, "kind": spec.kind, "description": spec.description, "seed_doc": spec.seed,
              "cluster": plan.cluster, "run_id": state.run_id, "started_at": started, "seconds": round(took, 3),
              "params": params.model_dump(), "verdict": verdict, "checks": checks, "headline": outcome.headline,
              "results": outcome.results, "notes": wb.notes, "dir": str(out)}
    (out / "result.json").write_text(json.dumps(result, indent=2, default=str))
    with (out / "requests.jsonl").open("w") as fh:
        for r in outcome.records:
            fh.write(r.model_dump_json() + "\n")
    (out / "evidence.json").write_text(json.dumps(outcome.evidence, indent=2, default=str))
    if samples:
        save_jsonl(samples, out / "samples.jsonl")
    state = load_state(plan.cluster) or state  # a scenario may have restarted processes: keep their new pids
    state.scenario_runs.append(str(out.relative_to(state.run_dir())))
    save_state(state)

    if c.as_json:
        c.emit_json(result)
    else:
        print_result(con, result)
    return VERDICT_EXIT[verdict]


def _made_by_tinymodel(nodes: dict[str, Any], plan: Any, model: str) -> bool:
    """The model is a directory kvorch.tinymodel made (its marker file is there): random weights,
    given by path without ``tiny_model:``."""
    from ..tinymodel import MARKER

    if not model.startswith(("/", "~")):
        return False
    for e in plan.engines():
        node = nodes.get(e.host)
        if node is not None:
            try:
                return node.ops.file_size(node.path(f"{model.rstrip('/')}/{MARKER}")) is not None
            except Exception:  # noqa: BLE001 - unknown is "not random": the outputs check then runs
                return False
    return False


def print_result(con: Any, result: dict[str, Any]) -> None:
    from rich.table import Table

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


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: Any) -> None:
        return None
