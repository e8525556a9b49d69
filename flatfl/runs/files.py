"""Writing analysis results to disk, atomically (the analysis itself never writes files)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from flatfl.analysis.interactive import page_html
from flatfl.analysis.surfaces import Surface
from flatfl.checkpoint import atomic_write_bytes, atomic_write_json


def write_page(
    path: Path, title: str, sections: Sequence[tuple[str, object]], *, intro: str = "", css: str = ""
) -> Path:
    """:func:`~flatfl.analysis.interactive.page_html` written to ``path`` (a crash never leaves half a page)."""
    atomic_write_bytes(Path(path), page_html(title, sections, intro=intro, css=css).encode())
    return Path(path)


def save_surface(surface: Surface, path: Path) -> None:
    """``path``.npz (arrays) and ``path``.json (description, points, markers) -- no pickle; read back with
    :meth:`Surface.load <flatfl.analysis.surfaces.Surface.load>`."""
    path = Path(path)
    atomic_write_bytes(path.with_suffix(".npz"), surface.npz_bytes())
    atomic_write_json(path.with_suffix(".json"), surface.meta())
