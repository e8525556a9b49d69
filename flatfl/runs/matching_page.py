"""The report page's section on matched convergence: the loss curves the equal-train-loss rule used."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flatfl.runs.match_rule import MATCH_RULE


def matching_html(c: Any) -> str:
    """The rule, and what it found for condition ``c``: a refused level, warnings per comparison."""
    ends = [t["rounds"][-1] for per in c.curves.values() for t in per.values() if t["rounds"]]
    parts = [
        "<p>Equal train loss: "
        + html.escape(MATCH_RULE)
        + f". Here the level is {c.level:.4g} ({'given with --match-loss' if c.user_level else 'the default'}), "
        f"rounds 1 to {max(ends) if ends else '?'} considered. Thin lines: each run's loss at every saved round; "
        "thick: its moving median; star: the matched round; open circle: the first round whose raw loss touched "
        "the level (the naive rule), where it differs; dashed: the level; dotted: the untrained model's loss.</p>"
    ]
    if c.refused:
        parts.append(f"<p class='disagree'><b>No verdict at this level:</b> {html.escape(c.refused)}.</p>")
    for other, said in c.warnings.items():
        how = "compared anyway (level given)" if c.user_level else "no verdict"
        parts.append(f"<p class='disagree'><b>{html.escape(other)} ({how}):</b> {html.escape('; '.join(said))}.</p>")
    return "".join(parts)


def matching_sections(conds: Sequence[Any], out: Path, files: dict[str, Path]) -> list[tuple[str, object]]:
    """The section with the interactive figure (and matched_loss.png/.pdf), when loss matching ran."""
    from flatfl.analysis.matching_figures import matching_figure, plot_matching

    c = next((c for c in conds if c.name == "loss" and c.curves), None)
    if c is None:
        return []
    files["matched_png"] = plot_matching(c.curves, c.level, c.window, out / "matched_loss")[0]
    fig = matching_figure(c.curves, c.level, c.window)
    return [("Matched convergence: the loss curves behind equal train loss", [matching_html(c), fig])]
