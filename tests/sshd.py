"""Real OpenSSH servers on loopback addresses, for the SSH tests and the fan-out bench.

``SshdCluster(state_dir, {"h13": "127.0.0.13", "h97": "127.0.0.97"}).start()`` runs one
``/usr/sbin/sshd -D`` per address on port 2222, each with its own throwaway host key, a throwaway
client key in an ``authorized_keys`` file of the state dir (for the current user), and writes:

- ``known_hosts``: ``[127.0.0.13]:2222 ssh-ed25519 …`` per host;
- ``ssh_config``: ``Host h13 127.0.0.13`` → HostName, Port, User, IdentityFile, UserKnownHostsFile,
  StrictHostKeyChecking yes (so an alias or the bare address both resolve).

Gotchas handled (DESIGN.md §7): ``/run/sshd`` created; sshd started by absolute path; StrictModes
no (keys under /tmp); no PAM, no passwords or keyboard-interactive. Like a stock Debian server:
SFTP is the external ``sftp-server`` (started through the login shell, ~/.bashrc and all;
internal-sftp only where that binary is missing) and MaxSessions is the default 10 channels per
connection. MaxStartups 100 (parallel connects); readiness = the "Server listening" log line *and* the SSH
banner on the port (a daemonized sshd exits 0 even when bind fails, and a banner alone may come
from someone else's server). One state dir per session.

If port 2222 is taken on one of the addresses (another test session on this machine), the next
free port in 2223–2299 is used for all hosts unless ``KVORCH_TEST_SSHD_PORT`` pins it: always
read ``host.port`` (or use the aliases of ``ssh_config``), never assume 2222.

Usable without pytest: ``python tests/sshd.py --extra 16`` starts servers and waits for Ctrl-C.
"""

from __future__ import annotations

import getpass
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

SSHD = "/usr/sbin/sshd"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
DEFAULT_PORT = 2222
SEED_HOSTS = {"h13": "127.0.0.13", "h97": "127.0.0.97"}
PORT_ENV = "KVORCH_TEST_SSHD_PORT"


def extra_hosts(n: int, first: int = 20) -> dict[str, str]:
    """``{"h20": "127.0.0.20", ...}``: n more loopback hosts for the fan-out bench."""
    if first + n - 1 > 254:
        raise ValueError("too many loopback hosts")
    return {f"h{i}": f"127.0.0.{i}" for i in range(first, first + n)}


def sshd_unavailable_reason() -> str | None:
    """Why real sshd tests cannot run here, or None."""
    if not os.path.isfile(SSHD) or not os.access(SSHD, os.X_OK):
        return f"{SSHD} not found: install openssh-server (apt-get install -y openssh-server)"
    if os.geteuid() == 0:
        try:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        except OSError as exc:
            return f"cannot create /run/sshd: {exc}"
    return None


def _gen_ed25519(path: Path, comment: str) -> str:
    key = ed25519.Ed25519PrivateKey.generate()
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                        serialization.PublicFormat.OpenSSH).decode()
    Path(str(path) + ".pub").write_text(f"{pub} {comment}\n")
    return pub  # "ssh-ed25519 AAAA..."


