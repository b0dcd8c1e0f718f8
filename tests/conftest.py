"""Shared pytest fixtures.

Host layer (kvorch/hosts) fixtures:
- ``sshd_cluster`` (session): two real OpenSSH servers, h13 = 127.0.0.13 and h97 = 127.0.0.97,
  port 2222 (or the next free one: read ``host.port``); a :class:`sshd.SshdCluster` with
  ``.hosts``, ``.known_hosts``, ``.ssh_config``, ``.client_key``, ``.settings(alias, **overrides)``,
  ``.transport(alias, **overrides)``. Skips when sshd is not installed.
- ``ssh_transports``: ``{"h13": SshTransport, "h97": SshTransport}``, closed afterwards.
- ``local_transport``: a :class:`LocalTransport`.
- ``any_transport``: parametrized ``local`` / ``ssh`` (h13): run a test over both transports.
- ``any_ops``: ``HostOps(any_transport, workdir=<tmp>/work)``.
"""

from __future__ import annotations

import pytest

try:  # tests/ is not a package (rootdir sys.path insertion); keep working if it becomes one
    from sshd import SshdCluster, sshd_unavailable_reason
except ImportError:  # pragma: no cover
    from tests.sshd import SshdCluster, sshd_unavailable_reason

from kvorch.hosts import HostOps, LocalTransport

# ---- host layer fixtures ---------------------------------------------------------------------


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Tests that use the real sshd get the ``ssh`` marker (so ``-m "not ssh"`` skips them)."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        uses = {"sshd_cluster", "ssh_transports"} & set(getattr(item, "fixturenames", ()))
        if uses or params.get("any_transport") == "ssh":
            item.add_marker(pytest.mark.ssh)


@pytest.fixture(scope="session")
def sshd_cluster(tmp_path_factory):
    reason = sshd_unavailable_reason()
    if reason:
        pytest.skip(reason)
    cluster = SshdCluster(tmp_path_factory.mktemp("sshd"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def ssh_transports(sshd_cluster):
    ts = {alias: sshd_cluster.transport(alias) for alias in sshd_cluster.hosts}
    try:
        yield ts
    finally:
        for t in ts.values():
            t.close()


@pytest.fixture
def local_transport():
    t = LocalTransport()
    yield t
    t.close()


@pytest.fixture(params=["local", "ssh"])
def any_transport(request):
    if request.param == "local":
        yield LocalTransport()
        return
    cluster = request.getfixturevalue("sshd_cluster")
    t = cluster.transport("h13")
    try:
        yield t
    finally:
        t.close()


@pytest.fixture
def any_ops(any_transport, tmp_path):
    return HostOps(any_transport, workdir=str(tmp_path / "work"))
