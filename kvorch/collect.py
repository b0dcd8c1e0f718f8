"""`orchestrate collect`: bring back everything a run needs to be understood or reproduced.

Into the run's folder ``logs/<run-id>/`` (``logs/latest`` points at the newest):

``manifest.json``
    tool version (+ git commit from a checkout), the inventory as loaded (secrets redacted), the
    deployed files' hashes, per host its facts (OS, Python, vllm/lmcache/torch versions, GPUs), per
    process the exact env (secrets redacted) and argv, start/stop times, exit code, log status;
    ``complete: false`` and ``partial_reasons`` when something could not be collected.
``rendered/<host>/<path>``
    the files that were deployed, as read back from the host (secret files: names only).
``hosts/<host>/<process>.log`` (or ``.log.gz``)
    each process's whole log, pulled incrementally: ``collect-state.json`` keeps, per log, how many
    bytes of the host's file are already here, so a second collect reads only the new bytes.
    Beyond ``compress_over`` bytes the local copy is gzip (one member per collect); beyond
    ``max_log_bytes`` only the first ``max_log_bytes`` and the last ``tail_bytes``
    (``<process>.tail.log``) are kept.
``metrics/<process>.prom``
    a ``/metrics`` snapshot per engine/controller/LMCache server at collect time
    (``metrics/snapshots.jsonl``: one line of canonical values per process per collect),
    ``metrics/samples.jsonl``: every scenario's sampler series in one file.
``report.md``, ``report.html``, ``plots/``
    built by :mod:`kvorch.report`.

Secrets: every value of an env name the inventory calls secret (``Inventory.is_secret``) is
replaced by ``***`` in whatever lands in the run folder (logs included); a last scan of the folder
checks that none is left. Values shorter than :data:`MIN_SECRET_LEN` cannot be scrubbed safely and
are reported.

Logs are kept byte-exact: the committed part of a local log always ends at a line end of the host's
file; the partial last line is written too but re-read on the next collect (the local file is first
cut back to the committed length), so a line is never split and never duplicated. A host log that
restarted (shorter, or its first bytes changed) keeps the previous copy as ``<process>.<n>.log``.

Exit codes: 0 everything collected, 1 partial (a host unreachable, a log or file not read),
2 nothing to collect (no run).
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import json
import os
import posixpath
import re
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Iterable

from .errors import UserError
from .fmt import human_bytes
from .runstate import RunState, find_run_dir, load_state, logs_root, now, point_latest, write_json

if TYPE_CHECKING:
    from .session import Session
    from .inventory import Inventory
    from .nodes import Node
    from .plan import HostPlan, Plan, ProcessSpec

REDACTED = "***"
#: secret values shorter than this are not scrubbed from logs (they would match everywhere)
MIN_SECRET_LEN = 4
#: bytes of a host log's start whose hash tells "same file" from "restarted"
HEAD_BYTES = 512
STATE_FILE = "collect-state.json"
#: the final secret scan reads host logs up to this size again (bigger ones were scrubbed at pull)
SCAN_MAX_BYTES = 64 << 20
MANIFEST = "manifest.json"

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """``"512M"``, ``"8MiB"``, ``"1g"``, ``"1000"`` → bytes (powers of 1024)."""
    if isinstance(text, int):
        return text
    m = _SIZE_RE.match(str(text))
    if not m:
        raise UserError(f"not a size: {text!r}", hint="write bytes, or a number with K, M or G (e.g. 512M)")
    mult = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2).lower()]
    return int(float(m.group(1)) * mult)


@dataclass
class CollectOptions:
    """How logs are pulled. Each can be set by env: ``ORCHESTRATE_COLLECT_MAX_LOG_BYTES``,
    ``ORCHESTRATE_COLLECT_COMPRESS_OVER``, ``ORCHESTRATE_COLLECT_TAIL_BYTES`` (sizes: 512M, 8MiB…)."""

    max_log_bytes: int = 512 << 20  # per log file: the cap on what is pulled
    compress_over: int = 8 << 20  # a local log copy larger than this is kept as gzip
    tail_bytes: int = 4 << 20  # beyond the cap: this much of the end is kept too
    chunk_bytes: int = 16 << 20  # read size per round trip
    report: bool = True
    metrics_timeout_s: float = 3.0

    @classmethod
    def from_env(cls, **overrides: Any) -> CollectOptions:
        o = cls()
        for attr, var in (("max_log_bytes", "ORCHESTRATE_COLLECT_MAX_LOG_BYTES"),
                          ("compress_over", "ORCHESTRATE_COLLECT_COMPRESS_OVER"),
                          ("tail_bytes", "ORCHESTRATE_COLLECT_TAIL_BYTES")):
            if os.environ.get(var):
                try:
                    setattr(o, attr, parse_size(os.environ[var]))
                except UserError as e:
                    raise UserError(f"{var}: {e.message}", hint=e.hint) from None
        for k, v in overrides.items():
            if v is not None:
                setattr(o, k, parse_size(v) if k.endswith("_bytes") or k == "compress_over" else v)
        if o.max_log_bytes < 1:
            raise UserError("the log cap must be at least 1 byte")
        return o


# ------------------------------------------------------------------------------------------------
# secrets


class Secrets:
    """The secret values of an inventory (and of its rendered secret files) and their scrubbing."""

    def __init__(self, names: Iterable[str], values: Iterable[str]):
        self.names = sorted(set(names))
        vals = {v for v in values if v}
        self.short = sorted(v for v in vals if len(v) < MIN_SECRET_LEN)
        # longest first: a secret containing another is replaced whole
        self.values = sorted((v for v in vals if len(v) >= MIN_SECRET_LEN), key=len, reverse=True)
        self._bytes = [v.encode() for v in self.values]

    @classmethod
    def of(cls, inv: Inventory | None, plan: Plan | None) -> Secrets:
        names: set[str] = set()
        values: set[str] = set()
        if inv is not None:
            data = inv.model_dump(mode="json")

            def walk(node: Any, parent: str | None) -> None:
                if isinstance(node, dict):
                    for k, v in node.items():
                        if parent == "env" and inv.is_secret(k):
                            names.add(k)
                            if isinstance(v, str):
                                values.add(v)
                        elif isinstance(k, str) and inv.is_secret(k) and isinstance(v, str) and v:
                            values.add(v)
                        walk(v, k)
                elif isinstance(node, list):
                    for v in node:
                        walk(v, parent)

            walk(data, None)
        if plan is not None:
            for h in plan.hosts:
                for f in h.files:
                    if f.secret:
                        for k, v in _parse_env_file(f.content).items():
                            names.add(k)
                            values.add(v)
                for p in h.processes:
                    names.update(p.secret_env)
        return cls(names, values)

    def scrub_bytes(self, data: bytes) -> tuple[bytes, int]:
        n = 0
        for s in self._bytes:
            if s in data:
                n += data.count(s)
                data = data.replace(s, REDACTED.encode())
        return data, n

    def scrub_text(self, text: str) -> tuple[str, int]:
        n = 0
        for s in self.values:
            if s in text:
                n += text.count(s)
                text = text.replace(s, REDACTED)
        return text, n

    def scrub_obj(self, obj: Any) -> Any:
        """A JSON-able object with every secret value replaced (strings anywhere inside)."""
        if isinstance(obj, str):
            return self.scrub_text(obj)[0]
        if isinstance(obj, dict):
            return {k: self.scrub_obj(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self.scrub_obj(v) for v in obj]
        return obj

    def found_in(self, data: bytes) -> bool:
        return any(s in data for s in self._bytes)


def _parse_env_file(text: str) -> dict[str, str]:
    """``NAME='value'`` lines (the rendered secrets files) → dict."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        name, _, rest = line.partition("=")
        try:
            parts = shlex.split(rest)
        except ValueError:
            parts = [rest]
        out[name.removeprefix("export ").strip()] = parts[0] if parts else ""
    return out


