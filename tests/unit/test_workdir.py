"""A host's workdir resolved to an absolute path: under ~ with the home its shell reports; a
shell that reports none makes a user error naming the host, never a relative workdir."""

from __future__ import annotations

import pytest

from kvorch.errors import UserError
from kvorch.hosts.base import RunResult
from kvorch.hosts.ops import HostOps
from kvorch.nodes import _resolve_workdir


class Shell:
    """A transport whose shell answers ``printf %s "$HOME"`` with ``home``."""

    def __init__(self, home: str, reported: str | None = None):
        self.name, self.answer, self.home = "gpu7", home, reported

    def run(self, command, timeout=None, env=None):
        assert "HOME" in command
        return RunResult(exit_code=0, stdout=self.answer, stderr="")

    def close(self):
        pass


def test_a_workdir_under_home_uses_the_home_the_shell_reported_at_start():
    assert _resolve_workdir(HostOps(Shell("/never/asked", reported="/home/u")), "~/w", False) == "/home/u/w"


def test_a_workdir_under_home_asks_for_home_when_nothing_was_reported():
    assert _resolve_workdir(HostOps(Shell("/home/v")), "~/w", False) == "/home/v/w"
    assert _resolve_workdir(HostOps(Shell("/home/v")), "rel", False) == "/home/v/rel"


@pytest.mark.parametrize("home", ["", "relative/home"])
def test_no_absolute_home_is_a_user_error_naming_the_host(home):
    with pytest.raises(UserError) as e:
        _resolve_workdir(HostOps(Shell(home)), "~/w", False)
    assert "gpu7" in e.value.message and "workdir" in e.value.hint


def test_an_absolute_workdir_needs_no_home():
    assert _resolve_workdir(HostOps(Shell("")), "/srv/x/../w", False) == "/srv/w"
