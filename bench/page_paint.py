"""First paint and full load of report pages in headless Chromium, side by side.

    python bench/page_paint.py BEFORE.html AFTER.html [--repeats 5] [--width 1366]

Opens each page ``--repeats`` times, alternating, in Debian's Chromium (``/usr/bin/chromium``, or
``$FLATFL_CHROMIUM``) through playwright, with software rendering (``--disable-gpu``), and prints the
median time to first contentful paint (the browser's ``first-contentful-paint`` entry: the text of
the answer) and to the end of the load event (every figure drawn: plotly.js parsed and run), in
milliseconds, and after/before ratios. A page built by ``flatfl report`` before #29 inlines plotly.js
(4.8 MB) in ``<head>``, so nothing paints until it is parsed; after #29 it sits at the end of the body
and the figures are drawn from there.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
from pathlib import Path

PAINT = """() => {
    const fcp = performance.getEntriesByName('first-contentful-paint')[0];
    const nav = performance.getEntriesByType('navigation')[0];
    return [fcp ? fcp.startTime : null, nav.loadEventEnd];
}"""


def measure(page, path: Path) -> tuple[float, float]:
    page.goto(path.resolve().as_uri(), wait_until="load", timeout=300_000)
    page.wait_for_timeout(200)
    return tuple(page.evaluate(PAINT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("before", type=Path, help="report.html built by the earlier code")
    ap.add_argument("after", type=Path, help="report.html built by this code")
    ap.add_argument("--repeats", type=int, default=5, help="page loads of each, alternating (default 5)")
    ap.add_argument("--width", type=int, default=1366, help="viewport width in px (default 1366)")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    exe = os.environ.get("FLATFL_CHROMIUM") or shutil.which("chromium")
    times: dict[str, list[tuple[float, float]]] = {"before": [], "after": []}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        for _ in range(args.repeats):
            for name in ("before", "after"):
                page = browser.new_page(viewport={"width": args.width, "height": 768})
                times[name].append(measure(page, getattr(args, name)))
                page.close()
        browser.close()
    med = {k: (statistics.median(t[0] for t in v), statistics.median(t[1] for t in v)) for k, v in times.items()}
    print(f"{'page':8} {'first paint ms':>15} {'full load ms':>13}   ({args.repeats} loads each, median)")
    for k in ("before", "after"):
        print(f"{k:8} {med[k][0]:15.0f} {med[k][1]:13.0f}")
    print(f"{'after/before':8} {med['after'][0] / med['before'][0]:11.2f}x {med['after'][1] / med['before'][1]:12.2f}x")


if __name__ == "__main__":
    main()