def redact_inventory(inv: Inventory, secrets: Secrets) -> dict[str, Any]:
    """The inventory as loaded, with every secret env value (and any string under a secret-named
    key) replaced by ``***``."""
    data = inv.model_dump(mode="json")

    def walk(node: Any, parent: str | None) -> Any:
        if isinstance(node, dict):
            out = {}
            for k, v in node.items():
                if isinstance(k, str) and inv.is_secret(k) and isinstance(v, str):
                    out[k] = REDACTED
                else:
                    out[k] = walk(v, k)
            return out
        if isinstance(node, list):
            return [walk(v, parent) for v in node]
        return node

    return secrets.scrub_obj(walk(data, None))


# ------------------------------------------------------------------------------------------------
# incremental log pulls


@dataclass
class LogEntry:
    """What ``collect-state.json`` remembers of one host log."""

    remote_path: str
    local_file: str  # file name inside hosts/<host>/
    remote_committed: int = 0  # bytes of the host's file that are in the committed local part
    local_committed: int = 0  # length of the committed part of the local file
    remote_size: int = 0  # the host file's size at the last collect
    head_len: int = 0
    head_sha256: str = ""
    compressed: bool = False
    capped: bool = False
    tail_file: str | None = None
    redactions: int = 0
    pulled_total: int = 0
    skipped_bytes: int = 0  # beyond the cap, neither in the log copy nor in the tail file
    generation: int = 0
    previous: list[str] = field(default_factory=list)  # earlier incarnations of the log (restarts)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LogEntry:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass
class PullResult:
    entry: LogEntry | None
    status: str  # pulled | unchanged | missing | error
    size: int | None = None
    pulled: int = 0  # bytes read from the host this time
    new: int = 0  # host bytes that were not there at the previous collect
    restarted: bool = False
    error: str | None = None
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        e = self.entry
        d: dict[str, Any] = {"status": self.status, "host_size": self.size, "pulled": self.pulled, "new": self.new,
                             "seconds": round(self.seconds, 4)}
        if e is not None:
            d.update({"file": e.local_file, "host_path": e.remote_path, "bytes_here": e.remote_committed,
                      "compressed": e.compressed, "capped": e.capped, "tail_file": e.tail_file,
                      "redactions": e.redactions, "restarted": self.restarted, "previous": e.previous})
            if e.capped:
                d["skipped_bytes"] = e.skipped_bytes
        if self.error:
            d["error"] = self.error
        return d


class _Writer:
    """Appends to a plain or gzip local log; ``end_member()`` closes a gzip member and returns the
    file's length (the committed length, when called after the complete lines)."""

    def __init__(self, fh: BinaryIO, compressed: bool):
        self.fh = fh
        self.compressed = compressed
        self._gz: gzip.GzipFile | None = None

    def write(self, data: bytes) -> None:
        if not data:
            return
        if self.compressed:
            if self._gz is None:
                self._gz = gzip.GzipFile(fileobj=self.fh, mode="wb", mtime=0, compresslevel=6)
            self._gz.write(data)
        else:
            self.fh.write(data)

    def end_member(self) -> int:
        if self._gz is not None:
            self._gz.close()  # writes the member's trailer, leaves fh open
            self._gz = None
        self.fh.flush()
        return self.fh.tell()


