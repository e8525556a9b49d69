"""The report's "What the measures mean" section: per verdict measure its formula, what *flatter*
means for it, what it is invariant to (:mod:`flatfl.analysis.invariance`, established by
``tests/test_invariance.py``), how its own estimation error is measured, and a reference; then a
bibliography of every work the page cites.

The text of each measure is its spec's (:attr:`flatfl.runs.measures.MeasureSpec.meaning`, a
:class:`~flatfl.runs.measures.Meaning`): the section iterates the measures the report switches on, so a newly
registered measure's text appears without a line changed here. Pure text from the report's settings; it
computes nothing.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from flatfl.analysis.invariance import REPARAMETRISATIONS, invariant_to, is_tested, markdown_table
from flatfl.runs.measures import Meaning, registered
from flatfl.runs.settings import ReportSettings

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


def bibliography() -> dict[str, str]:
    """:data:`BIBLIOGRAPHY` (the page's own citations) with every registered measure's ``references``."""
    out = dict(BIBLIOGRAPHY)
    for spec in registered():
        out.update(spec.references)
    return out


def _citation() -> re.Pattern[str]:
    return re.compile("|".join(re.escape(k) for k in sorted(bibliography(), key=len, reverse=True)))


def ref_id(key: str) -> str:
    """The bibliography entry's anchor: 'Li et al. 2018' -> 'ref-lietal2018'."""
    return "ref-" + "".join(ch for ch in key.lower() if ch.isalnum())


def cited_in(texts: Iterable[str]) -> list[str]:
    """The :data:`BIBLIOGRAPHY` keys the texts cite, in order of first citation."""
    out: list[str] = []
    pattern = _citation()
    for t in texts:
        out += [k for k in pattern.findall(t) if k not in out]
    return out


def link_citations(text: str) -> str:
    """Every citation of a :data:`BIBLIOGRAPHY` work in an HTML string (outside tags) as a link to its entry."""
    parts = re.split(r"(<[^>]*>)", text)
    pattern = _citation()
    return "".join(
        p if p.startswith("<") else pattern.sub(lambda m: f"<a href='#{ref_id(m.group())}'>{m.group()}</a>", p)
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


def meanings(settings: ReportSettings) -> dict[str, Meaning]:
    """The page text of every verdict row of the measures ``settings`` switch on (their specs' ``meaning``), by
    row key; a measure without a text has no entry."""
    ls = settings.landscape
    out: dict[str, Meaning] = {}
    for spec in registered():
        st = spec.on(ls, settings)
        if st is not None:
            out.update(spec.meanings(st, settings))
    return out


def glossary_has(key: str, settings: ReportSettings | None = None) -> bool:
    """Whether the section defines the measure ``key`` (its entry's id is ``m-KEY``) under ``settings`` (default:
    the report's default settings)."""
    return key in meanings(settings if settings is not None else ReportSettings())


def _invariance_text(key: str) -> str:
    if not is_tested(key):
        return "not tested by flatfl's reparametrisation tests, so none is claimed"
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
    texts = meanings(settings)
    cited = list(cited)
    items = []
    for m in measures:
        if m.kind != "flatness":
            continue
        mean = texts.get(m.key)
        if mean is None:
            continue
        cited += [c for c in mean.cite if c not in cited]
        refs = "; ".join(html.escape(c) for c in mean.cite)
        items.append(
            f"<dt id='m-{html.escape(m.key)}'><b>{html.escape(m.label)}</b></dt><dd>{mean.formula} "
            f"<i>Flatter</i>: {html.escape(mean.flatter)}. <i>Invariance</i>: {_invariance_text(m.key)}. "
            f"<i>Estimation error</i>: {html.escape(mean.error)}." + (f" ({refs})" if refs else "") + "</dd>"
        )
    table = _table_html(markdown_table())
    cited += [c for c in ("Dinh et al. 2017",) if c not in cited]
    works = bibliography()
    bib = "".join(f"<li id='{ref_id(c)}'>[{html.escape(c)}] {html.escape(works[c])}</li>" for c in cited if c in works)
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
