"""`orchestrate sweep FILE`: a design of experiments over inventory settings and scenario parameters.

A sweep file (``sweeps/*.yaml``) names a base inventory and a scenario, factors with levels —
inventory settings by dotted path (``lmcache.chunk_size``, ``vllm.max_num_seqs``,
``engines.prefill.env.X``, ``engines.*.env.X``) or scenario parameters (``params.prefix_tokens``) —
a full factorial design or listed points, trials per point, and the metrics to tabulate (expressions
over the scenario's results). Per point: the inventory is re-rendered, only the processes whose
rendered files changed are restarted (the folder says which), the scenario runs ``trials`` times,
the run is collected. Every finished trial is a file: ``--resume`` skips them. The sweep folder
gets ``sweep.json``, ``table.csv``, ``report.md`` and one plot per metric and factor (the median over
the trials with its 95 % bootstrap interval, :mod:`kvorch.stats`, when trials > 1) and the best point per metric.
"""

from __future__ import annotations

import copy
import csv
import itertools
import json
import math
import re
import time
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from . import stats
from .errors import UserError
from .yamlfile import Problem, load_model

SWEEPS_DIR = Path(__file__).resolve().parent.parent / "sweeps"


class SweepError(UserError):
    """A sweep file is wrong, or a sweep folder does not fit the sweep."""


class Factor(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, description="column name (default: the last part of set)")
    set: str = Field(description="lmcache.chunk_size | vllm.max_num_seqs | engines.NAME.env.X | engines.*.env.X | "
                                 "params.prefix_tokens | any dotted inventory path")
    levels: list[Any] = Field(min_length=1)

    @property
    def label(self) -> str:
        return self.name or self.set.rsplit(".", 1)[-1]

    @property
    def is_param(self) -> bool:
        return self.set.startswith("params.")


class Metric(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    expr: str = Field(description="expression over the scenario's results, e.g. follow_up.ttft_s * 1000")
    goal: Literal["min", "max"] = "min"


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9._-]+$")
    description: str = ""
    inventory: str = Field(description="the base inventory (relative to the sweep file, then to here)")
    scenario: str = Field(description="a scenario name or file")
    params: dict[str, Any] = Field(default_factory=dict, description="scenario parameters for every point")
    factors: list[Factor] = Field(min_length=1)
    design: Literal["factorial", "points"] = "factorial"
    points: list[dict[str, Any]] = Field(default_factory=list, description="design: points — factor name → level")
    trials: int = Field(1, ge=1, le=50)
    max_points: int = Field(64, ge=1, description="refuse designs with more points (bounded sweeps)")
    metrics: list[Metric] = Field(min_length=1)
    up_timeout_s: float = Field(600.0, gt=0)
    collect: bool = Field(True, description="collect the run after each point")
    down_after: bool = Field(True, description="bring the cluster down when the sweep ends")

    @model_validator(mode="after")
    def _design(self) -> "SweepSpec":
        labels = [f.label for f in self.factors]
        if len(set(labels)) != len(labels):
            raise ValueError(f"factor names repeat: {labels}")
        if self.design == "points":
            if not self.points:
                raise ValueError("design: points needs points: [{factor: level, …}, …]")
            for i, pt in enumerate(self.points):
                unknown = set(pt) - set(labels)
                missing = set(labels) - set(pt)
                if unknown or missing:
                    raise ValueError(f"points[{i}]: " + "; ".join(
                        ([f"unknown factors {sorted(unknown)}"] if unknown else []) +
                        ([f"missing factors {sorted(missing)}"] if missing else [])) + f" (factors: {labels})")
        return self


class PointResult(BaseModel):
    id: str
    levels: dict[str, Any]
    restarted: list[str] = Field(default_factory=list)
    restart_reason: str = ""
    restart_s: float | None = None
    trials: list[dict[str, Any]] = Field(default_factory=list)
    skipped_trials: int = 0
    seconds: float | None = None


class SweepResult(BaseModel):
    name: str
    dir: str
    points: list[PointResult]
    wall_s: float
    points_s: float
    dry_run: bool = False
    best: dict[str, dict[str, Any]] = Field(default_factory=dict)
    report: str | None = None
    complete: bool = True


# ---------------------------------------------------------------------------------------------
# loading and the design


def find(name: str) -> Path:
    p = Path(name)
    if p.is_file():
        return p
    for cand in (Path("sweeps") / f"{name}.yaml", SWEEPS_DIR / f"{name}.yaml", SWEEPS_DIR / name):
        if cand.is_file():
            return cand
    have = sorted(f.stem for f in SWEEPS_DIR.glob("*.yaml"))
    raise SweepError(f"no sweep file {name!r}", hint=f"a path, or one of: {', '.join(have)}")