def pull_log(ops: Any, remote_path: str, local_dir: Path, name: str, prev: LogEntry | None,
             opts: CollectOptions, secrets: Secrets) -> PullResult:
    """Bring ``remote_path`` (on the host behind ``ops``) up to date in ``local_dir/name.log``.

    Only bytes after what is already here are read. Returns the new entry for collect-state.json.
    """
    t0 = time.monotonic()
    size = ops.file_size(remote_path)
    if size is None:
        return PullResult(prev, "missing", None, seconds=time.monotonic() - t0,
                          error="no log file on the host (never started, or removed)")
    local_dir.mkdir(parents=True, exist_ok=True)
    e = prev if (prev is not None and prev.remote_path == remote_path) else None
    restarted = False
    if e is not None:
        local = local_dir / e.local_file
        head_now = ops.read_from(remote_path, 0, e.head_len) if e.head_len else b""
        if size < e.remote_committed or (e.head_len and hashlib.sha256(head_now).hexdigest() != e.head_sha256):
            # the host file was started over (a new process wrote it with `>`): keep our copy of the old one
            restarted = True
            kept = _archive(local_dir, name, e)
            e = LogEntry(remote_path=remote_path, local_file=f"{name}.log", generation=e.generation + 1,
                         previous=e.previous + ([kept] if kept else []), pulled_total=e.pulled_total)
        elif not local.exists() or local.stat().st_size < e.local_committed:
            e = None  # the local copy was removed or damaged: pull again from the start
    if e is None:
        e = LogEntry(remote_path=remote_path, local_file=f"{name}.log")
    if e.remote_committed == 0:
        for stale in (local_dir / f"{name}.log", local_dir / f"{name}.log.gz", local_dir / f"{name}.tail.log"):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        e.local_committed = 0
    prev_size = 0 if restarted else e.remote_size
    end = min(size, opts.max_log_bytes)
    start = e.remote_committed
    pulled = 0

    # switch to gzip when the copy will be larger than the threshold
    if not e.compressed and (e.local_committed + (end - start)) > opts.compress_over:
        _to_gzip(local_dir, name, e)

    local = local_dir / e.local_file
    mode = "r+b" if local.exists() else "w+b"
    with open(local, mode) as fh:
        fh.truncate(e.local_committed)  # drop the uncommitted tail of the last collect
        fh.seek(e.local_committed)
        w = _Writer(fh, e.compressed)
        carry = b""
        pos = start
        while pos < end:
            want = min(opts.chunk_bytes, end - pos)
            data = _read_chunk(ops, remote_path, pos, want, to_eof=(end == size and end - pos <= want))
            if not data:
                break
            if pos + len(data) > end:
                data = data[: end - pos]
            pulled += len(data)
            pos += len(data)
            block = carry + data
            cut = block.rfind(b"\n") + 1
            complete, carry = block[:cut], block[cut:]
            if complete:
                clean, n = secrets.scrub_bytes(complete)
                e.redactions += n
                w.write(clean)
        committed_remote = pos - len(carry)
        if pos >= opts.max_log_bytes and carry:
            # capped: nothing beyond the cap will ever be read, so the cut line is final
            clean, n = secrets.scrub_bytes(carry)
            e.redactions += n
            w.write(clean)
            committed_remote, carry = pos, b""
        e.local_committed = w.end_member()
        e.remote_committed = committed_remote
        if carry:  # the host's last line is not finished yet: here now, read again next time
            clean, _ = secrets.scrub_bytes(carry)
            w.write(clean)
            w.end_member()
    if e.head_len < HEAD_BYTES and size > e.head_len:
        head = ops.read_from(remote_path, 0, HEAD_BYTES)
        e.head_len = len(head)
        e.head_sha256 = hashlib.sha256(head).hexdigest()

    # beyond the cap: keep the end of the log too (rewritten each collect)
    if size > opts.max_log_bytes:
        e.capped = True
        tail_start = max(opts.max_log_bytes, size - opts.tail_bytes)
        if tail_start < size:
            tail = ops.read_from(remote_path, tail_start, size - tail_start)
            pulled += len(tail)
            nl = tail.find(b"\n")
            if tail_start > opts.max_log_bytes and nl >= 0:
                tail = tail[nl + 1:]
            skipped = size - opts.max_log_bytes - len(tail)
            clean, _ = secrets.scrub_bytes(tail)
            marker = (f"[orchestrate collect: the log is {size} bytes; the first {opts.max_log_bytes} are in "
                      f"{e.local_file}, {skipped} bytes after them were skipped (cap), this is the last "
                      f"{len(tail)}]\n").encode()
            (local_dir / f"{name}.tail.log").write_bytes(marker + clean)
            e.tail_file = f"{name}.tail.log"
            e.skipped_bytes = skipped
    e.remote_size = size
    e.pulled_total += pulled
    new = max(0, size - prev_size)
    status = "pulled" if pulled else "unchanged"
    return PullResult(e, status, size, pulled=pulled, new=new, restarted=restarted, seconds=time.monotonic() - t0)


#: below this many bytes a read goes through the transport's file access (SFTP, one round trip)
SHELL_READ_OVER = 1 << 20


def _read_chunk(ops: Any, path: str, pos: int, n: int, *, to_eof: bool) -> bytes:
    """``n`` bytes of ``path`` from ``pos`` (``to_eof``: all of it from ``pos``; it is ~n bytes).

    Big reads over SSH go through the host's shell, gzip-compressed (``tail -c | head -c | gzip -1
    | base64``): paramiko's SFTP reads a bounded range at ~2-3 MiB/s, a compressed stream of a log
    at tens of MiB/s (and far less on the wire). Small reads, reads on the local transport, and a
    host without gzip/base64 use the transport's file access."""
    from .hosts.local import LocalTransport
    from .hosts.ops import qpath

    if isinstance(getattr(ops, "t", None), LocalTransport) or n < SHELL_READ_OVER:
        return ops.read_from(path, pos, None if to_eof else n)
    # tail may die of SIGPIPE (141) once head has its bytes: that is fine, any other failure is not
    cmd = (f"tail -c +{int(pos) + 1} -- {qpath(ops.path(path))} | head -c {int(n)} | gzip -1 -c | base64 -w 0\n"
           's=("${PIPESTATUS[@]}"); { [ "${s[0]}" = 0 ] || [ "${s[0]}" = 141 ]; } && [ "${s[1]}${s[2]}${s[3]}" = 000 ]')
    try:
        res = ops.run(cmd, timeout=300)
        if res.ok:
            import base64

            data = gzip.decompress(base64.b64decode(res.stdout.strip()))  # gzip checks its CRC
            if len(data) <= n:
                return data
    except Exception:  # noqa: BLE001 - fall back to plain file access
        pass
    return ops.read_from(path, pos, n)


def _archive(local_dir: Path, name: str, e: LogEntry) -> str | None:
    """Keep the copy of a log that the host has since started over as ``<name>.<gen>.log[.gz]``."""
    src = local_dir / e.local_file
    if not src.exists():
        return None
    dst = local_dir / e.local_file.replace(f"{name}.log", f"{name}.{e.generation}.log", 1)
    src.replace(dst)
    tail = local_dir / f"{name}.tail.log"
    if tail.exists():
        tail.replace(local_dir / f"{name}.{e.generation}.tail.log")
    return dst.name


def _to_gzip(local_dir: Path, name: str, e: LogEntry) -> None:
    plain = local_dir / e.local_file
    gz = local_dir / f"{name}.log.gz"
    with open(gz, "wb") as out:
        if plain.exists() and e.local_committed:
            with open(plain, "rb") as src:
                w = _Writer(out, True)
                left = e.local_committed
                while left > 0:
                    buf = src.read(min(left, 8 << 20))
                    if not buf:
                        break
                    w.write(buf)
                    left -= len(buf)
                e.local_committed = w.end_member()
        else:
            e.local_committed = 0
    with contextlib.suppress(FileNotFoundError):
        plain.unlink()
    e.local_file = gz.name
    e.compressed = True


def read_local_log(path: Path) -> bytes:
    """A collected log's bytes (decompressed when it is a .gz)."""
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as fh:
            return fh.read()
    return path.read_bytes()


# ------------------------------------------------------------------------------------------------
# the run to collect


def _tool_info() -> dict[str, Any]:
    from . import __version__

    info: dict[str, Any] = {"name": "orchestrate", "package": "kvorch", "version": __version__,
                            "python": sys.version.split()[0], "git_commit": None, "git_dirty": None}
    root = Path(__file__).resolve().parent.parent
    if (root / ".git").exists():
        try:
            head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                  timeout=5)
            if head.returncode == 0:
                info["git_commit"] = head.stdout.strip()
                st = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=10)
                info["git_dirty"] = bool(st.stdout.strip()) if st.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired):
            pass
    return info


