"""Scenario files: format, loading with FILE:LINE errors, `--set key=value` overrides."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from ..errors import UserError
from ..yamlfile import Problem, load_model, pydantic_problems
from .expr import ExprError, compile_expr

SCENARIOS_DIR = Path(__file__).resolve().parent.parent.parent / "scenarios"


class ScenarioError(UserError):
    """A scenario file or a --set override is wrong."""


class CheckSpec(BaseModel):
    """An exact check (``expr``: must hold in every trial) or a timing check (``speedup`` +
    ``at_least``: judged on the trials' median and its 95 % bootstrap interval — pass, fail or
    inconclusive)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    expr: str | None = Field(None, description="expression over the results, e.g. follow_up.log.hit_tokens >= 256")
    speedup: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                                description="a per-trial timing ratio, e.g. ttft_speedup_vs_control")
    at_least: float | None = Field(None, gt=0, description="the threshold the speedup's interval must clear")
    severity: str = Field("fail", pattern="^(fail|warn)$", description="warn: reported, never fails the run")
    when: str | None = Field(None, description="only check when this expression holds, e.g. topology != 'mp'")

    @model_validator(mode="after")
    def _one_kind(self) -> "CheckSpec":
        if (self.expr is None) == (self.speedup is None):
            raise ValueError("give either expr: (an exact check) or speedup: with at_least: (a timing check)")
        if self.speedup is not None and self.at_least is None:
            raise ValueError(f"timing check on {self.speedup!r} needs at_least: (its threshold, e.g. 1.2)")
        if self.expr is not None and self.at_least is not None:
            raise ValueError("at_least: belongs to a timing check (speedup:), not to expr:")
        return self


class ScenarioSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str
    seed: str | None = Field(None, description="which seed workflow this reproduces")
    kind: str
    engines: dict[str, str] = Field(default_factory=dict,
                                    description="slot → engine name, or role:<prefill|decode|both>, or 'all'")
    params: dict[str, Any] = Field(default_factory=dict)
    sample_interval_s: float | None = Field(0.5, gt=0, description="background metrics sampling (null: off)")
    extra_body: dict[str, Any] = Field(default_factory=dict,
                                       description="fields added to the body of every request the scenario sends "
                                                   "(seed 003's EXTRA_INPUTS), e.g. {cache_salt: run-1}")
    checks: list[CheckSpec] = Field(default_factory=list)
    _source: Path | None = PrivateAttr(None)

    @property
    def source_dir(self) -> Path | None:
        """The folder of the scenario file (files it names are looked up there too)."""
        return self._source


def scenario_dirs() -> list[Path]:
    extra = os.environ.get("ORCHESTRATE_SCENARIOS")
    dirs = [Path(p) for p in extra.split(os.pathsep) if p] if extra else []
    return dirs + [Path("scenarios"), SCENARIOS_DIR]


def available() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in scenario_dirs():
        if d.is_dir():
            for f in sorted(d.glob("*.yaml")):
                found.setdefault(f.stem, f)
    return found


def find(name: str) -> Path:
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    found = available()
    if name in found:
        return found[name]
    raise ScenarioError(f"no scenario named {name!r}", hint=f"one of: {', '.join(sorted(found))} (or a path to a .yaml file); "
                        "`orchestrate run --list` describes them")


def load(path: Path, overrides: list[str] | None = None) -> tuple[ScenarioSpec, BaseModel]:
    """The scenario and its validated parameters (defaults ← file ← --set)."""
    from .kinds import KINDS

    spec, doc = load_model(path, ScenarioSpec, ScenarioError, "scenario", "name:, kind:, params:, checks:")
    spec._source = path.resolve().parent
    problems: list[Problem] = []
    if spec.kind not in KINDS:
        problems.append(Problem(("kind",), f"unknown kind {spec.kind!r}", f"one of: {', '.join(sorted(KINDS))}"))
        raise doc.fail(problems, "scenario")
    for i, ch in enumerate(spec.checks):
        for field_name in ("expr", "when"):
            text = getattr(ch, field_name)
            if text is None:
                continue
            try:
                compile_expr(text)
            except ExprError as e:
                problems.append(Problem(("checks", i, field_name), str(e)))
    params = dict(spec.params)
    from_flags: set[str] = set()
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ScenarioError(f"--set {item!r}: expected KEY=VALUE", hint="e.g. --set prefix_tokens=2048")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        if value is None and raw.strip().lower() not in ("null", "~", "none"):
            value = raw  # e.g. " ## " (a YAML comment): the user meant the text
        key = key.strip()
        if key.startswith("extra_body."):  # --set extra_body.cache_salt=x: a request field, not a parameter
            spec.extra_body[key[len("extra_body."):]] = value
            continue
        params[key] = value
        from_flags.add(key)
    model = KINDS[spec.kind].Params
    try:
        p = model.model_validate(params)
    except ValidationError as e:
        for pr in pydantic_problems(e, ("params",)):
            name = pr.path[1] if len(pr.path) > 1 else None
            if name is not None and name in from_flags:  # the --set value is the wrong one
                raise ScenarioError(f"--set {name}: {pr.message}", hint=f"parameters of kind {spec.kind}: "
                                    f"{', '.join(model.model_fields)}") from None
            problems.append(pr)
    if problems:
        raise doc.fail(problems, "scenario")
    return spec, p
