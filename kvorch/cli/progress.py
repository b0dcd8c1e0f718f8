"""The command line's :class:`~kvorch.events.Events`: rich progress while processes become healthy,
a spinner while a scenario runs, and the library's words on the console (stdout; stderr with --json,
which keeps stdout for the JSON). rich is imported when something is first shown: a command
that shows nothing on the way (``status``) never loads it."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..events import Events

if TYPE_CHECKING:
    from rich.console import Console


def escape(text: str) -> str:
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def _on_terminal() -> bool:
    """Whether stdout (the console's stream when not --json) is a terminal: the progress bars are
    transient, so elsewhere they would show nothing — and cost rich's import (~0.1 s) on `up`'s path."""
    import os
    import sys

    # as rich decides (rich/console.py is_terminal): TTY_COMPATIBLE, then FORCE_COLOR, then isatty
    if os.environ.get("TTY_COMPATIBLE") in ("0", "1"):
        return os.environ["TTY_COMPATIBLE"] == "1"
    if os.environ.get("FORCE_COLOR") is not None:
        return os.environ["FORCE_COLOR"] != ""
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


class RichEvents(Events):
    def __init__(self, console: Callable[[], Console], *, quiet: bool = False, verbose: int = 0):
        self._console = console
        self.quiet = quiet  # --json: no progress bars (the words still go to stderr)
        self.verbose = verbose
        self._progress: Any = None
        self._tasks: dict[str, Any] = {}
        self._status: Any = None

    @property
    def con(self) -> Console:
        return self._console()

    # ---- health waits
    def waiting(self, process: str, url: str) -> None:
        if self.quiet or not _on_terminal():
            return
        if self._progress is None:
            from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                      TimeElapsedColumn(), console=self.con, transient=True)
            self._progress.start()
        self._tasks[process] = self._progress.add_task(f"{process}: waiting for {url}", total=1)

    def healthy(self, process: str, seconds: float) -> None:
        if self._progress is not None and process in self._tasks:
            self._progress.update(self._tasks[process], completed=1, description=f"{process}: healthy")

    def waiting_done(self) -> None:
        progress, self._progress, self._tasks = self._progress, None, {}
        if progress is not None:
            try:
                progress.stop()
            except Exception:  # noqa: BLE001 - an interrupt inside rich's own start/stop: nothing to undo
                pass

    def start_failed(self, process: str, host: str, reason: str, log_path: str, log_tail: str) -> None:
        self.waiting_done()
        self.con.print(f"[bold red]{escape(process)}[/] on {escape(host)}: {escape(reason)}; last lines of {escape(log_path)}:")
        self.con.print(log_tail or "(empty log)", markup=False, highlight=False)

    # ---- scenarios
    def scenario_started(self, name: str, kind: str, cluster: str) -> None:
        if not self.quiet:
            self._status = self.con.status(f"running {name} ({kind}) on cluster {cluster}…", spinner="dots")
            self._status.start()

    def scenario_finished(self, name: str, verdict: str, seconds: float) -> None:
        self.close()

    # ---- words
    def info(self, message: str) -> None:
        self.con.print(escape(message))

    def warning(self, message: str) -> None:
        self.con.print(f"[yellow]warning:[/] {escape(message)}")

    def close(self) -> None:
        """Stop whatever is on screen (an interrupted command)."""
        status, self._status = self._status, None
        if status is not None:
            try:
                status.stop()
            except Exception:  # noqa: BLE001
                pass
        self.waiting_done()
