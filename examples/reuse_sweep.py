"""Up → reuse → a small sweep over two prefix lengths → collect → down, from Python.

    python examples/reuse_sweep.py                       # the local simulated cluster
    python examples/reuse_sweep.py inventories/local-cpu.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path

from kvorch import Cluster, Events

ROOT = Path(__file__).resolve().parents[1]


class Say(Events):
    def healthy(self, process: str, seconds: float) -> None:
        print(f"  {process} healthy after {seconds:.2f} s")

    def scenario_finished(self, name: str, verdict: str, seconds: float) -> None:
        print(f"  {name}: {verdict} in {seconds:.1f} s")


def main(inventory: str) -> int:
    with Cluster(inventory, events=Say()) as c:
        c.up()
        base = c.run("reuse")
        rows = []
        for prefix in (512, 1024):
            r = c.run("reuse-2node", prefix_tokens=prefix, wait_s=0.2)
            rows.append((prefix, r.verdict, r.data["headline"]))
        col = c.collect()
    print(f"reuse: {base.verdict}")
    for prefix, verdict, headline in rows:
        shown = {k: v for k, v in headline.items() if v is not None}
        print(f"reuse-2node prefix_tokens={prefix}: {verdict} {shown}")
    print(f"run folder: {col.run_dir}")
    return 0 if base.ok and all(v == "pass" for _, v, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "inventories" / "local.yaml")))
