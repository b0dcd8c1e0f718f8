"""SSH connection settings: an OpenSSH config file (read with paramiko.SSHConfig) plus inventory
overrides, which win.

Fabric 3.2 reads only part of an ssh_config and ignores ``UserKnownHostsFile`` and
``StrictHostKeyChecking`` (DESIGN.md §6), so the settings are resolved here, completely, and
handed to :class:`kvorch.hosts.ssh.SshTransport`, which gives Fabric nothing to guess.

Defaults differ from OpenSSH on purpose: no SSH agent and no ``~/.ssh/id_*`` guessing unless the
settings say so (``allow_agent``, ``look_for_keys``, or an ``IdentityFile``).
"""

from __future__ import annotations

import getpass
import os
import re
from typing import TYPE_CHECKING, Any, Literal, Mapping

from dataclasses import asdict, dataclass, field, fields, replace

DEFAULT_SSH_CONFIG = "~/.ssh/config"
DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"

StrictMode = Literal["yes", "no", "accept-new", "ask", "off"]
_STRICT_MODES = ("yes", "no", "accept-new", "ask", "off")

if TYPE_CHECKING:
    import paramiko


class SshSettingsError(ValueError):
    """A setting of :class:`SshSettings` that cannot be used (its field and why)."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


def _paths(name: str, v: Any) -> list[str]:
    if isinstance(v, (str, os.PathLike)):
        v = [v]
    if not isinstance(v, (list, tuple)):
        raise SshSettingsError(name, f"expected a path or a list of paths, got {type(v).__name__}")
    return [os.path.expanduser(os.fspath(p)) for p in v]


def _strict(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if not isinstance(v, str) or v.strip().lower() not in _STRICT_MODES:
        raise SshSettingsError("strict_host_key_checking", f"{v!r} is not one of {', '.join(_STRICT_MODES)}")
    return v.strip().lower()


def _number(name: str, v: Any, kind: type) -> Any:
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise SshSettingsError(name, f"expected a number, got {v!r}")
    try:
        n = kind(v)
    except ValueError:
        raise SshSettingsError(name, f"expected a number, got {v!r}") from None
    if kind is int and isinstance(v, float) and v != n:
        raise SshSettingsError(name, f"expected a whole number, got {v!r}")
    return n


@dataclass(frozen=True)
class SshSettings:
    """Everything needed to open one SSH connection. Checked when made (a bad value raises
    :class:`SshSettingsError`, a ``ValueError``). A plain dataclass, not a pydantic model: a
    command that connects first (``status``) makes these from the remembered settings before it
    imports pydantic (:func:`kvorch.nodes.connect_predicted`)."""

    hostname: str
    port: int = 22
    user: str = field(default_factory=getpass.getuser)
    identity_files: list[str] = field(default_factory=list)
    #: empty → ``~/.ssh/known_hosts``
    known_hosts_files: list[str] = field(default_factory=list)
    #: "yes"/"ask" → refuse unknown and changed keys; "accept-new" → record unknown keys in the
    #: first known_hosts file, refuse changed ones; "no"/"off" → no verification (loud warning).
    strict_host_key_checking: StrictMode = "yes"
    #: OpenSSH ``ProxyJump``: ``[user@]host[:port][,...]`` (hops are resolved through the same
    #: ssh_config, so they may be aliases).
    proxy_jump: str | None = None
    connect_timeout: float = 10.0
    allow_agent: bool = False
    look_for_keys: bool = False
    #: the name that was looked up (an alias, or the address itself)
    alias: str | None = None
    #: the ssh_config the settings came from (ProxyJump hops are resolved through it)
    ssh_config_path: str | None = None

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        if not isinstance(self.hostname, str):
            raise SshSettingsError("hostname", f"expected a string, got {self.hostname!r}")
        v = self.hostname.strip()
        if not v or re.search(r"\s", v):
            raise SshSettingsError("hostname", f"invalid host name {v!r}")
        if v.startswith("-"):
            raise SshSettingsError("hostname", f"host name may not start with '-': {v!r}")
        put("hostname", v)
        port = _number("port", self.port, int)
        if not 0 < port < 65536:
            raise SshSettingsError("port", f"port out of range: {port}")
        put("port", port)
        timeout = _number("connect_timeout", self.connect_timeout, float)
        if timeout <= 0:
            raise SshSettingsError("connect_timeout", "connect_timeout must be > 0")
        put("connect_timeout", timeout)
        put("strict_host_key_checking", _strict(self.strict_host_key_checking))
        put("identity_files", _paths("identity_files", self.identity_files))
        put("known_hosts_files", _paths("known_hosts_files", self.known_hosts_files))
        for name in ("user",):
            if not isinstance(getattr(self, name), str):
                raise SshSettingsError(name, f"expected a string, got {getattr(self, name)!r}")
        for name in ("proxy_jump", "alias", "ssh_config_path"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise SshSettingsError(name, f"expected a string, got {getattr(self, name)!r}")
        for name in ("allow_agent", "look_for_keys"):
            if not isinstance(getattr(self, name), bool):
                raise SshSettingsError(name, f"expected true or false, got {getattr(self, name)!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SshSettings:
        """From :meth:`to_dict`'s output (or any mapping of field names); unknown names raise."""
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise SshSettingsError(unknown[0], "no such SSH setting")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values, field by field."""
        return asdict(self)

    def replace(self, **changes: Any) -> SshSettings:
        """A copy with ``changes`` (checked like a new one)."""
        return replace(self, **changes)


    @property
    def verify_host_keys(self) -> bool:
        return self.strict_host_key_checking not in ("no", "off")

    @property
    def known_hosts_name(self) -> str:
        """How this host is written in a known_hosts file: ``[addr]:port`` unless port 22."""
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"

    def effective_known_hosts_files(self) -> list[str]:
        return list(self.known_hosts_files) or [os.path.expanduser(DEFAULT_KNOWN_HOSTS)]

    def target(self) -> str:
        return f"{self.user}@{self.hostname}:{self.port}"


def split_host_spec(spec: str) -> tuple[str | None, str, int | None]:
    """``[user@]host[:port]`` (``[v6addr]:port`` too) → (user, host, port)."""
    user = None
    if "@" in spec:
        user, spec = spec.rsplit("@", 1)
    port = None
    m = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", spec)
    if m:
        host, p = m.group(1), m.group(2)
        port = int(p) if p else None
    elif spec.count(":") == 1:
        host, p = spec.split(":")
        port = int(p)
    else:
        host = spec
    return user, host, port


def _load_config(path: str | None) -> tuple[paramiko.SSHConfig, str | None]:
    import paramiko  # imported here: local-only clusters never load it

    if path is None:
        default = os.path.expanduser(DEFAULT_SSH_CONFIG)
        if os.path.exists(default):
            return paramiko.SSHConfig.from_path(default), default
        return paramiko.SSHConfig(), None
    path = os.path.expanduser(os.fspath(path))
    if not os.path.exists(path):
        raise FileNotFoundError(f"ssh_config file not found: {path}")
    return paramiko.SSHConfig.from_path(path), path


def resolve_ssh_settings(
    alias_or_address: str,
    ssh_config_path: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> SshSettings:
    """Resolve one host the way OpenSSH would, then apply ``overrides`` (SshSettings field names;
    ``None`` values are ignored). ``alias_or_address`` may be ``user@host:port``.

    ``ssh_config_path=None`` reads ``~/.ssh/config`` when it exists; pass ``os.devnull`` to read none.
    Read from the config: HostName, Port, User, IdentityFile, UserKnownHostsFile,
    GlobalKnownHostsFile, StrictHostKeyChecking, ProxyJump, ConnectTimeout.
    """
    user, host, port = split_host_spec(alias_or_address)
    cfg, cfg_path = _load_config(None if ssh_config_path is None else os.fspath(ssh_config_path))
    found = cfg.lookup(host)

    data: dict[str, Any] = {"alias": host, "ssh_config_path": cfg_path, "hostname": found.get("hostname", host)}
    def number(key: str, name: str, kind: type) -> Any:
        try:
            return kind(found[key])
        except ValueError:
            where = f" in {cfg_path}" if cfg_path else ""
            raise SshSettingsError(name, f"{found[key]!r}{where} is not a {'whole ' if kind is int else ''}number") from None

    if "port" in found:
        data["port"] = number("port", "Port", int)
    if "user" in found:
        data["user"] = found["user"]
    if found.get("identityfile"):
        data["identity_files"] = list(found["identityfile"])
    kh: list[str] = []
    for key in ("userknownhostsfile", "globalknownhostsfile"):
        val = found.get(key)
        if not val:
            continue
        for p in val.split():
            kh.append(os.devnull if p.lower() == "none" else p)
    if kh:
        data["known_hosts_files"] = kh
    if "stricthostkeychecking" in found:
        data["strict_host_key_checking"] = found["stricthostkeychecking"]
    if found.get("proxyjump") and found["proxyjump"].lower() != "none":
        data["proxy_jump"] = found["proxyjump"]
    if "connecttimeout" in found:
        data["connect_timeout"] = number("connecttimeout", "ConnectTimeout", float)

    # user@host:port in the spec beats the config (as with `ssh -p`), overrides beat both
    if user:
        data["user"] = user
    if port:
        data["port"] = port
    for k, v in (overrides or {}).items():
        if v is not None:
            data[k] = v
    return SshSettings.from_dict(data)
