"""Trace files (JSON lines) the ``trace`` kind replays, in the formats users already have:

* seed 003's ``{"role": "user", "text": "..."}`` (AIPerf's single-turn format, one request a line);
* AIPerf single-turn: ``text`` or ``texts``, optional ``timestamp`` / ``delay`` (ms), ``session_id``
  (lines of one session are one conversation, in order), ``output_length``;
* AIPerf multi-turn: ``{"session_id": …, "turns": [{"text": …, "delay": …}, …]}``;
* Mooncake (also AIPerf's ``mooncake_trace``): ``timestamp`` (ms), ``input_length``, ``output_length``,
  ``hash_ids`` (one id per block of ``block_tokens`` tokens; equal leading ids = an equal prefix), or
  ``text_input``.

Every line is validated (``extra="forbid"``: a misspelt field is an error naming the line).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .spec import SCENARIOS_DIR, ScenarioError

Format = Literal["auto", "single-turn", "multi-turn", "mooncake"]


class TurnLine(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str | None = None
    role: str | None = None
    text: str | None = None
    texts: list[str] | None = None
    timestamp: float | None = Field(None, ge=0, description="ms from the trace's start")
    delay: float | None = Field(None, ge=0, description="ms after the previous turn")
    session_id: str | None = None
    output_length: int | None = Field(None, ge=1)

    def content(self) -> str:
        if self.text is not None:
            return self.text
        return "\n".join(self.texts or [])


class MultiTurnLine(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str | None = None
    session_id: str | None = None
    turns: list[TurnLine] = Field(min_length=1)


class MooncakeLine(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str | None = None
    timestamp: float | None = Field(None, ge=0)
    delay: float | None = Field(None, ge=0)
    input_length: int | None = Field(None, ge=1)
    output_length: int | None = Field(None, ge=1)
    hash_ids: list[int] | None = None
    text_input: str | None = None
    session_id: str | None = None


class TraceTurn(BaseModel):
    """One request of a parsed trace (text, or a synthetic prompt of hash blocks)."""
    text: str | None = None
    input_length: int | None = None
    hash_ids: list[int] = Field(default_factory=list)
    output_length: int | None = None
    delay_s: float = 0.0
    line: int


class TraceSession(BaseModel):
    name: str
    at_s: float | None = None
    turns: list[TraceTurn]
    multi_turn: bool = False


class Trace(BaseModel):
    path: str
    format: str
    sessions: list[TraceSession]

    @property
    def requests(self) -> int:
        return sum(len(s.turns) for s in self.sessions)


def resolve(file: str, base: Path | None = None) -> Path:
    p = Path(file).expanduser()
    for cand in ([p] if p.is_absolute() else [p, *([base / p] if base else []), SCENARIOS_DIR / p]):
        if cand.is_file():
            return cand
    raise ScenarioError(f"trace file {file!r} not found", hint=f"give a path (relative to here or to {SCENARIOS_DIR}), "
                        "e.g. traces/mooncake-sample.jsonl")


def detect(obj: dict[str, Any]) -> str:
    if "turns" in obj:
        return "multi-turn"
    if {"input_length", "hash_ids", "text_input"} & set(obj):
        return "mooncake"
    return "single-turn"


def load_trace(path: Path, fmt: Format = "auto") -> Trace:
    rows: list[tuple[int, dict[str, Any]]] = []
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise ScenarioError(f"{path}:{i}: not JSON: {e}", hint="one JSON object per line (JSONL)") from None
        if not isinstance(obj, dict):
            raise ScenarioError(f"{path}:{i}: expected a JSON object, got {type(obj).__name__}")
        rows.append((i, obj))
    if not rows:
        raise ScenarioError(f"{path}: the trace is empty")
    found = fmt if fmt != "auto" else detect(rows[0][1])
    sessions: dict[str, TraceSession] = {}
    order: list[str] = []
    clock_ms = 0.0  # lines without a session: a delay is after the previous line's start

    def session(sid: str | None, line: int, at_ms: float | None) -> TraceSession:
        key = sid if sid is not None else f"line-{line}"
        if key not in sessions:
            sessions[key] = TraceSession(name=key, at_s=None if at_ms is None else at_ms / 1000.0, turns=[])
            order.append(key)
        return sessions[key]

    for i, obj in rows:
        try:
            if found == "multi-turn":
                m = MultiTurnLine.model_validate(obj)
                first = m.turns[0]
                s = session(m.session_id, i, first.timestamp)
                s.multi_turn = True
                for k, t in enumerate(m.turns):
                    s.turns.append(TraceTurn(text=t.content(), output_length=t.output_length, line=i,
                                             delay_s=(t.delay or 0.0) / 1000.0 if k else 0.0))
            elif found == "mooncake":
                mc = MooncakeLine.model_validate(obj)
                if mc.text_input is None and mc.input_length is None:
                    raise ScenarioError(f"{path}:{i}: a Mooncake line needs input_length (with or without hash_ids) or text_input")
                at = mc.timestamp if mc.timestamp is not None else (clock_ms := clock_ms + (mc.delay or 0.0))
                s = session(mc.session_id, i, at if (mc.timestamp is not None or mc.delay is not None) else None)
                s.turns.append(TraceTurn(text=mc.text_input, input_length=mc.input_length, hash_ids=mc.hash_ids or [],
                                         output_length=mc.output_length, line=i))
            else:
                t = TurnLine.model_validate(obj)
                if t.text is None and not t.texts:
                    raise ScenarioError(f"{path}:{i}: a line needs text (or texts)", hint='e.g. {"role": "user", "text": "..."}')
                if t.session_id is not None and t.session_id in sessions:
                    s = sessions[t.session_id]
                    s.multi_turn = True
                    s.turns.append(TraceTurn(text=t.content(), output_length=t.output_length, line=i,
                                             delay_s=(t.delay or 0.0) / 1000.0))
                    continue
                at = t.timestamp if t.timestamp is not None else (
                    (clock_ms := clock_ms + (t.delay or 0.0)) if t.delay is not None else None)
                s = session(t.session_id, i, at)
                s.turns.append(TraceTurn(text=t.content(), output_length=t.output_length, line=i))
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(x) for x in err["loc"])
            raise ScenarioError(f"{path}:{i}: {where}: {err['msg']}",
                                hint=f"a {found} line; fields: " + ", ".join(
                                    {"multi-turn": MultiTurnLine, "mooncake": MooncakeLine}.get(found, TurnLine).model_fields)) from None
    return Trace(path=str(path), format=found, sessions=[sessions[k] for k in order])


def shared_prefix_blocks(sessions: list[TraceSession], block_tokens: int) -> dict[int, int]:
    """Per trace line: how many of its leading hash blocks an earlier request already sent whole
    (the blocks a prefix cache can serve), in trace order."""
    seen: set[tuple[int, ...]] = set()
    out: dict[int, int] = {}
    for t in sorted((t for s in sessions for t in s.turns), key=lambda t: t.line):
        ids = t.hash_ids
        k = 0
        while k < len(ids) and tuple(ids[:k + 1]) in seen:
            k += 1
        out[t.line] = k
        full = len(ids) if t.input_length is None else min(len(ids), t.input_length // block_tokens)
        for j in range(1, full + 1):
            seen.add(tuple(ids[:j]))
    return out
