"""The verdict: statistics against scipy, widths and slices against closed forms and direct evaluation,
and whole reports whose answer is known by construction."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from flatfl.analysis.invariance import invariant_to
from flatfl.analysis.verdict import (
    Measure,
    disagreement,
    headline,
    paired,
    resolution,
    summarize,
    t_interval,
    verdict,
    winner,
)
from tests.test_cli import _one_line_error

LAM = Measure("lambda_max", "lambda_max")
WIDTH = Measure("width_0.1", "1D width", lower_is_better=False)
ACC = Measure("test_acc", "test accuracy", lower_is_better=False, kind="performance")


def test_t_interval_matches_scipy():
    vals = [3.1, 2.4, 5.0, 4.2]
    mean, lo, hi = t_interval(vals)
    want = stats.t.interval(0.95, len(vals) - 1, loc=np.mean(vals), scale=stats.sem(vals))
    assert mean == pytest.approx(np.mean(vals)) and (lo, hi) == pytest.approx(want, rel=1e-12)
    assert t_interval([2.0]) == (2.0, None, None)
    s = summarize([1.0, float("nan"), 3.0, None])
    assert s.n == 2 and s.values == (1.0, 3.0)
    assert summarize([float("inf")]) is None


def test_paired_verdicts_by_construction():
    same = paired({0: 5.0, 1: 6.0, 2: 7.0}, {0: 5.0, 1: 6.0, 2: 7.0})
    assert (same.mean, same.lo, same.hi) == (0.0, 0.0, 0.0)
    assert verdict(LAM, same, "A", "B") == "no clear difference"
    lower = paired({0: 2.0, 1: 2.5, 2: 1.9}, {0: 4.0, 1: 4.4, 2: 4.1})  # A lower on every seed
    assert lower.agree == 3 and lower.hi < 0 and not lower.log
    # as ratios: one seed ten times larger does not swamp a consistent factor 2
    a, b = {0: 20.0, 1: 1.0, 2: 1.1}, {0: 40.0, 1: 2.1, 2: 2.0}
    assert verdict(LAM, paired(a, b), "A", "B") == "inconclusive"
    r = paired(a, b, ratio=True)
    assert r.log and verdict(LAM, r, "A", "B") == "flatter: A"
    logs = [np.log(a[s] / b[s]) for s in (0, 1, 2)]
    assert (r.lo, r.hi) == pytest.approx(stats.t.interval(0.95, 2, loc=np.mean(logs), scale=stats.sem(logs)))
    assert not paired({0: -1.0, 1: 2.0}, {0: 1.0, 1: 1.0}, ratio=True).log  # a value <= 0: plain differences
    assert verdict(LAM, lower, "A", "B") == "flatter: A"  # lower curvature: flatter
    assert verdict(WIDTH, lower, "A", "B") == "flatter: B"  # a smaller width: sharper
    assert verdict(ACC, lower, "A", "B") == "better: B"
    noisy = paired({0: 1.0, 1: 3.0}, {0: 2.0, 1: 1.5})  # signs disagree: the interval holds 0 and is wide
    assert noisy.agree == 1 and verdict(LAM, noisy, "A", "B") == "inconclusive"
    assert verdict(LAM, paired({0: 1.0}, {0: 2.0}), "A", "B") == "one seed: no interval"
    assert verdict(LAM, paired({0: 1.0}, {1: 2.0}), "A", "B") == "not measured"  # no common seed


def test_disagreement_and_headline_name_the_measures():
    ms = [LAM, Measure("sam", "SAM"), WIDTH, ACC]
    vs = {"lambda_max": "flatter: B", "sam": "flatter: A", "width_0.1": "no clear difference", "test_acc": "better: A"}
    text = disagreement(ms, vs)
    assert text == "The measures disagree: lambda_max say B is flatter; SAM say A is flatter."
    assert headline(ms, vs, "A", "B").startswith("Split answer: A is flatter by 1 of 3 flatness measures: SAM")
    agree = {"lambda_max": "flatter: B", "sam": "flatter: B", "width_0.1": "no clear difference"}
    assert disagreement(ms, agree) is None  # performance rows never count as a flatness vote
    assert headline(ms, agree, "A", "B") == (
        "B is flatter by 2 of 3 flatness measures: lambda_max and SAM (not invariant to any tested rescaling); "
        "no clear difference by 1D width."
    )
    # an inconclusive measure neither agrees nor disagrees
    assert disagreement(ms, vs | {"sam": "inconclusive"}) is None


def test_width_closed_forms():
    from flatfl.analysis.slices import symmetric_grid, width

    ts = symmetric_grid(1.0, 20)  # step 0.05
    assert ts[20] == 0.0 and ts[0] == -1.0 and ts[-1] == 1.0
    m = np.where(ts > 0, ts**2, 4 * ts**2)  # right branch t^2, left 4 t^2
    w, censored = width(ts, m, 0.25)  # right crossing 0.5, left 0.25: both on the grid
    assert w == pytest.approx(0.75, abs=1e-12) and not censored
    # between grid points: linear interpolation of the piecewise-linear curve (exact for a linear m)
    w, _ = width(ts, 2 * np.abs(ts), 0.33)
    assert w == pytest.approx(0.33, abs=1e-12)
    w, censored = width(ts, 0.01 * ts**2, 1.0)  # never reached: the grid's width, flagged
    assert w == 2.0 and censored


def test_random_slices_equal_direct_float64_evaluation():
    from flatfl.analysis.operators import ModelLoss
    from flatfl.analysis.slices import random_slices, symmetric_grid
    from flatfl.analysis.surfaces import random_directions

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3)).double()
    x, y = torch.randn(40, 5, dtype=torch.float64), torch.randint(0, 3, (40,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    obj = ModelLoss(model, x, y, batch_size=16)
    ts = symmetric_grid(0.8, 4)
    sl = random_slices(obj, ts, num_directions=3, seed=11)
    assert sl.delta.shape == (3, 9) and np.all(sl.delta[:, 4] == 0.0)
    theta = obj.flat()
    for k in range(3):
        (d,) = random_directions(obj, 1, torch.Generator().manual_seed(11 + k))
        for j, t in enumerate(ts):
            params = obj.unflat(theta + float(t) * d)
            with torch.no_grad():
                out = torch.func.functional_call(model, params, (x,))
            with torch.no_grad():
                want = float(F.cross_entropy(out, y)) - float(F.cross_entropy(model(x), y))
            assert sl.delta[k, j] == pytest.approx(want, abs=1e-12)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])  # the model is never perturbed


def test_line_slice_barrier_on_a_known_curve():
    from flatfl.analysis.operators import ModelLoss
    from flatfl.analysis.slices import line_grid, line_slice

    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)).double()
    x, y = torch.randn(30, 4, dtype=torch.float64), torch.randint(0, 3, (30,))
    obj = ModelLoss(model, x, y)
    a = obj.flat()
    b = a + torch.randn_like(a)
    ts = line_grid(10, 0.2)
    assert (ts == 0.0).sum() == 1 and (ts == 1.0).sum() == 1
    ln = line_slice(obj, a, b, ts)
    direct = [float(obj.loss((1 - t) * a + t * b)) for t in ts]
    assert ln.loss == pytest.approx(direct, rel=1e-10)
    inside = (ts >= 0) & (ts <= 1)
    l0, l1 = direct[int(np.flatnonzero(ts == 0)[0])], direct[int(np.flatnonzero(ts == 1)[0])]
    chord = (1 - ts[inside]) * l0 + ts[inside] * l1
    assert ln.barrier == pytest.approx(float(np.max(np.array(direct)[inside] - chord)), rel=1e-10)


# -- whole reports with a known answer ------------------------------------------------------
FAST = ["--at-rounds", "3", "--samples", "150", "--no-surface", "--no-spread", "--trace-matvecs", "0",
        "--sharpness", "none", "--slices", "2", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """FedAvg and FedProx with mu = 0 (the same models bit for bit), seeds 0, 1 and 2."""
    from flatfl.cli import main
    from tests.conftest import TINY

    root = tmp_path_factory.mktemp("twins")
    for algo, extra in (("fedavg", []), ("fedprox", ["--mu", "0"])):
        for seed in (0, 1, 2):
            out = root / f"{algo}-s{seed}"
            args = ["train", *TINY, "--rounds", "3", "--algo", algo, "--seed", str(seed), *extra, "--out", str(out)]
            assert main(args) == 0
    return root


def _verdicts(out, condition="round"):
    rep = json.loads((out / "report.json").read_text())
    cond = next(c for c in rep["verdict"] if c["condition"] == condition)
    return rep, {r["measure"]: next(iter(r["comparisons"].values()))["verdict"] for r in cond["rows"]}


def test_identical_models_give_no_clear_difference(cli, twins, tmp_path):
    runs = [twins / n for n in ("fedavg-s0", "fedavg-s1", "fedprox-s0", "fedprox-s1")]
    code, stdout, err = cli("report", *runs, "--out", tmp_path / "r", *FAST)
    assert code == 0, err
    rep, vs = _verdicts(tmp_path / "r")
    assert list(rep["groups"]) == ["fedavg", "fedprox"]
    # 3 rounds leave the loss near ln 10: equal train loss is refused (matching.level_refusal), not "identical"
    _, vs = _verdicts(tmp_path / "r", "loss")
    assert set(vs.values()) == {"not compared: level not reached by training"}
    for cond in ("round",):
        rep, vs = _verdicts(tmp_path / "r", cond)
        rows = next(c for c in rep["verdict"] if c["condition"] == cond)["rows"]
        censored = {r["measure"] for r in rows if r["censored"]["fedavg"]}
        # a width never reached within the slice radius is only a lower bound: no verdict, not "identical"
        assert {k: v for k, v in vs.items() if k in censored} == {
            k: "no verdict: 4 of 4 widths not reached within ±1 (raise --slice-radius)" for k in censored
        }
        assert {v for k, v in vs.items() if k not in censored} == {"no clear difference"}, vs
    assert censored, "the tiny runs' widths at Δloss 1 are reached within ±1: this test no longer covers censoring"
    assert "No clear difference between fedavg and fedprox by any of the" in stdout
    assert stdout.index("The answer:") < stdout.index("wrote ") < stdout.index("not reached within ±1")
    rows = list(csv.DictReader(open(tmp_path / "r" / "verdict.csv")))
    assert {r["condition"] for r in rows} == {"round", "loss"}
    assert {r["diff_mean"] for r in rows} == {"0.0", ""}  # identical, or censored (no comparison)
    # each estimate's own error is stored per checkpoint and shown beside the value, in every output
    lam = next(r for r in rows if r["measure"] == "lambda_max" and r["condition"] == "round")
    assert float(lam["a_error"]) >= 0 and float(lam["resolves"]) == 1.0 and lam["margin"] != ""
    per_ckpt = list(csv.DictReader(open(tmp_path / "r" / "report.csv")))
    assert all(float(r["width_0.1_stderr"]) >= 0 for r in per_ckpt)  # the bootstrap spread over the 2 directions
    assert all(float(r["lambda_max_residual"]) >= 0 for r in per_ckpt)
    rep_rows = next(c for c in rep["verdict"] if c["condition"] == "round")["rows"]
    lam_row = next(r for r in rep_rows if r["measure"] == "lambda_max")
    assert set(lam_row["groups"]["fedavg"]["errors"]) == {"0", "1"} and lam_row["error_kind"] == "residual"
    assert lam_row["comparisons"]["fedprox"]["resolution"]["resolves"] == 1.0
    html = (tmp_path / "r" / "report.html").read_text()
    body = html[html.index("<body>") :]
    assert "/ckpt" in body[body.index("<table") :] and body.index("class='answer'") < body.index("<table")


def _reparametrize(run_dir, alpha):
    """Scale fc1 (weights and bias) by alpha and fc2's weights by 1/alpha in every round: the same
    function (ReLU is positively homogeneous), a Hessian ~alpha^2 larger in fc2's weights (Dinh et al. 2017)."""
    from flatfl import checkpoint as ckpt

    info = ckpt.read_run_json(run_dir)
    for r in ckpt.list_rounds(run_dir):
        state, meta = ckpt.load_tensors(ckpt.round_path(run_dir, r))
        state["fc1.weight"] = state["fc1.weight"] * alpha
        state["fc1.bias"] = state["fc1.bias"] * alpha
        state["fc2.weight"] = state["fc2.weight"] / alpha
        ckpt.save_round(run_dir, r, state, meta["config"], info["identity"])