def load(path: Path) -> SweepSpec:
    spec, doc = load_model(path, SweepSpec, SweepError, "sweep", "name, inventory, scenario, factors, metrics")
    from .scenarios.expr import ExprError, compile_expr

    problems = []
    for i, m in enumerate(spec.metrics):
        try:
            compile_expr(m.expr)
        except ExprError as e:
            problems.append(Problem(("metrics", i, "expr"), str(e)))
    if problems:
        raise doc.fail(problems, "sweep")
    if design_size(spec) > spec.max_points:
        raise SweepError(f"{path}: the design has {design_size(spec)} points, more than max_points {spec.max_points}",
                         hint="fewer levels, design: points, or raise max_points")
    return spec


def design_size(spec: SweepSpec) -> int:
    return len(spec.points) if spec.design == "points" else math.prod(len(f.levels) for f in spec.factors)


def points(spec: SweepSpec) -> list[dict[str, Any]]:
    """The design's points in run order: the first factor varies slowest (a costly inventory factor
    first means the fewest restarts)."""
    if spec.design == "points":
        return [dict(p) for p in spec.points]
    return [dict(zip([f.label for f in spec.factors], combo)) for combo in itertools.product(*[f.levels for f in spec.factors])]


def point_id(i: int, levels: dict[str, Any]) -> str:
    body = "-".join(f"{k}={v}" for k, v in levels.items())
    return f"p{i + 1:02d}-" + re.sub(r"[^A-Za-z0-9._=-]+", "_", body)[:120]


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    """Set a dotted inventory path; ``engines.NAME`` picks the engine by name, ``engines.*`` all."""
    parts = path.split(".")

    def go(obj: Any, i: int, where: str) -> None:
        key = parts[i]
        last = i == len(parts) - 1
        if isinstance(obj, list):
            if key == "*":
                targets = obj
            else:
                targets = [e for e in obj if isinstance(e, dict) and e.get("name") == key]
                if not targets and key.isdigit() and int(key) < len(obj):
                    targets = [obj[int(key)]]
            if not targets:
                names = [e.get("name") for e in obj if isinstance(e, dict)]
                raise SweepError(f"factor {path!r}: no entry {key!r} in {where}", hint=f"names: {names} or *")
            for t in targets:
                if last:
                    raise SweepError(f"factor {path!r}: cannot replace a whole entry of {where}")
                go(t, i + 1, f"{where}.{key}")
            return
        if not isinstance(obj, dict):
            raise SweepError(f"factor {path!r}: {where} is not a mapping")
        if last:
            obj[key] = value
            return
        if obj.get(key) is None:
            obj[key] = {}
        go(obj[key], i + 1, f"{where}.{key}" if where else key)

    go(data, 0, "")


def _resolve_inventory(spec_path: Path, spec: SweepSpec) -> Path:
    for cand in (spec_path.parent / spec.inventory, Path(spec.inventory), SWEEPS_DIR.parent / spec.inventory):
        if cand.is_file():
            return cand
    raise SweepError(f"{spec_path}: inventory {spec.inventory!r} not found", hint="a path relative to the sweep file or here")


def point_inventory(base: dict[str, Any], spec: SweepSpec, levels: dict[str, Any]) -> dict[str, Any]:
    data = copy.deepcopy(base)
    for f in spec.factors:
        if not f.is_param:
            set_path(data, f.set, levels[f.label])
    return data


def point_params(spec: SweepSpec, levels: dict[str, Any]) -> dict[str, Any]:
    out = dict(spec.params)
    for f in spec.factors:
        if f.is_param:
            out[f.set[len("params."):]] = levels[f.label]
    return out


def owned_files(plan: Any) -> dict[str, dict[str, list[str]]]:
    """host → process → the rendered files it is started from (launch script, LMCache config, secrets)."""
    out: dict[str, dict[str, list[str]]] = {}
    for h in plan.hosts:
        paths = {f.path for f in h.files}
        for p in h.processes:
            mine = [p.launch_script, f"run/{p.name}.secrets.env"] + ([p.config_file] if p.config_file else [])
            out.setdefault(h.name, {})[p.name] = [x for x in mine if x in paths]
    return out


def changed_processes(plan: Any, deployed: dict[str, dict[str, str]]) -> tuple[list[str], list[str]]:
    """Processes whose rendered files differ from what is deployed (host → path → sha256), and the
    files that changed (host:path)."""
    changed: list[str] = []
    files: list[str] = []
    owners = owned_files(plan)
    for h in plan.hosts:
        have = deployed.get(h.name, {})
        diff = {f.path for f in h.files if have.get(f.path) != f.sha256}
        files += [f"{h.name}:{x}" for x in sorted(diff)]
        for p in h.processes:
            if diff & set(owners[h.name][p.name]):
                changed.append(p.name)
    return changed, files


