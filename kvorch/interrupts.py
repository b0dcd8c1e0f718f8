"""Whether an interrupt (Ctrl-C, SIGTERM, SIGHUP) was asked for during this command.

Python raises KeyboardInterrupt wherever the main thread happens to be, and a few places swallow it
(an async generator's finalizer prints "Exception ignored" and carries on). The command line's
signal handler also notes the request here, so a long step that returns normally anyway can still
honour it (the scenario runner and `up` check)."""

from __future__ import annotations

_requested: list[int] = []


def note(signum: int) -> None:
    _requested.append(signum)


def requested() -> bool:
    return bool(_requested)


def clear() -> None:
    _requested.clear()
