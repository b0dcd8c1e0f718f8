"""Run state on the operator's machine: run ids, the state file, the lock.

``logs/<run-id>/`` is the run's folder (``logs/latest`` points at the newest);
``.orchestrate/<cluster>.json`` is the current run's state (hosts, processes, PIDs, ports, log paths,
rendered files' hashes); ``.orchestrate/<cluster>.lock`` keeps two up/down apart.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import UserError


def logs_root() -> Path:
    return Path(os.environ.get("ORCHESTRATE_LOGS", "logs"))


def state_root() -> Path:
    return Path(os.environ.get("ORCHESTRATE_STATE", ".orchestrate"))


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def new_run_id(cluster: str) -> str:
    return f"{cluster}-{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M%S}"


@dataclass(kw_only=True)
class ProcessState:
    name: str
    host: str
    pid: int | None = None
    started_at: str | None = None
    healthy_at: str | None = None
    stopped_at: str | None = None
    #: how it stopped: sigterm | sigkill | dead | …
    exit: str | None = None
    ports: list[int] = field(default_factory=list)
    #: absolute path of its log on its host
    log_path: str
    health_url: str
    script_sha256: str | None = None
    #: its live pids once healthy (leader, server, children)
    members: list[int] = field(default_factory=list)


@dataclass(kw_only=True)
class HostState:
    name: str
    address: str
    #: absolute working directory on the host
    workdir: str
    #: path → sha256 of what was uploaded
    files: dict[str, str] = field(default_factory=dict)


@dataclass(kw_only=True)
class RunState:
    """What ``up`` started, kept in ``<state>/<cluster>.json`` and the run folder's state.json.
    Plain data (no pydantic): ``status`` reads it on every call."""

    run_id: str
    cluster: str
    inventory: str
    started_at: str
    stopped_at: str | None = None
    hosts: dict[str, HostState] = field(default_factory=dict)
    processes: dict[str, ProcessState] = field(default_factory=dict)
    scenario_runs: list[str] = field(default_factory=list)

    def run_dir(self) -> Path:
        return logs_root() / self.run_id

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, text: str) -> "RunState":
        """Parse a state file; ValueError when it is not one (a field missing or of the wrong type)."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        hosts = {k: _typed(HostState, v) for k, v in _obj(data.pop("hosts", {})).items()}
        procs = {k: _typed(ProcessState, v) for k, v in _obj(data.pop("processes", {})).items()}
        return _typed(cls, data, hosts=hosts, processes=procs)


def _obj(v: Any) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise ValueError(f"expected an object, got {type(v).__name__}")
    return v


_CHECKS: dict[str, Callable[[Any], bool]] = {
    "str": lambda v: isinstance(v, str),
    "str | None": lambda v: v is None or isinstance(v, str),
    "int | None": lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)),
    "list[int]": lambda v: isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v),
    "list[str]": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    "dict[str, str]": lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
}


def _typed(cls: Any, data: Any, **done: Any) -> Any:
    """``cls(**data)`` with every field's type checked (the annotations above are strings)."""
    data = _obj(data)
    known = {f.name: f for f in fields(cls)}
    data = {k: v for k, v in data.items() if k in known}  # a field of a newer version: ignored
    for k, v in data.items():
        f = known[k]
        check = _CHECKS.get(str(f.type))
        if check is not None and not check(v):
            raise ValueError(f"{cls.__name__}.{k}: {v!r} is not {f.type}")
    try:
        return cls(**data, **done)
    except TypeError as e:  # a required field missing
        raise ValueError(f"{cls.__name__}: {e}") from None


def state_path(cluster: str) -> Path:
    return state_root() / f"{cluster}.json"


def save_state(state: RunState) -> None:
    text = json.dumps(state.to_json(), indent=2)
    for path in (state_path(state.cluster), state.run_dir() / "state.json"):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    point_latest(state.run_id)


def point_latest(run_id: str) -> None:
    latest = logs_root() / "latest"
    with contextlib.suppress(FileNotFoundError):
        latest.unlink()
    with contextlib.suppress(OSError):
        latest.symlink_to(run_id)


def load_state(cluster: str) -> RunState | None:
    path = state_path(cluster)
    if not path.exists():
        return None
    try:
        return RunState.from_json(path.read_text())
    except ValueError:
        raise UserError(f"{path}: the run state is unreadable", hint=f"remove {path} and run `orchestrate down` to clean the hosts") from None


def clear_state(cluster: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        state_path(cluster).unlink()


def find_run_dir(run: str | None) -> Path:
    """A run folder from a run id, a path, or (None) ``logs/latest``."""
    if run is None:
        p = logs_root() / "latest"
        if not p.exists():
            raise UserError(f"no run yet in {logs_root()}/", hint="run `orchestrate up` (or `orchestrate demo`) first")
        return p.resolve()
    for cand in (Path(run), logs_root() / run):
        if cand.is_dir():
            return cand.resolve()
    raise UserError(f"no run folder {run!r}", hint=f"pass a run id from {logs_root()}/ or a path to a run folder")


@contextlib.contextmanager
def cluster_lock(cluster: str, what: str) -> Iterator[None]:
    """Only one up/down/restart per cluster at a time (on this machine)."""
    path = state_root() / f"{cluster}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another orchestrate"
            raise UserError(f"cluster {cluster!r} is busy: {holder} is running", hint="wait for it to finish, then retry") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"`orchestrate {what}` (pid {os.getpid()})")
        fh.flush()
        try:
            yield
        finally:
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh, fcntl.LOCK_UN)


def write_json(path: Path, data: object) -> None:
    """Atomically: a reader (or an interrupted writer) sees the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, default=str))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
