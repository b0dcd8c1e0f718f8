"""Scenario files: loading errors with FILE:LINE, --set overrides and their errors, check
expressions (values shown, missing values, disallowed syntax), and every built-in scenario."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from kvorch.errors import UserError
from kvorch.scenarios import spec as spec_mod
from kvorch.scenarios.expr import ExprError, compile_expr, evaluate
from kvorch.scenarios.kinds import KINDS

GOOD = """\
name: demo
description: a scenario for the tests
kind: pd-bench
engines:
  prefill: role:prefill
  decode: role:decode
params:
  requests: 4
  prompt_tokens: 512
checks:
  - name: all done
    expr: completed == params.requests
"""


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def problems(err: UserError) -> list[str]:
    return [err.message, *err.details]


def line_of(text: str, needle: str) -> int:
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return i
    raise AssertionError(needle)


# ---- built-in scenarios ------------------------------------------------------------------------


def test_every_builtin_scenario_loads_with_its_kind():
    found = spec_mod.available()
    for name in ("reuse", "reuse-2node", "pd-bench", "blend", "cache-bench", "monitor"):
        assert name in found, f"scenario {name} missing from {spec_mod.SCENARIOS_DIR}"
    for name, path in found.items():
        if path.parent != spec_mod.SCENARIOS_DIR:
            continue
        s, params = spec_mod.load(path)
        assert s.kind in KINDS, name
        assert s.checks, f"{name} has no checks"
        for ch in s.checks:
            compile_expr(ch.expr)
        assert type(params) is KINDS[s.kind].Params


def test_every_kind_has_params_with_defaults_and_a_run():
    for name in ("reuse", "pd-bench", "blend", "cache-bench", "monitor"):
        mod = KINDS[name]
        mod.Params()  # every parameter has a default
        assert callable(mod.run)
        with pytest.raises(ValidationError):
            mod.Params(not_a_parameter=1)  # extra="forbid"


# ---- loading errors ------------------------------------------------------------------------------


def test_good_file_loads_and_defaults_fill_the_rest(tmp_path):
    s, p = spec_mod.load(write(tmp_path, GOOD))
    assert s.name == "demo" and s.engines == {"prefill": "role:prefill", "decode": "role:decode"}
    assert p.requests == 4 and p.prompt_tokens == 512
    assert p.concurrency == KINDS["pd-bench"].Params().concurrency


def test_unknown_top_level_key_names_file_and_line(tmp_path):
    text = GOOD + "retries: 3\n"
    path = write(tmp_path, text)
    with pytest.raises(spec_mod.ScenarioError) as ei:
        spec_mod.load(path)
    msg = "\n".join(problems(ei.value))
    assert f"{path}:{line_of(text, 'retries')}" in msg and "retries" in msg


def test_unknown_kind_names_the_line_and_the_known_kinds(tmp_path):
    text = GOOD.replace("kind: pd-bench", "kind: pd-bnech")
    path = write(tmp_path, text)
    with pytest.raises(spec_mod.ScenarioError) as ei:
        spec_mod.load(path)
    msg = "\n".join(problems(ei.value))
    assert f"{path}:{line_of(text, 'kind:')}" in msg
    assert "pd-bnech" in msg and "pd-bench" in msg and "cache-bench" in msg


def test_every_problem_is_reported_each_with_its_line(tmp_path):
    text = GOOD.replace("  prompt_tokens: 512\n", "  prompt_tokens: 512\n  requests_per_second: 3\n") \
               .replace("requests: 4", "requests: 0") \
               .replace("completed == params.requests", "open('x')")
    path = write(tmp_path, text)
    with pytest.raises(spec_mod.ScenarioError) as ei:
        spec_mod.load(path)
    lines = ei.value.details
    assert len(lines) == 3, lines
    assert any(l.startswith(f"{path}:{line_of(text, 'requests: 0')}: params.requests") for l in lines)
    assert any(l.startswith(f"{path}:{line_of(text, 'requests_per_second')}: params.requests_per_second") for l in lines)
    assert any(l.startswith(f"{path}:{line_of(text, 'open(')}: checks[0].expr") and "only min, max" in l for l in lines)


def test_yaml_syntax_error_has_line_and_column(tmp_path):
    path = write(tmp_path, "name: x\ndescription: [unclosed\nkind: reuse\n")
    with pytest.raises(spec_mod.ScenarioError) as ei:
        spec_mod.load(path)
    assert re.search(rf"{re.escape(str(path))}:\d+:\d+: YAML syntax error", ei.value.message)


def test_not_a_mapping(tmp_path):
    with pytest.raises(spec_mod.ScenarioError, match="must be a YAML mapping"):
        spec_mod.load(write(tmp_path, "- a\n- b\n"))


def test_bad_severity_is_located(tmp_path):
    text = GOOD + "    severity: fatal\n"
    path = write(tmp_path, text)
    with pytest.raises(spec_mod.ScenarioError) as ei:
        spec_mod.load(path)
    assert f"{path}:{line_of(text, 'severity')}" in "\n".join(problems(ei.value))


def test_kind_validators_are_located_too(tmp_path):
    text = """\
