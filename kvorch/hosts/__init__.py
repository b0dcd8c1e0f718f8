"""Host connectors: one small Transport interface (local | ssh) and HostOps built on it.

Names are imported on first use (PEP 562): ``import kvorch.hosts.ssh`` — what a command imports
first, to begin its SSH handshakes — pays for paramiko and the SSH settings only, not for
HostOps's models or the local transport; a cluster of local hosts never loads paramiko."""

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

_LAZY = {
    "LocalTransport": "local",
    "SshTransport": "ssh", "InsecureHostKeyWarning": "ssh",
    "SshSettings": "ssh_config", "resolve_ssh_settings": "ssh_config",
    "HostOps": "ops", "HostFacts": "facts", "GpuInfo": "facts", "StopResult": "ops", "FACT_PACKAGES": "ops",
    "q": "ops", "qpath": "ops",
    "run_parallel": "parallel",
}

__all__ = [
    "AuthenticationFailed", "CommandError", "CommandTimeout", "HostError", "HostKeyError",
    "HostUnreachable", "RunResult", "Transport", *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
