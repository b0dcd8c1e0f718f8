"""Connected hosts of a plan: one transport (local or SSH) per host, opened in parallel.

A :class:`Node` is a host of the plan with its operations (:class:`kvorch.hosts.ops.HostOps`) and
its working directory resolved to an absolute path on that host.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from .errors import UserError

if TYPE_CHECKING:
    from .hosts.ops import HostOps
    from .inventory import Inventory
    from .plan import HostPlan, Plan


@dataclass
class Node:
    plan: HostPlan
    ops: HostOps
    workdir: str

    @property
    def name(self) -> str:
        return self.plan.name

    def path(self, rel: str) -> str:
        return rel if rel.startswith("/") else posixpath.join(self.workdir, rel)

    def close(self) -> None:
        self.ops.t.close()


def ssh_settings_of(name: str, target: str, overrides: dict[str, Any], ssh_config: str | None):
    """The SSH settings of host ``name``: ``target`` (its alias or address) looked up in the
    ssh_config, with the inventory's ``overrides`` on top."""
    from .hosts.ssh_config import resolve_ssh_settings

    try:
        return resolve_ssh_settings(target, ssh_config, overrides)
    except FileNotFoundError as e:
        raise UserError(str(e), hint="pass an existing file with --ssh-config (or ORCHESTRATE_SSH_CONFIG)") from None
    except ValueError as e:  # SshSettingsError: a value from the ssh_config or the inventory
        raise UserError(f"host {name}: cannot use its SSH settings: {e}",
                        hint=f"fix the ssh_config entry for {target} or hosts.{name}.ssh in the inventory") from None


def _plan_settings(hp: HostPlan, ssh_config: str | None):
    return ssh_settings_of(hp.name, hp.ssh_target or hp.address, hp.ssh, ssh_config)


def _transport(hp: HostPlan, ssh_config: str | None):
    if hp.connector == "local":
        from .hosts.local import LocalTransport

        return LocalTransport(name=hp.name)
    settings = _plan_settings(hp, ssh_config)
    early = _EARLY.pop((hp.name, hp.address, ssh_config), None)
    if early is not None:
        early_settings, fut = early
        if early_settings == settings:
            return fut.result()  # opened (or failed: the same error connect() would have raised)
        _discard(fut)  # a prediction that no longer holds: its connection is not used
    from .hosts.ssh import SshTransport

    return SshTransport(settings, name=hp.name)


#: connections begun by :func:`connect_early` / :func:`connect_predicted`, by (host name,
#: address, ssh_config): (the settings they were opened with, the future transport)
_EARLY: dict[tuple[str, str, str | None], tuple[Any, Any]] = {}


def _discard(fut: Any) -> None:
    """Close an early connection nobody takes over, when it has finished opening."""
    def close(f: Any) -> None:
        try:
            f.result().close()
        except BaseException:  # noqa: BLE001 - its error was nobody's
            pass

    fut.add_done_callback(close)


def _begin(key: tuple[str, str, str | None], settings: Any) -> None:
    """Open an SSH connection to ``settings`` in a background thread, and its kept shell."""
    from concurrent.futures import Future
    import threading

    from .hosts.ssh import SshTransport

    fut: Future[Any] = Future()
    name = key[0]

    def work() -> None:
        t = None
        try:
            t = SshTransport(settings, name=name)
            t.open()
            # the kept shell too (started through the login shell, which reads ~/.bashrc); it
            # reports the home directory (a workdir under ~ needs it: one round trip less later)
            t.start_shell()
            fut.set_result(t)
        except BaseException as exc:  # noqa: BLE001 - handed to open_nodes
            if t is not None:
                t.close()
            fut.set_exception(exc)

    _EARLY[key] = (settings, fut)
    threading.Thread(target=work, name=f"kvorch-connect-{name}", daemon=True).start()


def _ssh_hosts(source: Inventory | Plan, ssh_config: str | None) -> list[tuple[str, str, Any]]:
    """(name, address, settings) of every SSH host of an inventory or a plan; a host whose
    settings do not resolve is left out (:func:`open_nodes` reports it)."""
    from .plan import Plan

    if isinstance(source, Plan):
        hosts = [(hp.name, hp.address, hp.ssh_target or hp.address, hp.ssh)
                 for hp in source.hosts if hp.connector == "ssh"]
    else:
        hosts = [(name, h.address, h.ssh_target(), h.ssh_overrides())
                 for name, h in source.hosts.items() if h.connector == "ssh"]
    out = []
    for name, address, target, overrides in hosts:
        try:
            out.append((name, address, ssh_settings_of(name, target, overrides, ssh_config)))
        except UserError:
            continue
    return out


def connect_early(source: Inventory | Plan, ssh_config: str | None, *, inventory_path: str | None = None) -> None:
    """Begin connecting to every SSH host of ``source`` (a validated inventory, or its plan) now,
    one background thread each.

    A short command (``status``, ``preflight``) spends most of its time importing and building
    the plan, then connecting; begun first, the SSH handshakes (the remote side's work: sshd,
    key exchange, authentication, the login shell) overlap the rest of the start-up. :func:`open_nodes` takes the
    connection (or its error) over. paramiko is imported here, in the calling thread, so that
    no two threads import the same modules at once. Hosts :func:`connect_predicted` is already
    connecting to with the same settings are left to it. With ``inventory_path`` (the file
    ``source`` was loaded from), the hosts are remembered for the next command's
    :func:`connect_predicted`."""
    hosts = _ssh_hosts(source, ssh_config)
    if not hosts:
        return  # nothing to connect, and no paramiko to import
    from .hosts import ssh as _  # noqa: F401 - see the docstring

    remembered = []
    for name, address, settings in hosts:
        key = (name, address, ssh_config)
        remembered.append({"name": name, "address": address, "settings": settings.to_dict()})
        if key in _EARLY:
            if _EARLY[key][0] == settings:
                continue
            _discard(_EARLY.pop(key)[1])
        _begin(key, settings)
    if inventory_path is not None:
        from . import connect_cache

        connect_cache.remember(inventory_path, ssh_config, remembered)


