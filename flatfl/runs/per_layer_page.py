"""Per-layer curvature in the report (``flatfl report --per-layer``): a figure and the per-block numbers.

Each measured checkpoint's record holds λmax and trace of every diagonal Hessian block H[I_l, I_l]
(:mod:`flatfl.runs.measures.per_layer`, :func:`flatfl.analysis.layer_curvature`). The page shows them at the
verdict's round (the last equal round) as one static figure -- the groups side by side, one column each, λmax
and trace in two rows with a shared axis, the blocks named, each seed a point and the mean a bar
(:func:`flatfl.analysis.plots.plot_per_layer`, per_layer.png and .pdf) -- with a table of the means; report.json
holds every block of every measured checkpoint under ``per_layer``. No verdict row: which layer is sharp is a
profile, not one number.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from flatfl.runs.measure import record_at

PATH = ("literature", "per_layer")
KINDS = {"hessian": "Hessian", "ggn": "GGN", "ef": "empirical Fisher"}  # the curvature's name in the figure
GROUPINGS = {"parameter": "parameter tensor", "module": "module"}  # --per-layer's grouping in words
MIN_WIDTH = 640  # px: the static figure's narrowest width on the page (its block names stay readable)


def per_layer_rows(measured: Any, order: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per (group, seed, round, block) of every checkpoint measured with ``--per-layer``, groups in
    ``order`` (default: as measured), then seed, round and the blocks in model order."""
    rows = []
    keys = list(measured.results)
    if order is not None:
        rank = {g: i for i, g in enumerate(order)}
        keys.sort(key=lambda k: (rank.get(k[0], len(rank)), k[1], k[2]))
    for lab, seed, rnd in keys:
        rec = record_at(measured.results[(lab, seed, rnd)], PATH)
        if not rec:
            continue
        for b in rec["blocks"]:
            rows.append({"group": lab, "seed": seed, "round": rnd, "grouping": rec["group"],
                         "curvature": rec["curvature"], "block": b["name"], "size": b["size"],
                         "lambda_max": b["lambda_max"], "lambda_residual": b["lambda_residual"],
                         "trace": b["trace"], "trace_stderr": b["trace_stderr"]})  # fmt: skip
    return rows


def per_layer_json(measured: Any, order: Sequence[str] | None = None) -> dict[str, Any]:
    """report.json's ``per_layer`` entry ({} when no checkpoint was measured with ``--per-layer``)."""
    rows = per_layer_rows(measured, order)
    return {"per_layer": rows} if rows else {}


def panels_at(rows: Sequence[Mapping[str, Any]], rnd: int) -> dict[str, dict[str, list[tuple[int, float, float]]]]:
    """{group: {block: [(seed, lambda_max, trace), ...]}} of the checkpoints at round ``rnd``."""
    out: dict[str, dict[str, list[tuple[int, float, float]]]] = {}
    for r in rows:
        if r["round"] == rnd:
            out.setdefault(r["group"], {}).setdefault(r["block"], []).append((r["seed"], r["lambda_max"], r["trace"]))
    return out


def _means_table(panels: Mapping[str, Mapping[str, list]], labels: Sequence[str]) -> str:
    blocks = list(dict.fromkeys(b for g in panels.values() for b in g))
    head = "<tr><th>block</th>" + "".join(f"<th>{html.escape(g)}: λmax</th><th>{html.escape(g)}: trace</th>"
                                         for g in labels if g in panels) + "</tr>"  # fmt: skip
    body = ""
    for b in blocks:
        cells = ""
        for g in (g for g in labels if g in panels):
            pts = panels[g].get(b, [])
            lam = sum(p[1] for p in pts) / len(pts) if pts else float("nan")
            tr = sum(p[2] for p in pts) / len(pts) if pts else float("nan")
            cells += f"<td>{lam:.4g}</td><td>{tr:.4g}</td>"
        body += f"<tr><td>{html.escape(b)}</td>{cells}</tr>"
    return f"<table>{head}{body}</table>"


def per_layer_sections(
    out: Path, measured: Any, labels: Sequence[str], rounds: Sequence[int], colors: Mapping[str, str],
    files: dict[str, Path],
) -> list[tuple[str, object]]:  # fmt: skip
    """The page's per-layer section (none without ``--per-layer``); writes per_layer.png/.pdf into ``out``."""
    from flatfl.analysis.plots import plot_per_layer

    rows = per_layer_rows(measured, labels)
    if not rows or not rounds:
        return []
    rnd = rounds[-1]
    panels = panels_at(rows, rnd)
    if not panels:
        return []
    panels = {g: panels[g] for g in labels if g in panels}
    grouping = rows[0]["grouping"]
    kind = KINDS.get(rows[0]["curvature"], rows[0]["curvature"])
    unit = GROUPINGS.get(grouping, grouping)
    png = plot_per_layer(panels, colors, out / "per_layer", title=f"diagonal {kind} blocks per {unit}, round {rnd}")
    files["per_layer_png"] = png[0]
    data = png[0].read_bytes()
    uri = base64.b64encode(data).decode()
    natural = int.from_bytes(data[16:20], "big")  # the PNG's width in pixels (its IHDR chunk)
    n = {g: len({p[0] for pts in per.values() for p in pts}) for g, per in panels.items()}
    alt = f"per-layer curvature: λmax and trace of each {unit}'s {kind} block at round {rnd}, per group"
    text = (
        f"<p>Which layer is sharp: for every {html.escape(unit)} l of the model, λmax and trace of its diagonal "
        f"block of the {html.escape(kind)}, H[I<sub>l</sub>, I<sub>l</sub>] (the curvature of the loss when only "
        f"that block's parameters move), at round {rnd} (the verdict's equal round). One column per group ("
        + ", ".join(f"{html.escape(g)}: {k} seed{'s' if k != 1 else ''}" for g, k in n.items())
        + "), the same axes across groups; each seed a point (its marker), the mean over seeds a bar. A block's "
        "λmax is at most the whole Hessian's; the traces add up to the whole trace. Static figure: per_layer.png "
        "and per_layer.pdf; every block of every measured checkpoint, with its Lanczos residual and the trace's "
        "standard error, is in report.json under <code>per_layer</code>.</p>"
        # a static figure: on a phone it keeps a readable width and scrolls sideways in its own box
        f"<div class='scroll'><img class='per-layer' alt='{html.escape(alt)}' "
        f"style='width:100%;max-width:{natural}px;min-width:{min(natural, MIN_WIDTH)}px' "
        f"src='data:image/png;base64,{uri}'></div>"
        f"<details><summary>Means over seeds, block by block</summary><div class='scroll'>"
        f"{_means_table(panels, labels)}</div></details>"
    )
    return [(f"Per-layer curvature (round {rnd})", text)]
