"""SshTransport: a Fabric ``Connection`` with host keys verified.

Fabric 3.2 puts paramiko's ``AutoAddPolicy`` on every connection and loads no known_hosts file
(DESIGN.md §6): used as is, it trusts any server. Here every connection (and every ProxyJump hop)
gets the known_hosts files of its :class:`SshSettings` and a rejecting policy before it connects;
an unknown or changed key raises :class:`HostKeyError` with the command that fixes it.

Commands run as ``bash --noprofile --norc -c`` (env exported inline, stdin closed, no pty) inside
a persistent remote bash per connection: sshd starts every new channel through the user's login
shell, which reads ~/.bashrc (pyenv or conda init there costs 0.1–0.5 s per command); a kept
shell pays that once. Each command's end is framed by a random marker on stdout and stderr; a
command that times out takes its shell with it. Files move over SFTP (offset reads for log pulls).
One connection per host, shared by threads (channels are multiplexed, at most ``max_channels``
commands at once plus ``MAX_IDLE_SHELLS`` idle shells and SFTP: sshd's ``MaxSessions`` defaults to 10).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import posixpath
import re
import select
import socket
import threading
import time
import uuid
import warnings
from typing import Mapping

import paramiko
from fabric import Config, Connection

from .base import (
    AuthenticationFailed,
    CommandTimeout,
    HostKeyError,
    HostUnreachable,
    RunResult,
    bash_command,
)
from .ssh_config import DEFAULT_KNOWN_HOSTS, SshSettings, resolve_ssh_settings

log = logging.getLogger("kvorch.hosts.ssh")
# paramiko logs every failed handshake with a full traceback ("Exception (client): Error reading SSH
# protocol banner", …) to the root logger's last-resort handler. Its failures reach the caller here
# as one HostUnreachable with the fix; the traceback shows only where logging is configured (-v).
logging.getLogger("paramiko").addHandler(logging.NullHandler())

_KNOWN_HOSTS_WRITE_LOCK = threading.Lock()


class InsecureHostKeyWarning(UserWarning):
    """Host key verification was switched off for a connection."""


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style ``SHA256:…`` fingerprint."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _kh_file_args(files: list[str]) -> tuple[str, str]:
    """(``-f FILE `` for ssh-keygen or "", the file to append to) for the fix text."""
    first = files[0] if files else os.path.expanduser(DEFAULT_KNOWN_HOSTS)
    default = os.path.expanduser(DEFAULT_KNOWN_HOSTS)
    if os.path.abspath(first) == os.path.abspath(default):
        return "", "~/.ssh/known_hosts"
    return f" -f {first}", first


def _keyscan_cmd(s: SshSettings, target_file: str) -> str:
    port = "" if s.port == 22 else f"-p {s.port} "
    return f"ssh-keyscan {port}{s.hostname} >> {target_file}"


def unknown_key_message(s: SshSettings, key: paramiko.PKey | None) -> str:
    _, target = _kh_file_args(s.effective_known_hosts_files())
    offered = f"The server offered {key.get_name()} {fingerprint(key)}.\n" if key is not None else ""
    who = f" ({s.alias})" if s.alias and s.alias != s.hostname else ""
    return (
        f"Host key of {s.known_hosts_name}{who} is unknown: refusing to connect.\n"
        f"{offered}"
        f"Fix: confirm that fingerprint with the host's owner (on the host: "
        f"ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub), then record the key:\n"
        f"    {_keyscan_cmd(s, target)}\n"
        f"known_hosts files read: {', '.join(s.effective_known_hosts_files())}\n"
        f"(Or skip verification, knowingly: verify_host_keys=False / StrictHostKeyChecking no.)"
    )


def changed_key_message(s: SshSettings, offered: paramiko.PKey, expected: paramiko.PKey) -> str:
    f_arg, target = _kh_file_args(s.effective_known_hosts_files())
    who = f" ({s.alias})" if s.alias and s.alias != s.hostname else ""
    return (
        f"HOST KEY CHANGED for {s.known_hosts_name}{who}: refusing to connect "
        f"(someone may be intercepting the connection, or the host was reinstalled).\n"
        f"known_hosts has {expected.get_name()} {fingerprint(expected)}; "
        f"the server offered {offered.get_name()} {fingerprint(offered)}.\n"
        f"Fix, only if the change is expected: remove the old key and record the new one:\n"
        f"    ssh-keygen -R '{s.known_hosts_name}'{f_arg}\n"
        f"    {_keyscan_cmd(s, target)}\n"
        f"known_hosts files read: {', '.join(s.effective_known_hosts_files())}"
    )


class _RejectPolicy(paramiko.MissingHostKeyPolicy):
    def __init__(self, settings: SshSettings):
        self.settings = settings

    def missing_host_key(self, client, hostname, key):
        s = self.settings
        raise HostKeyError(
            unknown_key_message(s, key), host=s.hostname, port=s.port, kind="unknown",
            fingerprint=fingerprint(key),
        )


class _AcceptNewPolicy(paramiko.MissingHostKeyPolicy):
    """StrictHostKeyChecking accept-new: record an unknown key in the first known_hosts file."""

    def __init__(self, settings: SshSettings):
        self.settings = settings

    def missing_host_key(self, client, hostname, key):
        path = self.settings.effective_known_hosts_files()[0]
        line = f"{hostname} {key.get_name()} {key.get_base64()}\n"
        with _KNOWN_HOSTS_WRITE_LOCK:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            with open(path, "a") as f:
                f.write(line)
        client.get_host_keys().add(hostname, key.get_name(), key)
        log.warning("accept-new: recorded new host key %s %s for %s in %s",
                    key.get_name(), fingerprint(key), hostname, path)


class _InsecureAcceptPolicy(paramiko.MissingHostKeyPolicy):
    def missing_host_key(self, client, hostname, key):
        log.warning("HOST KEY NOT VERIFIED for %s (%s %s): verification is switched off",
                    hostname, key.get_name(), fingerprint(key))


class SshTransport:
    """One SSH connection to one host, opened lazily (or by :meth:`open`), safe to share by threads.

    ``verify_host_keys=None`` follows the settings (StrictHostKeyChecking); ``False`` is the loud
    opt-out: it emits :class:`InsecureHostKeyWarning` and logs a warning per connection.
    """

    #: small files and /proc reads go through the kept shell (see HostOps.small_via_shell)
    small_files_via_shell = True

    def __init__(
        self,
        settings: SshSettings,
        name: str | None = None,
        *,
        verify_host_keys: bool | None = None,
        max_channels: int = 7,
    ):
        self.settings = settings
        self.name = name or settings.alias or settings.hostname
        if verify_host_keys is None:
            verify_host_keys = settings.verify_host_keys
        self.verify_host_keys = verify_host_keys
        if not verify_host_keys:
            msg = (f"SSH host key verification is OFF for {self.name} ({settings.known_hosts_name}): "
                   f"any machine answering there will be trusted with commands and files")
            warnings.warn(msg, InsecureHostKeyWarning, stacklevel=2)
            log.warning(msg)
        self._lock = threading.Lock()
        self._sftp_lock = threading.Lock()
        self._channels = threading.BoundedSemaphore(max_channels)
        self._conn: Connection | None = None
        self._hops: list[Connection] = []
        self._sftp: paramiko.SFTPClient | None = None
        self._idle_shells: list[_Shell] = []
        self.connect_time_s: float | None = None
        #: the login user's home directory, as the first kept shell reported it
        self.home: str | None = None

    def __repr__(self) -> str:
        return f"<SshTransport {self.name} {self.settings.target()}>"

    # ---- connection -------------------------------------------------------------------------

    def _hop_settings(self) -> list[SshSettings]:
        s = self.settings
        if not s.proxy_jump:
            return []
        hops = []
        for spec in s.proxy_jump.split(","):
            hop = resolve_ssh_settings(spec.strip(), s.ssh_config_path or os.devnull)
            inherit = {
                "strict_host_key_checking": s.strict_host_key_checking,
                "connect_timeout": s.connect_timeout,
                "allow_agent": s.allow_agent or hop.allow_agent,
                "look_for_keys": s.look_for_keys or hop.look_for_keys,
            }
            if not hop.known_hosts_files:
                inherit["known_hosts_files"] = s.known_hosts_files
            if not hop.identity_files:
                inherit["identity_files"] = s.identity_files
            hops.append(hop.replace(**inherit))
        return hops

    def _make_connection(self, s: SshSettings, gateway: Connection | None) -> Connection:
        # An explicit, empty SSHConfig and a lazy Config: Fabric reads no ssh_config and no
        # fabric.yaml of its own; everything comes from the resolved settings.
        cfg = Config(ssh_config=paramiko.SSHConfig(), lazy=True)
        connect_kwargs = {
            "allow_agent": s.allow_agent,
            "look_for_keys": s.look_for_keys,
            "timeout": s.connect_timeout,
            "banner_timeout": s.connect_timeout,
            "auth_timeout": s.connect_timeout,
        }
        if s.identity_files:
            connect_kwargs["key_filename"] = list(s.identity_files)
        if gateway is None and not s.proxy_jump:
            from . import dial

            sock = dial.take(s.hostname, s.port)  # begun before paramiko was imported (kvorch.hosts.dial)
            if sock is not None:
                connect_kwargs["sock"] = sock
        conn = Connection(
            host=s.hostname, user=s.user, port=s.port, config=cfg,
            gateway=gateway if gateway is not None else False,
            connect_kwargs=connect_kwargs,
        )
        client = conn.client
        if self.verify_host_keys:
            for path in s.effective_known_hosts_files():
                if os.path.isfile(path):
                    # "system" host keys: checked, never written back by paramiko
                    client.load_system_host_keys(path)
            if s.strict_host_key_checking == "accept-new":
                client.set_missing_host_key_policy(_AcceptNewPolicy(s))
            else:
                client.set_missing_host_key_policy(_RejectPolicy(s))
        else:
            client.set_missing_host_key_policy(_InsecureAcceptPolicy())
        return conn

    def _translate(self, exc: BaseException, chain: list[SshSettings]) -> BaseException:
        s = self.settings
        if isinstance(exc, HostKeyError):
            return exc
        if isinstance(exc, paramiko.BadHostKeyException):
            hs = next((h for h in chain if h.hostname == exc.hostname), s)
            return HostKeyError(
                changed_key_message(hs, exc.key, exc.expected_key), host=hs.hostname, port=hs.port,
                kind="changed", fingerprint=fingerprint(exc.key),
                expected_fingerprint=fingerprint(exc.expected_key),
            )
        via = f" via {s.proxy_jump}" if s.proxy_jump else ""
        if isinstance(exc, paramiko.AuthenticationException) or (
            isinstance(exc, paramiko.SSHException) and "No authentication methods" in str(exc)
        ):
            keys = ", ".join(s.identity_files) or "none"
            return AuthenticationFailed(
                f"{self.name}: authentication failed for {s.target()}{via} ({exc}). "
                f"Identity files: {keys}; agent: {'on' if s.allow_agent else 'off'}; "
                f"key guessing: {'on' if s.look_for_keys else 'off'}. Fix: set IdentityFile "
                f"(ssh_config or inventory) to a key in the host's authorized_keys.",
                host=s.hostname,
            )
        text = str(exc)
        if isinstance(exc, paramiko.SSHException) and ("protocol banner" in text or "Incompatible" in text):
            return HostUnreachable(
                f"{self.name}: {s.hostname}:{s.port}{via} accepts TCP connections but does not speak SSH "
                f"({text.strip()}). Fix: check the port (ssh.port / Port) and that no firewall or proxy "
                f"answers there: `ssh -p {s.port} {(s.user + '@') if s.user else ''}{s.hostname}` shows the same", host=s.hostname)
        if isinstance(exc, (ConnectionResetError, EOFError)) or "reset by peer" in text:
            return HostUnreachable(
                f"{self.name}: {s.hostname}:{s.port}{via} closed the connection during the SSH handshake "
                f"({type(exc).__name__}: {text}). Fix: check the port, a firewall or sshd's MaxStartups",
                host=s.hostname)
        if isinstance(exc, (socket.timeout, TimeoutError)):
            return HostUnreachable(
                f"{self.name}: no SSH answer from {s.hostname}:{s.port}{via} within "
                f"{s.connect_timeout:g}s", host=s.hostname)
        return HostUnreachable(f"{self.name}: cannot connect to {s.hostname}:{s.port}{via}: "
                               f"{type(exc).__name__}: {exc}", host=s.hostname)

    def open(self) -> float:
        """Connect now (idempotent). Returns the connect time in seconds."""
        self._ensure_open()
        return self.connect_time_s or 0.0

    def _ensure_open(self) -> paramiko.Transport:
        conn = self._conn
        if conn is not None and conn.transport is not None and conn.transport.is_active():
            return conn.transport
        with self._lock:
            conn = self._conn
            if conn is not None and conn.transport is not None and conn.transport.is_active():
                return conn.transport
            self._close_locked()
            hop_settings = self._hop_settings()
            chain = hop_settings + [self.settings]
            t0 = time.monotonic()
            gateway = None
            hops: list[Connection] = []
            conn = None
            try:
                for hs in hop_settings:
                    gateway = self._make_connection(hs, gateway)
                    hops.append(gateway)
                conn = self._make_connection(self.settings, gateway)
                conn.open()
            except BaseException as exc:  # noqa: BLE001 - translated below
                for c in ([conn] if conn else []) + hops[::-1]:
                    try:
                        c.close()
                    except Exception:  # pragma: no cover
                        pass
                if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    raise
                raise self._translate(exc, chain) from exc
            self.connect_time_s = time.monotonic() - t0
            self._conn, self._hops = conn, hops
            log.debug("connected to %s in %.3fs", self.settings.target(), self.connect_time_s)
            return conn.transport

    def _close_locked(self) -> None:
        for sh in self._idle_shells:
            sh.close()
        self._idle_shells = []
        if self._sftp is not None:
            try:
                self._sftp.close()
            except Exception:
                pass
            self._sftp = None
        for c in ([self._conn] if self._conn else []) + self._hops[::-1]:
            try:
                c.close()
            except Exception:
                pass
        self._conn, self._hops = None, []

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- commands ---------------------------------------------------------------------------

    def run(
        self, command: str, timeout: float | None = None, env: Mapping[str, str] | None = None
    ) -> RunResult:
        full = bash_command(command, env)
        transport = self._ensure_open()
        t0 = time.monotonic()
        with self._channels:
            shell = self._take_shell(transport)
            try:
                out, err, code = shell.run(full, command, timeout, self.name)
            except CommandTimeout:
                shell.close()
                raise
            except (paramiko.SSHException, EOFError, OSError, _ShellLost) as exc:
                shell.close()
                if not transport.is_active():
                    raise HostUnreachable(f"{self.name}: connection lost while running a command",
                                          host=self.settings.hostname) from exc
                raise HostUnreachable(f"{self.name}: SSH failure while running a command: {exc}",
                                      host=self.settings.hostname) from exc
            self._return_shell(shell)
        return RunResult(exit_code=code, stdout=out.decode("utf-8", "replace"),
                         stderr=err.decode("utf-8", "replace"), duration_s=time.monotonic() - t0)

    def _take_shell(self, transport: paramiko.Transport) -> _Shell:
        with self._lock:
            while self._idle_shells:
                sh = self._idle_shells.pop()
                if sh.alive():
                    return sh
                sh.close()
        try:
            chan = transport.open_session(timeout=self.settings.connect_timeout)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise HostUnreachable(f"{self.name}: cannot open an SSH channel: {exc}",
                                  host=self.settings.hostname) from exc
        try:
            sh = _Shell.start(chan, self.settings.connect_timeout + 30.0)
        except (paramiko.SSHException, EOFError, OSError, _ShellLost, CommandTimeout) as exc:
            chan.close()
            raise HostUnreachable(f"{self.name}: cannot start a remote shell (bash): {exc}",
                                  host=self.settings.hostname) from exc
        if self.home is None and sh.home.startswith("/"):
            self.home = sh.home
        return sh

    def start_shell(self) -> str | None:
        """Connect and have a kept shell ready (the host's login shell, ~/.bashrc and all, runs
        now rather than with the first command); the login user's home directory."""
        transport = self._ensure_open()
        with self._channels:
            self._return_shell(self._take_shell(transport))
        return self.home

    def _return_shell(self, shell: _Shell) -> None:
        with self._lock:
            if self._conn is not None and len(self._idle_shells) < MAX_IDLE_SHELLS and shell.alive():
                self._idle_shells.append(shell)
                return
        shell.close()

    # ---- files ------------------------------------------------------------------------------

    @staticmethod
    def _sftp_path(path: str) -> str:
        # SFTP resolves relative paths against the login directory (home), like the shell does
        if path == "~":
            return "."
        if path.startswith("~/"):
            return path[2:]
        return path

    @property
    def sftp_started(self) -> bool:
        """Whether this connection has an SFTP session (sshd starts its sftp-server, often through
        the login shell): only bulk file transfers need one."""
        return self._sftp is not None

    def _sftp_client(self) -> paramiko.SFTPClient:
        self._ensure_open()
        if self._sftp is None:
            assert self._conn is not None
            try:
                self._sftp = self._conn.client.open_sftp()
            except (paramiko.SSHException, paramiko.SFTPError, EOFError) as exc:
                raise HostUnreachable(
                    f"{self.name}: cannot start SFTP ({type(exc).__name__}: {exc}). sshd starts the SFTP "
                    f"server through your login shell: if ~/.bashrc (or conda/pyenv init) prints "
                    f"anything when not interactive, SFTP breaks; make it return early then (first line: "
                    f"[[ $- == *i* ]] || return). Or the host's sshd_config has no `Subsystem sftp`. "
                    f"Commands work without SFTP; pulling logs needs it.",
                    host=self.settings.hostname) from exc
        return self._sftp

    def put_bytes(self, remote_path: str, data: bytes, mode: int = 0o644) -> None:
        """Atomic: a temporary file beside the target, chmod, then rename over it."""
        path = self._sftp_path(remote_path)
        d, base = posixpath.split(path)
        tmp = posixpath.join(d, f".{base}.kvorch-{uuid.uuid4().hex[:8]}")
        with self._sftp_lock:
            sftp = self._sftp_client()
            try:
                with sftp.open(tmp, "wb") as f:
                    f.set_pipelined(True)
                    f.write(data)
                sftp.chmod(tmp, mode)
                sftp.posix_rename(tmp, path)
            except BaseException:
                try:
                    sftp.remove(tmp)
                except Exception:
                    pass
                raise

    def get_bytes(self, remote_path: str, offset: int = 0, limit: int | None = None) -> bytes:
        path = self._sftp_path(remote_path)
        with self._sftp_lock:
            sftp = self._sftp_client()
            with sftp.open(path, "rb") as f:
                size = None
                if offset < 0:
                    size = f.stat().st_size or 0
                    offset = max(size + offset, 0)
                if offset:
                    f.seek(offset)
                if limit is None:
                    if size is None:
                        size = f.stat().st_size or 0
                    if size - offset > 65536:
                        f.prefetch(size)
                    return f.read()
                return f.read(limit)

    def file_size(self, remote_path: str) -> int | None:
        with self._sftp_lock:
            try:
                return self._sftp_client().stat(self._sftp_path(remote_path)).st_size
            except FileNotFoundError:
                return None


