"""What every library call needs: the inventory (a path or a loaded model), the SSH config, and
where events go. The command line's context builds on it; library users get one from
:class:`kvorch.Cluster`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .events import Events

if TYPE_CHECKING:
    from .inventory import Inventory
    from .plan import Plan


@dataclass
class Session:
    inventory_path: str
    ssh_config: str | None = None
    events: Events = field(default_factory=Events)
    _inventory: Any = field(default=None, repr=False)

    @classmethod
    def of(cls, inventory: "str | os.PathLike[str] | Inventory", *, ssh_config: str | None = None,
           events: Events | None = None) -> "Session":
        from .inventory import Inventory

        if isinstance(inventory, Inventory):
            return cls("<inventory>", ssh_config, events or Events(), inventory)
        return cls(str(inventory), ssh_config, events or Events())

    def inventory(self) -> "Inventory":
        if self._inventory is None:
            from .inventory import load_inventory

            self._inventory = load_inventory(self.inventory_path)
        return self._inventory

    def plan(self) -> "Plan":
        from .plan import build_plan

        return build_plan(self.inventory())
