"""#29, the report page's words and figures without a browser: per-seed values where an interval over 2-5
seeds would mislead, readable column names, citations linked to a complete bibliography, the straight-line
figure's hover, no plotly placeholder text, ≤ in titles, the algorithm spelled as its paper does."""

from __future__ import annotations

import re

import numpy as np

from flatfl.runs.report_glossary import BIBLIOGRAPHY, COLUMN_NAMES, cited_in, column_name, link_citations, ref_id
from flatfl.runs.report_page import KEY_COLUMNS, summary_text, verdict_table_html


def _row(values, lo, hi, bounds=(0.0, None)):
    n = len(values)
    s = {"n": n, "mean": float(np.mean(values)), "lo": lo, "hi": hi, "values": tuple(values)}
    return {
        "measure": "train_loss", "label": "train loss", "lower_is_better": True, "bounds": bounds,
        "censored": {}, "censor_radius": None, "groups": {"A": s, "B": s},
        "comparisons": {"B": {"winner": None, "verdict": "inconclusive", "paired": None, "resolution": None}},
    }  # fmt: skip


def test_three_seeds_show_their_values_not_a_clipped_interval():
    """n = 3: the cell lists the seeds' values (a clipped t-interval '[0, 0.966]' for a loss reads like a bound);
    n = 6: the interval; the interval stays as the cell's tooltip."""
    three = _row([0.41, 0.52, 0.96], -0.2, 0.966)
    assert summary_text(three["groups"]["A"], bounds=(0.0, None)) == "0.63 (per seed: 0.41, 0.52, 0.96)"
    six = [0.41, 0.52, 0.96, 0.5, 0.6, 0.7]
    assert summary_text({"n": 6, "mean": 0.615, "lo": 0.4, "hi": 0.83, "values": six}) == "0.615 [0.4, 0.83]"
    verdict = [{"reference": "A", "title": "equal round (4)", "condition": "round", "rows": [three]}]
    table = verdict_table_html(verdict, ["A", "B"], {"verdict": "verdict-rule", "round": "where"})
    assert "0.41, 0.52, 0.96" in table and "[0, 0.966]" not in re.sub(r"title='[^']*'", "", table)
    assert "title='95% t-interval over seeds [0, 0.966]'" in table
    assert "href='#verdict-rule'" in table and "href='#where'" in table  # the rules are linked from the table
    # the value first on its own line, the seeds' values and the per-checkpoint error under it in small type
    cell = re.search(r"<td data-label='A, equal round \(4\)'[^>]*>(.*?)</td>", table).group(1)
    assert cell == "0.63<br><small>(per seed: 0.41, 0.52, 0.96)</small>"
    err = {**three["groups"]["A"], "error": 2e-5}
    one = verdict_table_html([{**verdict[0], "rows": [{**three, "groups": {"A": err, "B": err}}]}], ["A", "B"])
    assert "0.63<br><small>(per seed: 0.41, 0.52, 0.96)<br><span style='white-space:nowrap'>±2e-05/ckpt</span>" in one


def test_column_names_are_words():
    """Every column the page shows as a header is named in words (the CSV name is only the tooltip)."""
    cols = [*KEY_COLUMNS, "test_loss", "gradient_norm", "lambda_min", "weight_norm", "sharpness_sam",
            "sharpness_average_adaptive_stderr", "width_0.1", "width_0.1_censored", "width_1_stderr"]  # fmt: skip
    names = [column_name(c, {"sharpness_sam": "SAM sharpness"}) for c in cols]
    assert all(not re.search(r"[a-z]_[a-z0-9]", n) for n in names), names
    assert column_name("trace_stderr") == "trace: standard error"
    assert column_name("width_0.1_censored") == "1D width at Δloss 0.1: not reached"
    assert COLUMN_NAMES["test_acc"] == "test accuracy"


def test_every_citation_links_to_its_entry():
    text = "<p>planes (Li et al. 2018); a ridge (Frankle et al. 2020) <a title='Dinh et al. 2017'>x</a></p>"
    out = link_citations(text)
    assert f"<a href='#{ref_id('Li et al. 2018')}'>Li et al. 2018</a>" in out
    assert f"<a href='#{ref_id('Frankle et al. 2020')}'>Frankle et al. 2020</a>" in out
    assert "title='Dinh et al. 2017'" in out  # inside a tag: left alone
    assert cited_in([text]) == ["Li et al. 2018", "Frankle et al. 2020", "Dinh et al. 2017"]
    assert "Dinh et al. 2017" in BIBLIOGRAPHY and len({ref_id(k) for k in BIBLIOGRAPHY}) == len(BIBLIOGRAPHY)


def test_straight_line_hover_is_whole_and_formatted():
    """The barrier hover: the full group names (plotly cuts a trace's name at 15 characters in its hover box) and
    3 significant digits, not '(−0.2, −0.01819519)'."""
    from flatfl.analysis.report_figures import line_figure

    ts = [-0.2, 0.0, 0.5, 1.0]
    lines = {"fedmut radius=8": {0: {"ts": ts, "loss": [0.5, 0.4, 0.45123456, 0.41], "barrier": 0.0461234}}}
    fig = line_figure(lines, "fedavg-mean", {})
    tr = fig.data[0]
    assert tr.hovertemplate.startswith("fedavg-mean → fedmut radius=8, seed 0 (barrier 0.0461)")
    assert "%{x:.3~g}" in tr.hovertemplate and "%{y:.3~g}" in tr.hovertemplate  # 3 significant digits
    assert tr.hovertemplate.endswith("<extra></extra>")
    assert "θ_t" not in fig.layout.yaxis.title.text


def test_matching_figure_has_no_placeholder_annotation_and_stacks_on_a_phone():
    """The level's and the untrained loss's labels only in the first panel: no annotation without text (plotly.js
    prints such an annotation as 'new text'); a layout patch stacks the panels below 700 px."""
    from flatfl.analysis.matching_figures import matching_figure

    trace = {"rounds": [1, 2, 3], "loss": [2.0, 1.5, 1.2], "smoothed": [2.0, 1.6, 1.3], "settled": 3,
             "first_crossing": 2, "untrained": 2.3}  # fmt: skip
    fig = matching_figure({"A": {0: trace}, "B": {0: trace}}, 1.4, 3)
    texts = [a.text for a in fig.layout.annotations]
    assert None not in texts and "new text" not in texts
    assert sum(t.startswith("level") for t in texts) == 1
    assert "narrow" in fig.layout.meta and len(fig.layout.meta["narrow"]["annotations"]) == len(texts)


def test_algorithm_in_prose_as_its_paper_spells_it():
    from flatfl.runs.groups import PAPER_NAMES, _value_text

    assert _value_text("algo", "fedavg") == "FedAvg" and _value_text("algo", "scaffold") == "SCAFFOLD"
    from flatfl.algorithms import ALGORITHMS

    assert set(ALGORITHMS) <= set(PAPER_NAMES)  # a new algorithm needs its spelling here
