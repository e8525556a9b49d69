"""The report's "What the measures mean" section: per verdict measure its formula, what *flatter*
means for it, what it is invariant to (:mod:`flatfl.analysis.invariance`, established by
``tests/test_invariance.py``), how its own estimation error is measured, and a reference; then a
bibliography of every work the page cites.

Pure text from the report's settings; it computes nothing.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Mapping, Sequence
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
    "Garipov et al. 2018": "T. Garipov, P. Izmailov, D. Podoprikhin, D. Vetrov, A. G. Wilson. Loss surfaces, mode "
    "connectivity, and fast ensembling of DNNs. NeurIPS 2018.",
    "Goodfellow et al. 2015": "I. J. Goodfellow, O. Vinyals, A. M. Saxe. Qualitatively characterizing neural "
    "network optimization problems. ICLR 2015.",
    "Hu et al. 2024": "M. Hu, Y. Cao, A. Li, Z. Li, C. Liu, T. Li, M. Chen, Y. Liu. FedMut: generalized federated "
    "learning via stochastic mutation. AAAI 2024.",
    "Wasserman 2004": "L. Wasserman. All of Statistics, sec. 10.1 (paired comparisons). Springer, 2004.",
}
_CITATION = re.compile("|".join(re.escape(k) for k in sorted(BIBLIOGRAPHY, key=len, reverse=True)))


def ref_id(key: str) -> str:
    """The bibliography entry's anchor: 'Li et al. 2018' -> 'ref-lietal2018'."""
    return "ref-" + "".join(ch for ch in key.lower() if ch.isalnum())


def cited_in(texts: Iterable[str]) -> list[str]:
    """The :data:`BIBLIOGRAPHY` keys the texts cite, in order of first citation."""
    out: list[str] = []
    for t in texts:
        out += [k for k in _CITATION.findall(t) if k not in out]
    return out


def link_citations(text: str) -> str:
    """Every citation of a :data:`BIBLIOGRAPHY` work in an HTML string (outside tags) as a link to its entry."""
    parts = re.split(r"(<[^>]*>)", text)
    return "".join(
        p if p.startswith("<") else _CITATION.sub(lambda m: f"<a href='#{ref_id(m.group())}'>{m.group()}</a>", p)
        for p in parts
    )


# report.csv's columns in words (the page's table headers; the CSV name is the header's tooltip)
COLUMN_NAMES: dict[str, str] = {
    "run": "group",
    "conditions": "measured for",
    "test_acc": "test accuracy",
    "test_loss": "test loss",
    "train_loss": "train loss",
    "gradient_norm": "‖∇L‖",
    "lambda_max": "λmax",
    "lambda_min": "smallest Hessian eigenvalue",
    "trace": "trace",
    "weight_norm": "‖θ‖₂",
}
_SUFFIXES = (
    ("_residual", "Lanczos residual"),
    ("_data_error", "data-sampling error"),
    ("_stderr", "standard error"),
    ("_censored", "not reached"),
)


def column_name(key: str, labels: Mapping[str, str] | None = None) -> str:
    """A report.csv column in words: a measure's own label (``labels``: key -> label), else
    :data:`COLUMN_NAMES`, with its suffix in words ('trace_stderr' -> 'trace: standard error')."""
    labels = labels or {}
    if key in labels:
        return labels[key]
    if key in COLUMN_NAMES:
        return COLUMN_NAMES[key]
    for suffix, words in _SUFFIXES:
        if key.endswith(suffix):
            return f"{column_name(key.removesuffix(suffix), labels)}: {words}"
    if key.startswith("sharpness_"):
        return key.removeprefix("sharpness_").replace("_", " ") + " sharpness"
    if key.startswith("width_"):
        return f"1D width at Δloss {key.removeprefix('width_')}"
    return key.replace("_", " ")


def _meanings(ls: LandscapeSettings, radius: float) -> dict[str, Meaning]:
    rho, sigma, eps = ls.rho, ls.sigma, ls.eps
    n_avg = ls.sharpness_samples
    return {
        "lambda_max": Meaning(
            "λmax",
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


def glossary_has(key: str) -> bool:
    """Whether the section defines the measure ``key`` (its entry's id is ``m-KEY``)."""
    return ("width" if key.startswith("width_") else key) in _meanings(_Defaults(), 1.0)


@dataclass(frozen=True)
class _Defaults:
    rho: float = 0.05
    sigma: float = 0.01
    eps: float = 1e-3
    sharpness_samples: int = 50


def _invariance_text(key: str) -> str:
    inv = invariant_to(key)
    if not inv:
        return "changes under every function-preserving rescaling tested (see the table below)"
    names = [REPARAMETRISATIONS[r].split(":")[0].split(" (")[0] for r in REPARAMETRISATIONS if r in inv]
    missing = [REPARAMETRISATIONS[r].split(":")[0].split(" (")[0] for r in REPARAMETRISATIONS if r not in inv]
    text = "invariant to " + ", ".join(names)
    return text + ("; changes under " + ", ".join(missing) if missing else "")


def glossary_html(
    measures: Sequence[Any],
    settings: ReportSettings,
    *,
    anchor: str = "what-the-measures-mean",
    cited: Sequence[str] = (),
) -> str:
    """The section's HTML for the verdict's rows ``measures`` (:class:`flatfl.analysis.verdict.Measure`), ending
    with a bibliography of the works it cites and of ``cited`` (the rest of the page's citations, :func:`cited_in`)."""
    meanings = _meanings(settings.landscape, getattr(settings, "slice_radius", 1.0))
    cited = list(cited)
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
    cited += [c for c in ("Dinh et al. 2017",) if c not in cited]
    bib = "".join(f"<li id='{ref_id(c)}'>[{html.escape(c)}] {html.escape(BIBLIOGRAPHY[c])}</li>" for c in cited)
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
    notes = "".join(
        f"<li>{_subscripts(html.escape(ln[2:].replace('*', '')))}</li>" for ln in text if ln.startswith("- ")
    )
    return f"<table class='invariance'><tr>{th}</tr>{tr}</table>" + (f"<ul>{notes}</ul>" if notes else "")


def _subscripts(text: str) -> str:
    """'W_{l+1}' and 'W_l' as HTML subscripts (the invariance table's notes are written for markdown)."""
    return re.sub(r"_\{([^}]*)\}|_([A-Za-z0-9]+)", lambda m: f"<sub>{m.group(1) or m.group(2)}</sub>", text)
