"""Host connectors: one small Transport interface (local | ssh) and HostOps built on it."""

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
from .ssh import InsecureHostKeyWarning, SshTransport
from .ssh_config import SshSettings, resolve_ssh_settings

__all__ = [
    "AuthenticationFailed", "CommandError", "CommandTimeout", "HostError", "HostKeyError",
    "HostUnreachable", "RunResult", "Transport", "LocalTransport", "SshTransport",
    "InsecureHostKeyWarning", "SshSettings", "resolve_ssh_settings", "HostOps", "HostFacts",
    "GpuInfo", "StopResult", "FACT_PACKAGES", "q", "qpath", "run_parallel",
]
