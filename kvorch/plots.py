"""The report's plots: matplotlib (Agg backend, no display), one PNG per question.

Each function takes plain rows (dicts/lists already read from the run folder), writes one PNG and
returns its path, or returns None when there is nothing to plot. No function reads files itself.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

_PLT: Any = None


def _pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend, imported on first use (importing it takes ~1 s)."""
    global _PLT
    if _PLT is None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        plt.rcParams.update(RC)
        _PLT = plt
    return _PLT


#: colour per temperature of a request
TEMPERATURE_COLOURS = {"cold": "#4c78a8", "warm": "#f58518", "warm-up": "#bab0ac"}
PERCENTILE_COLOURS = {"p50": "#4c78a8", "p90": "#f58518", "p99": "#e45756"}
PALETTE = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#ff9da6", "#9d755d", "#eeca3b"]
DPI = 110

RC = {"figure.dpi": DPI, "figure.constrained_layout.use": True, "axes.spines.top": False,
      "axes.spines.right": False, "axes.titlesize": 11, "axes.labelsize": 9, "xtick.labelsize": 8,
      "ytick.labelsize": 8, "legend.fontsize": 8, "font.family": "DejaVu Sans"}


def temperature(phase: str | None) -> str:
    """cold (base, control…), warm (follow-up: the prefix should be cached) or warm-up."""
    p = (phase or "").lower().replace("-", "_")
    if p in ("warmup", "warm_up"):
        return "warm-up"
    if p.startswith("follow") or p == "warm" or p.startswith("warm_") or p.endswith("_warm"):
        return "warm"
    return "cold"


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", pil_kwargs={"compress_level": 3})
    _pyplot().close(fig)
    return path


def _bar_labels(ax: Any, bars: Any, fmt: str = "{:.0f}") -> None:
    for b in bars:
        h = b.get_height()
        if h is None or (isinstance(h, float) and math.isnan(h)):
            continue
        ax.annotate(fmt.format(h), (b.get_x() + b.get_width() / 2, h), ha="center", va="bottom", fontsize=7,
                    xytext=(0, 2), textcoords="offset points")


def ttft_per_request(rows: Sequence[Mapping[str, Any]], title: str, path: Path) -> Path | None:
    """Bars: TTFT (ms) of each request in send order, coloured cold / warm / warm-up.

    rows: ``{"label", "phase", "ttft_ms"}``."""
    plt = _pyplot()
    rows = [r for r in rows if r.get("ttft_ms") is not None]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(max(4.5, 1.1 * len(rows) + 2), 3.4))
    temps = [temperature(r.get("phase")) for r in rows]
    bars = ax.bar(range(len(rows)), [r["ttft_ms"] for r in rows],
                  color=[TEMPERATURE_COLOURS[t] for t in temps], edgecolor="#333333", linewidth=0.4)
    _bar_labels(ax, bars, "{:.1f}")
    ax.set_xticks(range(len(rows)), [r["label"] for r in rows])
    ax.set_ylabel("time to first token (ms)")
    ax.set_title(title)
    seen = []
    for t in ("cold", "warm", "warm-up"):
        if t in temps:
            seen.append(plt.Rectangle((0, 0), 1, 1, color=TEMPERATURE_COLOURS[t], label=t))
    ax.legend(handles=seen, loc="upper left", frameon=False, bbox_to_anchor=(1.0, 1.0))
    ax.margins(y=0.18)
    return _save(fig, path)