MAX_IDLE_SHELLS = 2


class _ShellLost(Exception):
    """The persistent shell's channel closed before a command finished."""


class _Shell:
    """One remote ``bash`` reading commands on stdin, kept for the next command.

    Each command is written as ``<bash -c …> </dev/null; printf '\\n<mark> %d\\n' $?`` (and the mark on
    stderr): everything before the mark line is the command's output, byte for byte."""

    def __init__(self, chan: paramiko.Channel):
        self.chan = chan
        self._out = bytearray()
        self._err = bytearray()
        #: $HOME as the shell reported it when it started
        self.home = ""

    @classmethod
    def start(cls, chan: paramiko.Channel, timeout: float) -> _Shell:
        # The login shell (which reads ~/.bashrc once) hands over to a plain bash.
        chan.exec_command("exec bash --noprofile --norc")
        sh = cls(chan)
        mark = "__kvorch_ready_" + uuid.uuid4().hex
        # the ready line carries the home directory (a workdir under ~ needs it: no round trip later)
        # (NUL-terminated: no path holds one, a newline in $HOME cannot shift the next command's output)
        sh._send(f"printf '%s %s\\0\\n' {mark} \"$HOME\"; printf '%s\\n' {mark} >&2\n")
        # whatever ~/.bashrc printed comes before the ready mark: dropped
        (_, (home,)), _ = sh._read_until(re.compile(re.escape(mark.encode()) + rb" ([^\0]*)\0\n"),
                                         re.compile(re.escape(f"{mark}\n".encode())), timeout, "start a shell",
                                         "remote shell")
        sh.home = home.decode("utf-8", "replace")
        return sh

    def alive(self) -> bool:
        return not (self.chan.closed or self.chan.exit_status_ready() or self.chan.eof_received)

    def close(self) -> None:
        try:
            self.chan.close()
        except Exception:
            pass

    def _send(self, text: str) -> None:
        self.chan.sendall(text.encode())

    def run(self, full: str, command: str, timeout: float | None, host: str) -> tuple[bytes, bytes, int]:
        mark = "__kvorch_end_" + uuid.uuid4().hex
        self._send(f"{full} </dev/null; printf '\\n%s %d\\n' {mark} $?; printf '\\n%s\\n' {mark} >&2\n")
        (out, code), (err, _) = self._read_until(re.compile(b"\n" + mark.encode() + rb" (\d+)\n"),
                                                 re.compile(re.escape(f"\n{mark}\n".encode())), timeout, command, host)
        return out, err, int(code[0])

    def _read_until(self, out_mark: re.Pattern[bytes], err_mark: re.Pattern[bytes], timeout: float | None,
                    command: str, host: str) -> tuple[tuple[bytes, tuple[bytes, ...]], tuple[bytes, tuple[bytes, ...]]]:
        """Read both streams until each holds its mark line: (what came before it, the mark's
        groups) for each; anything after a mark stays buffered for the next read."""
        deadline = None if timeout is None else time.monotonic() + timeout
        chan, fd = self.chan, self.chan.fileno()
        while True:
            while chan.recv_ready():
                self._out += chan.recv(65536)
            while chan.recv_stderr_ready():
                self._err += chan.recv_stderr(65536)
            om, em = out_mark.search(self._out), err_mark.search(self._err)
            if om and em:
                out = (bytes(self._out[:om.start()]), tuple(bytes(g) for g in om.groups()))
                err = (bytes(self._err[:em.start()]), tuple(bytes(g) for g in em.groups()))
                del self._out[:om.end()], self._err[:em.end()]  # (the matches pointed into these buffers)
                return out, err
            if chan.closed or chan.eof_received or chan.exit_status_ready():
                if not chan.recv_ready() and not chan.recv_stderr_ready():
                    raise _ShellLost(f"the remote shell exited (status {chan.exit_status if chan.exit_status_ready() else '?'})")
            wait = 0.5
            if deadline is not None:
                wait = deadline - time.monotonic()
                if wait <= 0:
                    raise CommandTimeout(command, timeout or 0.0, host=host,
                                         stdout=self._out.decode("utf-8", "replace"),
                                         stderr=self._err.decode("utf-8", "replace"))
                wait = min(wait, 0.5)
            select.select([fd], [], [], wait)
