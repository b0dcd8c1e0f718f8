"""What a scenario kind's ``run`` returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..client import RequestRecord


@dataclass
class Outcome:
    results: dict[str, Any]
    records: list[RequestRecord] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)
    headline: dict[str, Any] = field(default_factory=dict)
