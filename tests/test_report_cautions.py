"""The answer's cautions and wording on a noisy setting (digits, Dirichlet 0.05, 2 clients a round): at the
equal round a verdict stands but says when the compared models have not lowered their loss on the analysis data 10%
below their untrained loss (the rule that refuses such a level at equal train loss); a comparison that is not made
does not tell the reader how many seeds "would decide" it; flags and exponents are not split across lines."""

from __future__ import annotations

from types import SimpleNamespace

from flatfl.runs.conditions import Condition, _caution_untrained
from flatfl.runs.groups import Group
from flatfl.runs.match_rule import MIN_DROP
from flatfl.runs.matching import Match
from flatfl.runs.verdict_page import answer_html, resolution_text, verdict_text
from flatfl.runs.verdicts import not_compared

UNTRAINED = 2.31


def _group(label: str, algo: str) -> Group:
    g = Group(label, label, algo)
    for s in (0, 1):
        g.runs[s] = SimpleNamespace(path=f"{label}-s{s}")
        g.status[s] = SimpleNamespace(state="complete")
    return g


def _curve(last_loss: float, untrained: float | None = UNTRAINED) -> dict:
    return {"rounds": [1, 2, 3, 4], "loss": [2.3, 2.2, 2.1, last_loss], "untrained": untrained}


def _conditions(curves: dict) -> tuple[Condition, Condition, list[Group]]:
    groups = [_group("fedavg", "fedavg"), _group("fedmut", "fedmut")]
    rounds = {g.label: {s: Match(4, None) for s in (0, 1)} for g in groups}
    rnd = Condition("round", "equal round (4)", rounds)
    loss = Condition("loss", "equal train loss (settled ≤ 2.2)", rounds, 2.2, curves=curves)
    return rnd, loss, groups


def test_equal_round_caution_names_the_runs_near_their_untrained_loss():
    edge = (1 - MIN_DROP) * UNTRAINED  # exactly 10% below: trained enough (the rule is strict)
    rnd, loss, groups = _conditions(
        {"fedavg": {0: _curve(2.3), 1: _curve(edge)}, "fedmut": {0: _curve(2.25), 1: _curve(1.1)}}
    )
    _caution_untrained(rnd, loss, groups, 4)
    assert rnd.cautions == {
        "fedmut": [
            "at round 4, fedavg seed 0 and fedmut seed 0 have not lowered their loss on the analysis data 10% below "
            "the untrained (round 0) loss (fedavg seed 0: 2.3 vs 2.31; fedmut seed 0: 2.25 vs 2.31): the flatness "
            "compared may be that of models near their initialisation -- train longer, or compare at equal test "
            "accuracy with --match-acc"
        ]
    }
    # the verdict stands; the caution is its own sentence (the headline is unchanged)
    rows = [{"comparisons": {"fedmut": {"verdict": "flatter: fedmut", "winner": "fedmut"}}}]
    comp = {"fedmut": {"headline": "fedmut is flatter by λmax.", "disagreement": None, "scale_caveat": None}}
    not_compared(rnd, rows, comp)
    assert rows[0]["comparisons"]["fedmut"]["verdict"] == "flatter: fedmut"
    assert comp["fedmut"]["headline"] == "fedmut is flatter by λmax."
    assert comp["fedmut"]["caution"] == "Caution: " + rnd.cautions["fedmut"][0] + "."
    verdict = [{"title": rnd.title, "reference": "fedavg", "rows": [], "comparisons": comp}]
    page = answer_html(verdict)
    assert page.index("fedmut is flatter by λmax.") < page.index("<p class='differs caution'>Caution: at round 4")
    assert "<span style='white-space:nowrap'>--match-acc</span>" in page
    assert "\n    Caution: at round 4, fedavg seed 0 and fedmut seed 0 " in verdict_text(verdict, ["fedavg", "fedmut"])


def test_no_caution_where_training_lowered_the_loss_or_round_0_is_unknown():
    rnd, loss, groups = _conditions(
        {"fedavg": {0: _curve(1.0), 1: _curve(2.3, None)}, "fedmut": {0: _curve(1.2), 1: _curve(2.0)}}
    )
    _caution_untrained(rnd, loss, groups, 4)
    assert rnd.cautions == {}
    rnd.cautions.clear()
    _caution_untrained(rnd, loss, groups, 5)  # the equal round is not on the curve: nothing to say
    assert rnd.cautions == {}