def test_a_sharpened_copy_is_found_sharper(cli, twins, tmp_path):
    for s in (0, 1, 2):
        shutil.copytree(twins / f"fedprox-s{s}", tmp_path / f"sharp-s{s}")
        _reparametrize(tmp_path / f"sharp-s{s}", 4.0)
    runs = [twins / f"fedavg-s{s}" for s in (0, 1, 2)] + [tmp_path / f"sharp-s{s}" for s in (0, 1, 2)]
    code, stdout, err = cli("report", *runs, "--out", tmp_path / "r", *FAST, "--no-match", "--slice-radius", "10",
                            "--label", f"{tmp_path / 'sharp-s0'}=rescaled")  # fmt: skip
    assert code == 0, err
    rep, vs = _verdicts(tmp_path / "r")
    assert list(rep["groups"]) == ["fedavg", "rescaled"]
    assert vs["lambda_max"] == "flatter: fedavg"  # the same function, a sharper parametrisation
    assert vs["test_acc"] == "no clear difference"  # the same predictions
    assert vs["width_0.1"] == "no clear difference"  # filter-normalised directions: invariant to layer-wise rescaling
    lam = next(r for r in rep["verdict"][0]["rows"] if r["measure"] == "lambda_max")
    assert lam["comparisons"]["rescaled"]["paired"]["agree"] == 3


