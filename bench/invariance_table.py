"""Every verdict measure of ``flatfl report`` on small real models and their function-preserving
reparametrisations: which measures stay the same, and by how much the others change.

The models (float64, trained briefly on 64 synthetic samples so they sit near a minimum):

* ``mlp``: Linear(6, 10) - ReLU - Linear(10, 10) - ReLU - Linear(10, 3), no BatchNorm;
* ``cnn_bn``: Conv2d(1, 4, 3, padding=1) - BatchNorm2d(4, eps=0) - ReLU - MaxPool2d(2) - Linear(36, 3),
  analysed in eval mode (BatchNorm uses its running statistics, as the report does).

The reparametrisations, each for alpha in :data:`ALPHAS` (one power of two, whose scaling is exact in
floating point, and 3, which is not):

* ``layer`` (mlp): (W_1, b_1) * alpha, W_2 / alpha -- ReLU(alpha z) = alpha ReLU(z) for alpha > 0;
* ``filter`` (mlp): hidden unit j of layer 1: row j of W_1 and b_1[j] times alpha, column j of W_2
  divided by alpha;
* ``bn_filter`` (cnn_bn): conv filter c and its bias times alpha, BatchNorm running_mean[c] * alpha
  and running_var[c] * alpha^2, so (alpha z - alpha mu) / sqrt(alpha^2 var) is unchanged. This is exact only
  with BatchNorm's eps = 0 (with eps > 0 the function itself changes, by about eps (1 - alpha^-2) / (2 var)
  relative, and no measure can be invariant beyond that), hence eps = 0 in the model;
* ``penultimate_layer`` (mlp): the feature layer (W_2, b_2) * alpha, the output layer's W_3 / alpha -- the
  rescaling that moves scale between the features and the output layer (relative flatness's case);
* ``penultimate_neuron`` (mlp): feature neuron j: row j of W_2 and b_2[j] times alpha, column j of W_3 / alpha.

Each measure is computed through the report's own code: :func:`flatfl.runs.measure.measure` with
:class:`~flatfl.runs.report.ReportSettings`' default landscape settings (in float64, all six sharpness
measures, relative flatness and the Fisher-Rao norm), :func:`flatfl.runs.report.measure_slices` with the
default slice settings and :func:`flatfl.runs.report.checkpoint_row` -- the same seeds, so the same Lanczos
start, trace probes, sharpness draws and Gaussian slice directions. The dense Hessian
(``torch.autograd.functional.hessian``) gives the exact lambda_max and trace alongside.

``tests/test_invariance.py`` asserts that :data:`flatfl.analysis.invariance.INVARIANT_TO` is what this
measures. Run as a script it prints each measure's relative change per reparametrisation and alpha,
the numbers quoted in docs/landscapes.md::

    python bench/invariance_table.py [--dtype float32]
"""

from __future__ import annotations

import argparse
import copy
import functools
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call

from flatfl.analysis.invariance import LABELS, REPARAMETRISATIONS, invariant_to
from flatfl.analysis.operators import ModelLoss
from flatfl.analysis.slices import random_slices, symmetric_grid, width
from flatfl.runs.curvature import SHARPNESS_MEASURES
from flatfl.runs.measure import measure
from flatfl.runs.measures.fisher_rao import FisherRaoSettings
from flatfl.runs.measures.gauss_newton import CurvatureSettings
from flatfl.runs.measures.relative_flatness import RelativeFlatnessSettings
from flatfl.runs.problem import DTYPES, Problem
from flatfl.runs.report import SCALE_INVARIANT, ReportSettings, checkpoint_row, measure_slices

