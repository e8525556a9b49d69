"""Matched convergence: the settled rule, refused levels, flagged rounds, and what the report says about them."""

from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pytest

from flatfl.runs.matching import (
    DISPARITY,
    EARLY_FRACTION,
    MIN_DROP,
    SMOOTH_WINDOW,
    Trace,
    level_refusal,
    match_accuracy,
    match_loss,
    moving_median,
    round_warnings,
    settled_index,
)


def _curves(losses: dict[str, list[float]]) -> dict:
    """name -> (loss of round r, saved rounds 0..n-1)."""
    return {k: (lambda r, v=v: v[r], list(range(len(v)))) for k, v in losses.items()}


def test_moving_median_is_the_centred_median_cut_at_the_ends():
    rng = np.random.default_rng(0)
    v = rng.normal(size=23).tolist()
    for w in (1, 3, 5, 8):
        h = w // 2
        want = [statistics.median([v[j] for j in range(len(v)) if abs(j - i) <= h]) for i in range(len(v))]
        assert moving_median(v, w) == pytest.approx(want, abs=0)


def test_settled_index_is_the_start_of_the_last_run_at_or_below_the_level():
    assert settled_index([3, 2, 1, 2, 1, 1], 1.5) == 4
    assert settled_index([1, 1, 1], 1.5) == 0
    assert settled_index([1, 1, 2], 1.5) is None  # above the level at the end: never settled
    assert settled_index([], 1.5) is None


def test_a_transient_dip_is_not_the_matched_round():
    # a noisy descent: rounds 4 and 9 dip far below the level, the loss comes back up and settles from round 13
    loss = [2.3, 2.0, 1.8, 1.6, 0.3, 1.5, 1.4, 1.3, 1.2, 0.4, 1.1, 0.95, 0.8, 0.7, 1.05, 0.6, 0.55, 0.5, 0.5, 0.45]
    lm = match_loss(_curves({"A": loss}), 0.9, None)
    t = lm.traces["A"]
    assert t.first_crossing == 4  # the naive rule: the first raw loss <= 0.9
    # moving median of 5 over rounds 1..19, by hand: round 11 -> median(0.4, 1.1, 0.95, 0.8, 0.7) = 0.8 (a smoothed
    # first crossing), round 12 -> median(1.1, 0.95, 0.8, 0.7, 1.05) = 0.95 (back above), 13 on: <= 0.8
    sm = dict(zip(t.rounds, t.smoothed))
    assert (sm[10], sm[11], sm[12], sm[13], sm[14]) == (0.95, 0.8, 0.95, 0.8, 0.7)
    assert lm.found["A"].round == 13 and t.settled == 13 and lm.found["A"].value == 0.7
    assert t.untrained == 2.3 and lm.window == SMOOTH_WINDOW
    # the late spike above the level (round 14) does not move it: the median ignores one outlier
    assert max(sm[r] for r in range(13, 20)) <= 0.9 < loss[14]


def test_the_matched_round_is_itself_at_the_level():
    # a fast descent (the large- vs small-batch calibration: small-batch SGD at round 5 0.93, then 0.05 on): the
    # window cut at the start makes S_1 = median(0.93, 0.05, 0.04) low, but the model at round 5 is not at 0.33
    loss = [2.3, 0.93, 0.05, 0.04, 0.03, 0.02]
    lm = match_loss(_curves({"A": loss}), 0.33, None)
    assert lm.traces["A"].smoothed[0] <= 0.33 < loss[1]
    assert lm.found["A"].round == 2 and lm.found["A"].value <= 0.33


