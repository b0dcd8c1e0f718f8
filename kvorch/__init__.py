"""kvorch: the package behind the `orchestrate` command, and its library API.

    from kvorch import Cluster
    with Cluster("inventories/local.yaml") as c:
        c.up(); print(c.run("reuse").verdict)

Names are imported lazily: ``import kvorch`` costs nothing (the CLI's --help stays fast, and the
hosts' bundle ships this file without the rest)."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Cluster": "kvorch.api",
    "Session": "kvorch.session",
    "Events": "kvorch.events",
    "RecordingEvents": "kvorch.events",
    "Result": "kvorch.results",
    "UpResult": "kvorch.results",
    "StatusResult": "kvorch.results",
    "DownResult": "kvorch.results",
    "LogsResult": "kvorch.results",
    "PreflightResult": "kvorch.results",
    "ScenarioResult": "kvorch.results",
    "CollectResult": "kvorch.results",
    "UserError": "kvorch.errors",
    "InventoryError": "kvorch.errors",
    "StartFailed": "kvorch.errors",
    "PreflightFailed": "kvorch.errors",
    "Interrupted": "kvorch.errors",
    "load_inventory": "kvorch.inventory",
    "build_plan": "kvorch.plan",
    "run_sweep": "kvorch.sweep",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'kvorch' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
