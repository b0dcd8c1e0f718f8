"""Host connectors: one small Transport interface (local | ssh) and HostOps built on it.

The SSH transport (paramiko, Fabric: ~0.2 s to import) is loaded on first use, so a cluster of
local hosts never pays for it."""

from typing import Any

from .base import (
    AuthenticationFailed,
    CommandError,
    CommandTimeout,
    HostError,
    HostKeyError,
    HostUnreachable,
    RunResult,
    Transport,
)
from .local import LocalTransport
from .ops import FACT_PACKAGES, GpuInfo, HostFacts, HostOps, StopResult, q, qpath
from .parallel import run_parallel
from .ssh_config import SshSettings, resolve_ssh_settings

__all__ = [
    "AuthenticationFailed", "CommandError", "CommandTimeout", "HostError", "HostKeyError",
    "HostUnreachable", "RunResult", "Transport", "LocalTransport", "SshTransport",
    "InsecureHostKeyWarning", "SshSettings", "resolve_ssh_settings", "HostOps", "HostFacts",
    "GpuInfo", "StopResult", "FACT_PACKAGES", "q", "qpath", "run_parallel",
]


def __getattr__(name: str) -> Any:
    if name in ("SshTransport", "InsecureHostKeyWarning"):
        from . import ssh

        return getattr(ssh, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