def test_diverged_runs_are_listed_not_averaged(cli, twins, tmp_path):
    for n in ("fedavg-s0", "fedavg-s1", "fedprox-s0", "fedprox-s1"):
        shutil.copytree(twins / n, tmp_path / n)
    (tmp_path / "fedprox-s1" / "diverged.json").write_text(json.dumps({"round": 3, "message": "round 3: NaN"}))
    runs = [tmp_path / n for n in ("fedavg-s0", "fedavg-s1", "fedprox-s0", "fedprox-s1")]
    code, stdout, err = cli("report", *runs, "--out", tmp_path / "r", *FAST, "--no-match")
    assert code == 0, err
    rep, vs = _verdicts(tmp_path / "r")
    assert rep["groups"]["fedprox"]["runs"]["1"]["status"]["state"] == "diverged"
    lam = next(r for r in rep["verdict"][0]["rows"] if r["measure"] == "lambda_max")
    assert lam["groups"]["fedprox"]["n"] == 1 and lam["comparisons"]["fedprox"]["paired"]["n"] == 1
    assert vs["lambda_max"] == "one seed: no interval"
    html = (tmp_path / "r" / "report.html").read_text()
    assert "Diverged runs, left out of every mean" in html and "round 3: NaN" in html


def test_matched_loss_rounds_are_where_the_moving_median_settles(cli, twins, tmp_path):
    from flatfl.analysis.operators import ModelLoss
    from flatfl.runs.landscape import select_data
    from flatfl.runs.matching import moving_median
    from flatfl.runs.run import Run

    runs = [twins / "fedavg-s0", twins / "fedavg-s1"]
    code, _, err = cli("report", *runs, "--out", tmp_path / "r", *FAST, "--match-loss", "1.6")
    assert code == 0, err
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    cond = next(c for c in rep["verdict"] if c["condition"] == "loss")
    assert cond["level"] == 1.6
    for seed, m in cond["rounds"]["fedavg"].items():
        run = Run.open(twins / f"fedavg-s{seed}")
        x, y, _ = select_data(run, "train", 150, 0)
        rs = [r for r in run.rounds() if r >= 1]
        sm = moving_median([float(ModelLoss(run.model(r), x, y).loss()) for r in rs])
        want = next((r for i, r in enumerate(rs) if all(v <= 1.6 for v in sm[i:])), None)
        assert m["round"] == want


