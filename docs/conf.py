"""Sphinx configuration of flatfl's documentation site (``make docs``: docs/_build/html, offline, -W).

Sphinx + furo + MyST: the existing reference pages (docs/*.md) are Markdown and stay readable on GitHub;
autodoc renders the API from the docstrings; sphinx-gallery executes the tutorials (docs/gallery/*.py) at
build time and fails the build when one fails; the CLI reference is rendered from flatfl.cli's own
argparse parsers (docs/_ext/flatfl_cli.py), so it is ``flatfl COMMAND --help`` word for word.
No page loads anything from the network: furo bundles its CSS/JS, there is no math extension
(formulas are written in Unicode), and the search index is local.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
os.environ["COLUMNS"] = "100"  # argparse wraps --help at the terminal width: fixed, so the build is reproducible
os.environ.setdefault("OMP_NUM_THREADS", "1")

import flatfl  # noqa: E402

project = "flatfl"
author = "flatfl contributors"
copyright = "flatfl contributors, MIT licence"
release = version = flatfl.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx_gallery.gen_gallery",
    "flatfl_cli",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "img/README.md", "gallery/README.rst", "Thumbs.db", ".DS_Store"]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
# docs/checkpoint-format.md shows run.json with "..." placeholders in a json block: Pygments highlights it in
# relaxed mode, which is right for an illustration; every other warning fails the build
suppress_warnings = ["misc.highlighting_failure"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = True

html_theme = "furo"
html_title = f"flatfl {release}"
html_static_path: list[str] = []
html_show_sourcelink = False
html_copy_source = False
# search result summaries are fetched from each page, which a browser forbids from file:// (console errors):
# the results list works offline without them
html_show_search_summary = False

# the tutorials: executed at build time on small settings; an error in one fails the build
sphinx_gallery_conf = {
    "examples_dirs": ["gallery"],
    "gallery_dirs": ["tutorials/executed"],
    "filename_pattern": r"/tutorial_",
    "abort_on_example_error": True,
    "only_warn_on_example_error": False,
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
    "plot_gallery": "True",
    "image_scrapers": ("matplotlib",),
    "reset_modules": ("matplotlib",),
    "show_memory": False,
    "min_reported_time": 10**9,
    "line_numbers": False,
    "show_signature": False,
    "write_computation_times": False,
}

# torch's forward-mode AD warns that torch.jit.script is deprecated on every jvp; it says nothing about the
# tutorials (the CLI filters it the same way)
import warnings  # noqa: E402

warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
