"""Which SSH hosts an inventory file connects to, remembered from its last validated load.

A cold ``status`` spends ~0.3 s importing and validating before it knows whom to connect to,
and the connection itself (key exchange, the host's login shell) then takes as long again. With
the hosts remembered here, :func:`kvorch.nodes.connect_predicted` begins the handshakes first and
the validation runs while the hosts answer.

A remembered entry is keyed by the inventory file's path and its exact bytes, the ssh_config's
path and bytes, and what resolving SSH settings reads from the environment (HOME, the user);
any other file, byte or value misses. It is only a prediction: the connection is used only when
the freshly validated inventory resolves to exactly the same settings (``open_nodes`` compares
them), otherwise it is closed and a new one made. Nothing secret is stored (host names,
addresses, ports, user names, paths of key files), in ``<state>/connect/`` (mode 0600)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from . import __version__

#: bump when what is stored changes meaning
_FORMAT = 1


def _state_root() -> Path:
    # as runstate.state_root, without importing the run state's models
    return Path(os.environ.get("ORCHESTRATE_STATE", ".orchestrate"))


def _ssh_config_path(ssh_config: str | None) -> str | None:
    if ssh_config is None:
        default = os.path.expanduser("~/.ssh/config")
        return default if os.path.exists(default) else None
    return os.path.expanduser(ssh_config)


def _read(path: str | None) -> bytes | None:
    if path is None:
        return b""
    try:
        with open(path, "rb") as f:
            return f.read(1 << 20)
    except OSError:
        return None


def _where(inventory_path: str, ssh_config: str | None) -> Path:
    ident = json.dumps([os.path.abspath(inventory_path), ssh_config]).encode()
    return _state_root() / "connect" / (hashlib.sha256(ident).hexdigest()[:32] + ".json")


def content_key(inventory_path: str, ssh_config: str | None) -> str | None:
    """What the remembered hosts depend on, hashed; None when a file cannot be read."""
    inv = _read(inventory_path)
    cfg_path = _ssh_config_path(ssh_config)
    cfg = _read(cfg_path)
    if inv is None or cfg is None:
        return None
    h = hashlib.sha256()
    for part in (str(_FORMAT), __version__, os.path.abspath(inventory_path), cfg_path or "", os.environ.get("HOME", ""),
                 os.environ.get("LOGNAME", ""), os.environ.get("USER", ""), str(os.getuid())):
        h.update(part.encode() + b"\0")
    h.update(hashlib.sha256(inv).digest())
    h.update(hashlib.sha256(cfg).digest())
    return h.hexdigest()


def lookup(inventory_path: str, ssh_config: str | None) -> list[dict[str, Any]] | None:
    """The hosts (``name``, ``address``, ``settings``) remembered for exactly this content, or None."""
    key = content_key(inventory_path, ssh_config)
    if key is None:
        return None
    try:
        data = json.loads(_where(inventory_path, ssh_config).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("key") != key or not isinstance(data.get("hosts"), list):
        return None
    return data["hosts"]


def remember(inventory_path: str, ssh_config: str | None, hosts: list[dict[str, Any]]) -> None:
    """Store the hosts of a validated inventory (only where the run state's folder exists: a
    command that never ran ``up`` here leaves no files behind). Best effort."""
    if not _state_root().is_dir():
        return
    key = content_key(inventory_path, ssh_config)
    if key is None:
        return
    path = _where(inventory_path, ssh_config)
    text = json.dumps({"key": key, "inventory": os.path.abspath(inventory_path), "hosts": hosts}, sort_keys=True)
    try:
        if path.is_file() and path.read_text() == text:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError:
        pass
