"""What the library tells while it works: one small interface, called by the library, implemented by
whoever drives it. The command line shows rich progress (``kvorch.cli.progress``); a script or a
notebook passes its own (or :class:`RecordingEvents`), or nothing: the default says nothing.

Every method is a no-op here: override the ones you need. They are called from the thread that
runs the command (never from a host thread), and must not raise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class Events:
    # ---- phases of a command (up: connect_observe, preflight, bundle, prepare, upload, start, wait_healthy)
    def phase(self, name: str, seconds: float) -> None:
        """A phase finished after ``seconds``."""

    # ---- processes
    def waiting(self, process: str, url: str) -> None:
        """``process`` was started; its health URL is polled now."""

    def healthy(self, process: str, seconds: float) -> None:
        """``process`` answered its health URL."""

    def waiting_done(self) -> None:
        """No more health waits in this stage."""

    def start_failed(self, process: str, host: str, reason: str, log_path: str, log_tail: str) -> None:
        """``process`` did not start or become healthy (what this command started is rolled back next)."""

    def stopping(self, names: list[str], why: str) -> None:
        """About to stop ``names`` (``why``: rollback, interrupted, stale, down…)."""

    # ---- scenarios
    def scenario_started(self, name: str, kind: str, cluster: str) -> None:
        """A scenario starts sending requests."""

    def scenario_finished(self, name: str, verdict: str, seconds: float) -> None:
        """A scenario ended with ``verdict``."""

    # ---- words
    def info(self, message: str) -> None:
        """Something worth saying (e.g. what was cleaned up, a second interrupt)."""

    def warning(self, message: str) -> None:
        """Something went wrong but the command goes on."""


@dataclass
class RecordingEvents(Events):
    """Keeps every call as ``(name, {arg: value})``: for tests and for notebooks."""

    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def names(self) -> list[str]:
        return [n for n, _ in self.calls]

    def __getattribute__(self, name: str) -> Any:
        attr = object.__getattribute__(self, name)
        if name.startswith("_") or name in ("calls", "names") or not callable(attr) or not hasattr(Events, name):
            return attr
        import inspect

        params = list(inspect.signature(getattr(Events, name)).parameters)[1:]

        def record(*args: Any, **kwargs: Any) -> None:
            object.__getattribute__(self, "calls").append((name, {**dict(zip(params, args)), **kwargs}))
            attr(*args, **kwargs)
        return record


#: the default: say nothing
QUIET = Events()