def resolve_run(plan: Plan, run_id: str | None) -> tuple[RunState, Path, bool]:
    """(run state, run folder, is the cluster's current run)."""
    current = load_state(plan.cluster)
    if run_id is None and current is not None:
        return current, current.run_dir(), True
    if run_id is not None and current is not None and current.run_id == run_id:
        return current, current.run_dir(), True
    if run_id is None:
        latest = logs_root() / "latest"
        if not latest.exists():
            raise UserError(f"no run of cluster {plan.cluster!r} to collect", hint="run `orchestrate up` first")
        rd = latest.resolve()
    else:
        rd = find_run_dir(run_id)
    sf = rd / "state.json"
    if not sf.exists():
        raise UserError(f"{rd}: no state.json: not a run folder", hint="pass a run id from logs/ (or its path)")
    try:
        st = RunState.from_json(sf.read_text())
    except ValueError:
        raise UserError(f"{sf}: unreadable run state") from None
    if st.cluster != plan.cluster:
        raise UserError(f"run {st.run_id} is of cluster {st.cluster!r}, the inventory describes {plan.cluster!r}",
                        hint="pass the inventory that run was started with (-i)")
    return st, rd, False


@contextlib.contextmanager
def _run_lock(run_dir: Path):
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".collect.lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another collect into {run_dir} is running", hint="wait for it to finish") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ------------------------------------------------------------------------------------------------
# per host


def _exit_path(p: ProcessSpec) -> str:
    return (p.pid_path[:-4] if p.pid_path.endswith(".pid") else p.pid_path) + ".exit"


def _script_env_argv(script: str) -> tuple[dict[str, str], list[str] | None]:
    """``export K=V`` lines and the ``exec`` line of a rendered launch script."""
    env: dict[str, str] = {}
    argv = None
    for line in script.splitlines():
        s = line.strip()
        if s.startswith("export "):
            try:
                words = shlex.split(s)
            except ValueError:
                continue
            for w in words[1:]:
                if "=" in w:
                    k, _, v = w.partition("=")
                    env[k] = v
        elif s.startswith("exec "):
            try:
                argv = shlex.split(s)[1:]
            except ValueError:
                pass
    return env, argv


def _is_secret_file(path: str, hp: HostPlan | None) -> bool:
    if path.endswith(".secrets.env"):
        return True
    if hp is not None:
        return any(f.secret for f in hp.files if f.path == path)
    return False


def _collect_host(node: Node, plan: Plan, state: RunState, run_dir: Path, prev_logs: dict[str, dict[str, Any]],
                  opts: CollectOptions, secrets: Secrets) -> dict[str, Any]:
    hp = node.plan
    out: dict[str, Any] = {"facts": None, "rendered": {}, "processes": {}, "logs": {}, "errors": []}
    try:
        out["facts"] = asdict(node.ops.facts(hp.python, node.workdir))
    except Exception as e:  # noqa: BLE001 - one failing step never hides the others
        out["errors"].append(f"facts: {type(e).__name__}: {e}")

    # the deployed files, read back
    deployed = dict(state.hosts[hp.name].files) if hp.name in state.hosts else {f.path: f.sha256 for f in hp.files}
    planned = {f.path: f for f in hp.files}
    rdir = run_dir / "rendered" / hp.name
    scripts: dict[str, str] = {}
    for path, sha in sorted(deployed.items()):
        if path.startswith(("/", "~")) or ".." in path.split("/"):
            out["errors"].append(f"rendered {path}: not a path inside the workdir: skipped")
            continue
        target = rdir / path
        target.parent.mkdir(parents=True, exist_ok=True)
        rec: dict[str, Any] = {"deployed_sha256": sha, "secret": _is_secret_file(path, hp)}
        if rec["secret"]:
            pf = planned.get(path)
            names = sorted(_parse_env_file(pf.content)) if pf is not None else []
            body = "".join(f"{n}={REDACTED}\n" for n in names) if names else f"{REDACTED}\n"
            target.write_text(f"# secret file {path}: values redacted by orchestrate collect (never copied here)\n" + body)
            rec.update({"source": "names only", "sha256": None})
            out["rendered"][path] = rec
            continue
        try:
            data = node.ops.read_file(path)
        except Exception as e:  # noqa: BLE001
            data = None
            rec["error"] = f"{type(e).__name__}: {e}"
        if data is None:
            pf = planned.get(path)
            if pf is not None and pf.sha256 == sha:
                data, rec["source"] = pf.content.encode(), "plan (not on the host any more)"
            else:
                rec.update({"source": None, "sha256": None, "matches_deployed": None})
                rec.setdefault("error", "not on the host, and the inventory now renders it differently")
                out["errors"].append(f"rendered {path}: {rec['error']}")
                out["rendered"][path] = rec
                continue
        else:
            rec["source"] = "host"
        rec["sha256"] = hashlib.sha256(data).hexdigest()
        rec["matches_deployed"] = rec["sha256"] == sha
        rec["matches_inventory"] = (planned[path].sha256 == rec["sha256"]) if path in planned else None
        clean, n = secrets.scrub_bytes(data)
        if n:
            rec["redactions"] = n
        target.write_bytes(clean)
        out["rendered"][path] = rec
        if path.startswith("run/") and path.endswith(".sh"):
            scripts[path] = data.decode("utf-8", "replace")

    # processes: state now, exit code, log
    names = [p.name for p in hp.processes] + [n for n, ps in state.processes.items()
                                               if ps.host == hp.name and n not in {p.name for p in hp.processes}]
    specs = {p.name: p for p in hp.processes}
    pids = {}
    for name in names:
        ps = state.processes.get(name)
        pid = ps.pid if ps else None
        if pid is None and name in specs:
            with contextlib.suppress(Exception):
                pid = node.ops.read_pid(specs[name].pid_path)
        if pid:
            pids[name] = pid
    try:
        states = node.ops.process_states(list(set(pids.values()))) if pids else {}
    except Exception as e:  # noqa: BLE001
        states = {}
        out["errors"].append(f"process state: {type(e).__name__}: {e}")
    logs_dir = run_dir / "hosts" / hp.name
    log_paths = {n: (state.processes[n].log_path if n in state.processes else node.path(specs[n].log_path))
                 for n in names if n in state.processes or n in specs}
    try:
        rotated = _rotated_logs(node, log_paths)
    except Exception as e:  # noqa: BLE001
        rotated = {}
        out["errors"].append(f"listing earlier logs: {type(e).__name__}: {e}")
    for name in names:
        spec = specs.get(name)
        ps = state.processes.get(name)
        rec: dict[str, Any] = {"pid": pids.get(name),
                               "state_now": states.get(pids[name], "unknown") if name in pids else "absent"}
        if spec is not None:
            try:
                rec["exit_code"] = node.ops.read_exit_code(_exit_path(spec))
            except Exception as e:  # noqa: BLE001
                rec["exit_code"] = None
                out["errors"].append(f"{name}: exit code: {type(e).__name__}: {e}")
            script = scripts.get(spec.launch_script)
            if script is not None:
                env, argv = _script_env_argv(script)
                rec["env_deployed"] = env
                rec["argv_deployed"] = argv
        log_path = log_paths.get(name)
        if log_path is None:
            continue
        key = f"{hp.name}/{name}"
        prev = LogEntry.from_json(prev_logs[key]) if key in prev_logs else None
        # logs of earlier incarnations (a restart renamed the log): each pulled whole, once
        earlier = []
        for rpath in rotated.get(name, []):
            rbase = posixpath.basename(rpath)
            rstem = rbase[: -len(".log")] if rbase.endswith(".log") else rbase
            rkey = f"{key}@{rbase}"
            rprev = LogEntry.from_json(prev_logs[rkey]) if rkey in prev_logs else None
            try:
                if rprev is None and prev is not None and prev.head_len:
                    head = node.ops.read_from(rpath, 0, prev.head_len)
                    if hashlib.sha256(head).hexdigest() == prev.head_sha256:
                        # the file we were pulling as the current log, renamed: go on from where we were
                        rprev = _rename_entry(logs_dir, prev, name, rstem, rpath)
                        prev = None
                r = pull_log(node.ops, rpath, logs_dir, rstem, rprev, opts, secrets)
            except Exception as e:  # noqa: BLE001
                r = PullResult(rprev, "error", error=f"{type(e).__name__}: {e}")
                out["errors"].append(f"{name}: earlier log {rpath}: {r.error}")
            if r.entry is not None:
                out["logs"][rkey] = r.entry.to_json()
            earlier.append(r.summary())
        try:
            res = pull_log(node.ops, log_path, logs_dir, name, prev, opts, secrets)
        except Exception as e:  # noqa: BLE001
            res = PullResult(prev, "error", error=f"{type(e).__name__}: {e}")
            out["errors"].append(f"{name}: log {log_path}: {res.error}")
        if res.entry is not None:
            out["logs"][key] = res.entry.to_json()
        rec["log"] = res.summary()
        if res.status == "missing":
            rec["log"]["note"] = res.error
        if earlier:
            rec["earlier_logs"] = earlier
        out["processes"][name] = rec
    return out