def test_mixed_local_optimizers_are_refused(cli, twins, tmp_path):
    from flatfl.cli import main
    from tests.conftest import TINY

    other = tmp_path / "m"
    assert main(["train", *TINY, "--rounds", "1", "--algo", "fedprox", "--momentum", "0.3", "--out", str(other)]) == 0
    code, _, err = cli("report", twins / "fedavg-s0", other, "--out", tmp_path / "r", *FAST)
    _one_line_error(code, err, "momentum", "--allow-mixed-optimizers")
    code, _, err = cli("report", twins / "fedavg-s0", twins / "fedavg-s0", "--out", tmp_path / "r", *FAST)
    _one_line_error(code, err, "same seed")


def test_divergence_leaves_a_marker_the_report_reads(cli, tmp_path):
    from flatfl.runs.groups import run_status
    from flatfl.runs.run import Run
    from tests.conftest import TINY

    code, _, err = cli("train", *TINY, "--algo", "fedmut", "--rounds", "6", "--lr", "50", "--momentum", "0.9",
                       "--out", tmp_path / "bad")  # fmt: skip
    assert code == 1 and "diverged" in err
    marker = json.loads((tmp_path / "bad" / "diverged.json").read_text())
    st = run_status(Run.open(tmp_path / "bad"))
    assert st.state == "diverged" and st.last == marker["last_finite_round"] < marker["round"]
    assert st.why in err