def _port_free(address: str, port: int) -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((address, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _banner(address: str, port: int, timeout: float = 1.0) -> bytes | None:
    try:
        with socket.create_connection((address, port), timeout=timeout) as s:
            s.settimeout(timeout)
            data = s.recv(256)
            return data if data.startswith(b"SSH-") else None
    except OSError:
        return None


@dataclass
class SshdHost:
    alias: str
    address: str
    port: int
    host_key_pub: str  # "ssh-ed25519 AAAA…"
    dir: Path
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def known_hosts_name(self) -> str:
        return f"[{self.address}]:{self.port}"

    @property
    def known_hosts_line(self) -> str:
        return f"{self.known_hosts_name} {self.host_key_pub}"

    @property
    def log_path(self) -> Path:
        return self.dir / "sshd.log"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


class SshdCluster:
    """N sshd processes on loopback addresses sharing one state dir, one client key, one port."""

    def __init__(self, state_dir: str | os.PathLike, hosts: dict[str, str] | None = None,
                 port: int | None = None, user: str | None = None, sftp_subsystem: str | None = None):
        #: the ``Subsystem sftp`` command (default: the external sftp-server, else internal-sftp)
        self.sftp_subsystem = sftp_subsystem or (SFTP_SERVER if os.path.exists(SFTP_SERVER) else "internal-sftp")
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.spec = dict(hosts or SEED_HOSTS)
        for addr in self.spec.values():
            if not addr.startswith("127."):
                raise ValueError(f"loopback addresses only, got {addr}")
        env_port = os.environ.get(PORT_ENV)
        self.pinned_port = port or (int(env_port) if env_port else None)
        self.user = user or getpass.getuser()
        self.hosts: dict[str, SshdHost] = {}
        self.client_key = self.state_dir / "client_ed25519"
        self.authorized_keys = self.state_dir / "authorized_keys"
        self.known_hosts = self.state_dir / "known_hosts"
        self.ssh_config = self.state_dir / "ssh_config"
        self.port: int | None = None
        self.start_time_s: float | None = None

    # ---- setup ---------------------------------------------------------------------------

    def _choose_port(self) -> int:
        addrs = list(self.spec.values())
        if self.pinned_port:
            return self.pinned_port
        for port in [DEFAULT_PORT] + list(range(DEFAULT_PORT + 1, 2300)):
            if all(_port_free(a, port) for a in addrs):
                if port != DEFAULT_PORT:
                    print(f"[sshd] port {DEFAULT_PORT} is taken on one of {addrs} "
                          f"(another test session?): using {port}", file=sys.stderr)
                return port
        raise RuntimeError("no free port in 2222-2299 on the loopback test addresses")

    def _write_config(self, h: SshdHost) -> Path:
        cfg = h.dir / "sshd_config"
        cfg.write_text(
            "\n".join([
                f"ListenAddress {h.address}:{h.port}",
                f"HostKey {h.dir / 'host_ed25519'}",
                f"PidFile {h.dir / 'sshd.pid'}",
                f"AuthorizedKeysFile {self.authorized_keys}",
                "StrictModes no",
                "UsePAM no",
                "KbdInteractiveAuthentication no",
                "PasswordAuthentication no",
                "PubkeyAuthentication yes",
                "PermitRootLogin prohibit-password",
                f"Subsystem sftp {self.sftp_subsystem}",
                "MaxStartups 100",
                "AllowTcpForwarding yes",
                "UseDNS no",
                "PrintMotd no",
                "PrintLastLog no",
                "LogLevel INFO",
                "",
            ])
        )
        return cfg

    def _write_client_files(self) -> None:
        self.known_hosts.write_text("".join(h.known_hosts_line + "\n" for h in self.hosts.values()))
        blocks = []
        for h in self.hosts.values():
            blocks.append(
                f"Host {h.alias} {h.address}\n"
                f"    HostName {h.address}\n"
                f"    Port {h.port}\n"
                f"    User {self.user}\n"
                f"    IdentityFile {self.client_key}\n"
                f"    IdentitiesOnly yes\n"
                f"    UserKnownHostsFile {self.known_hosts}\n"
                f"    StrictHostKeyChecking yes\n"
            )
        self.ssh_config.write_text("\n".join(blocks))

    def start(self, timeout: float = 15.0) -> "SshdCluster":
        reason = sshd_unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        t0 = time.monotonic()
        if not self.client_key.exists():
            pub = _gen_ed25519(self.client_key, "kvorch-test-client")
            self.authorized_keys.write_text(pub + " kvorch-test-client\n")
            self.authorized_keys.chmod(0o600)
        for attempt in range(3):
            self.port = self._choose_port()
            try:
                self._start_all(timeout)
                break
            except _BindLost:
                self.stop()
                if self.pinned_port or attempt == 2:
                    raise RuntimeError(f"sshd could not bind port {self.port}: "
                                       f"taken by another process") from None
        self._write_client_files()
        self.start_time_s = time.monotonic() - t0
        return self

    def _start_all(self, timeout: float) -> None:
        for alias, addr in self.spec.items():
            d = self.state_dir / alias
            d.mkdir(exist_ok=True)
            key = d / "host_ed25519"
            pub = (d / "host_ed25519.pub").read_text().split()[:2] if key.exists() else None
            pub_s = " ".join(pub) if pub else _gen_ed25519(key, f"kvorch-test-host-{alias}")
            h = SshdHost(alias=alias, address=addr, port=self.port, host_key_pub=pub_s, dir=d)
            cfg = self._write_config(h)
            check = subprocess.run([SSHD, "-t", "-f", str(cfg)], capture_output=True, text=True)
            if check.returncode != 0:
                raise RuntimeError(f"sshd -t rejected {cfg}: {check.stderr.strip()}")
            try:
                h.log_path.unlink()
            except FileNotFoundError:
                pass
            h.proc = subprocess.Popen(
                [SSHD, "-D", "-f", str(cfg), "-E", str(h.log_path)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            self.hosts[alias] = h
        deadline = time.monotonic() + timeout
        pending = dict(self.hosts)
        while pending:
            for alias, h in list(pending.items()):
                if h.proc.poll() is not None:
                    text = h.log()
                    if "Address already in use" in text or "Cannot bind" in text:
                        raise _BindLost(alias)
                    raise RuntimeError(f"sshd for {alias} exited with {h.proc.returncode}:\n{text}")
                if "Server listening" in h.log() and _banner(h.address, h.port):
                    del pending[alias]
            if not pending:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("sshd not ready in time: " + ", ".join(
                    f"{a}: {h.log().strip()[-300:]}" for a, h in pending.items()))
            time.sleep(0.02)

    def stop(self) -> None:
        for h in self.hosts.values():
            if h.proc is not None and h.proc.poll() is None:
                h.proc.send_signal(signal.SIGTERM)
        for h in self.hosts.values():
            if h.proc is None:
                continue
            try:
                h.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                h.proc.kill()
                h.proc.wait(timeout=5)
        self.hosts.clear()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ---- clients ---------------------------------------------------------------------------

    def host(self, alias: str) -> SshdHost:
        return self.hosts[alias]

    def settings(self, alias: str, **overrides):
        """Resolved :class:`kvorch.hosts.ssh_config.SshSettings` for an alias, via ``ssh_config``."""
        from kvorch.hosts.ssh_config import resolve_ssh_settings

        return resolve_ssh_settings(alias, str(self.ssh_config), overrides)

    def transport(self, alias: str, **overrides):
        from kvorch.hosts.ssh import SshTransport

        return SshTransport(self.settings(alias, **overrides), name=alias)


class _BindLost(Exception):
    pass


if __name__ == "__main__":  # pragma: no cover - manual use
    import argparse
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--extra", type=int, default=0, help="also start N hosts 127.0.0.20...")
    ap.add_argument("--dir", default=None)
    a = ap.parse_args()
    spec = dict(SEED_HOSTS)
    spec.update(extra_hosts(a.extra))
    c = SshdCluster(a.dir or tempfile.mkdtemp(prefix="kvorch-sshd-"), spec).start()
    print(f"{len(c.hosts)} sshd on port {c.port}; ssh -F {c.ssh_config} h13   (Ctrl-C stops)")
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        c.stop()
