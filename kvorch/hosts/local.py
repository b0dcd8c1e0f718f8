"""LocalTransport: the same machine, no SSH (the embedded default inventory uses it)."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from typing import Mapping

from .base import CommandTimeout, RunResult, check_env_names


class LocalTransport:
    """Runs ``bash --noprofile --norc -c COMMAND`` with subprocess; files through plain IO."""

    def __init__(self, name: str = "local", cwd: str | None = None):
        self.name = name
        self.cwd = os.path.expanduser(cwd) if cwd else None

    def __repr__(self) -> str:
        return f"<LocalTransport {self.name}>"

    def run(
        self, command: str, timeout: float | None = None, env: Mapping[str, str] | None = None
    ) -> RunResult:
        check_env_names(env)
        full_env = dict(os.environ)
        if env:
            full_env.update({k: str(v) for k, v in env.items()})
        t0 = time.monotonic()
        proc = subprocess.Popen(
            ["bash", "--noprofile", "--norc", "-c", command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=full_env,
            cwd=self.cwd,
            start_new_session=True,  # a timeout kills the whole group, not only bash
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            out, err = proc.communicate()
            raise CommandTimeout(
                command, timeout or 0.0, host=self.name,
                stdout=out.decode("utf-8", "replace"), stderr=err.decode("utf-8", "replace"),
            ) from None
        return RunResult(
            exit_code=proc.returncode,
            stdout=out.decode("utf-8", "replace"),
            stderr=err.decode("utf-8", "replace"),
            duration_s=time.monotonic() - t0,
        )

    def _path(self, path: str) -> str:
        path = os.path.expanduser(path)
        if self.cwd and not os.path.isabs(path):
            path = os.path.join(self.cwd, path)
        return path

    def put_bytes(self, remote_path: str, data: bytes, mode: int = 0o644) -> None:
        """Atomic write: a temp file in the same directory, chmod, then rename over the target."""
        path = self._path(remote_path)
        d = os.path.dirname(path) or "."
        fd, tmp = tempfile.mkstemp(prefix=".kvorch-", dir=d)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, mode)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    def get_bytes(self, remote_path: str, offset: int = 0, limit: int | None = None) -> bytes:
        with open(self._path(remote_path), "rb") as f:
            if offset < 0:
                f.seek(max(os.fstat(f.fileno()).st_size + offset, 0))
            elif offset:
                f.seek(offset)
            return f.read() if limit is None else f.read(limit)

    def file_size(self, remote_path: str) -> int | None:
        try:
            return os.stat(self._path(remote_path)).st_size
        except FileNotFoundError:
            return None

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