ADAPT = Measure("sharpness_adaptive_l2", "adaptive sharpness (L2)", invariant_to=invariant_to("sharpness_adaptive_l2"))
AVG = Measure(
    "sharpness_average_adaptive", "average adaptive sharpness", invariant_to=invariant_to("sharpness_average_adaptive")
)
FNW = Measure("width_0.1", "1D width", lower_is_better=False, invariant_to=invariant_to("width_0.1"))


def test_caution_follows_the_invariance_table():
    """The demo's case: lambda_max and the filter-normalised widths favour B, adaptive sharpness is inconclusive."""
    from flatfl.analysis.verdict import scale_caveat

    ms = [LAM, FNW, ADAPT, AVG, ACC]
    demo = {"lambda_max": "flatter: B", "width_0.1": "flatter: B", ADAPT.key: "inconclusive",
            AVG.key: "no clear difference", "test_acc": "better: B"}  # fmt: skip
    text = scale_caveat(ms, demo, norm_ratio=0.8, names=("A", "B"))
    # the widths are named with what they are invariant to, never as scale-dependent
    assert "1D width (invariant to layer-wise, pre-BatchNorm filter and output-layer rescaling)" in text
    assert "lambda_max (not invariant to any tested rescaling)" in text
    # the only rescalings no favouring one resists
    assert "none of them is invariant to filter-wise and output-neuron rescaling" in text
    assert "adaptive sharpness (L2): inconclusive; average adaptive sharpness: no clear difference" in text
    assert "‖θ‖₂ ratio A/B is ×0.8" in text and "scale-dependent" not in text
    # only inconclusive witnesses: they neither confirm nor rule it out
    assert "neither confirm nor rule out" in scale_caveat(ms, demo | {AVG.key: "inconclusive"})
    assert scale_caveat(ms, demo | {AVG.key: "flatter: B"}) is None  # an invariant-to-everything measure agrees
    layer_only = {"lambda_max": "flatter: B", "width_0.1": "no clear difference", "test_acc": "better: B"}
    text = scale_caveat([LAM, FNW, ACC], layer_only)
    assert "layer-wise, pre-BatchNorm filter and output-layer rescaling" in text
    assert "1D width: no clear difference" in text
    assert scale_caveat([LAM, ACC], {"lambda_max": "flatter: B"}) is None  # no invariant measure compared
    line = headline(ms, demo, "A", "B", pairs={k: paired({0: 1.0, 1: 2.0, 2: 3.0}, {0: 2.0, 1: 4.1, 2: 6.0},
                                                         ratio=True) for k in demo})  # fmt: skip
    assert line == (
        "B is flatter by 2 of 4 flatness measures on 3/3 seeds: lambda_max (not invariant to any tested rescaling), "
        "1D width (invariant to layer-wise, pre-BatchNorm filter and output-layer rescaling); no clear difference "
        "by average "
        "adaptive sharpness; adaptive sharpness (L2) inconclusive at n = 3; test accuracy better for B."
    )


def test_identical_values_give_no_clear_difference_with_zero_spread():
    same = paired({0: 5.0, 1: 6.0, 2: 7.0}, {0: 5.0, 1: 6.0, 2: 7.0}, ratio=True)
    assert same.sd == 0.0 and verdict(LAM, same, "A", "B") == "no clear difference"
    res = resolution(LAM, same)
    assert res.resolves == 1.0 and res.half_width == 0.0 and res.text == ""
    # a constant nonzero log-ratio with zero spread is a difference seen on every seed
    const = paired({0: 2.0, 1: 4.0}, {0: 1.0, 1: 2.0}, ratio=True)
    assert const.sd == 0.0 and verdict(LAM, const, "A", "B") == "flatter: B"
    # an interval that excludes 1 but lies within x1/1.25..x1.25 is equivalent, not flatter (float noise, tiny gaps)
    tiny = paired({0: 1.0 + 1e-7, 1: 1.0 + 2e-7, 2: 1.0 + 1.5e-7}, {0: 1.0, 1: 1.0, 2: 1.0}, ratio=True)
    assert tiny.lo > 0 and verdict(LAM, tiny, "A", "B") == "no clear difference"
    assert winner(LAM, tiny, "A", "B") is None


