"""Replaying workloads: sessions of turns, sent on a schedule with a bound on requests in flight.

A :class:`Session` is one user (a conversation, or a single request): its turns go one after the
other, each after the previous one's answer (plus its ``delay_s``), and a turn's prompt can carry
the session's history (the earlier questions *and the answers the engine really gave*), so that a
conversation's prefix grows and a KV cache can serve it. Sessions start at their ``at_s`` offset
(a trace's timestamps) or as soon as a slot is free. Used by the ``trace``, ``multi-round-qa`` and
``long-doc-qa`` kinds.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

from .. import client as oa
from ..plan import ProcessSpec

Api = Literal["completions", "chat"]


@dataclass
class Turn:
    text: str
    max_tokens: int
    delay_s: float = 0.0  # after the previous turn of the session answered
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class Session:
    engine: ProcessSpec
    turns: list[Turn]
    system: str = ""  # shared text before the history (a system prompt, a document)
    at_s: float | None = None  # start offset from the replay's start (None: when a slot is free)
    history: bool = True  # later turns carry the earlier turns and their answers
    name: str = ""
    past: list[tuple[str, str]] = field(default_factory=list)  # history before the first turn (question, answer)
    raw: bool = False  # completions: send system + text as they are (no "User:/Assistant:" framing)


@dataclass
class Replayed:
    records: list[oa.RequestRecord]
    #: per request id: when it was due (offset from the start) and when it went out
    schedule: dict[str, dict[str, float]]
    not_sent: int
    wall_s: float

    def lateness(self) -> dict[str, float | None]:
        late = [max(0.0, v["sent_s"] - v["due_s"]) for v in self.schedule.values() if v.get("due_s") is not None]
        return {"max_s": max(late) if late else None,
                "p50_s": oa.percentile(late, 50) if late else None, "n": float(len(late))}


def completion_prompt(system: str, past: Sequence[tuple[str, str]], text: str) -> str:
    """One prompt text for /v1/completions: the shared text, earlier turns with their answers, the
    new question. Earlier prompts are exact prefixes of later ones (prefix caching can serve them)."""
    parts = [system] if system else []
    for q, a in past:
        parts.append(f"User: {q}\nAssistant:{a}")
    parts.append(f"User: {text}\nAssistant:")
    return "\n".join(parts)


def chat_messages(system: str, past: Sequence[tuple[str, str]], text: str) -> list[dict[str, Any]]:
    msgs: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    for q, a in past:
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return msgs + [{"role": "user", "content": text}]


async def replay(sessions: Sequence[Session], *, model: str, client: Any, concurrency: int, max_duration_s: float,
                 timeout: float, api: Api = "completions", extra_body: dict[str, Any] | None = None,
                 speedup: float = 1.0, max_requests: int | None = None) -> Replayed:
    """Run every session; at most ``concurrency`` requests in flight; nothing starts after
    ``max_duration_s`` (requests in flight then are cut, as :func:`kvorch.client.run_load` does)."""
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    deadline = t0 + max_duration_s
    sem = asyncio.Semaphore(concurrency)
    records: list[oa.RequestRecord] = []
    schedule: dict[str, dict[str, float]] = {}
    budget = [max_requests if max_requests is not None else 1 << 62]
    not_sent = [0]

    async def one_session(s: Session) -> None:
        past: list[tuple[str, str]] = list(s.past)
        due = None if s.at_s is None else t0 + s.at_s / max(speedup, 1e-9)
        for i, turn in enumerate(s.turns):
            if i > 0:
                due = loop.time() + turn.delay_s / max(speedup, 1e-9)
            if due is not None and due > loop.time():
                await asyncio.sleep(due - loop.time())
            if loop.time() >= deadline or budget[0] <= 0:
                not_sent[0] += len(s.turns) - i
                return
            budget[0] -= 1
            hist = past if s.history else []
            prompt = messages = None
            if api == "chat":
                messages = chat_messages(s.system, hist, turn.text)
            elif s.raw:
                prompt = s.system + turn.text
            else:
                prompt = completion_prompt(s.system, hist, turn.text)
            rid = oa.new_request_id("kvorch", s.engine.name)
            async with sem:
                sent = loop.time()
                if sent >= deadline:
                    not_sent[0] += len(s.turns) - i
                    return
                schedule[rid] = {"due_s": (due - t0) if due is not None else None, "sent_s": sent - t0}
                rec = await oa.send(client, s.engine.name, s.engine.api_url or "", model, prompt=prompt,
                                    messages=messages, max_tokens=turn.max_tokens, temperature=0.0,
                                    request_id=rid, timeout=max(0.001, min(timeout, deadline - loop.time())),
                                    extra_body=extra_body, tags={**turn.tags, "session": s.name, "turn": str(i)})
            records.append(rec)
            if not rec.ok:
                not_sent[0] += len(s.turns) - i - 1
                return  # a conversation cannot go on without its answer
            past.append((turn.text, rec.output_text))

    started = time.monotonic()
    await asyncio.gather(*(one_session(s) for s in sessions))
    records.sort(key=lambda r: r.started_at)
    return Replayed(records=records, schedule=schedule, not_sent=not_sent[0], wall_s=time.monotonic() - started)