# ------------------------------------------------------------------------------------------------
# metrics


#: what kvorch.restart names the log of a process it restarted: <stem>.<UTC time>.<old pid>.log
_ROTATED = r"\.\d{8}T\d{6}Z\.(?:\d+|none)"


def _rotated_logs(node: Node, log_paths: dict[str, str]) -> dict[str, list[str]]:
    """Per process, the logs of its earlier incarnations next to its log (one ``ls`` per folder)."""
    from .hosts.ops import qpath

    listing: dict[str, list[str]] = {}
    for d in sorted({posixpath.dirname(p) for p in log_paths.values()}):
        res = node.ops.run(f"ls -1A -- {qpath(d)} 2>/dev/null")
        listing[d] = res.stdout.splitlines() if res.ok else []
    out: dict[str, list[str]] = {}
    for name, path in log_paths.items():
        d, base = posixpath.split(path)
        stem, ext = posixpath.splitext(base)
        pat = re.compile(rf"^{re.escape(stem)}{_ROTATED}{re.escape(ext or '.log')}$")
        found = sorted(f for f in listing.get(d, []) if pat.match(f))
        if found:
            out[name] = [posixpath.join(d, f) for f in found]
    return out


def _rename_entry(local_dir: Path, e: LogEntry, name: str, new_stem: str, new_remote: str) -> LogEntry:
    """Our copy of ``name``'s log becomes the copy of ``new_remote`` (the same file, renamed on
    the host), so pulling goes on from where it was."""
    moved = LogEntry.from_json(e.to_json())
    moved.remote_path = new_remote
    for attr in ("local_file", "tail_file"):
        old = getattr(e, attr)
        if old:
            new = new_stem + old[len(name):] if old.startswith(name) else old
            with contextlib.suppress(FileNotFoundError):
                (local_dir / old).replace(local_dir / new)
            setattr(moved, attr, new)
    return moved


def _scrape_text(url: str, timeout: float) -> str:
    import httpx

    with httpx.Client(timeout=timeout, trust_env=False) as client:
        r = client.get(url)
        r.raise_for_status()
        return r.text


_FETCH_PY = ("import sys,urllib.request\n"
             "sys.stdout.write(urllib.request.urlopen(sys.argv[1],timeout=float(sys.argv[2])).read().decode('utf-8','replace'))")


def _is_loopback(url: str | None) -> bool:
    import ipaddress
    from urllib.parse import urlsplit

    host = urlsplit(url or "").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _scrape_via_host(node: Node, url: str, timeout: float) -> str:
    from .hosts.ops import q, qpath

    res = node.ops.run(f"{qpath(node.plan.python)} -c {q(_FETCH_PY)} {q(url)} {q(timeout)}", timeout=timeout + 10)
    if not res.ok:
        lines = (res.stderr or res.stdout).strip().splitlines()
        raise RuntimeError(lines[-1] if lines else f"exit {res.exit_code}")
    return res.stdout