def test_inconclusive_says_how_many_seeds_would_decide():
    a, b = {0: 1.3, 1: 0.8, 2: 1.1}, {0: 1.0, 1: 1.0, 2: 1.0}
    p = paired(a, b, ratio=True)
    assert p.lo < 0 < p.hi and verdict(LAM, p, "A", "B") == "inconclusive"
    res = resolution(LAM, p)
    sd = float(np.std(np.log([1.3, 0.8, 1.1]), ddof=1))
    assert p.sd == pytest.approx(sd)
    half = stats.t.ppf(0.975, 2) * sd / np.sqrt(3)
    assert res.resolves == pytest.approx(np.exp(half)) and res.margin == pytest.approx(np.log(1.25))
    target = max(abs(p.mean), np.log(1.25) - abs(p.mean))
    n = res.seeds  # the smallest n whose half-width is at most the target, at the same spread
    assert stats.t.ppf(0.975, n - 1) * sd / np.sqrt(n) <= target < stats.t.ppf(0.975, n - 2) * sd / np.sqrt(n - 1)
    assert f"about {n} seeds would decide it" in res.text and "inconclusive at n = 3" in res.text
    assert res.budget is None  # no per-checkpoint error known: no budget estimate


def test_noisy_estimates_are_inconclusive_and_name_the_budget():
    """Synthetic per-seed values: equal truth, each estimate off by its own large Monte Carlo error."""
    truth, err = {0: 1.0, 1: 1.2, 2: 0.9}, 0.5
    a = {0: 1.3, 1: 0.95, 2: 1.15}  # truth + an error of about err
    b = {0: 0.8, 1: 1.45, 2: 0.75}
    noisy = Measure("trace", "trace", error="trace_stderr", budget=(30, "HVPs"))
    errs = {s: err for s in truth}
    p = paired(a, b, ratio=True, errors_a=errs, errors_b=errs)
    assert verdict(noisy, p, "A", "B") == "inconclusive"
    want_noise = np.sqrt(np.mean([(err / a[s]) ** 2 + (err / b[s]) ** 2 for s in truth]))
    assert p.noise == pytest.approx(want_noise)
    res = resolution(noisy, p)
    target = max(abs(p.mean), np.log(1.25) - abs(p.mean))
    v_star = (target * np.sqrt(3) / stats.t.ppf(0.975, 2)) ** 2
    seed_var = max(p.sd**2 - p.noise**2, 0.0)
    assert v_star > seed_var
    assert res.budget == int(np.ceil(30 * p.noise**2 / (v_star - seed_var)))
    assert f"{res.budget} HVPs per checkpoint (now 30) with 3 seeds" in res.text


def test_differences_use_stated_margins():
    from flatfl.analysis.verdict import ACCURACY_MARGIN, margin

    acc = Measure("test_acc", "test accuracy", lower_is_better=False, kind="performance", ratio=False, margin=0.02)
    close = paired({0: 0.801, 1: 0.805, 2: 0.79}, {0: 0.80, 1: 0.806, 2: 0.792})
    assert margin(acc, close) == ACCURACY_MARGIN and verdict(acc, close, "A", "B") == "no clear difference"
    wide = paired({0: 0.85, 1: 0.76, 2: 0.80}, {0: 0.80, 1: 0.80, 2: 0.80})
    assert verdict(acc, wide, "A", "B") == "inconclusive"
    # average adaptive sharpness can be <= 0: compared as a difference, margin 25% of its mean magnitude
    avg = Measure("sharpness_average_adaptive", "average adaptive sharpness")
    signed = paired({0: -1e-4, 1: 3e-4, 2: 2e-4}, {0: 2e-4, 1: 1e-4, 2: -1e-4}, ratio=True)
    assert not signed.log and margin(avg, signed) == pytest.approx(0.25 * np.mean([1.5e-4, 2e-4, 1.5e-4]))
    assert verdict(avg, signed, "A", "B") == "inconclusive"


def test_the_rule_is_stated_in_help_page_and_docs(capsys):
    import re
    from pathlib import Path

    from flatfl.analysis.verdict import VERDICT_RULE
    from flatfl.cli import main
    from flatfl.runs.report import ReportSettings
    from flatfl.runs.report_page import _settings_note

    flat = lambda t: re.sub(r"-\s+", "-", " ".join(t.split()))  # noqa: E731 (argparse and markdown wrap lines)
    assert main(["report", "--help"]) == 0
    assert flat(VERDICT_RULE) in flat(capsys.readouterr().out)
    assert VERDICT_RULE in _settings_note(ReportSettings())
    docs = (Path(__file__).parents[1] / "docs" / "landscapes.md").read_text()
    assert flat(VERDICT_RULE) in flat(docs)


