"""An asyncio event loop whose timers fire on time, for the simulated engine and controller.

asyncio's default selector on Linux is epoll, and ``epoll_wait`` takes its timeout in whole
milliseconds, rounded up: every ``asyncio.sleep`` wakes 0-1 ms late (median ~0.9 ms measured
here). The simulator's whole point is to produce the configured latencies (a prefill, each
decode step), so that error shows up in every TTFT and inter-token latency a client measures.

The fix keeps epoll for readiness and waits for a finite timeout with ``select()`` on the epoll
descriptor itself (an epoll fd is readable when it has events ready), whose timeout has
microsecond resolution; then collects the events without blocking.
"""

from __future__ import annotations

import asyncio
import select
import selectors
from typing import Any, Coroutine, TypeVar

T = TypeVar("T")


if hasattr(selectors, "EpollSelector"):

    class PreciseEpollSelector(selectors.EpollSelector):
        """epoll for readiness, ``select()`` on the epoll fd for sub-millisecond timeouts."""

        def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
            if timeout is not None and timeout > 0:
                try:
                    select.select([self.fileno()], [], [], timeout)
                except InterruptedError:
                    pass
                timeout = 0
            return super().select(timeout)

    def new_loop() -> asyncio.AbstractEventLoop:
        return asyncio.SelectorEventLoop(PreciseEpollSelector())

else:  # pragma: no cover - not Linux: the platform's default loop

    def new_loop() -> asyncio.AbstractEventLoop:
        return asyncio.new_event_loop()


def run_precise(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on a loop with precise timers (Python 3.11+; on 3.10, the default
    loop)."""
    if not hasattr(asyncio, "Runner"):  # pragma: no cover - Python 3.10
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=new_loop) as runner:
        return runner.run(main)
