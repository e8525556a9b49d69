"""The report's "What the measures mean" section: per verdict measure its formula, what *flatter*
means for it, what it is invariant to (:mod:`flatfl.analysis.invariance`, established by
``tests/test_invariance.py``), how its own estimation error is measured, and a reference; then a
bibliography of every work the page cites.

Pure text from the report's settings; it computes nothing.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from flatfl.analysis.invariance import REPARAMETRISATIONS, invariant_to, markdown_table
from flatfl.runs.settings import LandscapeSettings, ReportSettings


@dataclass(frozen=True)
class Meaning:
    """One measure's entry: ``formula`` and ``error`` are HTML; ``cite`` keys :data:`BIBLIOGRAPHY`."""

    key: str
    formula: str
    flatter: str
    error: str
    cite: tuple[str, ...]


BIBLIOGRAPHY: dict[str, str] = {
    "Lanczos 1950": "C. Lanczos. An iteration method for the solution of the eigenvalue problem of linear "
    "differential and integral operators. J. Res. Nat. Bur. Standards 45, 1950.",
    "Hutchinson 1989": "M. F. Hutchinson. A stochastic estimator of the trace of the influence matrix for "
    "Laplacian smoothing splines. Comm. Statist. Simulation Comput. 18, 1989.",
    "Meyer et al. 2021": "R. A. Meyer, C. Musco, C. Musco, D. P. Woodruff. Hutch++: optimal stochastic trace "
    "estimation. SOSA 2021.",
    "Keskar et al. 2017": "N. S. Keskar, D. Mudigere, J. Nocedal, M. Smelyanskiy, P. T. P. Tang. On large-batch "
    "training for deep learning: generalization gap and sharp minima. ICLR 2017.",
    "Foret et al. 2021": "P. Foret, A. Kleiner, H. Mobahi, B. Neyshabur. Sharpness-aware minimization for "
    "efficiently improving generalization. ICLR 2021.",
    "Kwon et al. 2021": "J. Kwon, J. Kim, H. Park, I. K. Choi. ASAM: adaptive sharpness-aware minimization for "
    "scale-invariant learning of deep neural networks. ICML 2021.",
    "Andriushchenko et al. 2023": "M. Andriushchenko, F. Croce, M. Müller, M. Hein, N. Flammarion. A modern look "
    "at the relationship between sharpness and generalization. ICML 2023.",
    "Li et al. 2018": "H. Li, Z. Xu, G. Taylor, C. Studer, T. Goldstein. Visualizing the loss landscape of neural "
    "nets. NeurIPS 2018.",
    "Dinh et al. 2017": "L. Dinh, R. Pascanu, S. Bengio, Y. Bengio. Sharp minima can generalize for deep nets. "
    "ICML 2017.",
    "Frankle et al. 2020": "J. Frankle, G. K. Dziugaite, D. Roy, M. Carbin. Linear mode connectivity and the "
    "lottery ticket hypothesis. ICML 2020.",
    "Goodfellow et al. 2015": "I. J. Goodfellow, O. Vinyals, A. M. Saxe. Qualitatively characterizing neural "
    "network optimization problems. ICLR 2015.",
    "Hu et al. 2024": "M. Hu, Y. Cao, A. Li, Z. Li, C. Liu, T. Li, M. Chen, Y. Liu. FedMut: generalized federated "
    "learning via stochastic mutation. AAAI 2024.",
    "Wasserman 2004": "L. Wasserman. All of Statistics, sec. 10.1 (paired comparisons). Springer, 2004.",
}