def test_width_stderr_is_the_bootstrap_spread_over_directions():
    from flatfl.analysis.slices import symmetric_grid, width, width_stderr

    ts = symmetric_grid(1.0, 20)
    curv = np.array([1.0, 2.0, 4.0, 8.0])
    delta = curv[:, None] * ts[None, :] ** 2  # direction k: c_k t^2
    se = width_stderr(ts, delta, 0.1, resamples=400, seed=1)
    rng = np.random.default_rng(1)
    idx = rng.integers(0, 4, size=(400, 4))
    want = np.std([width(ts, delta[i].mean(axis=0), 0.1)[0] for i in idx], ddof=1)
    assert se == pytest.approx(want) and se > 0
    assert width_stderr(ts, np.repeat(delta[:1], 4, axis=0), 0.1) == pytest.approx(0.0, abs=1e-12)  # no spread
    assert width_stderr(ts, delta[:1], 0.1) is None


def _group(label, seeds, diverged=()):
    from flatfl.runs.groups import Group, RunStatus

    g = Group(label, label, label)
    for s in seeds:
        g.runs[s], g.status[s] = None, RunStatus("complete", 3, 3)
    for s in diverged:
        g.runs[s], g.status[s] = None, RunStatus("diverged", 2, 3, "NaN")
    return g


def test_not_compared_says_why():
    from flatfl.runs.matching import Match
    from flatfl.runs.report import Condition, why_not_compared

    a, b = _group("A", [0, 1]), _group("B", [2, 3])
    cond = Condition("round", "equal round (3)", {"A": {0: Match(3, None), 1: Match(3, None)},
                                                  "B": {2: Match(3, None), 3: Match(3, None)}})  # fmt: skip
    assert why_not_compared(a, b, cond) == "A (seeds 0, 1) and B (seeds 2, 3) share no seed to pair"
    assert why_not_compared(a, b, cond, short=True) == "no shared seed"
    b = _group("B", [0, 1])
    never = Match(None, None, "never reaches accuracy 0.99")
    acc = Condition("acc", "equal test accuracy (≥ 0.99)", {"A": {0: never, 1: Match(3, 0.995)},
                                                             "B": {0: Match(2, 0.99), 1: never}})  # fmt: skip
    assert why_not_compared(a, b, acc) == "A seed 0 and B seed 1 never reach accuracy 0.99"
    acc.rounds["A"][1] = never
    assert why_not_compared(a, b, acc) == "A seeds 0, 1 and B seed 1 never reach accuracy 0.99"
    acc.rounds["A"][1] = Match(3, 0.995)
    assert why_not_compared(a, b, acc, short=True) == "accuracy level not reached"
    acc.rounds["B"][0] = Match(3, 0.995)  # seed 0 now has both sides
    acc.rounds["A"][0] = Match(3, 0.995)
    assert why_not_compared(a, b, acc) is None
    dead = _group("B", [], diverged=[0, 1])
    assert why_not_compared(a, dead, cond) == "every B run diverged (seeds 0, 1)"
    assert why_not_compared(_group("B", [], diverged=[2]), a, cond) == "every B run diverged (seed 2)"
    ms = [LAM, ACC]
    vs = {"lambda_max": verdict(LAM, None, "A", "B", "no shared seed")}
    assert vs["lambda_max"] == "not compared: no shared seed"
    assert headline(ms, vs, "A", "B", "A and B share no seed") == "No flatness comparison: A and B share no seed."