def test_default_level_is_the_highest_final_moving_median_and_every_run_settles():
    a = [2.3, 1.0, 0.5, 0.4, 0.45, 0.35, 0.3]
    b = [2.3, 1.5, 0.9, 0.6, 0.7, 0.5, 0.9]  # its raw final loss (0.9) is a spike, its median is 0.7
    lm = match_loss(_curves({"A": a, "B": b}), None, 6)
    assert lm.level == pytest.approx(statistics.median([0.7, 0.5, 0.9]))
    # B's medians over rounds 1..6: 0.9, 0.8, 0.7, 0.7, 0.65, 0.7 -> settled from round 3 (its loss 0.6); A's: 0.5,
    # ... -> settled from round 1, but A's own loss there is 1.0 > 0.7: measured at round 2 (0.5), not at round 1
    assert lm.traces["B"].smoothed == pytest.approx((0.9, 0.8, 0.7, 0.7, 0.65, 0.7))
    assert lm.found["B"].round == 3 and lm.found["A"].round == 2 and lm.found["A"].value == 0.5
    lm = match_loss(_curves({"A": a, "B": b}), None, 4)  # only rounds 1..upto count
    assert lm.level == pytest.approx(statistics.median([0.9, 0.6, 0.7]))
    lm = match_loss(_curves({"A": a, "B": b}), 0.45, None)
    assert lm.found["B"].round is None and "never settles" in lm.found["B"].note
    with pytest.raises(ValueError, match="no saved round in 1..0"):  # --at-rounds 0: nothing to set a level from
        match_loss(_curves({"A": a}), None, 0)
    assert match_loss(_curves({"A": a}), 0.5, 0).found["A"].round is None


def test_match_accuracy_picks_the_first_round():
    acc = match_accuracy({"A": ({0: 0.1, 1: 0.5, 2: 0.8}, [0, 1, 2])}, 0.75)
    assert acc["A"].round == 2 and acc["A"].value == 0.8


def _trace(untrained):
    return Trace((1, 2), (1.0, 1.0), (1.0, 1.0), 1, 1, untrained)


def test_a_level_training_did_not_reach_is_refused():
    traces = {"A seed 0": _trace(2.30), "B seed 0": _trace(2.25)}
    why = level_refusal(2.54, traces, math.log(10))
    assert why is not None and "at or above B seed 0's untrained (round 0) loss, 2.25" in why
    assert "ln C = 2.303" in why and "--match-acc" in why
    near = 2.25 * (1 - MIN_DROP / 2)
    assert "less than 10% below" in level_refusal(near, traces, math.log(10))
    assert level_refusal(2.25 * (1 - MIN_DROP) - 1e-9, traces, math.log(10)) is None
    # without a saved round 0, ln C stands in for the untrained loss
    no0 = {"A seed 0": _trace(None)}
    assert "untrained model's loss, 2.303" in level_refusal(2.4, no0, math.log(10))
    assert level_refusal(1.0, no0, math.log(10)) is None
    assert level_refusal(9.0, no0, None) is None  # nothing to compare with: no claim


def test_far_apart_and_early_matched_rounds_are_flagged():
    assert round_warnings("A", "B", {0: 40, 1: 50}, {0: 45, 1: 60}, 100) == []
    said = round_warnings("A", "B", {0: 20, 1: 22, 2: 30}, {0: 60, 1: 45, 2: 70}, 100)
    assert len(said) == 1 and f"more than {DISPARITY:g}x" in said[0] and "A: median round 22, B: 60" in said[0]
    said = round_warnings("A", "B", {0: 40, 1: 9}, {0: 45, 1: 50}, 100)
    assert said == [f"A seed 1 at round 9 settles within the first {EARLY_FRACTION:.0%} of training (round ≤ 10)"]
    assert round_warnings("A", "B", {0: None}, {0: 3}, 100)[0].startswith("B seed 0 at round 3")