def hits_per_request(rows: Sequence[Mapping[str, Any]], title: str, path: Path) -> Path | None:
    """Per request: LMCache hit tokens (coloured by the host that served it) in front of the
    prompt tokens (outline). rows: ``{"label", "host", "hit_tokens", "prompt_tokens"}``."""
    plt = _pyplot()
    if not rows:
        return None
    hosts = list(dict.fromkeys(str(r.get("host") or "?") for r in rows))
    colour = {h: PALETTE[i % len(PALETTE)] for i, h in enumerate(hosts)}
    fig, ax = plt.subplots(figsize=(max(4.5, 1.1 * len(rows) + 2), 3.4))
    xs = range(len(rows))
    ax.bar(xs, [r.get("prompt_tokens") or 0 for r in rows], color="none", edgecolor="#888888", linewidth=0.8,
           linestyle="--", label="prompt tokens")
    hit_vals = [r.get("hit_tokens") for r in rows]
    bars = ax.bar(xs, [v or 0 for v in hit_vals], width=0.55, color=[colour[str(r.get("host") or "?")] for r in rows],
                  edgecolor="#333333", linewidth=0.4)
    for b, v in zip(bars, hit_vals):
        ax.annotate("n/a" if v is None else f"{v:.0f}", (b.get_x() + b.get_width() / 2, b.get_height()),
                    ha="center", va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(list(xs), [r["label"] for r in rows])
    ax.set_ylabel("tokens")
    ax.set_title(title)
    handles = [plt.Rectangle((0, 0), 1, 1, facecolor="none", edgecolor="#888888", linestyle="--", label="prompt tokens")]
    handles += [plt.Rectangle((0, 0), 1, 1, color=colour[h], label=f"hit tokens on {h}") for h in hosts]
    ax.legend(handles=handles, loc="upper left", frameon=False, bbox_to_anchor=(1.0, 1.0))
    ax.margins(y=0.15)
    return _save(fig, path)


def interval_rates(points: list[tuple[float, float | None, float | None]]) -> tuple[list[float], list[float]]:
    """(t, hits, queries) cumulative counters → (t, hit rate in % of the tokens queried since the
    previous point), only where tokens were queried (a counter reset starts over)."""
    ts, rs = [], []
    prev = None
    for t, h, q in points:
        if h is None or q is None:
            continue
        if prev is not None:
            dh, dq = h - prev[0], q - prev[1]
            if dq > 0 and dh >= 0:
                ts.append(t)
                rs.append(100.0 * dh / dq)
        prev = (h, q)
    return ts, rs


def timeline(samples: Sequence[Mapping[str, Any]], events: Sequence[Mapping[str, Any]], title: str,
             path: Path) -> Path | None:
    """KV cache usage, LMCache local cache usage and hit rates over time, per engine, from the
    sampler's series; requests marked as vertical lines.

    samples: Sampler rows (``t``, ``target``, ``ok``, gauges, cumulative counters);
    events: ``{"t", "label"}`` (wall clock)."""
    plt = _pyplot()
    rows = [s for s in samples if s.get("ok")]
    if not rows:
        return None
    t0 = min(float(s["t"]) for s in rows)
    targets = list(dict.fromkeys(s["target"] for s in rows))
    by: dict[str, list[Mapping[str, Any]]] = {t: [s for s in rows if s["target"] == t] for t in targets}

    def has(field: str) -> list[str]:
        return [t for t in targets if any(s.get(field) is not None for s in by[t])]

    kv_targets = has("kv_cache_usage")
    lmc_targets = has("lmcache_local_cache_usage")
    rate_targets = [t for t in targets if any(s.get("external_prefix_cache_queries") is not None
                                              or s.get("prefix_cache_queries") is not None for s in by[t])]
    panels = [p for p, ok in (("kv", kv_targets), ("lmc", lmc_targets), ("rate", rate_targets)) if ok]
    if not panels:
        return None
    colour = {t: PALETTE[i % len(PALETTE)] for i, t in enumerate(targets)}
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.3 * len(panels) + 0.6), sharex=True, squeeze=False)
    axes = [a[0] for a in axes]
    for ax, panel in zip(axes, panels):
        if panel == "kv":
            for t in kv_targets:
                pts = [(float(s["t"]) - t0, 100.0 * s["kv_cache_usage"]) for s in by[t] if s.get("kv_cache_usage") is not None]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colour[t], label=t, lw=1.3)
            ax.set_ylabel("vLLM KV cache\nusage (%)")
            ax.set_ylim(bottom=0, top=max(1.0, ax.get_ylim()[1]))
        elif panel == "lmc":
            for t in lmc_targets:
                pts = [(float(s["t"]) - t0, s["lmcache_local_cache_usage"] / (1 << 20)) for s in by[t]
                       if s.get("lmcache_local_cache_usage") is not None]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colour[t], label=t, lw=1.3)
            ax.set_ylabel("LMCache local\ncache (MiB)")
            ax.set_ylim(bottom=0, top=max(1.0, ax.get_ylim()[1]))
        else:
            for t in rate_targets:
                for field, qfield, marker, what in (
                        ("external_prefix_cache_hits", "external_prefix_cache_queries", "o", "LMCache (external)"),
                        ("prefix_cache_hits", "prefix_cache_queries", "x", "vLLM prefix cache")):
                    ts, rs = interval_rates([(float(s["t"]) - t0, s.get(field), s.get(qfield)) for s in by[t]])
                    if ts:
                        ax.vlines(ts, 0, rs, color=colour[t], lw=0.8, alpha=0.6)
                        ax.plot(ts, rs, marker, color=colour[t], ms=5, ls="none", label=f"{t}: {what}")
            ax.set_ylabel("hit rate of the\ntokens queried (%)")
            ax.set_ylim(-3, 103)
        ax.legend(loc="upper left", frameon=False, bbox_to_anchor=(1.0, 1.0))
        ax.grid(axis="y", alpha=0.3)
    for e in events:
        if e.get("t") is None:
            continue
        x = float(e["t"]) - t0
        for ax in axes:
            ax.axvline(x, color=TEMPERATURE_COLOURS[temperature(e.get("phase"))], lw=0.8, ls=":")
        axes[0].annotate(e.get("label", ""), (x, 1.0), xycoords=("data", "axes fraction"), rotation=90, fontsize=6,
                         va="top", ha="right", color="#555555")
    axes[-1].set_xlabel("seconds since the sampler started")
    axes[0].set_title(title)
    return _save(fig, path)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolation percentile (q in 0..100) of a sample; None when empty."""
    xs = sorted(v for v in values if v is not None and not math.isnan(v))
    if not xs:
        return None
    if len(xs) == 1:
        return xs[0]
    k = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def latency_percentiles(stats: Mapping[str, Mapping[str, Mapping[str, float | None]]], title: str,
                        path: Path) -> Path | None:
    """stats: metric label → group (engine) → {p50, p90, p99} in ms. One panel per metric,
    grouped bars per engine."""
    plt = _pyplot()
    metrics = [m for m, groups in stats.items() if any(v is not None for g in groups.values() for v in g.values())]
    if not metrics:
        return None
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.3 * len(metrics) + 0.8, 3.3), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        groups = list(stats[m])
        width = 0.8 / 3
        for i, p in enumerate(("p50", "p90", "p99")):
            vals = [stats[m][g].get(p) for g in groups]
            bars = ax.bar([j + (i - 1) * width for j in range(len(groups))], [v or 0 for v in vals], width,
                          color=PERCENTILE_COLOURS[p], label=p)
            _bar_labels(ax, bars, "{:.1f}")
        ax.set_xticks(range(len(groups)), groups)
        ax.set_title(m)
        ax.set_ylabel("ms")
        ax.margins(y=0.18)
    axes[0][-1].legend(loc="upper left", frameon=False, bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def compare_headline(rows: Sequence[tuple[str, float | None, float | None]], labels: tuple[str, str], title: str,
                     path: Path, intervals: Sequence[tuple[tuple[float, float] | None, tuple[float, float] | None]] | None = None
                     ) -> Path | None:
    """Small multiples: one panel per headline number, run A and run B side by side; where the runs
    kept per-trial values, each bar carries its 95 % interval as an error bar (``intervals``: per
    row, (A's (low, high) or None, B's))."""
    ivs = list(intervals) if intervals is not None else [(None, None)] * len(rows)
    keep = [i for i, r in enumerate(rows) if r[1] is not None or r[2] is not None]
    ivs = [ivs[i] for i in keep]
    plt = _pyplot()
    rows = [r for r in rows if r[1] is not None or r[2] is not None]
    if not rows:
        return None
    cols = min(4, len(rows))
    nrows = math.ceil(len(rows) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(2.9 * cols, 2.5 * nrows + 0.5), squeeze=False)
    for ax in axes.flat[len(rows):]:
        ax.axis("off")
    for ax, (key, a, b), (ia, ib) in zip(axes.flat, rows, ivs):
        bars = ax.bar([0, 1], [a or 0, b or 0], color=[PALETTE[0], PALETTE[1]], width=0.6)
        for x, v, iv in ((0, a, ia), (1, b, ib)):
            if v is not None and iv is not None:
                ax.errorbar(x, v, yerr=[[max(0.0, v - iv[0])], [max(0.0, iv[1] - v)]], fmt="none", ecolor="#333333",
                            capsize=5, linewidth=1)
        for bar, v in zip(bars, (a, b)):
            ax.annotate("n/a" if v is None else f"{v:.4g}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")
        ax.set_xticks([0, 1], ["A", "B"])
        ax.set_title(key, fontsize=8, wrap=True)
        ax.margins(y=0.2)
        top = max(abs(a or 0), abs(b or 0))
        if top == 0:
            ax.set_ylim(0, 1)
    fig.suptitle(f"{title}\nA = {labels[0]}   B = {labels[1]}", fontsize=10)
    return _save(fig, path)


def series(spec: Mapping[str, Any], path: Path) -> Path | None:
    """A figure a scenario kind described in its results (``{"title", "x_label", "y_label", "kind":
    line | scatter | bar, "series": {label: [[x, y], …]}}``)."""
    data = {k: [(x, y) for x, y in pts if y is not None] for k, pts in (spec.get("series") or {}).items()}
    data = {k: v for k, v in data.items() if v}
    if not data:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 3.4))
    kind = spec.get("kind", "line")
    cats = [x for pts in data.values() for x, _ in pts if isinstance(x, str)]
    order = list(dict.fromkeys(cats))
    width = 0.8 / max(1, len(data))
    for i, (label, pts) in enumerate(data.items()):
        colour = PALETTE[i % len(PALETTE)]
        xs = [order.index(x) if isinstance(x, str) else x for x, _ in pts]
        ys = [float(y) for _, y in pts]
        if kind == "bar":
            off = (i - (len(data) - 1) / 2) * width if (order or len(data) > 1) else 0.0
            ax.bar([x + off for x in xs], ys, width=width if (order or len(data) > 1) else 0.8, color=colour, label=label)
        elif kind == "scatter":
            ax.scatter(xs, ys, s=14, color=colour, label=label)
        else:
            ax.plot(xs, ys, marker="o", ms=3, color=colour, label=label)
    if order:
        ax.set_xticks(range(len(order)), order, rotation=20, ha="right")
    ax.set_title(spec.get("title", ""))
    ax.set_xlabel(spec.get("x_label", ""))
    ax.set_ylabel(spec.get("y_label", ""))
    if len(data) > 1:
        ax.legend(frameon=False)
    return _save(fig, path)


def sweep_metric(groups: Mapping[str, Sequence[tuple[Any, float | None, float | None, float | None]]], title: str,
                 x_label: str, y_label: str, path: Path) -> Path | None:
    """One sweep metric against one factor: a line per combination of the other factors, the mean
    with its interval (lo, hi) as error bars when there is one."""
    plt = _pyplot()
    if not any(m is not None for pts in groups.values() for _, m, _, _ in pts):
        return None
    fig, ax = plt.subplots(figsize=(6.0, 3.4))
    levels = list(dict.fromkeys(x for pts in groups.values() for x, *_ in pts))
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in levels)
    for i, (label, pts) in enumerate(groups.items()):
        pts = [p for p in pts if p[1] is not None]
        xs = [x if numeric else levels.index(x) for x, *_ in pts]
        ys = [m for _, m, _, _ in pts]
        err = [[m - lo if lo is not None else 0 for _, m, lo, _ in pts], [hi - m if hi is not None else 0 for _, m, _, hi in pts]]
        ax.errorbar(xs, ys, yerr=err, marker="o", ms=4, capsize=3, color=PALETTE[i % len(PALETTE)], label=label)
    if numeric:
        ax.set_xticks(levels)
    else:
        ax.set_xticks(range(len(levels)), [str(x) for x in levels])
    ax.set_title(title)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    if len(groups) > 1:
        ax.legend(frameon=False)
    return _save(fig, path)


def speedup_intervals(rows: Sequence[Mapping[str, Any]], title: str, path: Path) -> Path | None:
    """One bar per timing check: the median speedup with its 95 % interval as an error bar, the
    per-trial values as dots and the threshold as a dashed line.

    rows: ``{"label", "estimate", "low", "high", "threshold", "values", "verdict"}``."""
    plt = _pyplot()
    rows = [r for r in rows if r.get("estimate") is not None]
    if not rows:
        return None
    colours = {"pass": "#54a24b", "fail": "#e45756", "inconclusive": "#b279a2"}
    fig, ax = plt.subplots(figsize=(max(4.0, 2.2 * len(rows) + 1.5), 3.4))
    for i, r in enumerate(rows):
        est = r["estimate"]
        err = [[max(0.0, est - r["low"])], [max(0.0, r["high"] - est)]]
        ax.bar(i, est, color=colours.get(r.get("verdict"), PALETTE[0]), width=0.55, alpha=0.8,
               yerr=err, capsize=6, ecolor="#333333")
        vals = r.get("values") or []
        ax.scatter([i + 0.18] * len(vals), vals, s=10, color="#333333", zorder=3)
        if r.get("threshold") is not None:
            ax.hlines(r["threshold"], i - 0.35, i + 0.35, colors="#333333", linestyles="dashed", linewidth=1)
        ax.annotate(f"{est:.2f}× [{r['low']:.2f}, {r['high']:.2f}]\n{r.get('verdict', '')}", (i, r["high"]),
                    ha="center", va="bottom", fontsize=7, xytext=(0, 3), textcoords="offset points")
    ax.set_xticks(range(len(rows)), [r["label"] for r in rows], fontsize=7, wrap=True)
    ax.set_ylabel("speedup (×), median and 95 % interval")
    ax.margins(y=0.25)
    ax.set_title(title)
    return _save(fig, path)
