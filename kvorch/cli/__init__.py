"""The `orchestrate` command line: parse, call the library, print. The only package that imports
click and rich; the only place exit codes are chosen."""

from .main import Ctx, cli, main

__all__ = ["Ctx", "cli", "main"]
