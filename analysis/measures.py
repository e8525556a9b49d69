"""Measures the flatness literature asks for beyond the Hessian's top eigenvalue and trace.

* :func:`layer_curvature` -- λmax and trace of each layer's diagonal curvature block H[I_l, I_l]
  (one parameter tensor, or one module's parameters), for the Hessian, the GGN or the empirical Fisher.
* :func:`relative_flatness` -- Petzka, Kamp, Adilova, Sminchisescu & Boley, "Relative Flatness and
  Generalization", NeurIPS 2021, Definition 3 (the trace version):
      κ_Tr(w) = sum_{s,s'=1..d} <w_s, w_s'> Tr(H_{s,s'}(w)),
  w ∈ R^{d x m} the weight matrix of the layer that maps the feature layer φ(x) ∈ R^m to the output
  (w_s its s-th row), H_{s,s'} the m x m block of the Hessian of the mean loss w.r.t. w_s and w_s'.
* :func:`fisher_rao_norm` -- Liang, Poggio, Rakhlin & Stokes, "Fisher-Rao Metric, Geometry, and Complexity of
  Neural Networks", AISTATS 2019, Definition 2: ||θ||_fr^2 = <θ, I(θ) θ> = E[<θ, ∇_θ ℓ(f_θ(x), y)>^2],
  with y the data's labels (``labels="empirical"``) or drawn from the model's softmax (``"model"``).

Each returns a frozen result with the numbers, their cost and ``settings``; the model is left untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import jvp

from flatfl.analysis import checks
from flatfl.analysis.api import _common, _curvature, _problem
from flatfl.analysis.curvatures import (
    BlockOperator,
    ReverseJacobian,
    exact_trace,
    native_rnn_kernels,
    parameter_blocks,
    per_example_losses,
)
from flatfl.analysis.lanczos import lanczos
from flatfl.analysis.operators import ModelLoss, eval_mode, matmat
from flatfl.analysis.trace import _rademacher, adaptive_trace


@dataclass(frozen=True)
class LayerCurvature:
    """λmax and trace of each diagonal block of a curvature matrix (one row per layer)."""

    names: tuple[str, ...]
    sizes: tuple[int, ...]
    lambda_max: tuple[float, ...]
    lambda_residual: tuple[float, ...]
    trace: tuple[float, ...]
    trace_stderr: tuple[float, ...]  # 0 where the block's diagonal was computed exactly
    num_matvecs: int
    settings: dict = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per block (for JSON and tables)."""
        keys = ("size", "lambda_max", "lambda_residual", "trace", "trace_stderr")
        cols = (self.sizes, self.lambda_max, self.lambda_residual, self.trace, self.trace_stderr)
        return [{"name": n, **dict(zip(keys, vals))} for n, *vals in zip(self.names, *cols)]