ALPHAS = (0.25, 3.0)
TOL = 1e-9  # invariant: |m' - m| <= TOL |m| for every alpha (rounding is ~1e-14 here)
# changes: |m' - m| > TOL |m| for every alpha (beyond rounding) and > CHANGE |m| for at least one. Epsilon-sharpness
# under penultimate_neuron moves by 13% at alpha = 0.25 and by only 1.5e-5 at alpha = 3 (its box eps (|w| + 1) is
# dominated by the "+ 1" that does not scale, and the shrunk output column leaves little to perturb): a real change,
# 10^9 times rounding, that "> CHANGE for every alpha" would have called unclear
CHANGE = 1e-3
UNIT = 0  # the hidden unit (mlp) and the conv filter (cnn_bn) the filter-wise rescalings act on
LITERATURE = (("ggn", CurvatureSettings("ggn")), ("ef", CurvatureSettings("ef")),
              ("relative_flatness", RelativeFlatnessSettings()), ("fisher_rao", FisherRaoSettings()))  # fmt: skip
CURVATURES = tuple(f"{k}_{q}" for k in ("ggn", "ef") for q in ("lambda_max", "trace"))  # --curvature ggn,ef
SETTINGS = replace(
    ReportSettings(),
    landscape=replace(
        ReportSettings().landscape, dtype="float64", sharpness=SHARPNESS_MEASURES, surface=None, measures=LITERATURE
    ),  # fmt: skip
)
# the verdict measures, as checkpoint_row names them
WIDTHS = tuple(f"width_{t:g}" for t in SETTINGS.widths)
KEYS = ("lambda_max", "trace", *(f"sharpness_{s}" for s in SHARPNESS_MEASURES), *WIDTHS, *CURVATURES,
        "relative_flatness", "fisher_rao")  # fmt: skip


Trained = tuple[nn.Module, torch.Tensor, torch.Tensor]  # a trained model and its analysis data (x, y)


def _data(shape: tuple[int, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """64 Gaussian inputs labelled by a random linear teacher over 3 classes."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, *shape, generator=g, dtype=torch.float64)
    teacher = torch.randn(x[0].numel(), 3, generator=g, dtype=torch.float64)
    return x, (x.flatten(1) @ teacher).argmax(1)


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> nn.Module:
    """Full-batch Adam, deterministic; BatchNorm's running statistics are then the exact data statistics."""
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None  # cumulative average: one pass = the statistics of x
        model(x)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eps = 0.0  # the filter rescaling preserves the function exactly only without eps
    return model.eval()


def _trained_once(build: Callable[[], Trained]) -> Callable[[], Trained]:
    """``build()`` run once (with the global RNG restored afterwards); each call returns a fresh copy."""
    cached = functools.cache(build)

    @functools.wraps(build)
    def fresh() -> Trained:
        with torch.random.fork_rng():
            model, x, y = cached()
        return copy.deepcopy(model), x, y

    return fresh


@_trained_once
def mlp() -> Trained:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 3)).double()
    x, y = _data((6,), 1)
    return _train(model, x, y, steps=30), x, y


@_trained_once
def cnn_bn() -> Trained:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),  # trained with eps = 1e-5, analysed with eps = 0
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(36, 3),
    ).double()
    x, y = _data((1, 6, 6), 2)
    return _train(model, x, y, steps=60), x, y


