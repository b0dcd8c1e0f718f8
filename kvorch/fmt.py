"""Small formatting helpers shared by the views, collect and the report."""

from __future__ import annotations

import re
from typing import Any

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def strip_ansi(text: str) -> str:
    """The text without terminal escape sequences (colours, cursor moves)."""
    return _ANSI.sub("", text)


def human_bytes(n: Any, none: str = "-") -> str:
    """1536 → "1.5 KiB"."""
    if n is None:
        return none
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