def layer_curvature(
    model: nn.Module | ModelLoss,
    data: Any = None,
    *,
    group: str = "parameter",
    curvature: str = "hessian",
    num_matvecs: int = 30,
    tol: float = 1e-3,
    shared_probes: bool = False,
    hvp: str = "auto",
    seed: int | torch.Generator = 0,
    **objective_kw: Any,
) -> LayerCurvature:
    """λmax and trace of each layer's diagonal block of the curvature, H_l = H[I_l, I_l], where I_l are the
    indices of one parameter tensor (``group="parameter"``) or of one module's own parameters (``"module"``).
    H_l is the operator v -> (H pad(v))[I_l] (:class:`~flatfl.analysis.curvatures.BlockOperator`) fed to the
    same Lanczos (accuracy ``tol`` relative to ``|λmax|``) and trace estimators as the whole matrix: a block of at
    most ``num_matvecs`` parameters has its trace exactly (its diagonal from the unit vectors, stderr 0), a
    larger one by :func:`~flatfl.analysis.trace.adaptive_trace` with ``num_matvecs`` products. The blocks
    show where the curvature sits (e.g. Sankar et al., "A Deeper Look at the Hessian Eigenspectrum of Deep
    Neural Networks and its Applications to Regularization", AAAI 2021: layer-wise Hessians). ``curvature``:
    ``hessian``, ``ggn`` or ``ef`` (:func:`~flatfl.analysis.api.hessian_eigenvalues`). Costs about
    (Lanczos steps + min(size, ``num_matvecs``)) products per block.

    ``shared_probes``: every block's trace from the same ``num_matvecs`` products with whole-model Rademacher
    vectors z, the block's samples z[I]^T (H z)[I] (unbiased: E z[I]^T (H z)[I] = tr H[I, I], as the other
    blocks' terms have mean 0), so the traces cost ``num_matvecs`` products in all instead of per block; their
    variance includes the off-diagonal blocks', so the standard errors are larger."""
    checks.integer("num_matvecs", num_matvecs, 6)
    gen = checks.generator(seed)
    obj = _problem(model, data, objective_kw)
    op = _curvature(obj, curvature, hvp, objective_kw)
    rows = []
    blocks = parameter_blocks(obj, group)
    shared = _shared_traces(op, blocks, num_matvecs, gen) if shared_probes else None
    spent = num_matvecs if shared_probes else 0
    for name, idx in blocks:
        block = BlockOperator(op, idx, name)
        eig = lanczos(block, k=1, tol=tol, generator=gen, return_vectors=False)
        if shared is not None:
            tr, se = shared[name]
        elif block.size <= num_matvecs:
            tr, se = float(exact_trace(block).sum()), 0.0
        else:
            res = adaptive_trace(block, num_matvecs=num_matvecs, generator=gen)
            tr, se = res.estimate, res.stderr
        rows.append((name, block.size, float(eig.values[0]), float(eig.residuals[0]), tr, se))
        spent += block.num_matvecs
    cols = list(zip(*rows))
    settings = {"group": group, "curvature": curvature, "num_matvecs": num_matvecs, "tol": tol,
                "shared_probes": shared_probes}  # fmt: skip
    settings |= {"hvp": getattr(op, "method", curvature), **_common(obj, seed)}
    return LayerCurvature(*(tuple(c) for c in cols), num_matvecs=spent, settings=settings)


def _shared_traces(
    op: Any, blocks: list[tuple[str, torch.Tensor]], num: int, gen: torch.Generator
) -> dict[str, tuple[float, float]]:
    """(mean, standard error) of z[I]^T (H z)[I] over ``num`` whole-model Rademacher z, for every block I."""
    Z = _rademacher(op.size, num, op, gen)  # num x size
    HZ = matmat(op, Z.T)  # size x num
    out = {}
    for name, idx in blocks:
        idx = idx.to(Z.device)
        samples = (Z[:, idx] * HZ[idx].T).sum(1).double().cpu().numpy()
        out[name] = (float(samples.mean()), float(samples.std(ddof=1) / np.sqrt(num)))
    return out


@dataclass(frozen=True)
class RelativeFlatness:
    """κ_Tr of one layer (:func:`relative_flatness`)."""

    kappa: float
    layer: str
    weight_shape: tuple[int, ...]  # (d, m): outputs x features
    settings: dict = field(default_factory=dict)


def _output_layer(obj: ModelLoss, layer: str | None) -> tuple[str, nn.Linear]:
    """The named ``nn.Linear`` (default: the model's last one) and its name."""
    mods = dict(obj.model.named_modules())
    if layer is None:
        linear = [n for n, m in mods.items() if isinstance(m, nn.Linear)]
        if not linear:
            raise ValueError("relative flatness needs an nn.Linear output layer; the model has none")
        layer = linear[-1]
    if not isinstance(mods.get(layer), nn.Linear):
        raise ValueError(f"layer={layer!r} is not an nn.Linear module of the model (its Linear layers: "
                         f"{[n for n, m in mods.items() if isinstance(m, nn.Linear)]})")  # fmt: skip
    if f"{layer}.weight" not in obj.names:
        raise ValueError(f"layer {layer!r}: its weight is frozen (requires_grad=False)")
    return layer, mods[layer]


