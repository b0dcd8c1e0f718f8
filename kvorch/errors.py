"""Errors a user can act on. The CLI prints them as one line (plus hints) and exits non-zero."""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix: bad inventory, unknown scenario, unreachable host…

    ``exit_code`` 2 means "could not run" (usage/config errors), 1 means "ran and failed".
    """

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None, *, details: list[str] | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = details or []

    def __str__(self) -> str:
        return self.message


class InventoryError(UserError):
    """The inventory file is malformed or inconsistent."""


class RenderError(UserError):
    """A template or a rendered LMCache config is wrong."""



class StartFailed(UserError):
    """A process did not start or become healthy; what this ``up`` had started was stopped."""

    def __init__(self, message: str, hint: str | None = None, *, details: list[str] | None = None,
                 process: str = "", host: str = "", reason: str = "", stopped: dict | None = None,
                 log_tail: str = "", log_path: str = ""):
        super().__init__(message, hint, details=details)
        self.process, self.host, self.reason = process, host, reason
        self.stopped = stopped or {}
        self.log_tail, self.log_path = log_tail, log_path


class PreflightFailed(UserError):
    """A preflight check failed; ``checks`` holds them all (kvorch.preflight.Check)."""

    def __init__(self, message: str, hint: str | None = None, *, details: list[str] | None = None,
                 checks: list | None = None):
        super().__init__(message, hint, details=details)
        self.checks = checks or []


class Interrupted(UserError):
    """Ctrl-C or SIGTERM: what the interrupted command had started was stopped (``stopped``)."""

    exit_code = 130

    def __init__(self, message: str, hint: str | None = None, *, details: list[str] | None = None,
                 stopped: dict | None = None):
        super().__init__(message, hint, details=details)
        self.stopped = stopped or {}
