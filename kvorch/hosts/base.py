"""The one small interface every host connector implements, and its errors.

A :class:`Transport` knows four things: run a bash command, write bytes to a file, read bytes
from a file (from an offset: incremental log pulls), close. Everything higher (detached
processes, process groups, ports, facts) is built from shell commands in :mod:`kvorch.hosts.ops`,
so the same code runs on the local machine and over SSH.

Command semantics are the same for every transport: ``command`` is a bash script run by
``bash --noprofile --norc -c`` in the login user's home directory (local: the current directory),
with ``env`` exported before it (values quoted; sshd's ``AcceptEnv`` is never relied on).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Mapping, Protocol, runtime_checkable

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class HostError(Exception):
    """Base class of every error raised by the host layer."""

    def __init__(self, message: str, *, host: str | None = None):
        super().__init__(message)
        self.host = host


class HostUnreachable(HostError):
    """The host could not be reached (DNS, refused, timeout, SSH protocol failure)."""


class AuthenticationFailed(HostUnreachable):
    """Reached the host, but no configured credential was accepted."""


class HostKeyError(HostError):
    """The host key is unknown or differs from the known_hosts entry. The message holds the fix."""

    def __init__(
        self,
        message: str,
        *,
        host: str,
        port: int,
        kind: str,
        fingerprint: str | None = None,
        expected_fingerprint: str | None = None,
    ):
        super().__init__(message, host=host)
        self.port = port
        self.kind = kind  # "unknown" | "changed"
        self.fingerprint = fingerprint
        self.expected_fingerprint = expected_fingerprint


class CommandError(HostError):
    """A command exited non-zero (raised only when the caller asked for ``check=True``)."""

    def __init__(self, command: str, result: "RunResult", *, host: str | None = None, what: str = ""):
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        first = command.strip().splitlines()[0] if command.strip() else ""
        if len(first) > 120:
            first = first[:117] + "..."
        msg = f"{what or 'command'} failed with exit code {result.exit_code} on {host or 'host'}: {first}"
        if tail:
            msg += "\n  " + "\n  ".join(tail)
        super().__init__(msg, host=host)
        self.command = command
        self.result = result


class CommandTimeout(CommandError):
    """A command did not finish within its timeout (its channel/process was closed)."""

    def __init__(self, command: str, timeout: float, *, host: str | None = None, stdout: str = "", stderr: str = ""):
        res = RunResult(exit_code=-1, stdout=stdout, stderr=stderr or f"timed out after {timeout:.1f}s")
        super().__init__(command, res, host=host, what=f"command (timeout {timeout:.1f}s)")
        self.timeout = timeout


@dataclass
class RunResult:
    exit_code: int
    stdout: str
    stderr: str
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


@runtime_checkable
class Transport(Protocol):
    """What a host connector must provide. ``name`` identifies the host in messages."""

    name: str

    def run(
        self, command: str, timeout: float | None = None, env: Mapping[str, str] | None = None
    ) -> RunResult: ...

    def put_bytes(self, remote_path: str, data: bytes, mode: int = 0o644) -> None: ...

    def get_bytes(self, remote_path: str, offset: int = 0, limit: int | None = None) -> bytes:
        """Bytes from ``offset`` (``offset < 0``: that many bytes before the end, clamped to the
        start), at most ``limit``. A missing file raises FileNotFoundError."""
        ...

    def file_size(self, remote_path: str) -> int | None:
        """Size in bytes, None when the file does not exist."""
        ...

    def close(self) -> None: ...


def check_env_names(env: Mapping[str, str] | None) -> None:
    for k in env or {}:
        if not isinstance(k, str) or not _ENV_NAME.match(k):
            raise ValueError(f"invalid environment variable name: {k!r}")


def env_prefix(env: Mapping[str, str] | None) -> str:
    """``export K='v' ...;`` for a bash script (names validated, values quoted)."""
    if not env:
        return ""
    check_env_names(env)
    return "export " + " ".join(f"{k}={shlex.quote(str(v))}" for k, v in env.items()) + "\n"


def bash_command(command: str, env: Mapping[str, str] | None = None) -> str:
    """The single command line handed to a remote login shell: bash with no rc files."""
    return "bash --noprofile --norc -c " + shlex.quote(env_prefix(env) + command)
