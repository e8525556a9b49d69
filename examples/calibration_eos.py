"""The edge-of-stability control of ``examples/calibration.py`` (Cohen et al., ICLR 2021).

Full-batch gradient descent with step size eta, w_{t+1} = w_t - eta grad L(w_t), on a loss L that is
locally quadratic is stable only while the sharpness lambda_max(H(w_t)) < 2/eta. Cohen, Kaur, Li, Kolter
and Talwalkar ("Gradient descent on neural networks typically occurs at the edge of stability", ICLR
2021) found that on neural networks the sharpness first rises (progressive sharpening) until it reaches
2/eta, then hovers at or just above it for the rest of training while the loss keeps falling, non
monotonically. The law is a property of the training dynamics, not of any eigensolver: flatfl's lambda_max
(Lanczos on the Hessian of the mean loss over all the training data) must find it.

The runs are flatfl's own: ``flatfl train`` with one client holding the whole training set, one batch of
all of it and one local epoch a round, no momentum and no weight decay -- each round one step of full-batch
gradient descent on L(w) = (1/N) sum_i CE(f(x_i; w), y_i) over the N training images. The measurement is
over exactly that objective: the same N images, the same cross-entropy, the model in the mode it trained
in (smallcnn has no BatchNorm or dropout, so train and eval mode are one function), the checkpoint's
float32 weights. Two checks prove it per run instead of assuming it: the measured loss at w_t equals the
training loss the trainer logged for round t+1 (the loss of its one batch at w_t), and the saved step
w_{t+1} - w_t equals -eta grad L(w_t).

lambda_max is measured at every saved round: every 10th round to draw the sharpening, and every round of
the late window [late_from, rounds], whose median is the check. Lanczos starts each round from the
previous round's top eigenvector (the Hessian changes little in one step), so most rounds cost a few HVPs.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from flatfl.analysis import HessianOperator, ModelLoss, lanczos
from flatfl.analysis.verdict import summarize
from flatfl.runs.run import Run

BAND = 0.2  # the check: the late-round median of lambda_max within +-20% of 2/eta
LOSS_RTOL = 1e-5  # measured L(w_t) vs the trainer's logged loss of its full batch at w_t (float32 sums)
STEP_RTOL = 1e-3  # ||(w_{t+1} - w_t) + eta grad L(w_t)|| / ||eta grad L(w_t)|| (float32 rounding)


@dataclass(frozen=True)
class EosSetting:
    """One step size: train ``rounds`` rounds (= GD steps); the late window is rounds ``late_from``..``rounds``."""

    lr: float
    rounds: int
    late_from: int

    @property
    def threshold(self) -> float:
        """2/eta, the stability threshold of gradient descent on a quadratic."""
        return 2.0 / self.lr

    def save_rounds(self) -> str:
        """``--save-rounds`` beside ``--save-every 10``: every round of the late window."""
        return f"{self.late_from}-{self.rounds}"


@dataclass(frozen=True)
class EosSeries:
    """lambda_max (and the full-batch loss) at every saved round of one run, and the objective checks."""

    run: str
    lr: float
    seed: int
    rounds: tuple[int, ...]
    lambda_max: tuple[float, ...]
    loss: tuple[float, ...]
    hvps: int
    secant: tuple[float, ...]  # s_t.(g_{t+1} - g_t)/|s_t|^2, s_t = w_{t+1} - w_t, at late rounds t < rounds
    loss_check: float  # relative |L(w_t) - logged train_loss(t+1)| at the first late round
    step_check: float  # relative ||w_{t+1} - w_t + eta grad L(w_t)|| at the first late round
    late_from: int

    def late(self) -> list[float]:
        return [v for r, v in zip(self.rounds, self.lambda_max) if r >= self.late_from]

    @property
    def late_median(self) -> float:
        return statistics.median(self.late())

    @property
    def secant_median(self) -> float:
        return statistics.median(self.secant)

    @property
    def objective_ok(self) -> bool:
        return self.loss_check <= LOSS_RTOL and self.step_check <= STEP_RTOL


@dataclass(frozen=True)
class EosResult:
    """One step size over its seeds: the pooled late-round median against 2/eta, and the per-seed medians."""

    setting: EosSetting
    series: tuple[EosSeries, ...]

    @property
    def ratio(self) -> float:
        """Median of lambda_max over every late round of every seed, divided by 2/eta."""
        return statistics.median([v for s in self.series for v in s.late()]) / self.setting.threshold

    @property
    def seed_ratios(self) -> list[float]:
        return [s.late_median / self.setting.threshold for s in self.series]

    @property
    def secant_ratio(self) -> float:
        """Median over every late round of every seed of the secant curvature along the step, over 2/eta."""
        return statistics.median([v for s in self.series for v in s.secant]) / self.setting.threshold

    def interval(self) -> tuple[float | None, float | None]:
        """95% Student-t interval of the mean per-seed ratio (None with one seed)."""
        s = summarize(self.seed_ratios)
        return (s.lo, s.hi) if s is not None else (None, None)

    @property
    def within(self) -> float:
        """Share of all late rounds whose lambda_max lies within the band around 2/eta."""
        late = [v / self.setting.threshold for s in self.series for v in s.late()]
        return sum(abs(r - 1) <= BAND for r in late) / len(late)

    @property
    def holds(self) -> bool:
        """The law as checked: every seed's late-round median within +-20% of 2/eta, on the objective GD used."""
        return all(abs(r - 1) <= BAND for r in self.seed_ratios) and all(s.objective_ok for s in self.series)