def test_a_refused_or_flagged_comparison_gets_no_verdict_unless_the_level_was_given():
    from flatfl.runs.matching import Match
    from flatfl.runs.report import Condition, not_compared

    def rows_comp():
        rows = [{"comparisons": {"B": {"verdict": "flatter: B", "winner": "B"}}}]
        return rows, {"B": {"headline": "B is flatter by lambda_max.", "disagreement": None, "scale_caveat": None}}

    rounds = {"A": {0: Match(3, 1.0)}, "B": {0: Match(60, 1.0)}}
    c = Condition("loss", "t", rounds, 2.5, refused="loss level 2.5 is at or above the untrained loss")
    rows, comp = rows_comp()
    not_compared(c, rows, comp)
    assert rows[0]["comparisons"]["B"] == {"verdict": "not compared: level not reached by training", "winner": None}
    assert comp["B"]["headline"] == "Not compared at this level: loss level 2.5 is at or above the untrained loss."
    c = Condition("loss", "t", rounds, 0.5, warnings={"B": ["far apart"]})
    rows, comp = rows_comp()
    not_compared(c, rows, comp)
    assert rows[0]["comparisons"]["B"]["verdict"] == "not compared: matched rounds not comparable"
    assert "far apart (give the level with --match-loss" in comp["B"]["headline"]
    c.user_level = True  # the user asked for this level: compared, with the warning in words
    rows, comp = rows_comp()
    not_compared(c, rows, comp)
    assert rows[0]["comparisons"]["B"]["verdict"] == "flatter: B"
    assert comp["B"]["headline"] == "B is flatter by lambda_max. Caution: far apart."


# -- a whole report ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def short_runs(tmp_path_factory):
    """FedAvg and FedMut, 2 seeds, 4 rounds at a small learning rate: their loss hardly leaves ln 10."""
    from flatfl.cli import main
    from tests.conftest import TINY

    root = tmp_path_factory.mktemp("short")
    for algo in ("fedavg", "fedmut"):
        for seed in (0, 1):
            args = ["train", *TINY, "--lr", "0.01", "--rounds", "4", "--algo", algo, "--seed", str(seed),
                    "--out", str(root / f"{algo}-s{seed}")]  # fmt: skip
            assert main(args) == 0
    return root


FAST = ["--samples", "150", "--no-surface", "--no-spread", "--trace-matvecs", "0", "--sharpness", "none",
        "--slices", "0", "--no-progress"]  # fmt: skip


def test_report_draws_the_curves_and_says_why_a_level_is_refused(cli, short_runs, tmp_path):
    runs = sorted(short_runs.glob("*-s*"))
    code, stdout, err = cli("report", *runs, "--out", tmp_path / "r", *FAST)
    assert code == 0, err
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    loss = next(c for c in rep["verdict"] if c["condition"] == "loss")
    refused = loss["matching"]["refused"]
    assert refused and "untrained (round 0) loss" in refused and "--match-acc" in refused
    assert {r["comparisons"]["fedmut"]["verdict"] for r in loss["rows"]} == {
        "not compared: level not reached by training"
    }
    # the curves the rule used, for every run, and the equal-round condition still gets its verdicts
    curves = loss["matching"]["curves"]
    assert {(lab, s) for lab, v in curves.items() for s in v} == {(g, s) for g in ("fedavg", "fedmut") for s in "01"}
    t = curves["fedmut"]["1"]
    assert t["rounds"] == [1, 2, 3, 4] and len(t["smoothed"]) == 4 and t["untrained"] > loss["level"] * 0.9
    assert t["smoothed"][0] == pytest.approx(statistics.median(t["loss"][:3]))
    rnd = next(c for c in rep["verdict"] if c["condition"] == "round")
    assert not any(r["comparisons"]["fedmut"]["verdict"].startswith("not compared") for r in rnd["rows"])
    assert "Not compared at this level: loss level" in stdout
    page = (tmp_path / "r" / "report.html").read_text()
    assert "Matched convergence: the loss curves behind equal train loss" in page
    assert "No verdict at this level:" in page and "moving median" in page
    assert (tmp_path / "r" / "matched_loss.png").is_file() and (tmp_path / "r" / "matched_loss.pdf").is_file()
    # given by the user, a level well below the untrained loss is compared: no refusal
    lo = min(min(t["loss"]) for v in curves.values() for t in v.values())
    code, stdout, err = cli("report", *runs, "--out", tmp_path / "r2", *FAST, "--match-loss", f"{lo * 3:.6g}")
    assert code == 0, err
    loss = next(c for c in json.loads((tmp_path / "r2" / "report.json").read_text())["verdict"]
                if c["condition"] == "loss")  # fmt: skip
    assert loss["matching"]["user_level"] is True
