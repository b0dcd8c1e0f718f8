"""TCP connections to SSH hosts dialed before paramiko is imported.

A short command knows the hosts it will talk to before it has imported paramiko and Fabric
(~0.2 s): :func:`dial` opens the TCP connection then, in a thread, so that the host's sshd accepts,
forks, re-executes itself and sends its banner (~20 ms on a loopback sshd, plus a network round
trip on a real one) while this process imports. :class:`~kvorch.hosts.ssh.SshTransport` takes the
socket (:func:`take`) for its first connection and runs the SSH handshake on it. This module
imports nothing heavy; nothing here speaks SSH.
"""

from __future__ import annotations

import socket
import threading
from concurrent.futures import Future

_DIALED: dict[tuple[str, int], Future[socket.socket]] = {}
_LOCK = threading.Lock()


def dial(hostname: str, port: int, timeout: float | None) -> None:
    """Begin a TCP connection to ``hostname:port`` (once; a second call for the same is a no-op)."""
    key = (hostname, int(port))
    with _LOCK:
        if key in _DIALED:
            return
        fut: Future[socket.socket] = Future()
        _DIALED[key] = fut

    def work() -> None:
        try:
            fut.set_result(socket.create_connection(key, timeout=timeout))
        except BaseException as exc:  # noqa: BLE001 - the taker dials again and reports it
            fut.set_exception(exc)

    threading.Thread(target=work, name=f"kvorch-dial-{hostname}", daemon=True).start()


def take(hostname: str, port: int) -> socket.socket | None:
    """The connected socket :func:`dial` began for ``hostname:port`` (waiting for it), or None: none
    was begun, or it failed (the caller connects itself, so the error is reported in its words)."""
    with _LOCK:
        fut = _DIALED.pop((hostname, int(port)), None)
    if fut is None:
        return None
    try:
        return fut.result()
    except BaseException:  # noqa: BLE001 - see the docstring
        return None


def close_all() -> None:
    """Close every dialed socket nobody took."""
    with _LOCK:
        futs = list(_DIALED.values())
        _DIALED.clear()
    for fut in futs:
        fut.add_done_callback(lambda f: f.exception() is None and f.result().close())