name: b
description: blend with a wrong order
kind: blend
params:
  num_chunks: 3
  orders: [[0, 1, 2], [0, 0, 1]]
"""
    path = write(tmp_path, text)
    with pytest.raises(spec_mod.ScenarioError) as ei:
        spec_mod.load(path)
    msg = "\n".join(problems(ei.value))
    assert f"{path}:{line_of(text, 'params:')}" in msg and "[0, 0, 1] is not an order" in msg


def test_find_unknown_scenario_lists_the_known_ones():
    with pytest.raises(spec_mod.ScenarioError) as ei:
        spec_mod.find("no-such-scenario")
    assert "no-such-scenario" in ei.value.message and "cache-bench" in (ei.value.hint or "")


# ---- --set overrides ------------------------------------------------------------------------------


def test_set_overrides_file_values_with_yaml_typed_values(tmp_path):
    path = write(tmp_path, GOOD)
    _, p = spec_mod.load(path, ["requests=7", "rate_rps=2.5", "ignore_eos=false", "seed=null", "concurrency=1"])
    assert (p.requests, p.rate_rps, p.ignore_eos, p.seed, p.concurrency) == (7, 2.5, False, None, 1)


def test_set_strings_and_lists(tmp_path):
    path = write(tmp_path, "name: b\ndescription: d\nkind: blend\n")
    _, p = spec_mod.load(path, ['separator=" ## "', "orders=[[1,0],[0,1]]", "num_chunks=2", "question=Why?"])
    assert p.separator == " ## " and p.orders == [[1, 0], [0, 1]] and p.question == "Why?"
    _, p = spec_mod.load(path, ["question=a=b"])  # only the first '=' separates
    assert p.question == "a=b"


def test_set_unknown_parameter_names_the_flag_and_lists_the_parameters(tmp_path):
    with pytest.raises(spec_mod.ScenarioError) as ei:
        spec_mod.load(write(tmp_path, GOOD), ["requets=3"])
    assert ei.value.message.startswith("--set requets:")
    assert "requests" in (ei.value.hint or "") and "prompt_tokens" in (ei.value.hint or "")


def test_set_without_equals_sign(tmp_path):
    with pytest.raises(spec_mod.ScenarioError, match="expected KEY=VALUE"):
        spec_mod.load(write(tmp_path, GOOD), ["requests"])
    with pytest.raises(spec_mod.ScenarioError, match="expected KEY=VALUE"):
        spec_mod.load(write(tmp_path, GOOD), ["=3"])


def test_set_bad_value_for_a_parameter_the_file_does_not_set(tmp_path):
    with pytest.raises(spec_mod.ScenarioError) as ei:
        spec_mod.load(write(tmp_path, GOOD), ["concurrency=many"])
    assert ei.value.message.startswith("--set concurrency:") and "integer" in ei.value.message


def test_set_bad_value_for_a_parameter_the_file_sets_blames_the_flag(tmp_path):
    with pytest.raises(spec_mod.ScenarioError) as ei:
        spec_mod.load(write(tmp_path, GOOD), ["requests=abc"])
    assert ei.value.message.startswith("--set requests:")


def test_set_value_that_yaml_reads_as_a_comment_stays_a_string(tmp_path):
    path = write(tmp_path, "name: b\ndescription: d\nkind: blend\n")
    _, p = spec_mod.load(path, ["separator= ## "])
    assert p.separator == " ## "
    _, p = spec_mod.load(path, ["seed=~"])
    assert p.seed is None


# ---- check expressions ----------------------------------------------------------------------------

ENV = {"follow_up": {"log": {"hit_tokens": 1024, "sources": ["a", "b"]}, "ttft_s": 0.05, "missing": None},
       "chunk_size": 256, "speedups": [2.0, 3.0], "missing_value": None, "name": "x" * 60, "zero": 0}


@pytest.mark.parametrize("expr, passed, shown", [
    ("follow_up.log.hit_tokens >= 2 * chunk_size", True, "follow_up.log.hit_tokens = 1024 >= 2 * chunk_size = 512"),
    ("follow_up.log.hit_tokens < chunk_size", False, "follow_up.log.hit_tokens = 1024 < chunk_size = 256"),
    ("min(speedups) >= 1.5 and len(follow_up.log.sources) == 2", True, "min(speedups) = 2 >= 1.5; len(follow_up.log.sources) = 2 == 2"),
    ("speedups[-1] > speedups[0]", True, "speedups[-1] = 3 > speedups[0] = 2"),
    ("0 < follow_up.ttft_s <= 0.1", True, "0 < follow_up.ttft_s = 0.05 <= 0.1"),
    ("'a' in follow_up.log.sources", True, None),
    ("not zero", True, "True"),
    ("round(follow_up.ttft_s * 1000) == 50", True, None),
])
def test_expressions_show_the_values_they_compared(expr, passed, shown):
    o = evaluate(expr, ENV)
    assert o.passed is passed and o.missing is None
    if shown is not None:
        assert o.shown == shown


def test_long_strings_are_shortened_in_what_is_shown():
    o = evaluate("name == 'y'", ENV)
    assert not o.passed and "..." in o.shown and len(o.shown) < 80


@pytest.mark.parametrize("expr, missing", [
    ("follow_up.log.retrieved >= 1", "follow_up.log.retrieved"),
    ("nothing > 1", "nothing"),
    ("missing_value > 1", "missing_value"),
    ("follow_up.missing > 1", "follow_up.missing"),
    ("speedups[5] > 1", "speedups[5]"),
    ("chunk_size.x > 1", "chunk_size.x"),
    ("zero == 0 and follow_up.nope", "follow_up.nope"),
])
def test_missing_values_fail_and_say_what_was_not_measured(expr, missing):
    o = evaluate(expr, ENV)
    assert o.passed is False and o.missing == missing
    assert o.shown == f"{missing} is missing (not measured)"


def test_short_circuit_does_not_touch_what_is_not_needed():
    assert evaluate("zero == 1 and nothing > 1", ENV).passed is False
    assert evaluate("zero == 0 or nothing > 1", ENV).passed is True


@pytest.mark.parametrize("expr", ["chunk_size / zero > 1", "chunk_size < 'a'", "len(chunk_size) > 0"])
def test_errors_while_evaluating_fail_the_check(expr):
    o = evaluate(expr, ENV)
    assert o.passed is False and o.shown.startswith("cannot evaluate")


@pytest.mark.parametrize("expr, why", [
    ("__import__('os').system('true')", "only min, max"),
    ("open('/etc/passwd')", "only min, max"),
    ("follow_up.__class__", "attribute '__class__' is not allowed"),
    ("follow_up._private", "attribute '_private' is not allowed"),
    ("(lambda: 1)()", "only min, max"),
    ("lambda: 1", "Lambda is not allowed"),
    ("[x for x in speedups]", "ListComp is not allowed"),
    ("1 if zero else 2", "IfExp is not allowed"),
    ("{'a': 1}", "Dict is not allowed"),
    ("(x := 1)", "NamedExpr is not allowed"),
    ("f'{chunk_size}'", "is not allowed"),
    ("chunk_size ** 2", "Pow is not allowed"),
    ("speedups[0:1]", "Slice is not allowed"),
    ("min.__call__(1)", "only min, max"),
    ("max.__self__", "is not allowed"),
    ("chunk_size >=", "not a valid expression"),
    ("a = 1", "not a valid expression"),
])
def test_disallowed_syntax_is_refused_before_anything_runs(expr, why):
    with pytest.raises(ExprError, match=re.escape(why)):
        compile_expr(expr)
    with pytest.raises(ExprError):
        evaluate(expr, ENV)