def _move_scale(model: nn.Module, into: int, out_of: int, alpha: float, unit: slice | int = slice(None)) -> nn.Module:
    """A copy with the ``unit`` outputs of layer ``into`` (weight and bias) times alpha and the matching inputs of
    layer ``out_of`` divided by it: the same function through a positively homogeneous (ReLU) layer between."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        out[into].weight[unit].mul_(alpha)
        out[into].bias[unit].mul_(alpha)
        out[out_of].weight[:, unit].div_(alpha)
    return out


def layer(model: nn.Module, alpha: float) -> nn.Module:
    return _move_scale(model, 0, 2, alpha)


def filter_wise(model: nn.Module, alpha: float) -> nn.Module:
    return _move_scale(model, 0, 2, alpha, UNIT)


def bn_filter(model: nn.Module, alpha: float) -> nn.Module:
    out = copy.deepcopy(model)
    with torch.no_grad():
        out[0].weight[UNIT].mul_(alpha)
        out[0].bias[UNIT].mul_(alpha)
        out[1].running_mean[UNIT].mul_(alpha)
        out[1].running_var[UNIT].mul_(alpha**2)
    return out


def penultimate_layer(model: nn.Module, alpha: float) -> nn.Module:
    return _move_scale(model, 2, 4, alpha)


def penultimate_neuron(model: nn.Module, alpha: float) -> nn.Module:
    return _move_scale(model, 2, 4, alpha, UNIT)


@dataclass(frozen=True)
class Case:
    """A reparametrisation of :data:`REPARAMETRISATIONS`, the model it acts on and how."""

    name: str
    model: Callable[[], Trained]
    apply: Callable[[nn.Module, float], nn.Module]


CASES = (
    Case("layer", mlp, layer),
    Case("filter", mlp, filter_wise),
    Case("bn_filter", cnn_bn, bn_filter),
    Case("penultimate_layer", mlp, penultimate_layer),
    Case("penultimate_neuron", mlp, penultimate_neuron),
)
assert {c.name for c in CASES} == set(REPARAMETRISATIONS)


def exact_curvature(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """lambda_max and trace of the dense Hessian, generalised Gauss-Newton matrix J^T H_out J and empirical Fisher
    (1/N) sum_i g_i g_i^T of the mean cross-entropy (eval mode), independently of flatfl."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    buffers = dict(model.named_buffers())

    def logits(w: torch.Tensor) -> torch.Tensor:
        params, i = {}, 0
        for n, s in zip(names, shapes):
            params[n] = w[i : i + s.numel()].reshape(s)
            i += s.numel()
        return functional_call(model, {**params, **buffers}, (x,))

    w = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    H = torch.autograd.functional.hessian(lambda v: nn.functional.cross_entropy(logits(v), y), w)
    J = torch.autograd.functional.jacobian(logits, w)  # (N, C, P)
    p = torch.softmax(logits(w), dim=1)
    G = torch.einsum("nca,ncd,ndb->ab", J, torch.diag_embed(p) - p[:, :, None] * p[:, None, :], J) / len(x)
    g = torch.autograd.functional.jacobian(lambda v: nn.functional.cross_entropy(logits(v), y, reduction="none"), w)
    F = g.T @ g / len(x)
    return {f"{k}{q}": float(torch.linalg.eigvalsh(M)[-1] if q == "lambda_max" else M.diagonal().sum())
            for k, M in (("", H), ("ggn_", G), ("ef_", F)) for q in ("lambda_max", "trace")}  # fmt: skip


def report_row(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, where: Path, settings: ReportSettings = SETTINGS
) -> dict[str, float]:
    """The verdict measures of ``model`` exactly as ``flatfl report`` computes them for one checkpoint."""
    ls = settings.landscape
    obj = ModelLoss(model, x, y, batch_size=ls.batch_size, dtype=DTYPES[ls.dtype])
    problem = Problem(model, obj, obj, {"data": {}, "memory_budget_gb": ls.memory_budget_gb}, "invariance")
    record = measure(problem, ls).record
    slices = measure_slices(lambda: problem, settings, where, "invariance")
    row = checkpoint_row(record, {}, slices, settings.widths, settings)
    censored = [t for t in settings.widths if row[f"width_{t:g}_censored"]]
    if censored:
        raise AssertionError(f"widths at {censored} not reached within the slice radius: they would compare bounds")
    return {k: float(row[k]) for k in KEYS} | {f"exact_{k}": v for k, v in exact_curvature(model, x, y).items()}