def test_a_comparison_not_made_names_no_seeds_that_would_decide_it():
    rounds = {lab: {s: Match(None, None, "never settles") for s in (0, 1)} for lab in ("fedavg", "fedmut")}
    c = Condition("loss", "t", rounds, 2.66, refused="loss level 2.66 is at or above the untrained loss")
    resolution = {"resolves": 41.6, "margin": 1.25, "seeds": 3, "text": "inconclusive at n = 2: about 3 seeds"}
    rows = [{"comparisons": {"fedmut": {"verdict": "inconclusive", "winner": None, "resolution": resolution,
                                        "paired": {"log": True, "n": 2}}}}]  # fmt: skip
    comp = {"fedmut": {"headline": "h", "disagreement": "d", "scale_caveat": "s",
                       "inconclusive": {"λmax": "inconclusive at n = 2: about 3 seeds would decide it"}}}  # fmt: skip
    not_compared(c, rows, comp)
    cell = rows[0]["comparisons"]["fedmut"]
    assert cell["verdict"] == "not compared: level not reached by training"
    assert comp["fedmut"]["inconclusive"] == {} and comp["fedmut"]["caution"] is None
    assert resolution_text(cell) == ""  # no "resolves ×41.6" / "about 3 seeds" beside "not compared"
    assert cell["resolution"]["seeds"] == 3  # verdict.csv keeps the numbers
    verdict = [{"title": "equal train loss", "reference": "fedavg", "comparisons": comp,
                "rows": [{"label": "λmax", "groups": {}, "censored": {}, **rows[0]}]}]  # fmt: skip
    text = verdict_text(verdict, ["fedavg", "fedmut"])
    assert "would decide" not in text and "not compared: level not reached by training" in text


def test_flags_and_exponents_stay_on_one_line():
    """The page keeps '--slice-radius' and '±2e-05/ckpt' whole (a browser breaks a line after a hyphen)."""
    from flatfl.runs.verdict_page import text_html

    nowrap = "<span style='white-space:nowrap'>{}</span>"
    assert text_html("73.9 ±2e-05/ckpt, ratio ×3.62e+03 (raise --slice-radius) <x>") == (
        f"73.9 {nowrap.format('±2e-05/ckpt')}, ratio ×{nowrap.format('3.62e+03')} "
        f"(raise {nowrap.format('--slice-radius')}) &lt;x&gt;"
    )
    assert text_html("loss 2.308 - 0.1, x-y") == "loss 2.308 - 0.1, x-y"  # plain hyphens and numbers untouched


def test_one_seed_pair_left_by_an_unreached_level_is_named(monkeypatch):
    """digits, Dirichlet 0.05, --match-acc 0.2: fedmut seed 1 never reaches 0.2, so one seed pair remains -- the
    answer says which run is missing instead of "one seed per group ... train more seeds" (each group has two)."""
    import flatfl.runs.verdicts as verdicts_mod
    from flatfl.analysis.verdict import Measure

    monkeypatch.setattr(verdicts_mod, "add_differences", lambda comp, ref, g: None)  # no run configs here
    groups = [_group("fedavg", "fedavg"), _group("fedmut", "fedmut")]
    never = Match(None, None, "never reaches accuracy 0.2")
    rounds = {"fedavg": {0: Match(18, 0.21), 1: Match(37, 0.21)}, "fedmut": {0: Match(27, 0.2), 1: never}}
    acc = Condition("acc", "equal test accuracy (≥ 0.2)", rounds, 0.2, user_level=True)
    acc.values = {"fedavg": {0: {"lambda_max": 32.3}, 1: {"lambda_max": 50.8}}, "fedmut": {0: {"lambda_max": 1.0}}}
    (out,) = verdicts_mod.verdicts(groups, [acc], [Measure("lambda_max", "λmax")])
    assert out["rows"][0]["comparisons"]["fedmut"]["verdict"] == "one seed: no interval"
    assert out["comparisons"]["fedmut"]["headline"] == (
        "One seed pair at this level (fedmut seed 1 never reaches accuracy 0.2): no interval, so no verdict."
    )
    acc.rounds["fedmut"][1] = Match(30, 0.2)  # every run placed, one seed each would still say "one seed per group"
    groups[0].runs.pop(1), groups[1].runs.pop(1)
    (out,) = verdicts_mod.verdicts(groups, [acc], [Measure("lambda_max", "λmax")])
    assert out["comparisons"]["fedmut"]["headline"].startswith("One seed per group: no interval")


def test_connectivity_panel_titles_break_before_the_condition():
    """The connectivity figure's panel titles: the path, then the condition on its own line -- also when a group
    label holds ', ' (labels join the settings that tell groups apart that way); one legend entry per seed."""
    from flatfl.runs.connectivity_page import Trace, _figure

    path = Trace("seed 0 (rounds 4→4)", "#000000", [0.0, 1.0], [1.0, 2.0], [1.0, 1.5], "seed 0", "seed 0")
    fig = _figure([("fedavg weighted=True, lr=0.1 → fedmut, equal round (4)", [path]),
                   ("fedavg weighted=True, lr=0.1 → fedmut, equal test accuracy (≥ 0.2)", [path])])  # fmt: skip
    assert [a.text for a in fig.layout.annotations] == [
        "fedavg weighted=True, lr=0.1 → fedmut<br>equal round (4)",
        "fedavg weighted=True, lr=0.1 → fedmut<br>equal test accuracy (≥ 0.2)",
    ]
    assert [t.name for t in fig.data if t.showlegend is not False] == [
        "seed 0", "straight line (1 − t)·a + t·b", "trained Bézier curve"
    ]  # fmt: skip
    assert [a["text"] for a in fig.layout.meta["narrow"]["annotations"]] == [a.text for a in fig.layout.annotations]
