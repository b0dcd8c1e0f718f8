"""Run a scenario against the running cluster: load, run, check, write; the result returned.

Exit codes: 0 every check passed, 1 a check failed, 2 the scenario could not run (with the reason).
Results go to ``logs/<run-id>/scenarios/<scenario>-<n>/``: result.json (results, checks, headline),
requests.jsonl (per-request records), evidence.json (per-request log evidence), samples.jsonl.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import Interrupted, UserError
from ..runstate import load_state, now, save_state
from . import spec as spec_mod
from .expr import evaluate

if TYPE_CHECKING:
    from ..session import Session


def list_scenarios() -> list[dict[str, Any]]:
    """Every scenario file found (``scenarios/`` and ORCHESTRATE_SCENARIOS) with its kind and description."""
    rows = []
    for name, path in sorted(spec_mod.available().items()):
        try:
            s, _ = spec_mod.load(path)
            rows.append({"name": name, "kind": s.kind, "seed": s.seed, "description": s.description, "path": str(path)})
        except UserError as e:
            rows.append({"name": name, "kind": "?", "seed": None, "description": f"(invalid: {e.message})", "path": str(path)})
    return rows


def _next_dir(base: Path, name: str) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    n = 1
    while (base / f"{name}-{n}").exists():
        n += 1
    d = base / f"{name}-{n}"
    d.mkdir()
    return d


def load_scenario(scenario: str, overrides: list[str] | None = None) -> tuple[spec_mod.ScenarioSpec, Any]:
    """A scenario by name (or path) with ``--set``-style overrides: its spec and parameters."""
    return spec_mod.load(spec_mod.find(scenario), list(overrides or []))


def run_scenario(c: Session, spec: spec_mod.ScenarioSpec, params: Any) -> dict[str, Any]:
    """Run one scenario against the running cluster: its folder written, the result returned
    (``verdict`` pass | fail). Raises :class:`ScenarioCannotRun` (exit 2) with the reason."""
    from ..processes import http_health
    from ..nodes import close_all, open_nodes
    from ..metrics import save_jsonl
    from .kinds import KINDS
    from .workbench import ScenarioCannotRun, Workbench

    inv = c.inventory()
    plan = c.plan()
    state = load_state(plan.cluster)
    if state is None:
        raise ScenarioCannotRun(f"cluster {plan.cluster!r} is not up", hint="run `orchestrate up` first")
    nodes, _ = open_nodes(inv, plan, c.ssh_config, names=sorted({p.host for p in plan.processes()}))
    try:
        unwell = _not_running(plan, nodes)
    except BaseException:
        close_all(nodes)
        raise
    if unwell:
        close_all(nodes)
        raise ScenarioCannotRun("not running as started: " + "; ".join(f"{n}: {why}" for n, why in unwell.items()),
                                hint=f"`orchestrate restart {' '.join(unwell)}` (or down, then up)")
    sick = [p.name for p in plan.processes() if not http_health(p.health_url)[0]]
    if sick:
        close_all(nodes)
        raise ScenarioCannotRun(f"not healthy: {', '.join(sick)}", hint="`orchestrate status` and `orchestrate logs NAME` show why")
    out = _next_dir(state.run_dir() / "scenarios", spec.name)
    wb = Workbench(inv, plan, nodes, out, extra_body=spec.extra_body)
    started = now()
    t0 = time.monotonic()
    sampler = None
    try:
        if spec.sample_interval_s:
            sampler = wb.sampler(spec.sample_interval_s, max_duration_s=3600).start()
        try:
            c.events.scenario_started(spec.name, spec.kind, plan.cluster)
            outcome = KINDS[spec.kind].run(wb, spec, params)
        except KeyboardInterrupt:
            raise Interrupted(f"{spec.name} interrupted: its requests were cancelled; the cluster is still up",
                              hint=f"partial files in {out}") from None
        try:
            died = _not_running(plan, nodes)
        except Exception as e:  # noqa: BLE001 - a host lost during the scenario
            died = {"*": f"cannot check the processes: {e}"}
    finally:
        samples = sampler.stop() if sampler else []
        wb.close()
        close_all(nodes)
    took = time.monotonic() - t0

    env = {"topology": plan.topology, "engine": plan.engine,
           "random_weights": inv.tiny_model is not None,  # a locally made model: its text means nothing
           **outcome.results, "params": params.model_dump()}
    checks = []
    for ch in spec.checks:
        if ch.when is not None and not evaluate(ch.when, env).passed:
            checks.append({"name": ch.name, "expr": ch.expr, "passed": None, "shown": f"skipped (only when {ch.when})",
                           "severity": ch.severity})
            continue
        o = evaluate(ch.expr, env)
        checks.append({"name": ch.name, "expr": ch.expr, "passed": o.passed, "shown": o.shown, "severity": ch.severity})
    # The engines themselves: one that died (or whose server outlived its group leader) during the
    # scenario makes the verdict a failure naming it, whatever the numbers say.
    checks.append({"name": "every process stayed up", "expr": "(processes observed after the scenario)",
                   "passed": not died, "severity": "fail",
                   "shown": "; ".join(f"{n}: {why}" for n, why in died.items()) if died else "all running"})
    failed = [ch for ch in checks if ch["passed"] is False and ch["severity"] == "fail"]
    verdict = "pass" if not failed else "fail"

    result = {"scenario": spec.name, "kind": spec.kind, "description": spec.description, "seed_doc": spec.seed,
              "cluster": plan.cluster, "run_id": state.run_id, "started_at": started, "seconds": round(took, 3),
              "params": params.model_dump(), "extra_body": spec.extra_body, "verdict": verdict, "checks": checks,
              "headline": outcome.headline, "results": outcome.results, "notes": wb.notes, "dir": str(out)}
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
    c.events.scenario_finished(spec.name, verdict, result["seconds"])
    return result


def _not_running(plan: Any, nodes: dict[str, Any]) -> dict[str, str]:
    """Processes of the cluster that are not running as started: name → state and why."""
    from ..hosts.parallel import run_parallel
    from ..processes import expected_members, observe

    expected = expected_members(load_state(plan.cluster))
    out: dict[str, str] = {}
    for host, obs in run_parallel(nodes, lambda n: observe(plan, n, expected=expected)).items():
        if isinstance(obs, BaseException):
            out[f"host {host}"] = f"cannot be read: {obs}"
            continue
        for name, o in obs.items():  # type: ignore[union-attr]
            if o.state != "running":
                out[name] = o.state + (f" ({o.detail})" if o.detail else "")
    return out



    def __exit__(self, *a: Any) -> None:
        return None