# ---------------------------------------------------------------------------------------------
# statistics


def interval(values: list[Any]) -> dict[str, float | int | None]:
    """A metric over a point's trials as the verdicts and ``compare`` judge one: the median and its
    seeded 95 % bootstrap interval (:func:`kvorch.stats.bootstrap_ci`); no interval from one trial."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return {"n": 0, "median": None, "lo": None, "hi": None}
    iv = stats.bootstrap_ci(xs)
    return {"n": iv.n, "median": iv.estimate, "lo": iv.low if iv.n > 1 else None, "hi": iv.high if iv.n > 1 else None}


# ---------------------------------------------------------------------------------------------
# running


def plan_restarts(spec: SweepSpec, base: dict[str, Any], pts: list[dict[str, Any]], deployed: dict[str, dict[str, str]] | None,
                  work: Path) -> list[dict[str, Any]]:
    """Per point: the processes a run would restart (``up`` for the first when nothing runs)."""
    from .inventory import load_inventory
    from .plan import build_plan

    rows = []
    current = deployed
    for i, lv in enumerate(pts):
        inv_path = work / f"{point_id(i, lv)}.inventory.yaml"
        inv_path.write_text(yaml.safe_dump(point_inventory(base, spec, lv), sort_keys=False))
        plan = build_plan(load_inventory(inv_path))
        if current is None:
            rows.append({"id": point_id(i, lv), "levels": lv, "restart": ["up: every process"], "files": []})
        else:
            procs, files = changed_processes(plan, current)
            rows.append({"id": point_id(i, lv), "levels": lv, "restart": procs, "files": files})
        current = {h.name: {f.path: f.sha256 for f in h.files} for h in plan.hosts}
    return rows


def _deployed(cluster: str) -> dict[str, dict[str, str]] | None:
    from .runstate import load_state

    st = load_state(cluster)
    return None if st is None else {h: dict(hs.files) for h, hs in st.hosts.items()}


def _apply(c: Any, plan: Any, procs: list[str], timeout: float) -> float:
    """Upload the changed files, restart ``procs``, record the new files in the run state."""
    from .cluster import _upload
    from .hosts.parallel import run_parallel
    from .nodes import close_all, open_nodes
    from .restart import restart_processes
    from .runstate import load_state, save_state

    t0 = time.monotonic()
    nodes, _ = open_nodes(plan, c.ssh_config)
    try:
        ups = run_parallel(nodes, lambda n: _upload(n, plan))
        for host, res in ups.items():
            if isinstance(res, BaseException):
                raise SweepError(f"host {host}: upload failed: {res}")
        if procs:
            restart_processes(plan, nodes, procs, timeout=timeout)
        st = load_state(plan.cluster)
        if st is not None:
            for host, res in ups.items():
                if host in st.hosts:
                    st.hosts[host].files = res  # type: ignore[assignment]
            st.inventory = c.inventory_path
            save_state(st)
    finally:
        close_all(nodes)
    return time.monotonic() - t0


def run_sweep(path: Path, *, ssh_config: str | None = None, out_dir: Path | None = None, resume: bool = False,
              dry_run: bool = False, progress: Any = None, events: Any = None) -> SweepResult:
    """Run (or, with ``dry_run``, list) the sweep; returns what was measured, point by point.
    It drives the library (:mod:`kvorch.cluster`, the scenario runner) for each point."""
    from .errors import UserError
    from .events import Events
    from .session import Session
    from .inventory import load_inventory
    from .plan import build_plan
    from .runstate import logs_root
    from .scenarios import spec as scen_spec
    from .scenarios.expr import value
    from .scenarios.runner import run_scenario

    say = progress or (lambda msg: None)
    spec = load(path)
    inv_file = _resolve_inventory(path, spec)
    base = yaml.safe_load(inv_file.read_text())
    scen_path = scen_spec.find(spec.scenario)
    pts = points(spec)
    out = out_dir or (logs_root() / "sweeps" / spec.name)
    cluster = str(base.get("cluster", ""))

    if dry_run:
        work = out / "dry-run"
        work.mkdir(parents=True, exist_ok=True)
        rows = plan_restarts(spec, base, pts, _deployed(cluster), work)
        return SweepResult(name=spec.name, dir=str(out), dry_run=True, wall_s=0.0, points_s=0.0, points=[
            PointResult(id=r["id"], levels=r["levels"], restarted=r["restart"],
                        restart_reason=", ".join(r["files"])) for r in rows])

    if out.exists() and any(out.glob("points/*/trial-*.json")) and not resume:
        raise SweepError(f"sweep folder {out} already has results", hint="`--resume` to skip the finished points, or --out DIR")
    (out / "points").mkdir(parents=True, exist_ok=True)
    (out / "sweep.yaml").write_text(path.read_text())
    t_start = time.monotonic()
    results: list[PointResult] = []
    complete = False
    try:
        for i, lv in enumerate(pts):
            pid = point_id(i, lv)
            pdir = out / "points" / pid
            pdir.mkdir(parents=True, exist_ok=True)
            pr = PointResult(id=pid, levels=lv)
            done = {k: json.loads((pdir / f"trial-{k}.json").read_text()) for k in range(1, spec.trials + 1)
                    if (pdir / f"trial-{k}.json").is_file()}
            if len(done) == spec.trials:
                old = json.loads((pdir / "point.json").read_text()) if (pdir / "point.json").is_file() else {}
                pr = PointResult(**{**old, "trials": [done[k] for k in sorted(done)], "skipped_trials": len(done)})
                results.append(pr)
                say(f"{pid}: finished before (resume): skipped")
                continue
            t_point = time.monotonic()
            inv_path = pdir / "inventory.yaml"
            inv_path.write_text(yaml.safe_dump(point_inventory(base, spec, lv), sort_keys=False))
            c = Session(str(inv_path), ssh_config, events or Events())
            inv = load_inventory(inv_path)
            c._inventory = inv
            plan = build_plan(inv)
            deployed = _deployed(plan.cluster)
            t_r = time.monotonic()
            if deployed is None:
                from .cluster import up

                try:
                    up(c, plan, timeout=spec.up_timeout_s)
                except UserError as e:
                    raise SweepError(f"{pid}: `up` failed: {e.message}", details=e.details) from None
                pr.restarted, pr.restart_reason = [p.name for p in plan.processes()], "up (the cluster was not running)"
            else:
                procs, files = changed_processes(plan, deployed)
                if files:
                    _apply(c, plan, procs, spec.up_timeout_s)
                pr.restarted = procs
                pr.restart_reason = ("rendered files changed: " + ", ".join(files)) if files else "no rendered file changed"
            pr.restart_s = round(time.monotonic() - t_r, 3)
            say(f"{pid}: restarted {', '.join(pr.restarted) or 'nothing'} ({pr.restart_reason})")
            params = point_params(spec, lv)
            overrides = [f"{k}={json.dumps(v)}" for k, v in params.items()]
            s, prm = scen_spec.load(scen_path, overrides)
            for k in range(1, spec.trials + 1):
                if k in done:
                    pr.trials.append(done[k])
                    pr.skipped_trials += 1
                    continue
                res = run_scenario(c, s, prm)
                env = {"topology": plan.topology, "engine": plan.engine, **res["results"], "params": res["params"]}
                trial = {"trial": k, "verdict": res["verdict"], "seconds": res["seconds"], "dir": res["dir"],
                         "metrics": {m.name: _num(value(m.expr, env)) for m in spec.metrics},
                         "failed_checks": [ch["name"] for ch in res["checks"] if ch["passed"] is False and ch["severity"] == "fail"]}
                (pdir / f"trial-{k}.json").write_text(json.dumps(trial, indent=2, default=str))
                pr.trials.append(trial)
                say(f"{pid}: trial {k}/{spec.trials}: {res['verdict']} " +
                    ", ".join(f"{n}={v:.4g}" for n, v in trial["metrics"].items() if v is not None))
            if spec.collect:
                from .collect import collect_quietly

                collect_quietly(c, plan)
            pr.seconds = round(time.monotonic() - t_point, 3)
            (pdir / "point.json").write_text(pr.model_dump_json(indent=2, exclude={"trials", "skipped_trials"}))
            results.append(pr)
        complete = True
    finally:
        if complete and spec.down_after and not dry_run:
            from .cluster import down

            last = out / "points" / point_id(len(pts) - 1, pts[-1]) / "inventory.yaml"
            c = Session(str(last), ssh_config, events or Events())
            down(c, c.plan(), collect=spec.collect)
    wall = time.monotonic() - t_start
    result = SweepResult(name=spec.name, dir=str(out), points=results, wall_s=round(wall, 3),
                         points_s=round(sum(p.seconds or 0 for p in results), 3), complete=complete)
    write_report(spec, result, out)
    return result


def _num(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)) and math.isfinite(v):
        return float(v)
    return None


# ---------------------------------------------------------------------------------------------
# the sweep folder's report


def aggregate(spec: SweepSpec, result: SweepResult) -> list[dict[str, Any]]:
    rows = []
    for p in result.points:
        row: dict[str, Any] = {"id": p.id, **p.levels, "restarted": " ".join(p.restarted) or "-",
                               "passed": sum(1 for t in p.trials if t["verdict"] == "pass"), "trials": len(p.trials)}
        for m in spec.metrics:
            row[m.name] = interval([t["metrics"].get(m.name) for t in p.trials])
        rows.append(row)
    return rows


def best_points(spec: SweepSpec, rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    best = {}
    for m in spec.metrics:
        cand = [r for r in rows if r[m.name]["median"] is not None]
        if cand:
            r = (min if m.goal == "min" else max)(cand, key=lambda x: x[m.name]["median"])
            best[m.name] = {"goal": m.goal, "point": r["id"], "levels": {f.label: r[f.label] for f in spec.factors},
                            "median": r[m.name]["median"], "lo": r[m.name]["lo"], "hi": r[m.name]["hi"]}
    return best


def write_report(spec: SweepSpec, result: SweepResult, out: Path) -> None:
    from . import plots

    rows = aggregate(spec, result)
    result.best = best_points(spec, rows)
    labels = [f.label for f in spec.factors]
    with (out / "table.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["point", *labels, "restarted", "passed", "trials", *[f"{m.name}{suffix}" for m in spec.metrics
                                                                        for suffix in ("_median", "_lo", "_hi")]])
        for r in rows:
            w.writerow([r["id"], *[r[k] for k in labels], r["restarted"], r["passed"], r["trials"],
                        *[r[m.name][x] for m in spec.metrics for x in ("median", "lo", "hi")]])
    figs = []
    pdir = out / "plots"
    pdir.mkdir(exist_ok=True)
    for m in spec.metrics:
        for f in spec.factors:
            others = [g.label for g in spec.factors if g.label != f.label]
            series: dict[str, list[tuple[Any, float | None, float | None, float | None]]] = {}
            for r in rows:
                key = ", ".join(f"{o}={r[o]}" for o in others) or m.name
                st = r[m.name]
                series.setdefault(key, []).append((r[f.label], st["median"], st["lo"], st["hi"]))
            fname = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{m.name}-vs-{f.label}.png")
            if plots.sweep_metric(series, f"{m.name} vs {f.label}" + (" (median, 95% bootstrap interval)" if spec.trials > 1 else ""),
                                  f.label, m.name, pdir / fname) is not None:
                figs.append(f"plots/{fname}")
    md = [f"# sweep {spec.name}", "", spec.description, "",
          f"scenario `{spec.scenario}`, {len(result.points)} points × {spec.trials} trials; "
          f"wall time of this invocation {result.wall_s:.1f} s, sum of the points (their own runs, resumed ones included) {result.points_s:.1f} s"
          + ("" if result.complete else " (**incomplete**: interrupted or failed; `--resume` goes on)"), "",
          "| point | " + " | ".join(labels) + " | restarted | passed | " + " | ".join(m.name for m in spec.metrics) + " |",
          "|" + "---|" * (len(labels) + 3 + len(spec.metrics))]
    for r in rows:
        cells = [r["id"], *[str(r[k]) for k in labels], r["restarted"], f"{r['passed']}/{r['trials']}"]
        for m in spec.metrics:
            st = r[m.name]
            cells.append("?" if st["median"] is None else f"{st['median']:.4g}" +
                         (f" [{st['lo']:.4g}, {st['hi']:.4g}]" if st["lo"] is not None else ""))
        md.append("| " + " | ".join(cells) + " |")
    md += ["", "## best point per metric", ""]
    for name, b in result.best.items():
        md.append(f"- **{name}** ({b['goal']}): {b['point']} ({', '.join(f'{k}={v}' for k, v in b['levels'].items())}) "
                  f"= {b['median']:.4g}")
    md += ["", "## restarts", ""] + [f"- {p.id}: {', '.join(p.restarted) or 'nothing'} — {p.restart_reason}"
                                     + (f" ({p.restart_s:.1f} s)" if p.restart_s is not None else "") for p in result.points]
    md += ["", "## plots", ""] + [f"![{f}]({f})" for f in figs]
    (out / "report.md").write_text("\n".join(md) + "\n")
    (out / "sweep.json").write_text(json.dumps({**result.model_dump(), "table": rows, "plots": figs}, indent=2, default=str))
    result.report = str(out / "report.md")
