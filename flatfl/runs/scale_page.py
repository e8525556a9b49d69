"""The scale context of the report page and printed output: ||θ||₂ of the global models under the verdict.

Rows of context, never verdicts (:mod:`flatfl.runs.scale` computes them): per condition and group the
mean weight norm with its 95% interval and the per-seed values, the ratio of norms of each comparison,
and, folded, ||θ_l||₂ per parameter tensor, seed by seed.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from flatfl.runs.scale import norm_ratio_text


def fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def _summary(s: Mapping[str, Any]) -> str:
    if s.get("lo") is None:
        return f"{fmt(s['mean'])} (1 seed)"
    return f"{fmt(s['mean'])} [{fmt(s['lo'], 3)}, {fmt(s['hi'], 3)}]"


def _norm_cell(s: Mapping[str, Any] | None) -> str:
    """A context cell: 'mean [lo, hi] (per seed: a, b, c)'."""
    if s is None:
        return "–"
    seeds = ", ".join(fmt(v) for v in s.get("seeds", {}).values())
    return f"{_summary(s)} (per seed: {seeds})"


def _ratio_text(comp: Mapping[str, Any], ref: str, other: str) -> str:
    return norm_ratio_text(comp.get("norm_ratio"), ref, other)


def context_html(verdict: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> str:
    """Rows of context under the verdict table (they do not vote): ||θ||₂ of the global model per condition
    and group (mean [95% CI], per seed) with the ratio of norms per comparison; per tensor folded."""
    if not verdict or not verdict[0].get("context"):
        return ""
    head = "<tr><th>condition</th><th>context (not a verdict)</th>" + "".join(
        f"<th>{html.escape(lab)}</th>" for lab in labels
    )
    body, folded = [], []
    for c in verdict:
        ref = c["reference"]
        for row in c["context"]:
            ratios = "; ".join(_ratio_text(comp, ref, o) for o, comp in _in_order(c["comparisons"], labels))
            cells = "".join(f"<td>{html.escape(_norm_cell(row['groups'].get(lab)))}</td>" for lab in labels)
            body.append(
                f"<tr><td>{html.escape(c['title'])}</td><td style='text-align:left'>{html.escape(row['label'])}"
                f"<br><small>{html.escape(ratios)}</small></td>{cells}</tr>"
            )
            folded.append(_layers_html(c["title"], row.get("layers", {}), labels))
    return (
        f"<div style='overflow-x:auto'><table class='context'>{head}</tr>{''.join(body)}</table></div>"
        "<details><summary>‖θ<sub>l</sub>‖₂ per parameter tensor (context, not a verdict)</summary>"
        + "".join(folded)
        + "</details>"
    )


def _layers_html(title: str, layers: Mapping[str, Mapping[str, Mapping[str, float]]], labels: Sequence[str]) -> str:
    """One table per condition: a row per tensor, a column per group and seed."""
    cols = [(lab, seed) for lab in labels for seed in layers.get(lab, {})]
    names: list[str] = []
    for lab, seed in cols:
        names += [n for n in layers[lab][seed] if n not in names]
    head = "<tr><th>tensor</th>" + "".join(f"<th>{html.escape(f'{lab} s{seed}')}</th>" for lab, seed in cols)
    body = "".join(
        f"<tr><td style='text-align:left'>{html.escape(n)}</td>"
        + "".join(f"<td>{html.escape(fmt(layers[lab][seed].get(n)))}</td>" for lab, seed in cols)
        + "</tr>"
        for n in names
    )
    return f"<p><b>{html.escape(title)}</b></p><div style='overflow-x:auto'><table>{head}</tr>{body}</table></div>"


def context_text(c: Mapping[str, Any], labels: Sequence[str]) -> list[str]:
    """The context rows of one condition as printed lines (under its verdict table)."""
    lines = []
    for row in c.get("context", []):
        parts = "; ".join(f"{lab} {_norm_cell(row['groups'].get(lab))}" for lab in labels)
        ratios = "; ".join(_ratio_text(comp, c["reference"], o) for o, comp in _in_order(c["comparisons"], labels))
        lines.append(f"  context (not a verdict): {row['label']}: {parts}" + (f"; {ratios}" if ratios else ""))
    return lines


def _in_order(comps: Mapping[str, Any], labels: Sequence[str]) -> list[tuple[str, Any]]:
    """The comparisons in the groups' order (report.json's dicts have sorted keys)."""
    return [(o, comps[o]) for o in labels if o in comps] + [(o, v) for o, v in comps.items() if o not in labels]
