"""YAML files written by users: parse with positions, so every message can say FILE:LINE."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .errors import UserError


@dataclass(frozen=True)
class Problem:
    path: tuple[str | int, ...]
    message: str
    hint: str | None = None


def format_path(path: Iterable[str | int]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


class YamlDoc:
    """A parsed YAML document and its node tree (for line numbers)."""

    def __init__(self, text: str, filename: str, error: type[UserError] = UserError):
        self.filename = filename
        self.error = error
        try:
            self.root = yaml.compose(text, Loader=yaml.SafeLoader)
            self.data: Any = yaml.safe_load(text)
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            where = f"{filename}:{mark.line + 1}:{mark.column + 1}" if mark else filename
            raise error(f"{where}: YAML syntax error: {e.problem or e}", hint="fix the YAML syntax at that line") from None
        except yaml.YAMLError as e:
            raise error(f"{filename}: YAML error: {e}") from None

    def line_of(self, path: tuple[str | int, ...]) -> int | None:
        node = self.root
        line = node.start_mark.line + 1 if node is not None else None
        for part in path:
            if isinstance(node, yaml.MappingNode):
                for k, v in node.value:
                    if isinstance(k, yaml.ScalarNode) and k.value == str(part):
                        line = k.start_mark.line + 1
                        node = v
                        break
                else:
                    return line
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                return line
        return line

    def fail(self, problems: list[Problem], what: str) -> UserError:
        lines = []
        for pr in problems:
            line = self.line_of(pr.path)
            where = f"{self.filename}:{line}" if line else self.filename
            text = f"{where}: {format_path(pr.path)}: {pr.message}"
            if pr.hint:
                text += f" (hint: {pr.hint})"
            lines.append(text)
        first = lines[0] if len(lines) == 1 else f"{self.filename}: {len(lines)} problems in the {what}"
        return self.error(first, details=lines if len(lines) > 1 else [])


_HINTS = {
    "extra_forbidden": "remove it, or check its spelling against README.md",
    "missing": "add it",
}


def pydantic_problems(e: ValidationError, prefix: tuple[str | int, ...] = ()) -> list[Problem]:
    out = []
    for err in e.errors():
        loc = prefix + tuple(err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = f"unknown field {loc[-1]!r}"
        elif err["type"] == "missing":
            msg = "required field is missing"
        hint = _HINTS.get(err["type"])
        if err["type"] in ("greater_than_equal", "less_than_equal") and "port" in str(loc[-1]):
            hint = "use a port between 1 and 65535"
        out.append(Problem(loc, msg, hint))
    return out


def validate(model: type[BaseModel], doc: YamlDoc, what: str) -> Any:
    try:
        return model.model_validate(doc.data)
    except ValidationError as e:
        raise doc.fail(pydantic_problems(e), what) from None