def train_args(setting: EosSetting, seed: int, out: Path, centralised: bool) -> list[str]:
    """``flatfl train`` flags of full-batch GD: one client with all the data, one step a round, no momentum."""
    data = ["--centralised", "--batch-size", "full"] if centralised else [
        "--clients", "1", "--partition", "iid", "--frac", "1", "--batch-size", "100000"]  # fmt: skip
    return ["train", "--dataset", "digits", *data, "--local-epochs", "1", "--momentum", "0", "--weight-decay", "0",
            "--lr", repr(setting.lr), "--rounds", str(setting.rounds), "--seed", str(seed), "--out", str(out),
            "--save-every", "10", "--save-rounds", setting.save_rounds(), "--no-progress"]  # fmt: skip


def train_data(run: Run) -> tuple[torch.Tensor, torch.Tensor]:
    """The one client's data, in its partition's order: every training image of the run's split."""
    ds = run.dataset()
    parts = run.partition()
    if len(parts) != 1 or len(parts[0]) != len(ds.train.y):
        raise ValueError(f"{run.path}: not one client holding all {len(ds.train.y)} training images")
    idx = torch.as_tensor(parts[0])
    return ds.train.x[idx], ds.train.y[idx]


def _objective(run: Run, rnd: int, data: tuple[torch.Tensor, torch.Tensor]) -> ModelLoss:
    """L(w_rnd): the mean cross-entropy over every training image, in the checkpoint's float32, one batch."""
    x, y = data
    return ModelLoss(run.model(rnd), x, y, batch_size=len(y), dtype=torch.float32)


def objective_checks(run: Run, rnd: int) -> tuple[float, float]:
    """(loss check, step check) at round ``rnd`` (see the module docstring); both ~1e-7..1e-5 when the
    measured objective is the one gradient descent minimised."""
    lr = float(run.config["local"]["lr"])
    logged = {m["round"]: m.get("train_loss") for m in run.metrics()}[rnd + 1]
    data = train_data(run)
    obj = _objective(run, rnd, data)
    loss, grad = obj.loss_and_gradient()
    step = _objective(run, rnd + 1, data).flat() - obj.flat()
    loss_check = abs(loss - logged) / max(abs(logged), 1e-12)
    step_check = float((step + lr * grad).norm() / (lr * grad).norm())
    return loss_check, step_check


def measure_series(path: Path, late_from: int, log: Callable[[str], None] = lambda s: None) -> EosSeries:
    """lambda_max at every saved round of the run in ``path`` (Lanczos, k = 1, warm-started)."""
    run = Run.open(path)
    rounds = run.rounds()
    data = train_data(run)
    lams, losses, hvps, v0, steps = [], [], 0, None, {}
    for rnd in rounds:
        obj = _objective(run, rnd, data)
        r = lanczos(HessianOperator(obj), k=1, tol=1e-4, v0=v0, generator=torch.Generator().manual_seed(rnd),
                    exact_residuals=False)  # fmt: skip
        v0 = r.vectors[0]
        lams.append(float(r.values[0]))
        loss, grad = obj.loss_and_gradient()
        losses.append(loss)
        hvps += r.num_matvecs
        if rnd >= late_from:
            steps[rnd] = (obj.flat(), grad)
    secant = tuple(_secant(*steps[t], *steps[t + 1]) for t in sorted(steps) if t + 1 in steps)
    first_late = next(r for r in rounds if r >= late_from)
    checks = objective_checks(run, first_late)
    lr = float(run.config["local"]["lr"])
    s = EosSeries(str(path), lr, int(run.config["seed"]), tuple(rounds), tuple(lams), tuple(losses), hvps,
                  secant, *checks, late_from)  # fmt: skip
    log(f"  {path.name}: late median lambda_max {s.late_median:.3g}, secant {s.secant_median:.3g} (2/eta "
        f"{2 / lr:.3g}), {hvps} HVPs, "
        f"objective checks {checks[0]:.1e} (loss) {checks[1]:.1e} (step)")  # fmt: skip
    return s


def _secant(w0: torch.Tensor, g0: torch.Tensor, w1: torch.Tensor, g1: torch.Tensor) -> float:
    """The mean curvature along the GD step s = w1 - w0: s.(g1 - g0)/|s|^2 = int_0^1 s^T H(w0 + u s) s du / |s|^2.

    In a period-2 orbit of gradient descent (w_{t+2} = w_t, so g_{t+1} = -g_t and s = -eta g_t) it is
    exactly 2/eta, whatever the curvature at the two end points: what gradient descent feels is the
    Hessian averaged over its step. Gradients only -- no eigensolver."""
    s = w1 - w0
    return float(s @ (g1 - g0) / (s @ s))