def _collect_metrics(plan: Plan, nodes: dict[str, Node], run_dir: Path, opts: CollectOptions,
                     secrets: Secrets) -> dict[str, Any]:
    """Scrape every process's /metrics now: from here, else from its own host."""
    from .hosts.parallel import run_parallel
    from .metrics import parse

    mdir = run_dir / "metrics"
    mdir.mkdir(parents=True, exist_ok=True)
    targets = {p.name: p for p in plan.processes() if p.metrics_url}

    def one(p: ProcessSpec) -> dict[str, Any]:
        t = now()
        text, via, errors = None, None, []
        node = nodes.get(p.host)
        # a loopback URL of a remote host means that host's loopback, not ours: ask the host
        remote_loopback = (node is not None and node.plan.connector == "ssh" and _is_loopback(p.metrics_url)
                           and not _is_loopback(f"http://{node.plan.address}/"))
        if not remote_loopback:
            try:
                text, via = _scrape_text(p.metrics_url, opts.metrics_timeout_s), "direct"  # type: ignore[arg-type]
            except Exception as e:  # noqa: BLE001
                errors.append(f"direct: {type(e).__name__}: {e}")
        if text is None:
            if node is not None:
                try:
                    text, via = _scrape_via_host(node, p.metrics_url, opts.metrics_timeout_s), "host"  # type: ignore[arg-type]
                except Exception as e2:  # noqa: BLE001
                    errors.append(f"from {p.host}: {e2}")
        rec: dict[str, Any] = {"url": p.metrics_url, "host": p.host, "kind": p.kind, "at": t, "ok": text is not None}
        if text is None:
            rec["error"] = "; ".join(errors)
            prev = mdir / f"{p.name}.prom"
            rec["file"] = prev.name if prev.exists() else None
            rec["note"] = "kept the previous snapshot" if prev.exists() else "no snapshot"
            return rec
        clean, _ = secrets.scrub_text(text)
        (mdir / f"{p.name}.prom").write_text(clean)
        rec.update({"file": f"{p.name}.prom", "via": via, "bytes": len(clean)})
        try:
            snap = parse(text, url=p.metrics_url or "")
            rec["values"] = snap.values()
            hists = {}
            for h in ("ttft_seconds", "itl_seconds", "e2e_seconds", "tpot_seconds"):
                hist = snap.histogram(h)
                if hist is not None and hist.count:
                    hists[h] = {"count": hist.count, "mean": hist.mean, **hist.percentiles()}
            rec["histograms"] = hists
        except Exception as e:  # noqa: BLE001
            rec["parse_error"] = f"{type(e).__name__}: {e}"
        return rec

    out: dict[str, Any] = {}
    for name, r in run_parallel(targets, one).items():
        out[name] = r if isinstance(r, dict) else {"ok": False, "error": f"{type(r).__name__}: {r}"}
    # the controller's view of its workers (never /env: it serves the whole environment)
    for p in plan.processes():
        if p.kind == "controller" and p.health_url.endswith("/controller/workers"):
            try:
                body = _scrape_text(p.health_url, opts.metrics_timeout_s)
                (mdir / f"{p.name}-workers.json").write_text(secrets.scrub_text(body)[0])
                out.setdefault(p.name, {})["workers_file"] = f"{p.name}-workers.json"
            except Exception as e:  # noqa: BLE001
                out.setdefault(p.name, {})["workers_error"] = f"{type(e).__name__}: {e}"
    with (mdir / "snapshots.jsonl").open("a") as fh:
        for name, r in out.items():
            if r.get("ok"):
                fh.write(json.dumps({"at": r["at"], "process": name, "values": r.get("values", {})}) + "\n")
    return out


def _gather_samples(run_dir: Path) -> dict[str, Any]:
    """Every scenario's sampler series in metrics/samples.jsonl (with the scenario run's name)."""
    out_path = run_dir / "metrics" / "samples.jsonl"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    sources = []
    with out_path.open("w") as out:
        for f in sorted((run_dir / "scenarios").glob("*/samples.jsonl")):
            sources.append(str(f.relative_to(run_dir)))
            for line in f.read_text().splitlines():
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                out.write(json.dumps({"scenario_run": f.parent.name, **row}) + "\n")
                n += 1
    return {"file": "metrics/samples.jsonl", "rows": n, "sources": sources}


# ------------------------------------------------------------------------------------------------
# the secret scan


