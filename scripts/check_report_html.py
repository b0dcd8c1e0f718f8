#!/usr/bin/env python3
"""Open a run's report.html in headless Chromium and check that it shows its plots.

    python scripts/check_report_html.py [logs/<run-id>/report.html | logs/<run-id>] [--screenshot out.png]

What is checked, in the browser (the page's DOM after load, read with --dump-dom):
  * every <img class="plot"> decoded: naturalWidth/naturalHeight > 0 and it is laid out (visible width);
  * at least --min-plots of them;
  * no image or other resource points outside the file (self-contained: data: URIs only).
The report itself has no script: the check runs on a temporary copy with one script appended.
--screenshot also saves a full-page PNG to look at. Exit 0 when every check passed, 1 otherwise,
2 when Chromium is missing (`apt-get install chromium`).

Chromium flags (no network, no profile left behind): --headless --no-sandbox --disable-gpu
--disable-background-networking --disable-component-update --disable-sync --no-first-run
--user-data-dir=<tmp>.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHECK_SCRIPT = """
<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.querySelectorAll('img.plot'));
  var out = imgs.map(function (im) {
    var r = im.getBoundingClientRect();
    return {alt: im.alt, file: im.getAttribute('data-file'), complete: im.complete,
            w: im.naturalWidth, h: im.naturalHeight, shown_w: Math.round(r.width),
            data_uri: (im.getAttribute('src') || '').indexOf('data:image/png;base64,') === 0};
  });
  var ext = [];
  document.querySelectorAll('[src], link[href]').forEach(function (el) {
    var u = el.getAttribute('src') || el.getAttribute('href') || '';
    if (u && u.indexOf('data:') !== 0) ext.push(u);
  });
  var pre = document.createElement('pre');
  pre.id = 'kvorch-render-check';
  pre.textContent = JSON.stringify({images: out, external: ext, title: document.title,
                                    width: document.documentElement.scrollWidth,
                                    height: document.documentElement.scrollHeight});
  document.body.appendChild(pre);
});
</script>
"""

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
         "--disable-extensions", "--disable-default-apps", "--mute-audio", "--no-default-browser-check"]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        p = shutil.which(name)
        if p:
            return p
    return None


def run_chromium(chromium: str, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="kvorch-chromium-") as profile:
        cmd = [chromium, *FLAGS, f"--user-data-dir={profile}", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def check(report: Path, *, min_plots: int = 1, screenshot: Path | None = None, width: int = 1280,
          timeout: float = 90.0) -> dict:
    chromium = find_chromium()
    if chromium is None:
        return {"ok": False, "error": "chromium not found (apt-get install chromium)", "missing_browser": True}
    html = report.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="kvorch-report-check-") as tmp:
        probe = Path(tmp) / "report.html"
        probe.write_text(html.replace("</body>", CHECK_SCRIPT + "</body>", 1) if "</body>" in html else html + CHECK_SCRIPT,
                         encoding="utf-8")
        res = run_chromium(chromium, ["--virtual-time-budget=5000", "--dump-dom", probe.as_uri()], timeout)
    m = re.search(r'<pre id="kvorch-render-check">(.*?)</pre>', res.stdout, re.S)
    if not m:
        return {"ok": False, "error": "the page did not report (no DOM dump)", "stderr": res.stderr[-2000:],
                "exit_code": res.returncode}
    import html as html_mod

    data = json.loads(html_mod.unescape(m.group(1)))
    problems = []
    imgs = data["images"]
    if len(imgs) < min_plots:
        problems.append(f"{len(imgs)} plots on the page, expected at least {min_plots}")
    for im in imgs:
        if not (im["complete"] and im["w"] > 0 and im["h"] > 0):
            problems.append(f"plot {im['file'] or im['alt']!r} did not decode ({im['w']}x{im['h']})")
        elif im["shown_w"] <= 0:
            problems.append(f"plot {im['file'] or im['alt']!r} is not laid out (width 0)")
        if not im["data_uri"]:
            problems.append(f"plot {im['file'] or im['alt']!r} is not embedded (no data: URI)")
    if data["external"]:
        problems.append(f"resources outside the file: {data['external'][:5]}")
    out = {"ok": not problems, "report": str(report), "plots": len(imgs), "problems": problems,
           "page": {"title": data["title"], "width": data["width"], "height": data["height"]},
           "images": imgs}
    if screenshot is not None:
        height = max(800, min(int(data.get("height") or 2000) + 40, 16000))
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        shot = run_chromium(chromium, [f"--screenshot={screenshot.resolve()}", f"--window-size={width},{height}",
                                       "--virtual-time-budget=5000", report.resolve().as_uri()], timeout)
        out["screenshot"] = str(screenshot) if screenshot.exists() else None
        if not screenshot.exists():
            out["ok"] = False
            problems.append(f"no screenshot written (chromium exit {shot.returncode}): {shot.stderr[-500:]}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("report", nargs="?", default="logs/latest/report.html", help="report.html or its run folder")
    ap.add_argument("--screenshot", type=Path, help="also save a full-page screenshot here")
    ap.add_argument("--min-plots", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    a = ap.parse_args(argv)
    report = Path(a.report)
    if report.is_dir():
        report = report / "report.html"
    if not report.exists():
        print(f"error: no {report}", file=sys.stderr)
        return 2
    res = check(report, min_plots=a.min_plots, screenshot=a.screenshot)
    if a.json:
        print(json.dumps(res, indent=2))
    elif res.get("missing_browser"):
        print(f"error: {res['error']}", file=sys.stderr)
    else:
        for im in res.get("images", []):
            print(f"  {'ok ' if im['w'] > 0 else 'BAD'} {im['file']}: {im['w']}x{im['h']} px, shown {im['shown_w']} px wide")
        for p in res.get("problems", []):
            print(f"  problem: {p}")
        if res.get("error"):
            print(f"  error: {res['error']}")
        if res.get("screenshot"):
            print(f"  screenshot: {res['screenshot']}")
        print(f"{'OK' if res['ok'] else 'FAILED'}: {res.get('plots', 0)} plots rendered in {report}")
    if res.get("missing_browser"):
        return 2
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