def max_output_change(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    """max |f_a(x) - f_b(x)| relative to max |f_a(x)| (eval mode)."""
    with torch.no_grad():
        fa, fb = a.eval()(x), b.eval()(x)
    return float((fa - fb).abs().max() / fa.abs().max())


@dataclass(frozen=True)
class Measured:
    """Each measure's value on the original models and on each (reparametrisation, alpha)."""

    base: dict[str, dict[str, float]]  # model name -> key -> value
    changed: dict[tuple[str, float], dict[str, float]]  # (reparametrisation, alpha) -> key -> value
    output_change: dict[tuple[str, float], float]  # how far the reparametrised function moved
    weight_change: dict[tuple[str, float], float]  # ||theta' - theta|| / ||theta||

    def ratio(self, case: str, alpha: float, key: str) -> float:
        """m' / m of measure ``key`` under reparametrisation ``case`` with ``alpha``."""
        model = next(c.model.__name__ for c in CASES if c.name == case)
        return self.changed[(case, alpha)][key] / self.base[model][key]

    def relative(self, case: str, alpha: float, key: str) -> float:
        """|m' - m| / |m|."""
        return abs(self.ratio(case, alpha, key) - 1.0)

    def verdict(self, case: str, key: str) -> str:
        """ "invariant" (within :data:`TOL` for every alpha), "changes" (beyond :data:`TOL` for every alpha and by
        more than :data:`CHANGE` for at least one) or "unclear" (neither: the test fails rather than classify it).
        A dense reference (``exact_*``: eigvalsh and the diagonal of a dense float64 matrix) has no estimator
        error to tell apart, only rounding: beyond :data:`TOL` for every alpha is a change, however small."""
        rel = [self.relative(case, a, key) for a in ALPHAS]
        if max(rel) <= TOL:
            return "invariant"
        return "changes" if min(rel) > TOL and (max(rel) > CHANGE or key.startswith("exact_")) else "unclear"


def measure_all(settings: ReportSettings = SETTINGS) -> Measured:
    """Every measure on every model and reparametrised copy (about 10 s of one core); ``settings``: the
    report's, in float64 by default (``dtype="float32"``, the report's default, shows float32's rounding)."""
    base, changed, moved, weights = {}, {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            model, x, y = case.model()
            name = case.model.__name__
            if name not in base:
                base[name] = report_row(model, x, y, Path(tmp) / name, settings)
            theta = torch.cat([p.reshape(-1) for p in model.parameters()]).detach()
            for alpha in ALPHAS:
                other = case.apply(model, alpha)
                moved[(case.name, alpha)] = max_output_change(model, other, x)
                theta2 = torch.cat([p.reshape(-1) for p in other.parameters()]).detach()
                weights[(case.name, alpha)] = float((theta2 - theta).norm() / theta.norm())
                changed[(case.name, alpha)] = report_row(other, x, y, Path(tmp) / f"{case.name}-{alpha:g}", settings)
    return Measured(base, changed, moved, weights)


def include_1d_widths(alpha: float = 3.0) -> dict[str, list[float]]:
    """w'/w of the 1D widths with 1-D tensors kept in the directions (``include_1d``, surfaces'
    ``--include-bias-bn``) under ``layer`` and ``bn_filter``, same slice settings and seeds as the report."""
    ts = symmetric_grid(SETTINGS.slice_radius, SETTINGS.slice_points)
    out = {}
    for case in CASES:
        model, x, y = case.model()
        ws = []
        for m in (model, case.apply(model, alpha)):
            obj = ModelLoss(m, x, y, dtype=torch.float64)
            s = random_slices(obj, ts, num_directions=SETTINGS.slice_directions, seed=SETTINGS.landscape.seed,
                              include_1d=True)  # fmt: skip
            ws.append([width(ts, s.mean, t)[0] for t in SETTINGS.widths])
        out[case.name] = [b / a for a, b in zip(*ws)]
    return out


def bn_eps_effect(eps: float = 1e-5, alpha: float = 3.0) -> dict[str, float]:
    """With BatchNorm's usual eps the pre-BatchNorm filter scaling is no longer exact: the relative change of
    the outputs and of the adaptive measures (report settings and seeds) under ``bn_filter`` with ``alpha``."""
    model, x, y = cnn_bn()
    model[1].eps = eps
    other = bn_filter(model, alpha)
    ls = replace(SETTINGS.landscape, hessian=False, trace=False, sharpness=SCALE_INVARIANT, measures=())
    vals = []
    for m in (model, other):
        obj = ModelLoss(m, x, y, dtype=torch.float64)
        rec = measure(Problem(m, obj, obj, {"data": {}}, "eps"), ls).record["sharpness"]
        vals.append({k: rec[k]["value"] for k in SCALE_INVARIANT})
    return {"output": max_output_change(model, other, x)} | {
        f"sharpness_{k}": abs(vals[1][k] / vals[0][k] - 1.0) for k in SCALE_INVARIANT
    }


# the rows of the changes table: the report's measures with its labels, then the dense-Hessian references
ROWS = {
    **{k: LABELS.get(k, f"1D width at Δloss {k.removeprefix('width_')}") for k in KEYS},
    "exact_lambda_max": "λmax (dense Hessian)",
    "exact_trace": "trace (dense Hessian)",
    "exact_ggn_lambda_max": "GGN λmax (dense)",
    "exact_ggn_trace": "GGN trace (dense)",
    "exact_ef_lambda_max": "empirical Fisher λmax (dense)",
    "exact_ef_trace": "empirical Fisher trace (dense)",
}


def _times(ratio: float) -> str:
    """m'/m to 4 significant digits, or to 6 where 4 would read as "×1" (a change of less than 5e-5)."""
    text = f"{ratio:.4g}"
    return f"×{ratio:.6g}" if text == "1" else f"×{text}"


def changes_table(m: Measured) -> str:
    """Markdown: m'/m of every measure under every (reparametrisation, alpha); "unchanged" within TOL."""
    cols = [(c.name, a) for c in CASES for a in ALPHAS]
    lines = [
        "| measure | " + " | ".join(f"{c} α={a:g}" for c, a in cols) + " |",
        "|---" * (len(cols) + 1) + "|",
    ]
    for key, label in ROWS.items():
        cells = ["unchanged" if m.relative(c, a, key) <= TOL else _times(m.ratio(c, a, key)) for c, a in cols]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dtype",
        choices=("float64", "float32"),
        default="float64",
        help="the analysis dtype (default: float64, the test's; float32 is the report's default and shows how "
        "closely the invariant measures agree at its rounding)",
    )
    args = parser.parse_args()
    settings = replace(SETTINGS, landscape=replace(SETTINGS.landscape, dtype=args.dtype))
    m = measure_all(settings)
    cols = [(c.name, a) for c in CASES for a in ALPHAS]
    if args.dtype == "float32":
        print("float32: largest |m'/m - 1| under the reparametrisations each measure is invariant to (float64)")
        for key in KEYS:
            same = [m.relative(c, a, key) for c, a in cols if c in invariant_to(key)]
            if same:
                print(f"  {ROWS[key]}: {max(same):.1e}")
        return
    print(changes_table(m))
    invariant = [m.relative(c, a, k) for c, a in cols for k in ROWS if m.relative(c, a, k) <= TOL]
    changed = [m.relative(c, a, k) for c, a in cols for k in ROWS if m.relative(c, a, k) > TOL]
    print(f"invariant cells: at most {max(invariant):.1e} relative; changed cells: at least {min(changed):.1e}")
    print("outputs moved by at most", f"{max(m.output_change.values()):.1e}", "(relative, max over inputs);",
          "weights moved by", ", ".join(f"{c} α={a:g} {m.weight_change[(c, a)]:.2f}" for c, a in cols))  # fmt: skip
    for name, row in m.base.items():
        print(f"{name}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items()))
    print("include_1d widths w'/w (α=3):", include_1d_widths())
    print("BatchNorm eps=1e-5, bn_filter α=3, relative change:", bn_eps_effect())


if __name__ == "__main__":
    main()
