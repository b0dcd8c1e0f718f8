"""One module per scenario kind: ``Params`` (a pydantic model: the parameters and their defaults)
and ``run(wb, spec, params) -> Outcome``."""

from __future__ import annotations

from types import ModuleType

from ..outcome import Outcome

__all__ = ["KINDS", "Outcome"]


def _load() -> dict[str, ModuleType]:
    from . import reuse

    kinds: dict[str, ModuleType] = {"reuse": reuse}
    for name, mod in (("pd-bench", "pd_bench"), ("blend", "blend"), ("cache-bench", "cache_bench"), ("monitor", "monitor"),
                      ("trace", "trace"), ("multi-round-qa", "multi_round_qa"), ("long-doc-qa", "long_doc_qa"),
                      ("harness", "harness")):
        try:
            kinds[name] = __import__(f"{__name__}.{mod}", fromlist=["run"])
        except ImportError:
            pass
    return kinds


KINDS = _load()
