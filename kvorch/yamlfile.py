"""YAML files written by users: parse with positions, so every message can say FILE:LINE."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

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


#: the largest user YAML file read: inventories, scenarios and sweeps are a few KiB
MAX_FILE_BYTES = 4 * 1024 * 1024
#: the most nodes a document may expand to with its aliases (a "billion laughs" expands to 10^9)
MAX_NODES = 200_000


def read_user_file(path: Any, error: type[UserError] = UserError, what: str = "file") -> str:
    """A user's YAML file as text: bounded in size (checked before reading), UTF-8 (a bad byte is
    reported with its line). Missing or unreadable files raise ``error`` too."""
    from pathlib import Path

    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_FILE_BYTES:
            raise error(f"{p}: {size / 2**20:.1f} MiB is too large for a {what} (at most {MAX_FILE_BYTES // 2**20} MiB)",
                        hint="is this the right file?")
        raw = p.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as e:
        raise error(f"{p}: cannot read: {e.strerror}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise error(f"{p}:{line}: not UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})",
                    hint="save the file as UTF-8") from None


def _expanded_size(node: Any, memo: dict[int, int], limit: int) -> int:
    """Nodes the document has once every alias is expanded (memoized: linear in distinct nodes)."""
    import yaml

    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = limit + 1  # a recursive alias counts as too large
    if isinstance(node, yaml.MappingNode):
        n = 1 + sum(_expanded_size(k, memo, limit) + _expanded_size(v, memo, limit) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        n = 1 + sum(_expanded_size(v, memo, limit) for v in node.value)
    else:
        n = 1
    memo[key] = min(n, limit + 1)
    return memo[key]


def _bad_strings(data: Any, path: tuple[str | int, ...] = ()) -> Iterable[Problem]:
    """Strings no command line, environment or file name can carry: NUL and other control characters."""
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for k, v in items:
        here = path + (k,)
        for s in ((k, v) if isinstance(k, str) else (v,)):
            if isinstance(s, str):
                bad = next((ch for ch in s if ord(ch) < 32 and ch not in "\t\n\r"), None)
                if bad is not None:
                    yield Problem(here, f"contains the control character U+{ord(bad):04X}"
                                        + (" (NUL)" if bad == "\0" else "")
                                        + ": no command line, environment or file name can carry it",
                                  "remove it")
                    break
        yield from _bad_strings(v, here)


class YamlDoc:
    """A parsed YAML document and its node tree (for line numbers)."""

    def __init__(self, text: str, filename: str, error: type[UserError] = UserError):
        import yaml  # (here: a command that reuses a kept plan parses no YAML and imports none)

        self.filename = filename
        self.error = error
        if len(text) > MAX_FILE_BYTES:
            raise error(f"{filename}: {len(text) / 2**20:.1f} MiB is too large (at most {MAX_FILE_BYTES // 2**20} MiB)")
        try:
            self.root = yaml.compose(text, Loader=yaml.SafeLoader)
            if self.root is not None and _expanded_size(self.root, {}, MAX_NODES) > MAX_NODES:
                raise error(f"{filename}: its YAML aliases expand to more than {MAX_NODES} nodes",
                            hint="write the values out instead of nesting aliases (a YAML alias bomb?)")
            self.data: Any = yaml.safe_load(text)
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            where = f"{filename}:{mark.line + 1}:{mark.column + 1}" if mark else filename
            raise error(f"{where}: YAML syntax error: {e.problem or e}", hint="fix the YAML syntax at that line") from None
        except yaml.YAMLError as e:
            raise error(f"{filename}: YAML error: {e}") from None
        bad = list(_bad_strings(self.data))
        if bad:
            raise self.fail(bad, "file")

    def line_of(self, path: tuple[str | int, ...]) -> int | None:
        import yaml

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


M = TypeVar("M", bound=BaseModel)


def load_model(path: Any, model: type[M], error: type[UserError], what: str, keys: str) -> tuple[M, YamlDoc]:
    """A user's YAML file (a scenario, a sweep) validated into ``model``: read within bounds, YAML
    errors and every validation problem located as FILE:LINE: field; the top level must be a
    mapping (``keys`` names the expected ones in that message). Returns the model and the document
    (for locating the caller's own problems with :meth:`YamlDoc.fail`)."""
    doc = YamlDoc(read_user_file(path, error, what), str(path), error)
    if not isinstance(doc.data, dict):
        raise error(f"{path}: a {what} must be a YAML mapping ({keys})")
    return validate(model, doc, what), doc
