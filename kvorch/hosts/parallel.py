"""Run one function per host at the same time (a thread pool; never one host after another)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Mapping, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def _name(item: object) -> str:
    n = getattr(item, "name", None)
    return n if isinstance(n, str) else str(item)


def run_parallel(
    items: Mapping[str, T] | Iterable[T],
    fn: Callable[[T], R],
    max_workers: int | None = None,
) -> dict[str, R | BaseException]:
    """``fn(item)`` for every item in parallel threads; ``{name: result or the exception raised}``,
    in the order of ``items``. Names: the mapping's keys, else ``item.name``, else ``str(item)``.
    One failing host never hides the others' results. ``max_workers`` defaults to one thread per
    item (capped at 64)."""
    pairs = list(items.items()) if isinstance(items, Mapping) else [(_name(i), i) for i in items]
    names = [n for n, _ in pairs]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate names in run_parallel: {names}")
    if not pairs:
        return {}
    workers = max(1, min(max_workers or len(pairs), len(pairs), 64))
    results: dict[str, R | BaseException] = {}
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kvorch-host") as pool:
        futures = {n: pool.submit(fn, item) for n, item in pairs}
        for n in names:
            try:
                results[n] = futures[n].result()
            except BaseException as exc:  # noqa: BLE001 - returned to the caller per host
                if isinstance(exc, KeyboardInterrupt):
                    raise
                results[n] = exc
    return results
