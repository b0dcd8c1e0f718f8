"""Typed results of the library's commands (after invoke/Fabric's ``Result``): ``.ok``, the data,
and ``.to_json()`` — exactly what ``orchestrate COMMAND --json`` prints (a public contract)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Result:
    data: dict[str, Any] = field(default_factory=dict)
    ok: bool = True

    def to_json(self) -> dict[str, Any]:
        return self.data

    def __getitem__(self, key: str) -> Any:
        return self.data[key]


@dataclass
class UpResult(Result):
    """``changed`` False: it was already up with these files; ``processes``: name → host, pid, health, log."""

    @property
    def changed(self) -> bool:
        return bool(self.data.get("changed"))

    @property
    def run_id(self) -> str | None:
        return self.data.get("run_id")


@dataclass
class StatusResult(Result):
    @property
    def processes(self) -> list[dict[str, Any]]:
        return self.data["processes"]


@dataclass
class DownResult(Result):
    @property
    def leftovers(self) -> list[str]:
        return self.data["leftovers"]


@dataclass
class LogsResult(Result):
    @property
    def processes(self) -> dict[str, Any]:
        return self.data["processes"]


@dataclass
class PreflightResult(Result):
    checks: list[Any] = field(default_factory=list)


@dataclass
class ScenarioResult(Result):
    @property
    def verdict(self) -> str:
        return self.data["verdict"]

    @property
    def dir(self) -> str:
        return self.data["dir"]


@dataclass
class CollectResult(Result):
    @property
    def run_dir(self) -> str:
        return self.data["run_dir"]
