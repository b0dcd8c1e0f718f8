"""The validated inventory and its plan, kept from the last command that built them for exactly
these bytes, so that ``status``, ``preflight`` and ``up`` neither parse YAML, validate, import
Jinja2 nor render when nothing changed (``up`` while its SSH shells start).

An entry is keyed by the sha256 of everything the plan is made from (:func:`key`): the inventory
file's path and bytes, the content of every file of this package and of its templates (a code
change misses), the versions of Python and pydantic, this interpreter, the working directory, HOME
and the environment variables rendering reads (``ORCHESTRATE_TEMPLATES``), and where the host
bundle's dependencies are installed. A file the plan read besides the inventory (a proxy's
``source:``) is recorded with its sha256 and checked on every hit. Any difference misses and the
plan is built (and stored) again.

The entry is a pickle of the plan (plain dataclasses) and of the pickled inventory (pydantic
objects, unpickled only when a command asks for the inventory: ``status`` and ``preflight``
never do — what preflight reads of the inventory is in the plan, :attr:`HostPlan.needs`),
in ``<state>/plans/`` (the directory 0700, the file 0600); it is read only when both belong to
this user and nobody else can write them, the same trust Python gives its own ``__pycache__``.
A plan that carries a secret's value (an engine's token in its host's secrets file) is never kept:
secrets are written only to the host's 0600 secrets file, never to the local state.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from . import __version__

if TYPE_CHECKING:
    from .inventory import Inventory
    from .plan import Plan

#: bump when what is stored changes meaning
_FORMAT = 3
_PKG_DIR = Path(__file__).resolve().parent
_TEMPLATES = _PKG_DIR.parent / "templates"
#: counted by the tests: how the last :func:`load_or_build` went ("hit", "miss", "off")
last_outcome = "off"


def _state_root() -> Path:
    return Path(os.environ.get("ORCHESTRATE_STATE", ".orchestrate"))


def _source_files() -> list[Path]:
    """This package's code and the templates rendering reads (as kvorch.render.templates_dir,
    without importing Jinja2)."""
    files = sorted(p for p in _PKG_DIR.rglob("*.py") if "__pycache__" not in p.parts)
    templates = Path(os.environ.get("ORCHESTRATE_TEMPLATES") or _TEMPLATES)
    if templates.is_dir():
        files += sorted(p for p in templates.rglob("*") if p.is_file())
    return files


def _deps_where() -> list[str]:
    """Where the bundle's pure-Python dependencies live, with their folders' change times (an
    upgrade replaces their files): the plan names the bundle by a hash of them."""
    from importlib.util import find_spec

    out = []
    for name in ("prometheus_client", "yaml"):
        spec = find_spec(name)
        origin = spec.origin if spec is not None and spec.origin else ""
        d = os.path.dirname(origin)
        try:
            st = os.stat(d)
            out.append(f"{name}={d}:{st.st_mtime_ns}")
        except OSError:
            out.append(f"{name}=?")
    return out


def _pydantic_version() -> str:
    """pydantic's version file, read without importing pydantic (the kept inventory is a pickle
    of pydantic objects; the plan is plain data)."""
    from importlib.util import find_spec

    spec = find_spec("pydantic")
    try:
        return hashlib.sha256(Path(spec.origin).with_name("version.py").read_bytes()).hexdigest()  # type: ignore[union-attr, arg-type]
    except (AttributeError, TypeError, OSError):
        return "?"


def key(inventory_path: str) -> str | None:
    """sha256 of everything the validated inventory and its plan are made from; None when the
    inventory cannot be read (the caller then builds, and reports the error the usual way)."""
    try:
        with open(inventory_path, "rb") as f:
            inv = f.read(1 << 22)
    except OSError:
        return None
    h = hashlib.sha256()
    for part in (str(_FORMAT), __version__, sys.version, sys.executable, _pydantic_version(),
                 os.path.abspath(inventory_path), os.getcwd(), os.environ.get("HOME", ""),
                 os.environ.get("ORCHESTRATE_TEMPLATES", ""), *_deps_where()):
        h.update(part.encode() + b"\0")
    h.update(hashlib.sha256(inv).digest())
    for p in _source_files():
        try:
            h.update(os.path.relpath(p, _PKG_DIR.parent).encode() + b"\0" + hashlib.sha256(p.read_bytes()).digest())
        except OSError:
            return None
    return h.hexdigest()


def _where(inventory_path: str) -> Path:
    ident = hashlib.sha256(os.path.abspath(inventory_path).encode()).hexdigest()[:32]
    return _state_root() / "plans" / f"{ident}.pickle"


def _trusted(path: Path) -> bool:
    """Ours and writable by nobody else: the file and its directory."""
    try:
        for p in (path.parent, path):
            st = os.lstat(p)
            if st.st_uid != os.getuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) or stat.S_ISLNK(st.st_mode):
                return False
    except OSError:
        return False
    return True


def _sha(path: str) -> str | None:
    try:
        return hashlib.sha256(Path(path).expanduser().read_bytes()).hexdigest()
    except OSError:
        return None


def _read_files(inv: Inventory) -> dict[str, str | None]:
    """Files besides the inventory that building the plan reads, with their sha256."""
    proxy = getattr(inv, "proxy", None)
    src = getattr(proxy, "source", None) if proxy is not None else None
    return {src: _sha(src)} if src else {}


class KeptInventory:
    """The validated inventory of a kept entry, unpickled (pydantic imported) only when asked for:
    ``status`` and ``preflight`` need only the plan."""

    def __init__(self, blob: bytes):
        self._blob = blob

    def load(self) -> Inventory:
        return pickle.loads(self._blob)


def lookup(inventory_path: str, k: str | None = None) -> tuple[KeptInventory, Plan] | None:
    k = k or key(inventory_path)
    path = _where(inventory_path)
    if k is None or not _trusted(path):
        return None
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f)
    except Exception:  # noqa: BLE001 - a damaged or foreign entry is a miss
        return None
    if not isinstance(entry, dict) or entry.get("key") != k:
        return None
    if any(_sha(p) != digest for p, digest in entry.get("files", {}).items()):
        return None
    inv, plan = entry.get("inventory"), entry.get("plan")
    if not isinstance(inv, bytes):
        return None
    return KeptInventory(inv), plan


def _holds_secrets(plan: Plan, inv: Any = None) -> bool:
    """Whether the plan carries a secret's value (a host's secrets file), or the inventory does
    (a secret in the env of a host whose processes never get it — a controller-only host — is in
    no plan, but it is in the inventory, which is kept too)."""
    if any(f.secret for h in plan.hosts for f in h.files) or any(p.secret_env for p in plan.processes()):
        return True
    is_secret = getattr(inv, "is_secret", None)
    if is_secret is None:
        return False
    envs = [inv.env, *(h.env for h in inv.hosts.values()), *(e.env for e in inv.engines),
            *(x.env for x in (inv.controller, inv.lmcache_server, inv.proxy) if x is not None)]
    return any(is_secret(k) and v for env in envs for k, v in env.items())


def store(inventory_path: str, inv: Inventory, plan: Plan, k: str | None = None) -> None:
    """Keep ``inv`` and ``plan`` for the next command (only where the run state's folder
    exists: a command that never ran ``up`` here leaves no files behind). Best effort."""
    root = _state_root()
    k = k or key(inventory_path)
    if k is None or not root.is_dir():
        return
    path = _where(inventory_path)
    if isinstance(inv, KeptInventory):
        inv = inv.load()
    if _holds_secrets(plan, inv):
        # A secret's value may live only in the host's 0600 secrets file, never in the local run
        # state (the fault suite's promise): such a plan is built every time, and an entry kept
        # before the secret was added is removed.
        try:
            path.unlink()
        except OSError:
            pass
        return
    try:
        path.parent.mkdir(mode=0o700, exist_ok=True)
        os.chmod(path.parent, 0o700)
        blob = pickle.dumps({"key": k, "files": _read_files(inv), "plan": plan,
                             "inventory": pickle.dumps(inv, protocol=pickle.HIGHEST_PROTOCOL)},
                            protocol=pickle.HIGHEST_PROTOCOL)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, path)
    except (OSError, pickle.PicklingError, TypeError, AttributeError):
        pass


def load_or_build(inventory_path: str, build: Callable[[], tuple[Any, Any]], *,
                  make_state_root: bool = False) -> tuple[Inventory | KeptInventory, Plan]:
    """The kept (inventory, plan) for these exact inputs, else ``build()``'s, kept for next time.
    A kept inventory comes as a :class:`KeptInventory` (its ``load()`` unpickles it).
    ``make_state_root``: the run state's folder is made first (``up`` makes it anyway, for its
    lock), so that even the first command there keeps what it built."""
    global last_outcome
    if make_state_root:
        try:
            _state_root().mkdir(parents=True, exist_ok=True)
        except OSError:
            pass  # (not kept; the command itself reports a folder it cannot make)
    k = key(inventory_path)
    hit = lookup(inventory_path, k) if k is not None else None
    if hit is not None:
        last_outcome = "hit"
        return hit
    last_outcome = "miss"
    inv, plan = build()
    store(inventory_path, inv, plan, k)
    return inv, plan
