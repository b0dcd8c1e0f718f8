"""Check expressions: small, safe Python-like expressions over a scenario's results.

``follow_up.log.hit_tokens >= 256 and ttft_speedup >= 1.2`` — names, attributes, indexes,
numbers, strings, comparisons, arithmetic, and/or/not, and min/max/abs/len/all/any/round.
Nothing else is evaluated (no calls of anything else, no dunder access, no imports).
"""

from __future__ import annotations

import ast
import operator
from dataclasses import dataclass, field
from typing import Any

_BIN = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}
_CMP = {ast.Eq: (operator.eq, "=="), ast.NotEq: (operator.ne, "!="), ast.Lt: (operator.lt, "<"),
        ast.LtE: (operator.le, "<="), ast.Gt: (operator.gt, ">"), ast.GtE: (operator.ge, ">="),
        ast.In: (lambda a, b: a in b, "in"), ast.NotIn: (lambda a, b: a not in b, "not in")}
_FUNCS = {"min": min, "max": max, "abs": abs, "len": len, "all": all, "any": any, "round": round}


class ExprError(ValueError):
    """The expression is not allowed or not well formed."""


class Missing(Exception):
    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


@dataclass
class Outcome:
    passed: bool
    shown: str = field(default="", metadata={"doc": "the expression with the values it compared"})
    missing: str | None = None


def compile_expr(text: str) -> ast.Expression:
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        raise ExprError(f"not a valid expression: {e.msg}") from None
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            raise ExprError(f"attribute {node.attr!r} is not allowed")
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in _FUNCS):
            raise ExprError("only min, max, abs, len, all, any, round can be called")
        allowed = (ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.BinOp,
                   ast.Compare, ast.Name, ast.Load, ast.Attribute, ast.Subscript, ast.Constant, ast.Call,
                   ast.List, ast.Tuple, *_BIN, *_CMP)
        if not isinstance(node, allowed):
            raise ExprError(f"{type(node).__name__} is not allowed in a check")
    return tree


def _dotted(node: ast.AST) -> str:
    return ast.unparse(node)


def _get(obj: Any, key: Any, where: str) -> Any:
    if isinstance(obj, dict):
        if key in obj:
            return obj[key]
        raise Missing(where)
    if isinstance(obj, (list, tuple)) and isinstance(key, int):
        if -len(obj) <= key < len(obj):
            return obj[key]
        raise Missing(where)
    raise Missing(where)


def _eval(node: ast.AST, env: dict[str, Any], shown: list[str]) -> Any:
    if isinstance(node, ast.Expression):
        return _eval(node.body, env, shown)
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if env.get(node.id) is not None:
            return env[node.id]
        raise Missing(node.id)
    if isinstance(node, ast.Attribute):
        value = _get(_eval(node.value, env, shown), node.attr, _dotted(node))
        if value is None:
            raise Missing(_dotted(node))
        return value
    if isinstance(node, ast.Subscript):
        value = _get(_eval(node.value, env, shown), _eval(node.slice, env, shown), _dotted(node))
        if value is None:
            raise Missing(_dotted(node))
        return value
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_eval(e, env, shown) for e in node.elts]
    if isinstance(node, ast.UnaryOp):
        v = _eval(node.operand, env, shown)
        return (not v) if isinstance(node.op, ast.Not) else -v
    if isinstance(node, ast.BinOp):
        return _BIN[type(node.op)](_eval(node.left, env, shown), _eval(node.right, env, shown))
    if isinstance(node, ast.BoolOp):
        if isinstance(node.op, ast.And):
            result: Any = True
            for v in node.values:
                result = _eval(v, env, shown)
                if not result:
                    return result
            return result
        result = False
        for v in node.values:
            result = _eval(v, env, shown)
            if result:
                return result
        return result
    if isinstance(node, ast.Compare):
        left = _eval(node.left, env, shown)
        ok = True
        parts = [f"{_dotted(node.left)} = {_fmt(left)}" if not isinstance(node.left, ast.Constant) else _fmt(left)]
        for op, comp in zip(node.ops, node.comparators):
            right = _eval(comp, env, shown)
            fn, sym = _CMP[type(op)]
            parts.append(f"{sym} {_fmt(right)}" if isinstance(comp, ast.Constant) else f"{sym} {_dotted(comp)} = {_fmt(right)}")
            if not fn(left, right):
                ok = False
            left = right
        shown.append(" ".join(parts))
        return ok
    if isinstance(node, ast.Call):
        args = [_eval(a, env, shown) for a in node.args]
        return _FUNCS[node.func.id](*args)  # type: ignore[union-attr]
    raise ExprError(f"{type(node).__name__} is not allowed")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, str):
        return repr(v if len(v) <= 40 else v[:37] + "...")
    return str(v)


def evaluate(text: str, env: dict[str, Any]) -> Outcome:
    tree = compile_expr(text)
    shown: list[str] = []
    try:
        value = _eval(tree, env, shown)
    except Missing as m:
        return Outcome(False, f"{m.what} is missing (not measured)", missing=m.what)
    except (TypeError, ZeroDivisionError) as e:
        return Outcome(False, f"cannot evaluate: {e}")
    return Outcome(bool(value), "; ".join(shown) or _fmt(value))


def value(text: str, env: dict[str, Any]) -> Any:
    """The value of an expression over the results (None when something it reads was not measured)."""
    tree = compile_expr(text)
    try:
        return _eval(tree, env, [])
    except (Missing, TypeError, ZeroDivisionError):
        return None
