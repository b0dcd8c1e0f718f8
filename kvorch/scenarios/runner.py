"""Run a scenario against the running cluster: load, run, check, write; the result returned.

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

from .. import interrupts
from ..errors import Interrupted, UserError
from ..runstate import load_state, now, save_state
from . import spec as spec_mod
from .verdicts import judge_checks, overall

if TYPE_CHECKING:
    from ..session import Session

#: the exit code of each verdict (2 is "could not run", raised as a UserError)
VERDICT_EXIT = {"pass": 0, "fail": 1, "inconclusive": 3}


def worst_exit(codes: list[int]) -> int:
    """Several scenario runs' exit codes as one: a failure (1) beats inconclusive (3) beats pass (0)."""
    for code in (1, 2, 3):
        if code in codes:
            return code
    return max(codes, default=0)


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
    nodes, _ = open_nodes(plan, c.ssh_config, names=sorted({p.host for p in plan.processes()}))
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
    random_weights = inv.tiny_model is not None or _made_by_tinymodel(nodes, plan, inv.model)
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
            if interrupts.requested():  # the interrupt came where Python swallowed it
                raise KeyboardInterrupt
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
           "random_weights": random_weights,  # a locally made model: its text means nothing
           **outcome.results, "params": params.model_dump()}
    trials = outcome.results.get("trials") if isinstance(outcome.results.get("trials"), list) else None
    checks, verdict = judge_checks(spec.checks, env, trials, outcome.results.get("calibration"))
    # The engines themselves: one that died (or whose server outlived its group leader) during the
    # scenario makes the verdict a failure naming it, whatever the numbers say.
    checks.append({"name": "every process stayed up", "expr": "(processes observed after the scenario)",
                   "passed": not died, "severity": "fail", "verdict": "fail" if died else "pass", "type": "exact",
                   "shown": "; ".join(f"{n}: {why}" for n, why in died.items()) if died else "all running"})
    verdict = overall(checks)

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
