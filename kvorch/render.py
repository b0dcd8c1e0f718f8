"""Templates → file contents. Jinja2 with StrictUndefined; rendered LMCache configs are checked
against the target LMCache version's key set before anything is written anywhere."""

from __future__ import annotations

import json
import os
import shlex
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import yaml

from .errors import RenderError

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"


def templates_dir() -> str:
    """The templates in use: ``$ORCHESTRATE_TEMPLATES`` (your own copies) or the shipped ``templates/``."""
    return os.environ.get("ORCHESTRATE_TEMPLATES") or str(TEMPLATES_DIR)


def shell_quote(value: Any) -> str:
    return shlex.quote(str(value))


def shell_path(value: str) -> str:
    """Quote a path for a shell, keeping a leading ``~/`` meaning the user's home."""
    if value == "~":
        return '"$HOME"'
    if value.startswith("~/"):
        return '"$HOME"/' + shlex.quote(value[2:])
    return shlex.quote(value)


def shell_argv(argv: list[str]) -> str:
    """argv as one shell command line: every word quoted; a word starting with ``~/`` is a path
    in the user's home (as in an inventory's python, script or model paths)."""
    if not argv:
        raise RenderError("empty command line")
    return " ".join(shell_path(a) for a in argv)


def yaml_value(value: Any) -> str:
    """A scalar in the style of LMCache's example configs: True/False, numbers, "strings"."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value)  # YAML flow style is JSON
    raise RenderError(f"cannot render value {value!r} of type {type(value).__name__} into YAML")


@lru_cache(maxsize=4)
def environment(directory: str) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(directory),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["q"] = shell_quote
    env.filters["qpath"] = shell_path
    env.filters["argv"] = shell_argv
    env.filters["yaml_value"] = yaml_value
    return env


def render_template(name: str, **context: Any) -> str:
    try:
        template = environment(templates_dir()).get_template(name)
        text = template.render(**context)
    except jinja2.TemplateNotFound:
        raise RenderError(f"template {name!r} not found in {templates_dir()}") from None
    except jinja2.UndefinedError as e:
        raise RenderError(f"templates/{name}: {e.message}", hint="the template uses a value the plan does not provide") from None
    except jinja2.TemplateSyntaxError as e:
        raise RenderError(f"templates/{name}:{e.lineno}: template syntax error: {e.message}") from None
    return text if text.endswith("\n") else text + "\n"


def check_lmcache_config(text: str, where: str) -> dict[str, Any]:
    """Parse a rendered LMCache config and reject keys the target LMCache version does not know."""
    from . import lmcache_config
    from .inventory import lmcache_key_problem

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise RenderError(f"{where}: the rendered LMCache config is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise RenderError(f"{where}: the rendered LMCache config is not a mapping")
    bad = [msg for key in data if (msg := lmcache_key_problem(key)) is not None]
    if bad:
        raise RenderError(f"{where}: {bad[0]}", hint="fix the inventory's lmcache: keys or the template", details=bad)
    errors = lmcache_config.validate_semantics(data)
    if errors:
        raise RenderError(f"{where}: LMCache would reject this config: {errors[0]}", details=errors)
    return data
