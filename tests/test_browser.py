"""The report and a surface page in a real browser: headless Chromium (Debian's ``chromium``) driven by
playwright, WebGL on and off. ``.ci/run`` installs Chromium when it is missing; without any browser the
tests skip with one line saying so."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[test])")

CHROMIUM = os.environ.get("FLATFL_CHROMIUM") or next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (apt-get install chromium; .ci/run does)")
NO_WEBGL = ["--disable-webgl", "--disable-3d-apis"]
CONTOUR_WITH_SLIDER = (
    "[...document.querySelectorAll('.js-plotly-plot')]"
    ".find(f => f.layout.sliders && f.data.some(t => t.type === 'contour'))"
)


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    """A report of FedAvg vs FedMut (two measured rounds: a slider; matched at equal train loss; per-layer curvature
    and mode connectivity with client paths) and a standalone surface page."""
    from flatfl.cli import main
    from tests.conftest import TINY

    root = tmp_path_factory.mktemp("browser")
    for algo in ("fedavg", "fedmut"):
        assert main(["train", *TINY, "--rounds", "4", "--algo", algo, "--save-clients", "--out", str(root / algo)]) == 0
    assert main(["report", str(root / "fedavg"), str(root / "fedmut"), "--out", str(root / "rep"), "--at-rounds", "2,4",
                 "--samples", "100", "--grid", "5", "--trace-matvecs", "0", "--sharpness", "none", "--slices", "2",
                 "--spread-samples", "50", "--no-progress", "--per-layer", "module",
                 "--connect", "--connect-steps", "5", "--connect-clients", "2"]) == 0  # fmt: skip
    assert main(["landscape", "--ckpt", str(root / "fedmut" / "round_0004.safetensors"), "--surface", "2d",
                 "--grid", "5", "--samples", "100", "--levels", "8", "--zrange=0,0.5",
                 "--out", str(root / "land")]) == 0  # fmt: skip
    # a model flatfl did not train (--model MODULE:FACTORY on digits), as a user analyses their own
    net = "nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10))"
    (root / "user_net_browser.py").write_text(f"from torch import nn\n\ndef make_net():\n    return {net}\n")
    cwd = Path.cwd()
    os.chdir(root)
    try:
        assert main(["landscape", "--model", "user_net_browser:make_net", "--data", "digits:test", "--surface", "2d",
                     "--grid", "5", "--samples", "100", "--out", str(root / "foreign")]) == 0  # fmt: skip
    finally:
        os.chdir(cwd)
    return root / "rep" / "report.html", root / "land" / "surface.html", root / "foreign" / "surface.html"


def _open(path: Path, args: list[str], width: int = 1366):
    """(page, console errors, outside requests, close) for a file in headless Chromium."""
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", *args])
    page = browser.new_page(viewport={"width": width, "height": 900})
    page.set_default_timeout(120_000)  # a busy 2-core machine parses 4.8 MB of plotly.js slowly
    errors: list[str] = []
    requests: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: None if r.url.startswith(("file:", "data:", "blob:")) else requests.append(r.url))
    page.goto(path.as_uri())
    page.wait_for_function("() => window.Plotly !== undefined && document.querySelectorAll('.js-plotly-plot').length")
    page.wait_for_timeout(500)

    def close() -> None:
        browser.close()
        pw.stop()

    return page, errors, requests, close


def _contour_paths(page, index: int) -> int:
    """How many drawn contour paths the index-th contour figure holds (SVG, no WebGL needed)."""
    return page.evaluate(
        """(i) => {
            const figs = [...document.querySelectorAll('.js-plotly-plot')]
                .filter(f => f.data && f.data.some(t => t.type === 'contour'));
            return figs[i].querySelectorAll('g.contourlayer path').length;
        }""",
        index,
    )


@pytest.mark.parametrize("webgl", [True, False], ids=["webgl", "no-webgl"])
def test_report_in_chromium(pages, webgl):
    report = pages[0]
    page, errors, requests, close = _open(report, [] if webgl else NO_WEBGL)
    try:
        assert requests == []  # everything inlined: opens offline
        if webgl:
            assert errors == []
        table = page.locator("table.verdict")
        assert table.count() == 1 and "λmax" in table.inner_text() and "verdict" in table.inner_text()
        assert page.locator("p.answer").count() >= 1
        # the verdict is on the first screen
        assert table.bounding_box()["y"] < 900
        assert _contour_paths(page, 0) > 5  # the contour renders without WebGL
        # the round slider opens at the last round
        assert page.evaluate(f"() => {CONTOUR_WITH_SLIDER}.layout.sliders[0].active") == 1
        # no table wider than a 1,366-px screen: the verdict table fits
        assert page.evaluate("() => document.querySelector('table.verdict').scrollWidth") <= 1366
    finally:
        close()


def test_slider_click_moves_the_round(pages):
    report = pages[0]
    page, errors, _, close = _open(report, NO_WEBGL)
    try:
        fig = page.evaluate_handle(f"() => {CONTOUR_WITH_SLIDER}").as_element()
        fig.scroll_into_view_if_needed()
        before = page.evaluate(f"() => {CONTOUR_WITH_SLIDER}.data.map(t => t.visible)")
        box = fig.query_selector(".slider-rail-touch-rect").bounding_box()
        page.mouse.click(box["x"] + 2, box["y"] + box["height"] / 2)  # the rail's left end: the first round
        page.wait_for_timeout(300)
        assert page.evaluate(f"() => {CONTOUR_WITH_SLIDER}.layout.sliders[0].active") == 0
        after = page.evaluate(f"() => {CONTOUR_WITH_SLIDER}.data.map(t => t.visible)")
        want = page.evaluate(f"() => {CONTOUR_WITH_SLIDER}.layout.sliders[0].steps[0].args[0].visible")
        assert after == want and after != before  # round 2's traces shown, round 4's hidden
        assert _contour_paths(page, 0) > 5
    finally:
        close()


def test_surface_page_of_a_user_model(pages):
    """``flatfl landscape --model MODULE:FACTORY``'s page: offline, no errors with WebGL, the surface drawn
    in 3D and as contours, and the page names the model it shows."""
    page, errors, requests, close = _open(pages[2], [])
    try:
        assert requests == [] and errors == []
        assert _contour_paths(page, 0) > 3
        kinds = page.evaluate(
            "() => [...document.querySelectorAll('.js-plotly-plot')].flatMap(f => f.data.map(t => t.type))"
        )
        assert "surface" in kinds and "contour" in kinds
        assert "user_net_browser:make_net" in page.inner_text("body")
    finally:
        close()


def test_standalone_surface_page(pages):
    surface = pages[1]
    page, errors, requests, close = _open(surface, NO_WEBGL)
    try:
        assert requests == []
        assert _contour_paths(page, 0) > 3
        bar = page.evaluate(
            "() => [...document.querySelectorAll('.js-plotly-plot')][0].data.find(t => t.type === 'contour').colorbar"
        )
        # --levels 8 --zrange=0,0.5: 8 linear levels, and the colour bar's ticks are the levels themselves
        assert bar["ticktext"] == [f"{0.5 * k / 8:.3g}" for k in range(9)]
    finally:
        close()


def test_report_at_phone_width(pages):
    """At 390 px: a device-width viewport and a language, no sideways scroll of the page, and the verdict
    of the first measure on screen (the table turns into one card per measure)."""
    page, errors, _, close = _open(pages[0], NO_WEBGL, width=390)
    try:
        assert page.evaluate("() => document.documentElement.lang") == "en"
        assert "width=device-width" in page.evaluate("() => document.querySelector('meta[name=viewport]').content")
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
        box = page.locator("table.verdict td.v").first.bounding_box()
        assert box["width"] > 0 and box["x"] >= 0 and box["x"] + box["width"] <= 390
        assert page.locator("table.verdict td.v").first.inner_text().startswith(("flatter", "no clear", "one seed"))
    finally:
        close()


def test_report_headings_are_unique_and_figures_have_captions(pages):
    page, _, _, close = _open(pages[0], NO_WEBGL)
    try:
        heads = page.evaluate("() => [...document.querySelectorAll('h2')].map(h => h.textContent)")
        assert len(heads) == len(set(heads)), heads
        # every section holding a figure says what it shows before it (a <p> right after the heading)
        bare = page.evaluate(
            """() => [...document.querySelectorAll('h2')].filter(h => {
                const next = h.nextElementSibling;
                return next && next.querySelector && next.querySelector('.js-plotly-plot')
                    && !h.textContent.includes('3D');
            }).map(h => h.textContent)"""
        )
        assert bare == []
        body = page.inner_text("body")
        assert "Barrier" in body and "Frankle et al. 2020" in body and "(hover:" not in body
    finally:
        close()


TITLE_BOXES = """() => [...document.querySelectorAll('.js-plotly-plot')].flatMap(f => {
    const els = [...f.querySelectorAll('.gtitle, .g-xtitle text, .g-ytitle text, .annotation-text, g.legend')];
    const boxes = els.map(e => e.getBoundingClientRect()).filter(r => r.width > 0 && r.height > 0);
    const hits = [];
    for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
        const a = boxes[i], b = boxes[j];
        if (a.left < b.right - 1 && b.left < a.right - 1 && a.top < b.bottom - 1 && b.top < a.bottom - 1)
            hits.push([els[i].textContent.slice(0, 40), els[j].textContent.slice(0, 40)]);
    }
    return hits;
})"""
# elements wider than the screen that are not inside a box that scrolls sideways (within the screen)
TOO_WIDE = """(w) => [...document.querySelectorAll('body *')].filter(e => {
    const r = e.getBoundingClientRect();
    if (r.right <= w + 1 || r.width === 0) return false;
    for (let a = e.parentElement; a; a = a.parentElement) {
        const s = getComputedStyle(a);
        if ((s.overflowX === 'auto' || s.overflowX === 'scroll') && a.getBoundingClientRect().right <= w + 1)
            return false;
    }
    return true;
}).map(e => e.tagName + ' ' + (e.textContent || '').slice(0, 50))"""
OUTSIDE_URLS = """() => [...document.querySelectorAll('[href], [src], [action]')]
    .map(e => e.getAttribute('href') || e.getAttribute('src') || e.getAttribute('action'))
    .filter(u => /^(https?:)?\\/\\//i.test(u))"""
BROKEN_ANCHORS = """() => [...document.querySelectorAll('a[href^="#"]')]
    .map(a => a.getAttribute('href').slice(1)).filter(id => !document.getElementById(id))"""


@pytest.mark.parametrize("width", [1366, 390], ids=["desktop", "phone"])
@pytest.mark.parametrize("webgl", [True, False], ids=["webgl", "no-webgl"])
def test_report_layout_on_any_screen(pages, width, webgl):
    """#29: at 1366x768 and 390x844, WebGL on and off: no two titles of a figure overlap, nothing but a
    scroll box is wider than the screen, no outside URL, every in-page link resolves, the answer is on the
    first desktop screen, and without WebGL the 3D views say so in one line instead of plotly's link."""
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", *([] if webgl else NO_WEBGL)])
    try:
        page = browser.new_page(viewport={"width": width, "height": 768 if width > 700 else 844})
        page.set_default_timeout(120_000)
        page.goto(pages[0].as_uri())
        page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length > 3")
        for box in page.locator("details").all():  # open every box: the 3D views are drawn on opening
            box.evaluate("d => { d.open = true; }")
        page.wait_for_timeout(800)
        assert page.evaluate(TITLE_BOXES) == []
        assert page.evaluate(TOO_WIDE, width) == []
        assert page.evaluate(OUTSIDE_URLS) == []
        assert page.evaluate(BROKEN_ANCHORS) == []
        assert page.locator("nav.toc a").count() >= 5
        if width > 700:
            assert page.locator("p.answer").first.bounding_box()["y"] < 768
        if not webgl:
            assert "get.webgl.org" not in page.inner_text("body")
            assert page.locator("p.nogl").count() >= 1
    finally:
        browser.close()
        pw.stop()


# text nodes of the page's prose (not headings, the contents line, links, code or the bibliography itself)
PLAIN_CITATIONS = """() => {
    const out = [];
    const walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    for (let n = walk.nextNode(); n; n = walk.nextNode()) {
        if (n.parentElement.closest('h1, h2, h3, nav, a, pre, script, style, ol.bib, .js-plotly-plot, summary'))
            continue;
        const m = n.textContent.match(/[A-Z][a-z]+( et al\\.)? (19|20)\\d\\d/g);
        if (m) out.push(...m);
    }
    return out;
}"""
# the straight-line figure's hover box for one point, as the reader sees it
LINE_HOVER = """() => {
    const f = [...document.querySelectorAll('.js-plotly-plot')]
        .find(f => f.data.some(t => (t.name || '').includes('→')));
    f.scrollIntoView();
    Plotly.Fx.hover(f, [{curveNumber: 0, pointNumber: 4}]);
    return f.querySelector('.hoverlayer').textContent;
}"""


def test_report_words_for_a_reader(pages):
    """#29's details: ≤ not <=, column headers in words (no report.csv name such as test_acc), every citation in
    the prose a link into the bibliography, the barrier hover whole and formatted (not 'fed…(−0.2, −0.01819519)'),
    and no caption promising diverged runs when none diverged."""
    page, errors, _, close = _open(pages[0], NO_WEBGL)
    try:
        body = page.inner_text("body")
        assert "<=" not in body and ">=" not in body
        heads = page.evaluate("() => [...document.querySelectorAll('th')].map(h => h.textContent)")
        # a measure is named as in the verdict table (lambda_max, defined under "What the measures mean")
        names = page.evaluate("() => [...document.querySelectorAll('td.m a')].map(a => a.textContent)")
        assert "λmax" in names
        words = [re.sub("|".join(map(re.escape, names)), "", h) for h in heads]
        assert [h for h in words if re.search(r"[a-z]_[a-z0-9]", h)] == []
        assert "test accuracy" in heads and "test_acc" not in heads
        assert page.evaluate(PLAIN_CITATIONS) == []
        assert page.locator("a[href^='#ref-']").count() >= 3
        assert "Dinh et al. 2017" in page.inner_text("ol.bib")
        assert page.evaluate(BROKEN_ANCHORS) == []
        hover = page.evaluate(LINE_HOVER)
        assert "fedavg → fedmut, seed" in hover and "…" not in hover and "t = " in hover and "Δloss = " in hover
        numbers = re.findall(r"[−-]?\d[\d.]*(?:e[−-]?\d+)?", hover.split("barrier")[-1])
        assert numbers and all(len(re.sub(r"\D", "", n.split("e")[0]).lstrip("0")) <= 3 for n in numbers), hover
        assert "diverged runs dashed" not in body and "Why runs diverge" not in body
    finally:
        close()


# the mode-connectivity figure: its legend, line colours, subplot titles (with the figure's box) and x domains
CONNECT_FIGURE = """() => {
    const f = [...document.querySelectorAll('.js-plotly-plot')]
        .find(f => f.data.some(t => t.name === 'trained Bézier curve'));
    f.scrollIntoView();
    const box = f.getBoundingClientRect();
    const titles = [...f.querySelectorAll('.annotation-text')].map(e => {
        const r = e.getBoundingClientRect();
        return [e.textContent, r.left >= box.left - 1 && r.right <= box.right + 1];
    });
    const axes = Object.keys(f._fullLayout).filter(k => /^xaxis\\d*$/.test(k));
    return {legend: f.data.filter(t => t.showlegend !== false).map(t => t.name),
            colours: [...new Set(f.data.map(t => t.line.color.toLowerCase()))],
            titles: titles, widths: axes.map(k => f._fullLayout[k].domain[1] - f._fullLayout[k].domain[0]),
            xtitles: axes.map(k => f._fullLayout[k].title.text)};
}"""
PER_LAYER_IMAGE = """() => {
    const img = document.querySelector('img.per-layer');
    img.scrollIntoView();
    const box = img.parentElement;
    return {loaded: img.complete && img.naturalWidth > 0, natural: img.naturalWidth,
            width: img.getBoundingClientRect().width, scroll: getComputedStyle(box).overflowX,
            boxRight: box.getBoundingClientRect().right, alt: img.alt,
            table: getComputedStyle(document.querySelector('h2[id^=per-layer] ~ details div.scroll')).overflowX};
}"""


@pytest.mark.parametrize("width", [1366, 390], ids=["desktop", "phone"])
def test_per_layer_and_connectivity_sections(pages, width):
    """--per-layer and --connect on the page at 1366 and 390 px: the per-layer figure loaded at a readable width
    (on a phone in its own sideways scroll, not the page's), the connectivity figure with one legend entry per
    colour plus the two line styles, Okabe-Ito colours, every panel title whole inside the figure, and the panels
    one per row on a phone; no console error, no outside request."""
    from flatfl.analysis.report_figures import PALETTE, SEED_PALETTE
    from flatfl.runs.per_layer_page import MIN_WIDTH

    page, errors, requests, close = _open(pages[0], NO_WEBGL, width=width)
    try:
        assert requests == [] and [e for e in errors if "WebGL" not in e] == []
        heads = page.evaluate("() => [...document.querySelectorAll('h2')].map(h => h.textContent)")
        assert "Per-layer curvature (round 4)" in heads and "Mode connectivity (Garipov et al. 2018)" in heads
        img = page.evaluate(PER_LAYER_IMAGE)
        assert img["loaded"] and img["alt"].startswith("per-layer curvature: λmax and trace of each module")
        assert min(img["natural"], MIN_WIDTH) - 1 <= img["width"] <= img["natural"] + 1
        assert img["scroll"] == "auto" and img["boxRight"] <= width + 1 and img["table"] == "auto"
        conn = page.evaluate(CONNECT_FIGURE)
        assert len(conn["legend"]) == len(set(conn["legend"]))
        assert set(conn["legend"]) == {"seed 0", "fedavg → its clients", "fedmut → its clients",
                                       "straight line (1 − t)·a + t·b", "trained Bézier curve"}  # fmt: skip
        okabe_ito = {c.lower() for c in PALETTE + SEED_PALETTE} | {"#555555"}
        assert set(conn["colours"]) <= okabe_ito, conn["colours"]
        # 2 conditions x (the groups' pair + each group's 2 client paths): 6 panels, each title whole on screen
        assert len(conn["titles"]) == 6 and all(inside for _, inside in conn["titles"]), conn["titles"]
        assert set(conn["xtitles"]) == {"t"}
        if width < 700:
            assert len(conn["widths"]) == 6 and min(conn["widths"]) > 0.9  # one panel per row
        else:
            assert max(conn["widths"]) < 0.5  # two columns
    finally:
        close()