def scan_for_secrets(run_dir: Path, secrets: Secrets, *, fix: bool = True) -> dict[str, Any]:
    """Every file of the run folder (gzip logs decompressed): no secret value may be left.
    Text files that hold one are scrubbed in place (``fix``); the result says which."""
    found, fixed = [], []
    if not secrets.values:
        return {"clean": True, "checked_values": 0, "files": 0, "fixed": [], "found": []}
    files = 0
    for path in sorted(run_dir.rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        if path.stat().st_size > SCAN_MAX_BYTES and path.parent.parent.name == "hosts":
            continue  # big log copies were scrubbed line by line while they were pulled
        files += 1
        try:
            data = read_local_log(path) if path.suffix == ".gz" else path.read_bytes()
        except (OSError, EOFError, gzip.BadGzipFile):
            continue
        if not secrets.found_in(data):
            continue
        rel = str(path.relative_to(run_dir))
        if fix:
            clean, _ = secrets.scrub_bytes(data)
            if path.suffix == ".gz":
                with gzip.open(path, "wb", mtime=0) as fh:
                    fh.write(clean)
            else:
                path.write_bytes(clean)
            fixed.append(rel)
        else:
            found.append(rel)
    return {"clean": not found, "checked_values": len(secrets.values), "files": files, "fixed": fixed,
            "found": found, "too_short_to_scrub": len(secrets.short)}


# ------------------------------------------------------------------------------------------------
# the command


def collect(c: Session, plan: Plan, run_id: str | None = None, options: CollectOptions | None = None) -> dict[str, Any]:
    """Collect into the run folder; returns the summary (also in manifest.json's last collection)."""
    from .hosts.parallel import run_parallel
    from .nodes import close_all, open_nodes

    opts = options or CollectOptions.from_env()
    inv = c.inventory()
    state, run_dir, is_current = resolve_run(plan, run_id)
    secrets = Secrets.of(inv, plan)
    t0 = time.monotonic()
    started = now()
    with _run_lock(run_dir):
        cstate_path = run_dir / STATE_FILE
        try:
            cstate = json.loads(cstate_path.read_text()) if cstate_path.exists() else {}
        except ValueError:
            cstate = {}
        prev_logs: dict[str, dict[str, Any]] = cstate.get("logs", {})
        mpath = run_dir / MANIFEST
        try:
            prev_manifest = json.loads(mpath.read_text()) if mpath.exists() else {}
        except ValueError:
            prev_manifest = {}

        in_run = set(state.hosts) | {ps.host for ps in state.processes.values()}
        wanted = [h.name for h in plan.hosts if h.name in in_run or not in_run]
        newer = None if is_current else _newer_run(state)
        if newer is not None:  # the hosts' logs and files now belong to a later run: touch nothing there
            wanted = []
        not_in_plan = sorted(in_run - {h.name for h in plan.hosts})
        phases: dict[str, float] = {}
        tp = time.monotonic()
        nodes, errors = open_nodes(plan, c.ssh_config, names=wanted, strict=False)
        _probe(nodes, errors)
        phases["connect"] = time.monotonic() - tp
        try:
            tp = time.monotonic()
            # first: their GET lines go in the logs. A superseded run's endpoints are the later run's.
            metrics = (_collect_metrics(plan, nodes, run_dir, opts, secrets) if newer is None
                       else dict(prev_manifest.get("metrics") or {}))
            phases["metrics"] = time.monotonic() - tp
            tp = time.monotonic()
            results = run_parallel(nodes, lambda n: _collect_host(n, plan, state, run_dir, prev_logs, opts, secrets))
            phases["hosts"] = time.monotonic() - tp
        finally:
            close_all(nodes)

        partial: list[str] = []
        host_out: dict[str, Any] = {}
        proc_out: dict[str, dict[str, Any]] = {}
        rendered: dict[str, Any] = {}
        new_logs = dict(prev_logs)
        for hname in wanted:
            hp = plan.host(hname)
            prev_h = (prev_manifest.get("hosts") or {}).get(hname, {})
            h: dict[str, Any] = {"address": hp.address, "connector": hp.connector, "workdir": hp.workdir,
                                 "python": hp.python}
            if hname in errors:
                h.update({"reachable": False, "error": errors[hname].message, "facts": prev_h.get("facts"),
                          "facts_from": prev_h.get("collected_at")})
                partial.append(f"host {hname} unreachable: {errors[hname].message.removeprefix(f'host {hname}: ')}")
                rendered[hname] = (prev_manifest.get("rendered") or {}).get(hname, {})
            else:
                r = results.get(hname)
                if isinstance(r, BaseException):
                    h.update({"reachable": True, "error": f"{type(r).__name__}: {r}", "facts": prev_h.get("facts")})
                    partial.append(f"host {hname}: collect failed: {type(r).__name__}: {r}")
                else:
                    h.update({"reachable": True, "collected_at": started, "facts": r["facts"], "workdir": nodes[hname].workdir})
                    if r["errors"]:
                        h["errors"] = r["errors"]
                        partial.extend(f"host {hname}: {e}" for e in r["errors"])
                    rendered[hname] = r["rendered"]
                    proc_out.update(r["processes"])
                    new_logs.update(r["logs"])
            host_out[hname] = h
        if newer is not None:
            host_out = {h: {**(prev_manifest.get("hosts") or {}).get(h, {}), "reachable": None,
                            "error": f"not contacted: its files and logs now belong to the later run {newer}"}
                        for h in sorted(in_run)}
            rendered = prev_manifest.get("rendered") or {}
            proc_out = {n: {**{k: v for k, v in p.items() if k != "host"},
                            "log": {**(p.get("log") or {}), "pulled": 0, "new": 0,
                                    "status": f"kept: the host's log now belongs to {newer}"}}
                        for n, p in (prev_manifest.get("processes") or {}).items()}
            partial = list(prev_manifest.get("partial_reasons") or [])
            if not prev_manifest:
                partial.append(f"run {state.run_id} was not collected before the later run {newer} started: "
                               "its host logs are gone (overwritten)")
            not_in_plan = []
        for hname in not_in_plan:
            host_out[hname] = {**(prev_manifest.get("hosts") or {}).get(hname, {}), "reachable": None,
                               "error": "not in the inventory any more: not contacted"}
            partial.append(f"host {hname} is part of the run but not of the inventory {c.inventory_path}: not collected")
        cstate = {"logs": new_logs, "updated_at": now()}
        write_json(cstate_path, cstate)

        processes = _process_records(inv, plan, state, proc_out, errors, prev_manifest)
        for name, p in processes.items():
            if p.get("log", {}).get("status") in ("missing", "error") and p.get("state_now") != "absent":
                partial.append(f"{name}: log not collected: {p['log'].get('error') or p['log'].get('note')}")
        samples = _gather_samples(run_dir)
        scenarios = _scenario_index(run_dir)
        took = time.monotonic() - t0
        pulled = sum((p.get("log") or {}).get("pulled", 0) + sum(x.get("pulled", 0) for x in p.get("earlier_logs", []))
                     for p in proc_out.values())
        collection = {"at": started, "seconds": round(took, 3), "complete": not partial, "bytes_pulled": pulled,
                      "unreachable": sorted(errors), "current_run": is_current}
        manifest: dict[str, Any] = {
            "schema": 1,
            "run_id": state.run_id,
            "cluster": plan.cluster,
            "topology": plan.topology,
            "engine": plan.engine,
            "model": plan.model,
            "tool": _tool_info(),
            "collected_at": started,
            "complete": not partial,
            "partial_reasons": partial,
            "collections": (prev_manifest.get("collections") or []) + [collection],
            "run": {"started_at": state.started_at, "stopped_at": state.stopped_at, "inventory_path": state.inventory,
                    "scenario_runs": state.scenario_runs},
            "inventory": {"path": c.inventory_path, "data": redact_inventory(inv, secrets)},
            "rendered": rendered,
            "hosts": host_out,
            "processes": processes,
            "metrics": metrics,
            "samples": samples,
            "scenarios": scenarios,
            "superseded_by": newer,
            "log_options": {"max_log_bytes": opts.max_log_bytes, "compress_over": opts.compress_over,
                            "tail_bytes": opts.tail_bytes},
            "secrets": {"names": secrets.names, "redacted_as": REDACTED,
                        "not_scrubbed_short_values": len(secrets.short)},
        }
        manifest = secrets.scrub_obj(manifest)
        write_json(mpath, manifest)

        report_info: dict[str, Any] = {}
        tp = time.monotonic()
        if opts.report:
            try:
                from .report import build_report

                report_info = build_report(run_dir)
            except Exception as e:  # noqa: BLE001 - a report bug must not lose the collected data
                report_info = {"error": f"{type(e).__name__}: {e}"}
        phases["report"] = time.monotonic() - tp
        tp = time.monotonic()
        scan = scan_for_secrets(run_dir, secrets)
        phases["secret_scan"] = time.monotonic() - tp
        manifest["secrets"]["scan"] = scan
        manifest["report"] = {k: v for k, v in report_info.items() if k in ("md", "html", "plots", "error")}
        manifest["collect_seconds"] = round(time.monotonic() - t0, 3)
        manifest["collections"][-1]["seconds"] = manifest["collect_seconds"]
        manifest["collections"][-1]["phases_s"] = {k: round(v, 3) for k, v in phases.items()}
        write_json(mpath, manifest)
        if is_current or not (logs_root() / "latest").exists():
            with contextlib.suppress(Exception):
                if run_dir.parent.resolve() == logs_root().resolve():
                    point_latest(run_dir.name)
    return {
        "run_id": state.run_id, "run_dir": str(run_dir), "complete": not partial, "partial_reasons": partial,
        "seconds": manifest["collect_seconds"], "phases_s": manifest["collections"][-1]["phases_s"],
        "bytes_pulled": pulled, "unreachable": sorted(errors),
        "processes": {n: {"host": p.get("host"), "state_now": p.get("state_now"), "exit_code": p.get("exit_code"),
                          "exit_note": p.get("exit_note"), "log": p.get("log"),
                          "earlier_logs": p.get("earlier_logs", [])} for n, p in processes.items()},
        "metrics": {n: {"ok": m.get("ok"), "file": m.get("file"), "error": m.get("error")} for n, m in metrics.items()},
        "report": manifest["report"], "secret_scan": scan, "manifest": str(mpath), "superseded_by": newer,
    }


def _newer_run(state: RunState) -> str | None:
    """The id of a run of the same cluster started after ``state``'s (its processes rewrote the
    hosts' logs and files), or None."""
    current = load_state(state.cluster)
    if current is not None:
        return None if current.run_id == state.run_id else current.run_id
    newest = None
    root = logs_root()
    if not root.is_dir():
        return None
    for d in root.iterdir():
        sf = d / "state.json"
        if d.is_symlink() or not sf.is_file():
            continue
        try:
            other = json.loads(sf.read_text())
        except (OSError, ValueError):
            continue
        if (other.get("cluster") == state.cluster and other.get("run_id") != state.run_id
                and (other.get("started_at") or "") > state.started_at):
            if newest is None or other["started_at"] > newest[0]:
                newest = (other["started_at"], other["run_id"])
    return newest[1] if newest else None


def _probe(nodes: dict[str, Node], errors: dict[str, Any]) -> None:
    """Connect now (an SSH transport connects lazily): a host that cannot be reached moves from
    ``nodes`` to ``errors``, so it is reported once, as unreachable."""
    from .hosts.base import HostError
    from .hosts.parallel import run_parallel
    from .nodes import host_error_message

    def probe(node: Node) -> None:
        opener = getattr(node.ops.t, "open", None)
        if callable(opener):
            opener()

    for name, r in run_parallel(nodes, probe).items():
        if isinstance(r, HostError):
            errors[name] = host_error_message(name, r)
            with contextlib.suppress(Exception):
                nodes.pop(name).close()


def _process_records(inv: Inventory, plan: Plan, state: RunState, observed: dict[str, dict[str, Any]],
                     errors: dict[str, Any], prev_manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    prev_procs = prev_manifest.get("processes") or {}
    names = [p.name for p in plan.processes()] + [n for n in state.processes if n not in {p.name for p in plan.processes()}]
    for name in names:
        try:
            spec = plan.process(name)
        except KeyError:
            spec = None
        ps = state.processes.get(name)
        rec: dict[str, Any] = {"host": spec.host if spec else (ps.host if ps else None)}
        if spec is not None:
            env = dict(spec.env)
            rec.update({"kind": spec.kind, "program": spec.program, "role": spec.role, "stage": spec.stage,
                        "argv": list(spec.argv), "env": {**env, **{k: REDACTED for k in spec.secret_env}},
                        "secret_env": spec.secret_env, "launch_script": spec.launch_script,
                        "config_file": spec.config_file, "instance_id": spec.instance_id, "ports": spec.ports,
                        "health_url": spec.health_url, "metrics_url": spec.metrics_url, "api_url": spec.api_url})
        if ps is not None:
            rec.update({"pid": ps.pid, "started_at": ps.started_at, "healthy_at": ps.healthy_at,
                        "stopped_at": ps.stopped_at, "stop": ps.exit, "log_path": ps.log_path,
                        "script_sha256": ps.script_sha256})
        obs = observed.get(name)
        if obs is not None:
            dep_env = obs.pop("env_deployed", None)
            dep_argv = obs.pop("argv_deployed", None)
            if dep_env is not None:  # what the deployed launch script really exports
                full = {k: (REDACTED if inv.is_secret(k) else v) for k, v in dep_env.items()}
                for k in rec.get("secret_env", []):
                    full[k] = REDACTED
                rec["env"] = full
            if dep_argv is not None:
                if spec is not None and dep_argv != spec.argv:
                    rec["argv_inventory"] = rec.get("argv")
                rec["argv"] = dep_argv
            rec.update(obs)
            rec["exit_note"] = _exit_note(rec)
        elif rec.get("host") in errors:
            prev = prev_procs.get(name, {})
            prev_log = {k: v for k, v in (prev.get("log") or {}).items() if k not in ("error", "note")}
            rec.update({"state_now": "unknown (host unreachable)", "exit_code": prev.get("exit_code"),
                        "log": {**prev_log, "status": "not collected: host unreachable", "pulled": 0, "new": 0}})
        out[name] = rec
    return out


def _exit_note(rec: dict[str, Any]) -> str | None:
    """How a process ended, in words (None while it runs)."""
    if rec.get("state_now") not in ("dead", "zombie"):
        return None
    code, stop = rec.get("exit_code"), rec.get("stop")
    by_us = bool(stop) and stop not in ("already stopped", "not started")
    if code is None:
        return ("killed with its wrapper: no exit status recorded (e.g. kill -9 of the process group)"
                if not by_us else "stopped by `down` (SIGKILL): no exit status recorded")
    if by_us:
        return "stopped by `down`" + (" (143 = SIGTERM: a clean stop)" if code == 143 else "")
    if code in (0, 143):
        return f"exited with status {code} before `down`" if stop else f"exited with status {code}"
    return f"exited by itself with status {code}" + (f" (signal {code - 128})" if code > 128 else "")


def _scenario_index(run_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for f in sorted((run_dir / "scenarios").glob("*/result.json")):
        try:
            r = json.loads(f.read_text())
        except ValueError:
            rows.append({"dir": str(f.parent.relative_to(run_dir)), "error": "unreadable result.json"})
            continue
        rows.append({"dir": str(f.parent.relative_to(run_dir)), "scenario": r.get("scenario"), "kind": r.get("kind"),
                     "verdict": r.get("verdict"), "started_at": r.get("started_at"), "seconds": r.get("seconds"),
                     "checks_failed": sum(1 for ch in r.get("checks", [])
                                          if ch.get("passed") is False and ch.get("severity") == "fail")})
    return sorted(rows, key=lambda r: (r.get("started_at") or "", r["dir"]))


def _human(n: int | float | None) -> str:
    return human_bytes(n)


def collect_quietly(c: Session, plan: Plan, run_id: str | None = None,
                    options: CollectOptions | None = None) -> dict[str, Any] | None:
    """``down`` collecting first: the summary in one event, and any failure (a bug included) a
    warning, never an exception that would keep ``down`` from stopping anything."""
    try:
        summary = collect(c, plan, run_id=run_id, options=options)
    except UserError as e:
        c.events.warning(f"collect failed: {e.message}")
        return None
    except Exception as e:  # noqa: BLE001
        c.events.warning(f"collect failed: internal error: {type(e).__name__}: {e}")
        return None
    state = "" if summary["complete"] else " (PARTIAL)"
    html = (summary.get("report") or {}).get("html")
    c.events.info(f"collected {_human(summary['bytes_pulled'])} of logs into {summary['run_dir']}/{state}"
                  + (f"; report: {html}" if html else ""))
    for r in summary["partial_reasons"]:
        c.events.warning(f"not collected: {r}")
    return summary
