"""The built documentation site (``make docs`` builds it into docs/_build/html, then runs these) opens from disk
in headless Chromium with no console errors and no request leaving the machine, and its generated parts are
there: the CLI reference is ``flatfl --help``, the API reference holds the docstrings, the executed tutorials
show what they printed and drew, and the search works offline.

Marked ``docs``: ``make test`` deselects them (they need the built site); ``make docs`` runs them after building.
``FLATFL_DOCS_SITE`` names another built site."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.test_browser import CHROMIUM
from tests.test_layering import ROOT

pytestmark = pytest.mark.docs
SITE = Path(os.environ.get("FLATFL_DOCS_SITE") or ROOT / "docs" / "_build" / "html")
PAGES = [
    "index.html",
    "getting-started.html",
    "reference/cli.html",
    "reference/api.html",
    "tutorials/executed/tutorial_01_own_model.html",
    "tutorials/executed/tutorial_02_flower_run.html",
    "explanation/fedmut.html",
    "checkpoint-format.html",
]
EXTERNAL = re.compile(r"""<(?:script|link|img|iframe|source)\b[^>]*\b(?:src|href)=["'](?:https?:)?//""", re.I)


@pytest.fixture(scope="module")
def site() -> Path:
    assert (SITE / "index.html").is_file(), f"no built site at {SITE}: run make docs"
    return SITE


def test_no_page_loads_anything_from_the_network(site):
    """Every HTML file of the site: no script, stylesheet, image or frame from another host (no CDN)."""
    pages = list(site.rglob("*.html"))
    assert len(pages) > 20
    bad = [f"{p.relative_to(site)}: {m.group(0)}" for p in pages for m in EXTERNAL.finditer(p.read_text())]
    assert not bad, "\n".join(bad)


def test_the_check_for_external_resources_finds_a_cdn():
    assert EXTERNAL.search('<script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"></script>')
    assert not EXTERNAL.search('<script src="_static/furo.js"></script><a href="https://example.org">a link</a>')


def test_the_cli_reference_is_the_programs_help(site):
    from flatfl.cli import build_parser

    html = (site / "reference/cli.html").read_text()
    for word in ("train", "landscape", "report", "prune", "partition"):
        assert f"usage: flatfl {word}" in html
    # an option's help text, as argparse prints it (HTML-escaped the same way)
    train = next(a for a in build_parser()._actions if getattr(a, "choices", None) and "train" in a.choices)
    flags = [o for a in train.choices["train"]._actions for o in a.option_strings if o.startswith("--")]
    missing = [f for f in flags if f not in html]
    assert len(flags) > 40 and not missing, missing


def test_the_api_reference_holds_the_docstrings(site):
    import flatfl.analysis as fa
    from flatfl.runs.run import Run

    html = (site / "reference/api.html").read_text()
    for name in fa.__all__:
        assert f'id="flatfl.analysis.{name}"' in html, name
    assert 'id="flatfl.runs.run.Run.clients"' in html and 'id="flatfl.flower.strategy.FedMutStrategy"' in html
    first = Run.model.__doc__.split("``")[0].strip()
    assert first and first in html


def _browser():
    from playwright.sync_api import sync_playwright

    if CHROMIUM is None:
        pytest.fail("no Chromium here (apt-get install chromium; .ci/run does)")
    pw = sync_playwright().start()
    return pw, pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])


@pytest.fixture(scope="module")
def browser():
    pw, browser = _browser()
    yield browser
    browser.close()
    pw.stop()


def _visit(browser, url: str):
    """(page, console errors, requests that left file://) after loading url."""
    page = browser.new_page(viewport={"width": 1366, "height": 900})
    errors: list[str] = []
    outside: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: None if r.url.startswith(("file:", "data:", "blob:")) else outside.append(r.url))
    page.goto(url)
    page.wait_for_load_state("load")
    page.wait_for_timeout(300)
    return page, errors, outside


@pytest.mark.parametrize("name", PAGES)
def test_page_opens_offline_without_errors(site, browser, name):
    page, errors, outside = _visit(browser, (site / name).as_uri())
    try:
        assert not errors, errors
        assert not outside, outside
        assert page.title() and page.locator("article").count() == 1
        broken = page.evaluate("[...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)")
        assert not broken, broken
        # furo's own script ran: the theme toggle and the sidebar navigation are there
        assert page.locator(".sidebar-tree a").count() > 10
    finally:
        page.close()


def test_the_executed_tutorial_shows_its_output_and_figure(site, browser):
    page, errors, _ = _visit(browser, (site / "tutorials/executed/tutorial_01_own_model.html").as_uri())
    try:
        text = page.inner_text("article")
        assert "dense top-3" in text and "top-3 eigenvalues" in text and not errors
        figures = "[...document.images].filter(i => i.src.includes('sphx_glr') && i.naturalWidth > 0).length"
        assert page.evaluate(figures) >= 1
    finally:
        page.close()


def test_the_search_works_offline(site, browser):
    page, errors, outside = _visit(browser, (site / "search.html").as_uri() + "?q=Lanczos")
    try:
        page.wait_for_selector("#search-results li", timeout=15000)
        assert page.locator("#search-results li").count() >= 3
        assert not errors and not outside
    finally:
        page.close()


def test_getting_started_shows_the_readmes_answer(site, browser):
    """The demo's printed answer is written once, in README.md between its answer markers; Getting started
    includes it, so the two can never disagree."""
    readme = (ROOT / "README.md").read_text()
    answer = readme.split("<!-- answer:start -->")[1].split("<!-- answer:end -->")[0]
    starts = ("At equal round", "At equal train", "lambda_max")  # the printed answer's lines, and a table's first row
    lines = [ln.strip() for ln in answer.splitlines() if ln.strip().startswith(starts)]
    assert len(lines) >= 2
    page, errors, _ = _visit(browser, (site / "getting-started.html").as_uri())
    try:
        text = page.inner_text("article")
        assert all(" ".join(ln.split()) in " ".join(text.split()) for ln in lines), lines
        assert not errors
    finally:
        page.close()