def test_censored_widths_get_no_verdict_and_are_named():
    from flatfl.runs.conditions import Condition
    from flatfl.runs.matching import Match
    from flatfl.runs.report_page import summary_text
    from flatfl.runs.verdicts import _measure_row

    a, b = _group("A", [0, 1, 2]), _group("B", [0, 1, 2])
    cond = Condition("round", "r", {g: {s: Match(3, None) for s in range(3)} for g in "AB"})
    cond.values = {"A": {s: {"width_1": 2.0, "width_1_censored": True} for s in range(3)},
                   "B": {0: {"width_1": 1.2, "width_1_censored": False},
                         1: {"width_1": 1.4, "width_1_censored": False},
                         2: {"width_1": 2.0, "width_1_censored": True}}}  # fmt: skip
    w = Measure("width_1", "1D width at Δloss 1", lower_is_better=False, bounds=(0.0, None))
    row = _measure_row(w, cond, [a, b], a, 1.0)
    comp = row["comparisons"]["B"]
    assert comp["verdict"] == "no verdict: 4 of 6 widths not reached within ±1 (raise --slice-radius)"
    assert comp["winner"] is None and comp["paired"] is None
    assert row["groups"]["A"] is None and row["groups"]["B"]["values"] == (1.2, 1.4)  # censored ones left out
    assert summary_text(row["groups"]["A"], 3, row["bounds"], row["censor_radius"]) == (
        "not reached within ±1 (raise --slice-radius)"
    )
    assert summary_text(row["groups"]["B"], 1, row["bounds"], 1.0).endswith(
        " + 1 not reached within ±1 (raise --slice-radius)"
    )
    vs = {"lambda_max": "flatter: B", "width_1": comp["verdict"]}
    assert headline([LAM, w], vs, "A", "B") == (
        "B is flatter by 1 of 1 flatness measures: lambda_max (not invariant to any tested rescaling); no verdict by "
        "1D width at Δloss 1 (not reached within the slice radius)."
    )


def test_displayed_intervals_stay_within_what_the_quantity_can_be():
    from flatfl.runs.report_page import paired_text, summary_text

    acc = {"n": 3, "mean": 0.8208, "lo": 0.588, "hi": 1.05, "values": ()}
    assert summary_text(acc, bounds=(0.0, 1.0)) == "0.8208 [0.588, 1]"
    loss = {"n": 3, "mean": 0.467, "lo": -0.0329, "hi": 0.967, "values": ()}
    assert summary_text(loss, bounds=(0.0, None)) == "0.467 [0, 0.967]"
    assert summary_text(loss) == "0.467 [-0.0329, 0.967]"  # a signed quantity is left alone
    p = {"n": 3, "mean": 0.1, "lo": -0.2, "hi": 0.4, "agree": 3, "log": False}
    assert paired_text(p, "A", "B").endswith("3/3 seeds point the same way")


def test_an_unreached_accuracy_level_is_named_in_the_answer(cli, twins, tmp_path):
    runs = [twins / n for n in ("fedavg-s0", "fedavg-s1", "fedprox-s0", "fedprox-s1")]
    code, stdout, err = cli("report", *runs, "--out", tmp_path / "r", *FAST, "--no-match", "--match-acc", "0.999")
    assert code == 0, err
    rep, vs = _verdicts(tmp_path / "r", "acc")
    assert set(vs.values()) == {"not compared: accuracy level not reached"}, vs
    head = next(c for c in rep["verdict"] if c["condition"] == "acc")["comparisons"]["fedprox"]["headline"]
    assert head == "No flatness comparison: fedavg seeds 0, 1 and fedprox seeds 0, 1 never reach accuracy 0.999."
    assert head in stdout and "No flatness measure was computed" not in stdout


def test_not_measured_names_the_reason_the_spec_recorded():
    """A measure whose spec left its value empty with a reason (e.g. relative flatness or Fisher-Rao on a model
    without the products it needs) gets 'not measured: REASON' in its verdict cell, not a bare 'not measured'."""
    from flatfl.runs.conditions import Condition
    from flatfl.runs.matching import Match
    from flatfl.runs.measures import REGISTRY
    from flatfl.runs.verdicts import _measure_row

    why = "the model has no nn.Linear output layer"
    row = REGISTRY["relative_flatness"].row({"kappa": None, "layer": None, "not_measured": why}, None)
    assert row == {"relative_flatness": None, "relative_flatness_not_measured": why}
    assert REGISTRY["relative_flatness"].row({"kappa": 2.0}, None) == {"relative_flatness": 2.0}
    a, b = _group("A", [0, 1]), _group("B", [0, 1])
    cond = Condition("round", "r", {g: {s: Match(3, None) for s in range(2)} for g in "AB"})
    cond.values = {g: {s: dict(row) for s in range(2)} for g in "AB"}
    m = Measure("relative_flatness", "relative flatness")
    assert _measure_row(m, cond, [a, b], a, 1.0)["comparisons"]["B"]["verdict"] == f"not measured: {why}"
    cond.values = {g: {s: {"relative_flatness": None} for s in range(2)} for g in "AB"}  # no reason recorded
    assert _measure_row(m, cond, [a, b], a, 1.0)["comparisons"]["B"]["verdict"] == "not measured"