def _output_hessian_gram(obj: ModelLoss, out: torch.Tensor, batch: Any, gram: torch.Tensor) -> torch.Tensor:
    """<G, H_p>_F for each output position p (examples, tokens), H_p = d^2 S_b / d z_p^2 (d x d): d products
    of the loss's Hessian in the output with the unit vectors e_s broadcast over the positions (exact when
    positions do not interact in the loss -- cross-entropy, MSE)."""
    d = out.shape[-1]
    with torch.enable_grad():
        o = out.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(obj.loss_sum(o, batch), o, create_graph=True)
        cols = []
        for s in range(d):
            e = torch.zeros_like(o)
            e[..., s] = 1
            (h,) = torch.autograd.grad(g, o, e, retain_graph=True, allow_unused=True)
            cols.append(torch.zeros_like(o) if h is None else h)
    H = torch.stack(cols, dim=-1).reshape(-1, d, d)  # H[p, s', s] = d^2 S / d z_{p s'} d z_{p s}
    return torch.einsum("pab,ab->p", H, gram)


def relative_flatness(
    model: nn.Module | ModelLoss,
    data: Any = None,
    *,
    layer: str | None = None,
    **objective_kw: Any,
) -> RelativeFlatness:
    """Relative flatness κ_Tr (Petzka et al., NeurIPS 2021, Def. 3) of the output layer z = w φ(x) + b:

        κ_Tr(w) = sum_{s,s'} <w_s, w_s'> Tr(H_{s,s'}),   H_{s,s'} = d^2 L / d w_s d w_s'  (m x m),

    w_s the s-th row of ``layer``'s weight (default: the model's last ``nn.Linear``, whose output must be the
    model's output: its input φ is the penultimate, "feature" layer). Exact, without Hessian-vector products:
    z is linear in w and φ does not depend on w, so d^2 ℓ / d w_{sj} d w_{s'j'} = φ_j φ_j' [d^2 ℓ / dz^2]_{ss'}
    and Tr(H_{s,s'}) = (1/W) sum_p ||φ_p||^2 [d^2 S / dz_p^2]_{ss'} over the output positions p (examples, or
    tokens); hence κ = (1/W) sum_p ||φ_p||^2 <w w^T, d^2 S / dz_p^2>_F -- one forward pass and d output-space
    Hessian products per batch. L is flatfl's mean loss (:class:`ModelLoss`; the paper's empirical loss)."""
    obj = _problem(model, data, objective_kw)
    name, module = _output_layer(obj, layer)
    w = obj.params[f"{name}.weight"]
    gram = w @ w.T
    seen: dict[str, torch.Tensor] = {}
    hook = module.register_forward_hook(lambda m, inp, out: seen.update(phi=inp[0], z=out))
    total = torch.zeros((), dtype=obj.dtype, device=obj.device)
    try:
        with torch.no_grad(), eval_mode(obj.model):
            for b in obj.batches:
                b = obj.on_device(b)
                out = obj.output(obj.params, b)
                if seen.get("z") is not out:
                    raise ValueError(f"layer {name!r}: its output is not the model's output (relative flatness is "
                                     "defined for the layer that maps the feature layer to the output)")  # fmt: skip
                phi2 = seen["phi"].reshape(-1, seen["phi"].shape[-1]).pow(2).sum(1)
                total += (phi2 * _output_hessian_gram(obj, out, b, gram)).sum()
    finally:
        hook.remove()
    settings = {"layer": name, **_common(obj, 0)}
    settings.pop("seed")
    return RelativeFlatness(float(total) / obj.norm, name, tuple(w.shape), settings)


@dataclass(frozen=True)
class FisherRaoNorm:
    """||θ||_fr^2 (:func:`fisher_rao_norm`) and its square root."""

    squared: float
    norm: float
    labels: str
    settings: dict = field(default_factory=dict)