def connect_predicted(inventory_path: str, ssh_config: str | None) -> int:
    """Begin connecting to the SSH hosts this inventory file (these very bytes, this ssh_config)
    resolved to when it was last validated (:mod:`kvorch.connect_cache`), before it is loaded
    again: the handshakes overlap the validation. Returns how many connections were begun.
    :func:`open_nodes` uses one only if the validated inventory resolves to the same settings."""
    from . import connect_cache

    hosts = connect_cache.lookup(inventory_path, ssh_config)
    if not hosts:
        return 0
    from .hosts import dial
    from .hosts.ssh_config import SshSettings

    predicted = []
    for h in hosts:
        try:
            key = (str(h["name"]), str(h["address"]), ssh_config)
            settings = SshSettings.from_dict(h["settings"])
        except Exception:  # noqa: BLE001 - a damaged entry predicts nothing
            continue
        if key not in _EARLY:
            predicted.append((key, settings))
            if not settings.proxy_jump:  # (through a jump host the first hop is another host)
                dial.dial(settings.hostname, settings.port, settings.connect_timeout)
    from .hosts import ssh as _  # noqa: F401 - imported in this thread (see connect_early) while the sshds answer
    for key, settings in predicted:
        _begin(key, settings)
    return len(predicted)


def close_early() -> None:
    """Close connections :func:`connect_early` made that nobody took over (and sockets dialed for them)."""
    from .hosts import dial

    dial.close_all()
    while _EARLY:
        _, (_, fut) = _EARLY.popitem()
        try:
            fut.result().close()
        except BaseException:  # noqa: BLE001 - closing is best effort; its error was nobody's
            pass


def _resolve_workdir(ops: HostOps, workdir: str, local: bool) -> str:
    if workdir.startswith("/"):
        return posixpath.normpath(workdir)
    if local and not workdir.startswith("~"):
        return os.path.abspath(workdir)
    home = getattr(ops.t, "home", None) or ops.run('printf %s "$HOME"', timeout=30, check=True,
                                                    what="find the home directory").stdout.strip()
    if not home.startswith("/"):
        raise UserError(f"host {ops.name}: its login shell has no absolute $HOME ({home!r}), so the workdir {workdir!r} "
                        f"cannot be resolved", hint="give the host an absolute workdir in the inventory (hosts.<name>.workdir)")
    rest = workdir[2:] if workdir.startswith("~/") else ("" if workdir == "~" else workdir)
    return posixpath.normpath(posixpath.join(home, rest)) if rest else home


def host_error_message(name: str, exc: BaseException) -> UserError:
    from .hosts.base import HostError, HostKeyError

    if isinstance(exc, HostKeyError):
        return UserError(f"host {name}: {exc}", hint="verify the host's key, then add it to known_hosts as the message says")
    if isinstance(exc, HostError):
        return UserError(f"host {name}: {exc}", hint="check the address, the SSH settings (--ssh-config, hosts.<name>.ssh) and that sshd runs")
    if isinstance(exc, UserError):
        return exc
    return UserError(f"host {name}: {type(exc).__name__}: {exc}")


def open_nodes(plan: Plan, ssh_config: str | None, names: list[str] | None = None,
               *, strict: bool = True, each: Callable[[Node], None] | None = None) -> tuple[dict[str, Node], dict[str, UserError]]:
    """Connect to every host of the plan (or ``names``) in parallel (each host's SSH settings
    are the plan's: :attr:`HostPlan.ssh_target` looked up in ``ssh_config``, :attr:`HostPlan.ssh` on top).
    ``each(node)``: run on each host as soon as it is connected, in its connecting thread (a host
    reached first does not wait for the slowest one); it must not raise.

    Returns (connected nodes, errors by host). With ``strict`` any error is raised as one UserError
    naming every host that failed (after closing the others).
    """
    from .hosts.ops import HostOps
    from .hosts.parallel import run_parallel

    wanted = [h for h in plan.hosts if names is None or h.name in names]

    def connect(hp: HostPlan) -> Node:
        transport = _transport(hp, ssh_config)
        try:
            wd = _resolve_workdir(HostOps(transport), hp.workdir, hp.connector == "local")
        except BaseException:
            transport.close()
            raise
        node = Node(plan=hp, ops=HostOps(transport, workdir=wd), workdir=wd)
        if each is not None:
            try:
                each(node)
            except BaseException:
                transport.close()
                raise
        return node

    results = run_parallel({hp.name: hp for hp in wanted}, connect)
    nodes = {k: v for k, v in results.items() if isinstance(v, Node)}
    errors = {k: host_error_message(k, v) for k, v in results.items() if isinstance(v, BaseException)}
    if errors and strict:
        for n in nodes.values():
            n.close()
        first = next(iter(errors.values()))
        if len(errors) == 1:
            raise first
        raise UserError(f"{len(errors)} hosts could not be reached", hint=first.hint,
                        details=[e.message for e in errors.values()])
    return nodes, errors


def close_all(nodes: dict[str, Node]) -> None:
    for n in nodes.values():
        try:
            n.close()
        except Exception:  # noqa: BLE001 - closing is best effort
            pass
    close_early()
