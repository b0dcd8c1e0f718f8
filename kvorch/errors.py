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

