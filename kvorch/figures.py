"""The lines README.md quotes, printed from a run folder (``python -m kvorch.figures RUN_DIR``),
with this machine's CPU model beside them: `scripts/figures.sh` runs the real-engine demo and then
this, so every figure in the README comes from a command anyone can rerun."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any


def cpu_model(cpuinfo: str | None = None) -> str:
    """'AMD EPYC 7B13, 2 cores' from /proc/cpuinfo (platform.processor() elsewhere)."""
    text = cpuinfo
    if text is None:
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            text = ""
    names = [ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.lower().startswith("model name")]
    name = names[0] if names else (platform.processor() or platform.machine() or "unknown CPU")
    cores = len(names) or os.cpu_count() or 0
    return f"{name}, {cores} cores"


def _t(s: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(s) if s else None


def _latest(run: Path, scenario: str) -> dict[str, Any] | None:
    # reuse-N only, not reuse-2node-N (the glob matches both)
    found = sorted((p for p in (run / "scenarios").glob(f"{scenario}-*/result.json")
                    if p.parent.name[len(scenario) + 1:].isdigit()), key=lambda p: int(p.parent.name.rsplit("-", 1)[1]))
    return json.loads(found[-1].read_text()) if found else None


def lines(run: Path, cpu: str | None = None) -> list[str]:
    cpu = cpu or cpu_model()
    out = [f"CPU: {cpu}"]
    state = json.loads((run / "state.json").read_text()) if (run / "state.json").exists() else {}
    engines = [p for p in (state.get("processes") or {}).values() if p.get("healthy_at") and p.get("started_at")]
    if engines:
        secs = max((_t(p["healthy_at"]) - _t(p["started_at"])).total_seconds() for p in engines)  # type: ignore[operator]
        out.append(f"engines healthy in ~{secs:.0f} s")
    for name in ("reuse", "reuse-2node"):
        res = _latest(run, name)
        if res is None:
            continue
        r, h = res.get("results") or {}, res.get("headline") or {}
        t0 = (r.get("trials") or [{}])[0]
        fm = (t0.get("follow_up") or {}).get("metrics") or {}
        timing = [c for c in res.get("checks") or [] if c.get("type") == "timing" and c.get("interval")]
        corr = next((c for c in res.get("checks") or [] if c["name"].startswith("the answer from reused KV")), None)
        hits = fm.get("external_hit_tokens") if name == "reuse-2node" else fm.get("cache_hit_tokens")
        out.append(f"{name}: {res.get('verdict', '?').upper()} over {r.get('n_trials')} trials, prefix "
                   f"{r.get('prefix_tokens')} tokens; hit tokens on the follow-up engine {hits:.0f} "
                   f"(base prompt {h.get('base prompt tokens')} tokens)" if hits is not None else
                   f"{name}: {res.get('verdict', '?').upper()} (no hit counter)")
        out.append(f"  follow-up TTFT {h.get('follow-up TTFT (ms)')} ms vs {h.get('control TTFT (ms)')} ms for a cold "
                   f"control of the same length (medians)")
        for c in timing:
            iv = c["interval"]
            out.append(f"  {c['metric']}: median {iv['estimate']:.2f}× [95 % CI {iv['low']:.2f}, {iv['high']:.2f}] vs "
                       f"threshold {c['threshold']:g} → {c['verdict'].upper()}"
                       + (f" (expected {c['expected']:.2f}×, detectable {c['detectable']:.2f}×)"
                          if c.get("expected") is not None and c.get("detectable") is not None else ""))
        if corr is not None:
            out.append(f"  correctness (reused KV answer = cold answer, token for token): {corr['verdict'].upper()}")
        ws = r.get("wall_s") or {}
        if ws:
            out.append(f"  wall time: calibration {ws.get('calibration')} s, trials {ws.get('trials')} s "
                       f"({ws.get('per_trial')} s each), scenario {res.get('seconds')} s")
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m kvorch.figures RUN_DIR\n")
        return 2
    run = Path(args[0])
    if not (run / "scenarios").is_dir():
        sys.stderr.write(f"{run}: not a run folder (no scenarios/); run `orchestrate demo` or a scenario first\n")
        return 2
    print("\n".join(lines(run)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
