"""What the workload kinds share: run a replay between two metric snapshots and a log mark, turn
the records into summaries, per-request rows (with their log evidence) and figure specs.

A figure spec is plain data in ``results["figures"]`` (so result.json says what is drawn);
:func:`kvorch.plots.series` draws it when the report is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from .. import client as oa
from .. import metrics as mx
from ..plan import ProcessSpec
from .workbench import Workbench, hit_tokens
from .workload import Api, Replayed, Session, replay


@dataclass
class Measured:
    replayed: Replayed
    deltas: dict[str, dict[str, float]]
    evidence: dict[str, Any]  # request id → RequestEvidence

    @property
    def records(self) -> list[oa.RequestRecord]:
        return self.replayed.records


def run_measured(wb: Workbench, sessions: Sequence[Session], *, concurrency: int, max_duration_s: float,
                 api: Api = "completions", speedup: float = 1.0, max_requests: int | None = None) -> Measured:
    mark = wb.mark_logs()
    s0 = wb.snapshot()
    rep = wb.run(replay(sessions, model=wb.model, client=wb.client, concurrency=concurrency,
                        max_duration_s=max_duration_s, timeout=wb.request_timeout, api=api,
                        extra_body=wb.body(), speedup=speedup, max_requests=max_requests))
    s1 = wb.snapshot()
    evidence, _ = wb.evidence(mark, rep.records, wait_s=0.3)
    return Measured(replayed=rep, deltas=wb.deltas(s0, s1), evidence=evidence)


def cache_totals(deltas: dict[str, dict[str, float]], engines: Sequence[ProcessSpec]) -> dict[str, float | None]:
    """Tokens served from a cache over the engines' metric deltas: vLLM's own prefix cache, the
    external one (LMCache), their sum, and the prompt tokens the engines counted."""
    names = {e.name for e in engines}
    pre = ext = prompt = None
    for n, d in deltas.items():
        if n not in names:
            continue
        if (v := d.get("prefix_cache_hits")) is not None:
            pre = (pre or 0.0) + v
        if (v := d.get("external_prefix_cache_hits", hit_tokens(d))) is not None:
            ext = (ext or 0.0) + v
        if (v := d.get("prompt_tokens")) is not None:
            prompt = (prompt or 0.0) + v
    hits = None if pre is None and ext is None else (pre or 0.0) + (ext or 0.0)
    return {"prefix_cache_hit_tokens": pre, "external_hit_tokens": ext, "cache_hit_tokens": hits,
            "prompt_tokens": prompt, "hit_rate": (hits / prompt) if (hits is not None and prompt) else None}


def summary(records: Sequence[oa.RequestRecord]) -> dict[str, Any]:
    s = oa.summarize(records)
    return {k: s.get(k) for k in ("requests", "ok", "errors", "timeouts", "ttft_s", "itl_s", "tpot_s", "e2e_s",
                                  "requests_per_s", "output_tokens_per_s", "prompt_tokens", "output_tokens",
                                  "duration_s")}


def log_hits(m: Measured, r: oa.RequestRecord) -> int | None:
    e = m.evidence.get(r.request_id)
    return e.hit_tokens if e is not None and e.found else None


def request_rows(m: Measured, extra: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    rows = []
    for r in m.records:
        sched = m.replayed.schedule.get(r.request_id, {})
        rows.append({"request_id": r.request_id, "engine": r.engine, "status": r.status, **r.tags,
                     "ttft_ms": _ms(r.ttft_s), "e2e_ms": _ms(r.e2e_s), "prompt_tokens": r.prompt_tokens,
                     "output_tokens": r.output_tokens, "log_hit_tokens": log_hits(m, r),
                     "due_s": sched.get("due_s"), "sent_s": sched.get("sent_s"),
                     **(extra or {}).get(r.request_id, {})})
    return rows


def figure(file: str, title: str, x_label: str, y_label: str, series: dict[str, list[tuple[Any, Any]]],
           kind: str = "line") -> dict[str, Any]:
    """A figure spec: ``series`` label → [(x, y), …] (y None: not drawn); kind line | scatter | bar."""
    clean = {k: [[x, y] for x, y in pts if y is not None] for k, pts in series.items()}
    return {"file": file, "title": title, "x_label": x_label, "y_label": y_label, "kind": kind,
            "series": {k: v for k, v in clean.items() if v}}


def _ms(s: float | None) -> float | None:
    return round(s * 1000, 3) if s is not None else None


def ms(s: float | None) -> str:
    return f"{s * 1000:.1f}" if s is not None else "?"


def n(x: float | None) -> str:
    return "?" if x is None else f"{x:.0f}"


def r2(x: float | None) -> float | None:
    return round(x, 2) if x is not None else None


def delta_sum(deltas: dict[str, dict[str, float]], key: str) -> float | None:
    vals = [d[key] for d in deltas.values() if key in d]
    return sum(vals) if vals else None


__all__ = ["Measured", "run_measured", "cache_totals", "summary", "request_rows", "figure", "mx"]