def _meanings(ls: LandscapeSettings, radius: float) -> dict[str, Meaning]:
    rho, sigma, eps = ls.rho, ls.sigma, ls.eps
    n_avg = ls.sharpness_samples
    return {
        "lambda_max": Meaning(
            "lambda_max",
            "λ<sub>max</sub>(∇²L(θ)): the largest eigenvalue of the Hessian of the training loss L at the "
            "global model θ (Lanczos iteration on Hessian-vector products).",
            "lower: the loss curves up less steeply along its sharpest direction",
            "the Lanczos residual ‖Hv − λv‖ of the returned eigenpair (converged below the tolerance)",
            ("Lanczos 1950", "Keskar et al. 2017"),
        ),
        "trace": Meaning(
            "trace",
            "tr ∇²L(θ) = Σ<sub>i</sub> λ<sub>i</sub>: the sum of all Hessian eigenvalues (the average curvature "
            "over all directions), estimated from random probes z as E[zᵀ∇²L z].",
            "lower",
            "the estimator's standard error over its probes",
            ("Hutchinson 1989", "Meyer et al. 2021"),
        ),
        "sharpness_sam": Meaning(
            "sharpness_sam",
            f"max<sub>‖δ‖₂ ≤ ρ</sub> L(θ + δ) − L(θ), ρ = {rho:g}: the worst loss rise in a Euclidean ball "
            "(projected gradient ascent).",
            "lower",
            "none (a maximum found by ascent; a lower bound on the true maximum)",
            ("Foret et al. 2021", "Keskar et al. 2017"),
        ),
        "sharpness_epsilon": Meaning(
            "sharpness_epsilon",
            f"max<sub>‖δ‖∞ ≤ ε(|θ|+1)</sub> L(θ + δ) − L(θ), ε = {eps:g} (Keskar et al.'s box, L-BFGS-B).",
            "lower",
            "none (a maximum found by a local solver)",
            ("Keskar et al. 2017",),
        ),
        "sharpness_adaptive_l2": Meaning(
            "sharpness_adaptive_l2",
            f"max<sub>‖δ / |θ|‖₂ ≤ ρ</sub> L(θ + δ) − L(θ), ρ = {rho:g}: the ball scaled coordinate-wise by the "
            "weights' own magnitudes |θ|.",
            "lower",
            "none (a maximum found by ascent)",
            ("Kwon et al. 2021", "Andriushchenko et al. 2023"),
        ),
        "sharpness_adaptive_linf": Meaning(
            "sharpness_adaptive_linf",
            f"max<sub>‖δ / |θ|‖∞ ≤ ρ</sub> L(θ + δ) − L(θ), ρ = {rho:g}.",
            "lower",
            "none (a maximum found by ascent)",
            ("Kwon et al. 2021", "Andriushchenko et al. 2023"),
        ),
        "sharpness_average_adaptive": Meaning(
            "sharpness_average_adaptive",
            f"E<sub>δ ~ N(0, σ² diag|θ|²)</sub>[L(θ + δ)] − L(θ), σ = {sigma:g}: the average loss rise under "
            "Gaussian noise scaled by the weights (Monte Carlo). Compared as a difference, not a ratio: it can be "
            "negative.",
            "lower",
            f"the Monte Carlo standard error over its {n_avg} draws",
            ("Andriushchenko et al. 2023",),
        ),
        "sharpness_average_isotropic": Meaning(
            "sharpness_average_isotropic",
            f"E<sub>δ ~ N(0, σ² I)</sub>[L(θ + δ)] − L(θ), σ = {sigma:g}.",
            "lower",
            f"the Monte Carlo standard error over its {n_avg} draws",
            ("Andriushchenko et al. 2023",),
        ),
        "width": Meaning(
            "width",
            "Along K random directions d<sub>k</sub>, each filter of d<sub>k</sub> rescaled to the norm of the "
            "same filter of θ (biases and BatchNorm parameters get no direction), Δ<sub>k</sub>(t) = L(θ + t "
            "d<sub>k</sub>) − L(θ); the width at τ is the distance between the first crossings of the mean "
            f"curve over k with Δloss = τ on either side of t = 0, within ±{radius:g}.",
            "wider",
            "the spread of the widths read from each direction's own curve",
            ("Li et al. 2018",),
        ),
    }


def _invariance_text(key: str) -> str:
    inv = invariant_to(key)
    if not inv:
        return "changes under every function-preserving rescaling tested (see the table below)"
    names = [REPARAMETRISATIONS[r].split(":")[0].split(" (")[0] for r in REPARAMETRISATIONS if r in inv]
    missing = [REPARAMETRISATIONS[r].split(":")[0].split(" (")[0] for r in REPARAMETRISATIONS if r not in inv]
    text = "invariant to " + ", ".join(names)
    return text + ("; changes under " + ", ".join(missing) if missing else "")


def glossary_html(measures: Sequence[Any], settings: ReportSettings, *, anchor: str = "what-the-measures-mean") -> str:
    """The section's HTML for the verdict's rows ``measures`` (:class:`flatfl.analysis.verdict.Measure`)."""
    meanings = _meanings(settings.landscape, getattr(settings, "slice_radius", 1.0))
    cited: list[str] = []
    items = []
    for m in measures:
        if m.kind != "flatness":
            continue
        mean = meanings.get("width" if m.key.startswith("width_") else m.key)
        if mean is None:
            continue
        cited += [c for c in mean.cite if c not in cited]
        refs = "; ".join(html.escape(c) for c in mean.cite)
        items.append(
            f"<dt id='m-{html.escape(m.key)}'><b>{html.escape(m.label)}</b></dt><dd>{mean.formula} "
            f"<i>Flatter</i>: {html.escape(mean.flatter)}. <i>Invariance</i>: {_invariance_text(m.key)}. "
            f"<i>Estimation error</i>: {html.escape(mean.error)}. ({refs})</dd>"
        )
    table = _table_html(markdown_table())
    cited += [c for c in ("Dinh et al. 2017", "Goodfellow et al. 2015", "Frankle et al. 2020", "Wasserman 2004",
                          "Hu et al. 2024") if c not in cited]  # fmt: skip
    bib = "".join(f"<li id='ref-{i}'>{html.escape(BIBLIOGRAPHY[c])}</li>" for i, c in enumerate(cited))
    return (
        "<p>Every flatness measure in the verdict, with what a lower or higher value means. A function-preserving "
        "rescaling of a ReLU network's weights changes some measures without changing the function (Dinh et al. "
        "2017); which measure is invariant to which rescaling was established by tests on reparametrised "
        "models (flatfl's tests/test_invariance.py), not assumed.</p>"
        f"<dl class='glossary'>{''.join(items)}</dl>"
        f"<p>Invariance, measure by measure:</p><div class='scroll'>{table}</div>"
        f"<p><b>References</b></p><ol class='bib'>{bib}</ol>"
    )


def _table_html(markdown: str) -> str:
    """A small markdown table (as :func:`flatfl.analysis.invariance.markdown_table` writes it) as HTML."""
    text = [ln.strip() for ln in markdown.strip().splitlines()]
    lines = [ln.strip("|").split("|") for ln in text if ln.startswith("|")]
    head, rows = lines[0], lines[2:]
    th = "".join(f"<th>{html.escape(c.strip())}</th>" for c in head)
    tr = "".join("<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in r) + "</tr>" for r in rows)
    notes = "".join(f"<li>{html.escape(ln[2:].replace('*', ''))}</li>" for ln in text if ln.startswith("- "))
    return f"<table class='invariance'><tr>{th}</tr>{tr}</table>" + (f"<ul>{notes}</ul>" if notes else "")
