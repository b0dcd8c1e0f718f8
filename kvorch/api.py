"""``kvorch.Cluster``: the whole tool from Python (a notebook, a sweep script).

    from kvorch import Cluster

    with Cluster("inventories/local.yaml") as c:      # downs on exit unless keep=True
        c.up()
        r = c.run("reuse-2node", prefix_tokens=1024)
        print(r.verdict, r.data["headline"])
        c.collect()

Every method returns a typed result (``.ok``, ``.to_json()`` = the command's ``--json``) or raises
an error that carries its data (:class:`~kvorch.errors.StartFailed` with process, host, reason,
log tail and what was rolled back; :class:`~kvorch.errors.PreflightFailed` with every check; …).
Nothing is printed: pass ``events=`` (a :class:`~kvorch.events.Events`) to watch progress.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .events import Events
from .results import CollectResult, DownResult, LogsResult, PreflightResult, Result, ScenarioResult, StatusResult, UpResult
from .session import Session

if TYPE_CHECKING:
    from .inventory import Inventory
    from .plan import Plan


class Cluster:
    def __init__(self, inventory: str | os.PathLike[str] | Inventory, *, ssh_config: str | None = None,
                 state_dir: str | os.PathLike[str] | None = None, logs_dir: str | os.PathLike[str] | None = None,
                 events: Events | None = None, keep: bool = False):
        """``inventory``: a path or a loaded :class:`~kvorch.inventory.Inventory`. ``state_dir`` /
        ``logs_dir``: where run state and run folders go (default ``.orchestrate`` and ``logs``, or
        ORCHESTRATE_STATE / ORCHESTRATE_LOGS). ``keep``: leave it up when the ``with`` block ends."""
        if state_dir is not None:
            os.environ["ORCHESTRATE_STATE"] = str(state_dir)
        if logs_dir is not None:
            os.environ["ORCHESTRATE_LOGS"] = str(logs_dir)
        self.session = Session.of(inventory, ssh_config=ssh_config, events=events)
        self.keep = keep
        self._plan: Plan | None = None

    # ---- what it is
    @property
    def inventory(self) -> Inventory:
        return self.session.inventory()

    @property
    def plan(self) -> Plan:
        if self._plan is None:
            self._plan = self.session.plan()
        return self._plan

    @property
    def name(self) -> str:
        return self.plan.cluster

    # ---- lifecycle
    def preflight(self) -> PreflightResult:
        from .preflight import preflight

        return preflight(self.session, self.plan)

    def up(self, *, timeout: float = 600.0, preflight: bool = True) -> UpResult:
        from .cluster import up

        return up(self.session, self.plan, timeout=timeout, preflight=preflight)

    def status(self) -> StatusResult:
        from .cluster import status

        return status(self.session, self.plan)

    def logs(self, name: str | None = None, *, lines: int = 20) -> LogsResult:
        from .cluster import logs

        return logs(self.session, self.plan, name=name, lines=lines)

    def follow(self, name: str | None = None, *, lines: int = 20) -> Iterator[tuple[str, str, str]]:
        from .cluster import follow

        return follow(self.session, self.plan, name=name, lines=lines)

    def restart(self, *names: str, timeout: float = 600.0, grace: float = 10.0) -> Result:
        from .restart import restart

        return Result(restart(self.session, self.plan, list(names), timeout=timeout, grace=grace))

    def run(self, scenario: str, **overrides: Any) -> ScenarioResult:
        """Run a scenario (a name from ``scenarios/`` or a path) with parameter overrides, e.g.
        ``run("reuse", prefix_tokens=2048)``. ``ok`` when its verdict is pass."""
        from .scenarios.runner import load_scenario, run_scenario

        spec, params = load_scenario(scenario, [f"{k}={json.dumps(v)}" for k, v in overrides.items()])
        data = run_scenario(self.session, spec, params)
        return ScenarioResult(data, ok=data["verdict"] == "pass")

    def collect(self, *, run_id: str | None = None, report: bool = True) -> CollectResult:
        from .collect import CollectOptions, collect

        data = collect(self.session, self.plan, run_id=run_id, options=CollectOptions.from_env(report=report))
        return CollectResult(data, ok=bool(data["complete"]))

    def down(self, *, collect: bool = True, grace: float = 10.0) -> DownResult:
        from .cluster import down

        return down(self.session, self.plan, collect=collect, grace=grace)

    # ---- context manager
    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self.keep:
            self.down()

    def __repr__(self) -> str:
        return f"Cluster({self.session.inventory_path!r})"
