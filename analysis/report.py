"""``flatfl report``: several runs (e.g. FedAvg vs FedMut, same seed) side by side.

For each run and each chosen round: lambda_max (Lanczos), the Hessian trace (Hutch++ with a
standard error), sharpness measures and a 2D filter-normalised random surface (same seed, so
the same Gaussian draw for every run; each run's directions are normalised to its own
filters), computed on the same data selection; over all rounds: test accuracy/loss curves
and -- for runs saved with ``--save-clients`` -- the spread of sent (mutant) and returned
models. Written to one self-contained HTML page (plotly.js inlined, figures interactive,
static PNGs embedded), ``report.csv`` (one row per run and round), ``curves.csv`` (per-round
training metrics and spread), ``report.json`` (everything, with every setting and the command).

Per-round results are cached under ``DIR/runs/<label>/round_NNNN/`` (landscape.json and the
surface files) and reused when their settings match, so an interrupted or extended report
resumes.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from analysis import distributed
from analysis.checkpoints import Run
from analysis.landscape import LandscapeSettings, compute, compute_surface, file_digest, json_ready
from analysis.surfaces import Surface
from flatfl import checkpoint as ckpt
from flatfl.errors import UserError


@dataclass(frozen=True)
class ReportSettings:
    """What the report computes at each chosen round (filled by the CLI)."""

    rounds: tuple[int, ...] | None = None  # None: last round of each run (and the middle one)
    landscape: LandscapeSettings = LandscapeSettings(
        data="train",
        samples=1000,
        hessian=True,
        topk=1,
        tol=1e-4,
        trace=True,
        trace_matvecs=30,
        sharpness=("sam", "adaptive_l2", "average_adaptive"),
        surface="2d",
        grid=21,
        span=1.0,
    )
    surface: bool = True
    spread: bool = True
    spread_samples: int = 500  # test samples for each spread model's loss (0: distances only)


def run_labels(runs: Sequence[Run]) -> list[str]:
    """Short unique names: the algorithm, or algorithm + folder name when algorithms repeat."""
    algos = [r.config["algo"] for r in runs]
    labels = [a if algos.count(a) == 1 else f"{a} ({r.path.name})" for a, r in zip(algos, runs)]
    if len(set(labels)) != len(labels):
        labels = [f"{r.path.name}" for r in runs]
    return labels


def choose_rounds(run: Run, wanted: Sequence[int] | None) -> list[int]:
    have = run.rounds()
    if not have:
        raise UserError(f"{run.path}: no round_NNNN.safetensors checkpoints")
    if wanted is None:
        last = have[-1]
        return sorted({have[len(have) // 2], last}) if last > 0 else [last]
    missing = [r for r in wanted if r not in have]
    if missing:
        raise UserError(f"--rounds: {run.path} has no checkpoint for round(s) {missing} (saved: {have[0]}..{have[-1]})")
    return list(wanted)


def _cached_landscape(path: Path, settings: dict, digest: str) -> dict | None:
    """The cached result if it was computed with these settings from this very checkpoint file."""
    if not path.is_file():
        return None
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return old if old.get("settings") == settings and old.get("checkpoint_sha256") == digest else None


def measure_round(
    run: Run, rnd: int, settings: ReportSettings, out: Path, log: Callable[[str], None], progress: Callable[[int], None]
) -> tuple[dict[str, Any], Surface | None]:
    """Curvature, sharpness and surface of one checkpoint, cached in ``out``."""
    file = ckpt.round_path(run.path, rnd)
    main = distributed.is_main()
    if main:
        out.mkdir(parents=True, exist_ok=True)
    ls = replace(settings.landscape, surface=None)
    want = json_ready(asdict(ls))
    # under torchrun rank 0's cache decides for every rank (the computation below is collective)
    res = distributed.broadcast_array(
        _cached_landscape(out / "landscape.json", want, file_digest(file)) if main else None
    )
    if res is None:
        res, _ = compute(file, ls, log=log)
        res = json.loads(json.dumps(json_ready(res), sort_keys=True))  # as a cached file reads back
        if main:
            ckpt.atomic_write_json(out / "landscape.json", res)
    else:
        log(f"{run.path.name} round {rnd}: reusing {out / 'landscape.json'}")
    surf = None
    if settings.surface:
        ss = replace(settings.landscape, surface="2d", surface_dirs="random", markers=True)
        surf = compute_surface(file, ss, out, progress=lambda d, t: None)
    progress(1)
    return res, surf


def _png_data_uri(paths: list[Path]) -> str:
    png = [p for p in paths if p.suffix == ".png"][0]
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()


def _table(rows: list[dict[str, Any]], cols: list[str], fmt: Callable[[str, Any], str] | None = None) -> str:
    def cell(c: str, v: Any) -> str:
        if fmt is not None:
            return fmt(c, v)
        if isinstance(v, float):
            return f"{v:.4g}"
        return html.escape("" if v is None else str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{cell(c, r.get(c))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<div style='overflow-x:auto'><table><tr>{head}</tr>{body}</table></div>"


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    ckpt.atomic_write_bytes(path, buf.getvalue().encode())


def build_report(
    run_dirs: Sequence[Path],
    settings: ReportSettings,
    out: Path,
    *,
    command: str = "",
    log: Callable[[str], None] = lambda s: None,
    show_progress: bool = False,
) -> dict[str, Path]:
    """Compute and write the report; returns the written files by kind."""
    import plotly.graph_objects as go
    import torch
    from tqdm.auto import tqdm

    from analysis.interactive import color_range, surface_figure, write_page
    from analysis.landscape import select_data
    from analysis.plots import plot_curves, plot_surfaces_side_by_side
    from analysis.spread import spread_curve, spread_rounds

    runs = [Run.open(p) for p in run_dirs]
    labels = run_labels(runs)
    datasets = {(r.config["data"]["dataset"], r.info["model"]["name"]) for r in runs}
    if len(datasets) > 1:
        log(f"note: the runs differ in dataset/model {sorted(datasets)}; their curvature is not directly comparable")
    rounds = {lab: choose_rounds(r, settings.rounds) for lab, r in zip(labels, runs)}
    total = sum(len(v) for v in rounds.values())
    rows: list[dict[str, Any]] = []
    surfaces: dict[str, list[tuple[int, Surface]]] = {lab: [] for lab in labels}
    results: dict[str, dict[int, dict]] = {lab: {} for lab in labels}
    with tqdm(total=total, desc="report", unit="ckpt", disable=not show_progress) as bar:
        for lab, run in zip(labels, runs):
            metrics = {m["round"]: m for m in run.metrics()}
            for rnd in rounds[lab]:
                res, surf = measure_round(
                    run, rnd, settings, out / "runs" / _slug(lab) / f"round_{rnd:04d}", log, bar.update
                )
                results[lab][rnd] = res
                if surf is not None:
                    surfaces[lab].append((rnd, surf))
                m = metrics.get(rnd, {})
                row: dict[str, Any] = {
                    "run": lab,
                    "algo": run.config["algo"],
                    "path": str(run.path),
                    "round": rnd,
                    "test_acc": m.get("test_acc"),
                    "test_loss": m.get("test_loss"),
                    "loss": res["loss"],
                    "gradient_norm": res["gradient_norm"],
                }
                if "hessian" in res:
                    row["lambda_max"] = res["hessian"]["eigenvalues"][0]
                    row["lambda_min"] = res["hessian"]["smallest"]
                if "trace" in res:
                    row["trace"] = res["trace"]["estimate"]
                    row["trace_stderr"] = res["trace"]["stderr"]
                for name, v in res.get("sharpness", {}).items():
                    row[f"sharpness_{name}"] = v["value"]
                    if v.get("stderr") is not None:
                        row[f"sharpness_{name}_stderr"] = v["stderr"]
                if surf is not None:
                    row["surface_loss_min"] = float(np.nanmin(surf.loss))
                    row["surface_loss_max"] = float(np.nanmax(surf.loss))
                    row["surface_loss_mean"] = float(np.nanmean(surf.loss))
                rows.append(row)
    if not distributed.is_main():
        return {}  # under torchrun: the collective part is done; rank 0 computes the spread and writes

    # training curves and spread over rounds
    curve_rows: list[dict[str, Any]] = []
    spread_rows: dict[str, list[dict[str, Any]]] = {}
    for lab, run in zip(labels, runs):
        for m in run.metrics():
            curve_rows.append(
                {
                    "run": lab,
                    "round": m["round"],
                    "test_acc": m.get("test_acc"),
                    "test_loss": m.get("test_loss"),
                    "train_loss": m.get("train_loss"),
                }
            )
        if settings.spread and spread_rounds(run):
            data = None
            if settings.spread_samples:
                x, y, _ = select_data(run, "test", settings.spread_samples, settings.landscape.seed)
                data = (x, y)
            rs = spread_rounds(run)
            with tqdm(total=len(rs), desc=f"spread {lab}", unit="round", disable=not show_progress) as bar:
                curve = spread_curve(
                    run,
                    rs,
                    data=data,
                    progress=bar.update,
                    batch_size=settings.landscape.batch_size,
                    device=settings.landscape.device,
                )
            spread_rows[lab] = [{"run": lab, **c.summary()} for c in curve]
    by_round = {(r["run"], r["round"]): r for r in curve_rows}
    for lab, srows in spread_rows.items():
        for s in srows:
            by_round.setdefault((lab, s["round"]), {"run": lab, "round": s["round"]}).update(
                {f"spread_{k}": v for k, v in s.items() if k not in ("run", "round")}
            )
    curve_rows = [by_round[k] for k in sorted(by_round, key=lambda k: (labels.index(k[0]), k[1]))]

    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    _write_csv(out / "report.csv", rows)
    files["csv"] = out / "report.csv"
    _write_csv(out / "curves.csv", curve_rows)
    files["curves"] = out / "curves.csv"

    sections: list[tuple[str, object]] = []
    run_rows = []
    for lab, run in zip(labels, runs):
        c = run.config
        run_rows.append(
            {
                "run": lab,
                "path": str(run.path),
                "dataset": c["data"]["dataset"],
                "partition": f"{c['data']['partition']}"
                + (f"({c['data'].get('dirichlet_alpha')})" if c["data"]["partition"] == "dirichlet" else ""),
                "clients": f"{c['data']['num_clients']} (frac {c['frac']})",
                "model": run.info["model"]["name"],
                "rounds": run.rounds()[-1],
                "seed": c["seed"],
                "algo config": json.dumps(c.get("algo_config", {})),
            }
        )
    sections.append(("Runs", _table(run_rows, list(run_rows[0]))))

    fig = go.Figure()
    for lab in labels:
        pts = [r for r in curve_rows if r["run"] == lab and r.get("test_acc") is not None]
        fig.add_trace(go.Scatter(x=[r["round"] for r in pts], y=[r["test_acc"] for r in pts], name=f"{lab}: test acc"))
        pts = [r for r in curve_rows if r["run"] == lab and r.get("test_loss") is not None]
        fig.add_trace(
            go.Scatter(
                x=[r["round"] for r in pts],
                y=[r["test_loss"] for r in pts],
                name=f"{lab}: test loss",
                yaxis="y2",
                line=dict(dash="dot"),
            )
        )
    fig.update_layout(
        xaxis_title="round",
        yaxis=dict(title="test accuracy"),
        yaxis2=dict(title="test loss", overlaying="y", side="right"),
        height=420,
        template="plotly_white",
    )
    sections.append(("Accuracy and loss over rounds", fig))

    cols = [c for c in rows[0] if c not in ("path", "algo")] if rows else []
    for r in rows[1:]:
        cols += [c for c in r if c not in cols and c not in ("path", "algo")]
    ld = settings.landscape
    note = (
        f"<p>On {html.escape(ld.data)} data ({ld.samples or 'all'} samples, subset seed {ld.seed}), eval mode. "
        f"lambda_max: Lanczos, residual tol {ld.tol:g}; trace: {ld.trace_method} with {ld.trace_matvecs} HVPs "
        f"(&plusmn; one standard error); sharpness: rho={ld.rho:g} (SAM, adaptive), sigma={ld.sigma:g} (average), "
        f"{ld.sharpness_steps} ascent steps. Lower is flatter for every column but accuracy.</p>"
    )
    sections.append(("Curvature and sharpness at the chosen rounds", note + _table(rows, cols)))
    if any("lambda_max" in r or "trace" in r for r in rows):
        fig = go.Figure()
        for lab in labels:
            pts = [r for r in rows if r["run"] == lab]
            if pts and "lambda_max" in pts[0]:
                fig.add_trace(
                    go.Scatter(
                        x=[r["round"] for r in pts],
                        y=[r["lambda_max"] for r in pts],
                        mode="lines+markers",
                        name=f"{lab}: lambda_max",
                    )
                )
            if pts and "trace" in pts[0]:
                fig.add_trace(
                    go.Scatter(
                        x=[r["round"] for r in pts],
                        y=[r["trace"] for r in pts],
                        mode="lines+markers",
                        name=f"{lab}: trace",
                        yaxis="y2",
                        line=dict(dash="dot"),
                        error_y=dict(type="data", array=[r["trace_stderr"] for r in pts]),
                    )
                )
        fig.update_layout(
            xaxis_title="round",
            yaxis=dict(title="lambda_max"),
            yaxis2=dict(title="trace", overlaying="y", side="right"),
            height=400,
            template="plotly_white",
        )
        sections.append(("Curvature over the chosen rounds", fig))

    if settings.surface and any(surfaces.values()):
        allsurf = [s for v in surfaces.values() for _, s in v]
        crange = color_range(allsurf)
        body = [
            f"<p>2D filter-normalised random planes (Li et al. 2018), a, b in [-{ld.span:g}, {ld.span:g}], "
            f"{ld.grid}x{ld.grid} points, the same colour scale for every run and round "
            f"(loss {crange[0]:.3g} to {crange[1]:.3g}). Markers: this round's returned client models and the "
            "mutants sent in the next round, at their least-squares position in the plane (hover: their own "
            "loss and distance off the plane; a random plane holds almost none of them).</p>"
        ]
        last = {lab: v[-1] for lab, v in surfaces.items() if v}
        paths = plot_surfaces_side_by_side(
            [s for _, s in last.values()],
            [f"{lab}, round {r}" for lab, (r, _) in last.items()],
            out / "surfaces",
            vrange=crange,
        )
        files["surfaces_png"] = paths[0]
        body.append(f"<img alt='surfaces' style='max-width:100%' src='{_png_data_uri(paths)}'>")
        sections.append(("Loss surfaces (last chosen round, shared levels)", "\n".join(body)))
        for lab, v in surfaces.items():
            if v:
                sections.append(
                    (
                        f"Loss surface: {lab}" + (" (slider: round)" if len(v) > 1 else ""),
                        surface_figure([(f"round {r}", s) for r, s in v], crange=crange, title=f"{lab}"),
                    )
                )

    if settings.spread:
        have = [lab for lab in labels if spread_rows.get(lab)]
        missing = [lab for lab in labels if not spread_rows.get(lab)]
        body = []
        if have:
            fig = go.Figure()
            for lab in have:
                sr = spread_rows[lab]
                x = [s["round"] for s in sr]
                fig.add_trace(go.Scatter(x=x, y=[s["sent_l2_mean"] for s in sr], name=f"{lab}: sent (mutants)"))
                fig.add_trace(
                    go.Scatter(
                        x=x, y=[s["returned_l2_mean"] for s in sr], name=f"{lab}: returned", line=dict(dash="dot")
                    )
                )
            fig.update_layout(
                xaxis_title="round",
                yaxis_title="mean L2 distance to the dispatched global model",
                height=400,
                template="plotly_white",
            )
            body.append(fig)
            series = {}
            for lab in have:
                sr = spread_rows[lab]
                series[f"{lab}: sent"] = ([s["round"] for s in sr], [s["sent_l2_mean"] for s in sr])
                series[f"{lab}: returned"] = ([s["round"] for s in sr], [s["returned_l2_mean"] for s in sr])
            files["spread_png"] = plot_curves(series, out / "spread", xlabel="round", ylabel="mean L2 to w_(t-1)")[0]
        text = (
            "<p>Per round t: mean L2 distance of the models sent to clients (FedMut's mutants; FedAvg sends "
            "w<sub>t-1</sub> itself, distance 0) and of the returned models to w<sub>t-1</sub>. "
            "Per-round values (relative, filter-normalised, update cosines, losses of the sent models on "
            f"{settings.spread_samples} test samples) are in curves.csv.</p>"
        )
        if missing:
            text += f"<p>No client models saved (train with --save-clients) for: {html.escape(', '.join(missing))}.</p>"
        sections.append(("Spread of sent and returned models", text))
        for b in body:
            sections.append(("Spread over rounds", b))

    settings_json = json.dumps(json_ready({"report": asdict(settings), "command": command}), indent=1)
    run_json = "".join(
        f"<h3>{html.escape(lab)}</h3><pre>{html.escape(json.dumps(run.config, indent=1, sort_keys=True))}</pre>"
        for lab, run in zip(labels, runs)
    )
    sections.append(
        (
            "Commands and settings",
            f"<p>Made by:</p><pre>{html.escape(command)}</pre><p>Report settings:</p>"
            f"<pre>{html.escape(settings_json)}</pre><p>Runs (run.json config):</p>{run_json}",
        )
    )
    title = " vs ".join(labels) + ": flatness report"
    files["html"] = write_page(out / "report.html", title, sections)
    ckpt.atomic_write_json(
        out / "report.json",
        json_ready(
            {
                "command": command,
                "settings": asdict(settings),
                "runs": {lab: {"path": str(r.path), "config": r.config} for lab, r in zip(labels, runs)},
                "rounds": rows,
                "results": {lab: {str(k): v for k, v in rr.items()} for lab, rr in results.items()},
                "curves": curve_rows,
                "python": sys.version.split()[0],
                "torch": torch.__version__,
            }
        ),
    )
    files["json"] = out / "report.json"
    return files


def _slug(label: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label)