def plot(results: Sequence[EosResult], stem: Path) -> list[Path]:
    """Training loss (top) and lambda_max (bottom) against the round, one column per step size, every seed;
    the dashed line is 2/eta, the band +-20% around it, the shaded span the late window. PNG and PDF."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    fig, axes = plt.subplots(2, n, figsize=(3.4 * n, 4.8), sharex="col", squeeze=False, constrained_layout=True)
    from flatfl.analysis.report_figures import PALETTE  # Okabe-Ito, as every other figure of flatfl

    colors = [PALETTE[i % len(PALETTE)] for i in range(max(len(r.series) for r in results))]
    for j, res in enumerate(results):
        st, top, bottom = res.setting, axes[0][j], axes[1][j]
        for i, s in enumerate(res.series):
            metrics = Run.open(s.run).metrics()
            top.plot([m["round"] for m in metrics if m.get("train_loss") is not None],
                     [m["train_loss"] for m in metrics if m.get("train_loss") is not None],
                     color=colors[i], lw=0.8, label=f"seed {s.seed}")  # fmt: skip
            bottom.plot(s.rounds, s.lambda_max, color=colors[i], lw=0.8, marker=".", ms=2)
            late = [r for r in s.rounds if r >= st.late_from][: len(s.secant)]
            bottom.plot(late, s.secant, color=colors[i], lw=0.6, ls=":", label="secant along step" if i == 0 else None)
        for ax in (top, bottom):
            ax.axvspan(st.late_from, st.rounds, color="0.92", zorder=0)
            ax.grid(alpha=0.3, lw=0.5)
        bottom.axhline(st.threshold, color="k", ls="--", lw=1, label="2/η")
        bottom.axhspan(st.threshold * (1 - BAND), st.threshold * (1 + BAND), color="k", alpha=0.08, lw=0)
        bottom.set_yscale("log")
        top.set_yscale("log")
        top.set_title(f"η = {st.lr:g}: late median λmax / (2/η) = {res.ratio:.2f}", fontsize=9)
        bottom.set_xlabel("round (= full-batch GD step)")
        if j == 0:
            top.set_ylabel("training loss")
            bottom.set_ylabel("λmax (Lanczos, full train set)")
            top.legend(fontsize=7, frameon=False)
            bottom.legend(fontsize=7, frameon=False, loc="lower right")
    title = "Edge of stability (Cohen et al. 2021), digits/smallcnn, full-batch GD"
    fig.suptitle(title if n > 1 else title.replace(", digits", ",\ndigits"), fontsize=10)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    fig.savefig(paths[0], dpi=200)
    fig.savefig(paths[1])
    plt.close(fig)
    return paths


def fmt_ratio(res: EosResult) -> str:
    lo, hi = res.interval()
    ci = "" if lo is None or hi is None or math.isnan(lo) else f" [{lo:.2f}, {hi:.2f}]"
    return f"{res.ratio:.2f}{ci}"


def midpoints(path: Path, first: int, last: int) -> tuple[float, float]:
    """Median lambda_max at the iterates w_t and at the midpoints (w_t + w_{t+1})/2, t = first..last-1.

    The investigation of a late-round median above 2/eta: in a period-2 orbit the iterates sit on the two
    walls of a valley and its floor lies between them; if the curvature there is 2/eta while the walls are
    sharper, lambda_max at the iterates overstates the curvature gradient descent is stabilised at."""
    run = Run.open(path)
    data = train_data(run)
    at, mid, v0 = [], [], None
    for t in range(first, last):
        o0, o1 = _objective(run, t, data), _objective(run, t + 1, data)
        centre = run.model(t)
        torch.nn.utils.vector_to_parameters(0.5 * (o0.flat() + o1.flat()), centre.parameters())
        x, y = data
        for obj, out in ((o0, at), (ModelLoss(centre, x, y, batch_size=len(y), dtype=torch.float32), mid)):
            r = lanczos(HessianOperator(obj), k=1, tol=1e-4, v0=v0, generator=torch.Generator().manual_seed(t),
                        exact_residuals=False)  # fmt: skip
            v0 = r.vectors[0]
            out.append(float(r.values[0]))
    return statistics.median(at), statistics.median(mid)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="lambda_max at the iterates and at the midpoints of a GD run's steps")
    ap.add_argument("run", type=Path, help="a full-batch GD run directory (flatfl train --centralised ...)")
    ap.add_argument("first", type=int, help="the first round t of the steps w_t -> w_t+1 measured")
    ap.add_argument("last", type=int, help="the round after the last step measured")
    a = ap.parse_args()
    lr = float(Run.open(a.run).config["local"]["lr"])
    it, mid = midpoints(a.run, a.first, a.last)
    print(f"{a.run}: eta {lr:g}, rounds {a.first}-{a.last - 1}: median lambda_max / (2/eta) at the iterates "
          f"{it * lr / 2:.3f}, at the midpoints {mid * lr / 2:.3f}")  # fmt: skip
