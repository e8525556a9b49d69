"""Retake the README's report screenshots from a report directory (``make demo`` writes
``checkpoints/demo/report``), in headless Chromium (Debian's ``chromium``, or ``$FLATFL_CHROMIUM``)
through playwright, as docs/img/README.md describes them:

    python docs/img/retake.py checkpoints/demo/report [--out docs/img] [--group fedmut] [--phone]

- ``report.png``: the top of the page at 1,366 px (the answer and the verdict table), 1,150 px high;
- ``slices.png``: the 1D-slices figure (element screenshot, 1,366 px);
- ``surface.png``: the contour figure of ``--group``'s surface (default: the first group whose name
  contains "fedmut", else the last), with WebGL disabled (element screenshot, 1,366 px);
- with ``--phone``: ``report_phone.png``, the first screen at 390x844.

Look at each picture before committing it. A figure the report does not hold is named and skipped
(exit code 1).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

NO_WEBGL = ["--disable-webgl", "--disable-3d-apis"]
# the first plotly figure after the section heading that starts with a given text
FIGURE_AFTER = """(start) => {
    const h = [...document.querySelectorAll('h2')].find(h => h.textContent.startsWith(start));
    if (!h) return null;
    for (let e = h.nextElementSibling; e && e.tagName !== 'H2'; e = e.nextElementSibling) {
        const f = e.matches('.js-plotly-plot') ? e : e.querySelector && e.querySelector('.js-plotly-plot');
        if (f) { f.id = f.id || 'retake-target'; return '#' + f.id; }
    }
    return null;
}"""
HEADINGS = "() => [...document.querySelectorAll('h2')].map(h => h.textContent)"


def _open(pw, exe: str, html: Path, width: int, height: int, webgl: bool):
    browser = pw.chromium.launch(executable_path=exe, args=["--no-sandbox", *([] if webgl else NO_WEBGL)])
    page = browser.new_page(viewport={"width": width, "height": height})
    page.set_default_timeout(300_000)
    page.goto(html.resolve().as_uri(), wait_until="load")
    page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length > 0")
    page.wait_for_timeout(1000)
    return browser, page


def _element(page, start: str, path: Path) -> bool:
    sel = page.evaluate(FIGURE_AFTER, start)
    if sel is None:
        print(f"{path.name}: no section starting with {start!r} in this report; skipped", file=sys.stderr)
        return False
    el = page.locator(sel).first
    el.scroll_into_view_if_needed()
    page.wait_for_timeout(300)
    el.screenshot(path=str(path))
    print(f"wrote {path}")
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("report", type=Path, help="a report directory (holding report.html) or report.html itself")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent, help="where to write (default: docs/img)")
    ap.add_argument("--group", default=None, help="the group whose contour is surface.png")
    ap.add_argument("--phone", action="store_true", help="also report_phone.png (390x844)")
    args = ap.parse_args()
    html = args.report / "report.html" if args.report.is_dir() else args.report
    if not html.is_file():
        print(f"report: no report.html at {args.report}", file=sys.stderr)
        return 2
    exe = os.environ.get("FLATFL_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        print("no Chromium here (apt-get install chromium)", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    ok = True
    with sync_playwright() as pw:
        browser, page = _open(pw, exe, html, 1366, 1150, webgl=True)
        page.screenshot(path=str(args.out / "report.png"))
        print(f"wrote {args.out / 'report.png'}")
        ok &= _element(page, "1D slices", args.out / "slices.png")
        browser.close()

        browser, page = _open(pw, exe, html, 1366, 900, webgl=False)
        surfaces = [h for h in page.evaluate(HEADINGS) if h.startswith("Loss surface: ")]
        want = args.group
        if want is None and surfaces:
            want = next((h for h in surfaces if "fedmut" in h.lower()), surfaces[-1]).removeprefix("Loss surface: ")
        start = f"Loss surface: {want}" if want else "Loss surface: "
        ok &= _element(page, start, args.out / "surface.png")
        browser.close()

        if args.phone:
            browser, page = _open(pw, exe, html, 390, 844, webgl=True)
            page.screenshot(path=str(args.out / "report_phone.png"))
            print(f"wrote {args.out / 'report_phone.png'}")
            browser.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