def fisher_rao_norm(
    model: nn.Module | ModelLoss,
    data: Any = None,
    *,
    labels: str = "empirical",
    **objective_kw: Any,
) -> FisherRaoNorm:
    """The Fisher-Rao norm (Liang, Poggio, Rakhlin & Stokes, AISTATS 2019, Def. 2),

        ||θ||_fr^2 = <θ, I(θ) θ> = E_x E_y [<θ, ∇_θ ℓ(f_θ(x), y)>^2],

    over the trainable parameters θ and the data's inputs. ``labels="empirical"``: y the data's labels, so
    ||θ||_fr^2 = θ^T F θ with F the empirical Fisher (:class:`~flatfl.analysis.curvatures.EFOperator`; for a
    mean over examples (1/N) sum_i <θ, ∇ℓ_i>^2). ``labels="model"`` (cross-entropy without class weights or
    label smoothing): y ~ softmax(f_θ(x)), exactly: with u = J θ (the output's derivative along θ) and p the
    softmax, E_y[<p - e_y, u>^2] = sum_y p_y (u_y - <p, u>)^2, which makes ||θ||_fr^2 = θ^T G θ (G the GGN).
    Each <θ, ∇ℓ_i> is the derivative of example i's loss along θ: one forward-mode product per batch (on a model
    without forward-mode autodiff, PyTorch's LSTM, by reverse over reverse: ``settings["jv"] == "reverse"``).
    For a bias-free ReLU network with L hidden layers, <θ, ∇_θ ℓ> = (L+1) <∂ℓ/∂f, f> (Liang et al., Lemma 2)."""
    if labels not in ("empirical", "model"):
        raise ValueError(f"labels must be 'empirical' or 'model', got {labels!r}")
    obj = _problem(model, data, objective_kw)
    bl = obj.bookkeeping
    if labels == "model" and (bl.functional is not F.cross_entropy or bl.options.get("weight") is not None
                              or bl.options.get("label_smoothing", 0.0)):  # fmt: skip
        raise ValueError("labels='model' needs a cross-entropy loss without class weights or label smoothing")
    total = torch.zeros((), dtype=obj.dtype, device=obj.device)
    reverse: list[str] = []  # the forward-mode failure, once J theta had to go by reverse over reverse
    with torch.no_grad(), eval_mode(obj.model):
        for b in obj.batches:
            b = obj.on_device(b)
            if labels == "empirical":
                f = lambda p, b=b: per_example_losses(obj, obj.output(p, b), b)  # noqa: E731
                _, d = _along_theta(obj, f, reverse)
                total += (d**2).sum()
            else:
                out, u = _along_theta(obj, lambda p, b=b: obj.output(p, b), reverse)
                p = torch.softmax(out, dim=1)
                t = obj.targets(b)
                kept = (t != bl.options.get("ignore_index", -100)).to(p.dtype)
                var = (p * (u - (p * u).sum(1, keepdim=True)) ** 2).sum(1)
                total += (kept * var).sum()
    sq = float(total) / obj.norm
    settings = {"labels": labels, **_common(obj, 0), "jv": "reverse" if reverse else "forward"}
    settings.pop("seed")
    return FisherRaoNorm(sq, sq**0.5, labels, settings)


def _along_theta(obj: ModelLoss, f: Any, reverse: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(f(θ), J_f θ): by forward mode, or -- once forward mode failed (PyTorch's LSTM kernels have no forward-mode
    rule; ``reverse`` then holds why) -- by reverse over reverse on the native kernels, its adjoint checked once
    (:class:`~flatfl.analysis.curvatures.ReverseJacobian`)."""
    if not reverse:
        try:
            return jvp(f, (obj.params,), (obj.params,))
        except torch.cuda.OutOfMemoryError:
            raise
        except (NotImplementedError, RuntimeError) as e:
            reverse.append(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
    with torch.enable_grad(), native_rnn_kernels():
        rj = ReverseJacobian(f, obj.params, obj.names, f"Fisher-Rao norm: no forward-mode rule ({reverse[0]})")
        if len(reverse) == 1:
            rj.check_adjoint()
            reverse.append("checked")
        return rj.value.detach(), rj.jvp(obj.params).detach()
