"""What a host needs of this tool, shipped by ``up``: hosts need only sshd, bash and python3 >= 3.10.

The simulated engine and controller (``python -m kvorch.sim.engine`` / ``kvorch.sim.controller``)
and the tiny-model maker (``python -m kvorch.tinymodel``) run on the hosts with the host's own
interpreter. Rather than asking for this package to be installed there, ``up`` ships a *bundle*:
the modules of this package those programs import, plus the pure-Python third-party packages they
import at run time (:data:`HOST_DEPS`: prometheus_client for ``/metrics``, PyYAML for LMCache
config files; only their ``.py`` files, so the bundle runs on any CPython >= 3.10 — PyYAML falls
back to its pure-Python parser without its C extension).

The bundle is content-addressed: its directory on a host is ``<workdir>/.kvorch/<sha256>/`` with
``kvorch/`` and ``deps/`` inside, named by the hash of every file in it (path and bytes). A later
``up`` with the same code finds that directory (one ``test -f``) and sends nothing; a changed
tool gets a new directory beside the old one. The launch scripts of the sim processes put it first
on ``PYTHONPATH`` (``kvorch`` and ``deps``); the tiny-model step gets ``kvorch`` only (it needs the
host's torch/transformers, and must not see our copy of PyYAML ahead of the host's).

Upload: one zip (SFTP for anything but the smallest sets: :meth:`HostOps.write_files`), unpacked by
the host's interpreter into a temporary directory, the hash checked there against the name, then
renamed into place (atomic: a directory under its hash is always complete).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .nodes import Node

#: where bundles live on a host, relative to its workdir
BUNDLE_ROOT = ".kvorch"
#: what the host's interpreter must be at least (the sim uses 3.10 syntax and stdlib)
MIN_PYTHON = (3, 10)
#: the modules of this package that run on hosts (files or packages, relative to kvorch/'s parent)
HOST_MODULES = ("kvorch/__init__.py", "kvorch/lmcache_config.py", "kvorch/tinymodel.py", "kvorch/sim")
#: third-party packages the host programs import at run time (import name, distribution name);
#: found by running the sim engine and controller with ``python -X importtime`` (the rest is stdlib;
#: tinymodel needs torch, transformers and tokenizers, which only a host with real vLLM has)
HOST_DEPS = (("prometheus_client", "prometheus-client"), ("yaml", "PyYAML"))
#: written last into an unpacked bundle; its presence means the directory is complete
MARKER = "BUNDLE.json"

_PKG_DIR = Path(__file__).resolve().parent


def content_hash(files: list[tuple[str, bytes]]) -> str:
    """sha256 over the sorted (path, bytes) pairs; the host-side unpacker computes the same."""
    h = hashlib.sha256()
    for name, data in sorted(files):
        h.update(name.encode() + b"\0" + str(len(data)).encode() + b"\0")
        h.update(data)
    return h.hexdigest()


def _py_files(root: Path, arc_prefix: str) -> list[tuple[str, bytes]]:
    if root.is_file():
        return [(arc_prefix, root.read_bytes())]
    out = []
    for p in sorted(root.rglob("*.py")):
        if "__pycache__" in p.parts:
            continue
        out.append((f"{arc_prefix}/{p.relative_to(root).as_posix()}", p.read_bytes()))
    return out


@dataclass(frozen=True)
class Bundle:
    sha256: str
    files: tuple[tuple[str, bytes], ...]  # (path inside the bundle, bytes), sorted
    versions: tuple[tuple[str, str], ...]  # (distribution, version) of what it carries

    @property
    def dir(self) -> str:
        """Its directory on a host, relative to the workdir."""
        return f"{BUNDLE_ROOT}/{self.sha256}"

    @property
    def python_path(self) -> list[str]:
        """What the sim processes put first on PYTHONPATH (relative to the workdir)."""
        return [self.dir, f"{self.dir}/deps"]

    @property
    def size(self) -> int:
        return sum(len(b) for _, b in self.files)

    def zip_bytes(self) -> bytes:
        """A deterministic zip (fixed timestamps, sorted entries) of the files."""
        import io
        import zipfile

        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as z:
            for name, data in self.files:
                info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
                info.external_attr = 0o644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                z.writestr(info, data)
        return buf.getvalue()


def _dep_dir(import_name: str) -> Path:
    spec = importlib.util.find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        from .errors import UserError

        raise UserError(f"{import_name} is not installed for this Python: the hosts' bundle needs it",
                        hint="install this tool with its dependencies (pip install -e .)")
    return Path(next(iter(spec.submodule_search_locations)))


def _dist_version(pkg_dir: Path, dist: str) -> str:
    """The version in the name of the package's ``<dist>-<version>.dist-info`` beside it (what
    importlib.metadata reads, without its ~0.1 s import on every command)."""
    norm = dist.lower().replace("-", "_")
    for info in pkg_dir.parent.glob("*.dist-info"):
        name, _, version = info.name[: -len(".dist-info")].partition("-")
        if name.lower().replace("-", "_").replace(".", "_") == norm:
            return version
    return "unknown"


@lru_cache(maxsize=1)
def local_bundle() -> Bundle:
    """The bundle of the code running here (read once per process: ~0.6 MB, a few ms)."""
    from . import __version__

    files: list[tuple[str, bytes]] = []
    for rel in HOST_MODULES:
        files += _py_files(_PKG_DIR.parent / rel, rel)
    versions = [("kvorch", __version__)]
    for import_name, dist in HOST_DEPS:
        d = _dep_dir(import_name)
        files += _py_files(d, f"deps/{import_name}")
        versions.append((dist, _dist_version(d, dist)))
    files.append(("versions.json", json.dumps(dict(versions), sort_keys=True).encode()))
    files.sort()
    return Bundle(sha256=content_hash(files), files=tuple(files), versions=tuple(versions))


# ------------------------------------------------------------------------------------------------
# On a host

#: run by the host's interpreter: unzip into a temporary directory, check the content hash against
#: the directory's name, write the marker, rename into place; the zip is removed in any case.
#: Standard library only, valid Python 3 (an old interpreter must get as far as a clear message).
UNPACK = r"""
import hashlib, json, os, shutil, sys, tempfile, zipfile
src, dest, want = sys.argv[1:4]
parent = os.path.dirname(dest)
tmp = tempfile.mkdtemp(prefix=".unpack-", dir=parent)
try:
    files = []
    with zipfile.ZipFile(src) as z:
        for info in z.infolist():
            name = info.filename
            if name.startswith("/") or ".." in name.split("/"):
                sys.exit("bundle: refusing path " + name)
            data = z.read(info)
            files.append((name, data))
            path = os.path.join(tmp, *name.split("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
    h = hashlib.sha256()
    for name, data in sorted(files):
        h.update(name.encode() + b"\0" + str(len(data)).encode() + b"\0")
        h.update(data)
    if h.hexdigest() != want:
        sys.exit("bundle: content hash %s, expected %s" % (h.hexdigest(), want))
    with open(os.path.join(tmp, "BUNDLE.json"), "w") as f:
        json.dump({"sha256": want, "files": len(files)}, f)
    os.chmod(tmp, 0o755)
    try:
        os.rename(tmp, dest)
    except OSError:
        if not os.path.isfile(os.path.join(dest, "BUNDLE.json")):  # not another up that got there first
            raise
finally:
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        os.unlink(src)
    except OSError:
        pass
"""


@dataclass
class Shipped:
    """What :func:`ensure` did on one host."""

    host: str
    sha256: str
    uploaded: bool  # False: the host had it already
    bytes_sent: int  # the zip's size, 0 when reused
    seconds: float


def ensure(node: Node, bundle: Bundle | None = None, *, known_missing: bool = False) -> Shipped:
    """Make the bundle present in the node's workdir: one ``test -f`` when it is there already,
    else upload the zip and unpack it with the host's interpreter. ``known_missing``: the caller
    has just seen it missing (no ``test -f``; `up` checks in the command that writes the files)."""
    from .hosts.ops import q, qpath

    b = bundle or local_bundle()
    t0 = time.monotonic()
    dest = node.path(b.dir)
    if not known_missing and node.ops.run(f"test -f {qpath(dest + '/' + MARKER)}").ok:
        return Shipped(node.name, b.sha256, False, 0, time.monotonic() - t0)
    data = b.zip_bytes()
    zpath = f"{BUNDLE_ROOT}/.{b.sha256}.zip"
    node.ops.write_files([(zpath, data, 0o644)])
    node.ops.run(f"{qpath(node.plan.python)} -c {q(UNPACK)} {qpath(node.path(zpath))} {qpath(dest)} {q(b.sha256)}",
                 timeout=300, check=True, what=f"unpack orchestrate's bundle with {node.plan.python}")
    return Shipped(node.name, b.sha256, True, len(data), time.monotonic() - t0)


def prepare_env(node: Node) -> dict[str, str]:
    """Environment of the host's prepare commands (``python -m kvorch.tinymodel``): this tool's
    modules from the bundle, nothing else of it (the host's own torch/transformers/PyYAML)."""
    if not node.plan.bundle:
        return {}
    return {"PYTHONPATH": node.path(f"{BUNDLE_ROOT}/{node.plan.bundle}")}


def version_problem(version: str | None) -> str | None:
    """Why an interpreter of this version cannot run the bundle, or None."""
    if not version:
        return None
    try:
        parts = tuple(int(x) for x in version.split(".")[:2])
    except ValueError:
        return None
    if parts < MIN_PYTHON:
        return f"is Python {version}: orchestrate's host programs need Python >= {'.'.join(map(str, MIN_PYTHON))}"
    return None


__all__ = ["Bundle", "Shipped", "local_bundle", "ensure", "prepare_env", "content_hash", "version_problem",
           "MIN_PYTHON", "HOST_DEPS", "HOST_MODULES", "BUNDLE_ROOT"]
