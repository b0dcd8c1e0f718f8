"""``from ._paramiko import paramiko``: paramiko without importing invoke on the way.

paramiko's ``config`` module imports invoke (when it is installed) only to run an ssh_config's
``Match exec`` lines; invoke pulls in ``unittest.mock`` and asyncio: ~60 ms of a cold command's
start-up that no connection needs. Here paramiko is imported with invoke hidden, then its
``paramiko.config.invoke`` is a stand-in that imports the real invoke on first use: ``Match exec``
works as before, and ``import invoke`` elsewhere is untouched."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any


class _InvokeOnFirstUse:
    """``paramiko.config.invoke`` until something of it is used; then the real module."""

    def __getattr__(self, name: str) -> Any:
        real = importlib.import_module("invoke")
        sys.modules["paramiko.config"].invoke = real
        return getattr(real, name)


def _import() -> Any:
    if "paramiko" in sys.modules or "invoke" in sys.modules:
        import paramiko

        return paramiko
    try:
        has_invoke = importlib.util.find_spec("invoke") is not None
    except (ImportError, ValueError):
        has_invoke = False
    sys.modules["invoke"] = None  # type: ignore[assignment]  # `import invoke` raises ImportError
    try:
        import paramiko
        import paramiko.config
    finally:
        if sys.modules.get("invoke", 0) is None:
            del sys.modules["invoke"]
    if has_invoke and paramiko.config.invoke is None:
        paramiko.config.invoke = _InvokeOnFirstUse()  # type: ignore[assignment]
    return paramiko


paramiko = _import()

__all__ = ["paramiko"]
