"""Curvature matrices other than the Hessian, as operators for flatfl's solvers, and blocks of any operator.

Every estimator takes any operator (:class:`~flatfl.analysis.operators.LinearOperator`): these feed the
same Lanczos, trace and density code the Hessian does.

* :class:`GGNOperator` -- the generalised Gauss-Newton matrix (Schraudolph 2002; Martens 2020, "New
  insights and perspectives on the natural gradient method", JMLR 21) of :class:`ModelLoss`'s mean loss,
        G = (1/W) sum_b J_b^T H_b J_b,   J_b = d out_b / dw,   H_b = d^2 S_b / d out_b^2,
  with S_b the batch's summed loss and W = sum_b W_b its denominator (``analysis.losses``: the number of
  examples, or the class-weighted number of kept targets), so G is the Hessian with the second derivatives
  of the network dropped. G v = J^T (H (J v)): J v by forward mode (``torch.func.jvp``), H (J v) by
  double backward through the loss as a function of the output, J^T by reverse mode (``vjp``). Any loss
  (cross-entropy with class weights, ignore_index and label smoothing, MSE, a plain function) works as the
  Hessian's does; G is positive semi-definite when the loss is convex in the output (CE, MSE).
* :class:`EFOperator` -- the empirical Fisher (Kunstner, Hennig & Balles, NeurIPS 2019),
        F = (1/W) sum_i g_i g_i^T,   g_i = d s_i / dw,
  with s_i example i's summed loss (its part of S_b; for a plain mean over examples W = N and
  F = (1/N) sum_i g_i g_i^T with g_i the gradient of example i's loss; a token-level loss sums an example's
  tokens). F v = J_s^T (J_s v) for s the vector of per-example losses: no per-example gradients are formed.
* :class:`BlockOperator` -- the diagonal block H[I, I] of an operator for an index set I (one parameter
  tensor, or the parameters of one module): v -> (H pad(v))[I].

Both curvature operators evaluate the model in eval mode on :class:`ModelLoss`'s detached parameter copies,
batch by batch (streamed data work), in its dtype and on its device.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.func import grad, jvp, vjp, vmap

from flatfl.analysis.operators import LinearOperator, ModelLoss, ScipyExport, eval_mode, matmat

CURVATURES = ("hessian", "ggn", "ef")


def per_example_losses(obj: ModelLoss, out: Any, batch: Any) -> torch.Tensor:
    """s_i, example i's summed loss (shape: examples), with sum_i s_i = ``obj.loss_sum(out, batch)``.

    Cross-entropy/NLL: the loss with ``reduction="none"`` (class weights, ignore_index and label smoothing as
    the loss has them), summed over any extra (token) dimensions. Any other loss: ``loss_fn`` on each
    example's slice of the output and targets, times its count -- which needs a tensor output whose first
    dimension is the examples (as the targets')."""
    bl, t = obj.bookkeeping, obj.targets(batch)
    if bl.functional is not None:
        kw = dict(bl.options)
        if kw.get("weight") is not None:
            kw["weight"] = kw["weight"].to(out.device, out.dtype)
        s = bl.functional(out, t, reduction="none", **kw)
        return s.reshape(s.shape[0], -1).sum(1) if s.ndim > 1 else s
    if not isinstance(out, torch.Tensor) or not isinstance(t, torch.Tensor) or out.shape[0] != t.shape[0]:
        raise ValueError(
            "per-example losses need a tensor output and tensor targets with the examples first (the empirical "
            "Fisher and the Fisher-Rao norm); use cross-entropy, or a model whose output is one tensor"
        )
    try:
        return vmap(lambda o, y: bl.loss_fn(o[None], y[None]).reshape(()))(out, t)
    except (RuntimeError, NotImplementedError, ValueError):
        return torch.stack([bl.loss_fn(out[i : i + 1], t[i : i + 1]).reshape(()) for i in range(out.shape[0])])


@contextmanager
def native_rnn_kernels() -> Iterator[None]:
    """oneDNN and cuDNN switched off (their RNN backward has no derivative, so PyTorch's native LSTM/GRU kernels
    run instead) and only those two switches restored afterwards (``torch.backends.*.flags`` would also reset
    TF32 and determinism)."""
    saved = torch.backends.mkldnn.enabled, torch.backends.cudnn.enabled
    torch.backends.mkldnn.enabled = torch.backends.cudnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled, torch.backends.cudnn.enabled = saved


class ReverseJacobian:
    """J t and J^T w of a tensor function f of the parameters at one point, by reverse mode alone (for a model
    without forward-mode autodiff): J t = d/du <J^T u, t>, the derivative of the linear map u -> J^T u, itself a
    reverse-mode product built with ``create_graph`` ("reverse over reverse"); J^T w by plain reverse mode. Build
    it under ``torch.enable_grad()`` and :func:`native_rnn_kernels` (oneDNN's and cuDNN's RNN backward has no
    derivative); it needs twice-differentiable operations, which :meth:`check_adjoint` verifies. ``why``: the
    forward-mode failure, for the error messages."""

    def __init__(self, f: Any, params: dict[str, torch.Tensor], names: list[str], why: str = "") -> None:
        self.names, self.why = list(names), why
        self.leaves = {n: params[n].detach().requires_grad_(True) for n in self.names}
        self.ps = [self.leaves[n] for n in self.names]
        self.value = f(self.leaves)
        if not isinstance(self.value, torch.Tensor):
            raise NotImplementedError(f"{why}; the reverse-mode fallback needs a tensor model output")
        self.u = torch.zeros_like(self.value, requires_grad=True)
        jtu = torch.autograd.grad(self.value, self.ps, self.u, create_graph=True, allow_unused=True)
        self.linked = [(g, n) for g, n in zip(jtu, self.names) if g is not None]

    def jvp(self, t: dict[str, torch.Tensor]) -> torch.Tensor:
        """J t (the shape of f's value) for a tangent ``t`` (name -> tensor)."""
        if not self.linked:
            return torch.zeros_like(self.value)
        (d,) = torch.autograd.grad([g for g, _ in self.linked], self.u, [t[n].to(g) for g, n in self.linked],
                                   retain_graph=True, allow_unused=True)  # fmt: skip
        return torch.zeros_like(self.value) if d is None else d

    def vjp(self, w: torch.Tensor) -> torch.Tensor:
        """J^T w, flat (in ``names`` order)."""
        back = torch.autograd.grad(self.value, self.ps, w, retain_graph=True, allow_unused=True)
        return torch.cat([(torch.zeros_like(p) if b is None else b).reshape(-1) for b, p in zip(back, self.ps)])

    def check_adjoint(self) -> None:
        """<w, J t> by reverse over reverse against <J^T w, t> by plain reverse mode, for one seeded t and w. An
        operation whose backward is not differentiable (``@once_differentiable``, a backward under no_grad)
        silently drops its part of d/du <J^T u, t> (autograd raises nothing); this adjoint identity then fails,
        and a RuntimeError says so instead of a wrong number."""
        g = torch.Generator().manual_seed(0)
        t = {n: torch.randn(p.shape, generator=g, dtype=torch.float64).to(p) for n, p in zip(self.names, self.ps)}
        w = torch.randn(self.value.shape, generator=g, dtype=torch.float64).to(self.value)
        jt = float((w * self.jvp(t)).sum())
        back = torch.autograd.grad(self.value, self.ps, w, retain_graph=True, allow_unused=True)
        terms = [float((b * t[n]).sum()) for b, n in zip(back, self.names) if b is not None]
        eps = torch.finfo(self.value.dtype).eps
        if abs(jt - sum(terms)) > max(1e-3, 8 * eps) * (sum(abs(x) for x in terms) + abs(jt)) + 256 * eps:
            raise RuntimeError(
                f"{self.why}; and reverse over reverse cannot differentiate the backward pass either (<w, J t> = "
                f"{jt:.6g} against <J^T w, t> = {sum(terms):.6g}: an operation whose backward is not "
                "differentiable, e.g. @once_differentiable)"
            )


class _ProductOperator(ScipyExport):
    """Base of the GGN and empirical Fisher: ``size``/``dtype``/``device`` of the objective, a product
    counter, and products J_f^T M (J_f v) per batch for a function f of the parameters (the model's output,
    or its per-example losses), one vjp per batch shared by all columns of a block."""

    name = ""

    def __init__(self, objective: ModelLoss) -> None:
        if not isinstance(objective, ModelLoss):
            raise TypeError(f"objective must be a ModelLoss, got {type(objective).__name__}")
        self.objective = objective
        self.size, self.dtype, self.device = objective.size, objective.dtype, objective.device
        self.num_matvecs = 0
        self.method = self.name
        self.jv_method = "forward"  # "reverse" once the model turned out to have no forward-mode rule
        self.forward_error: str | None = None  # why forward mode failed (the first line of PyTorch's error)
        self._adjoint_checked = False

    def _f(self, batch: Any):
        raise NotImplementedError

    def _middle(self, value: Any, jv: Any, batch: Any) -> Any:
        raise NotImplementedError

    def _batch_products(self, batch: Any, tangents: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
        """J_f^T M (J_f t) for each tangent t: J t by forward mode; once an operation of the model turns out to
        have no forward-mode rule (NotImplementedError; PyTorch's LSTM kernels: ``mkldnn_rnn_layer`` on the
        CPU in float32, ``_cudnn_rnn`` and ``_thnn_fused_lstm_cell`` on CUDA) or torch.func refuses it (a
        RuntimeError, e.g. an ``autograd.Function`` without ``setup_context``), by reverse over reverse from then
        on (:meth:`_reverse_products`; an error that is not about forward mode recurs there and is raised)."""
        if self.jv_method == "forward":
            try:
                return self._forward_products(batch, tangents)
            except torch.cuda.OutOfMemoryError:
                raise  # not about forward mode, and reverse over reverse needs more memory still
            except (NotImplementedError, RuntimeError) as e:
                self.jv_method = "reverse"
                self.forward_error = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return self._reverse_products(batch, tangents)

    def _forward_products(self, batch: Any, tangents: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
        obj = self.objective
        f = self._f(batch)
        value, pull = vjp(f, obj.params)
        outs = []
        for t in tangents:
            _, jv = jvp(f, (obj.params,), (t,))
            (back,) = pull(self._middle(value, jv, batch))
            outs.append(obj.flat(back))
        return outs

    def _reverse_products(self, batch: Any, tangents: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
        """The same products without forward mode (:class:`ReverseJacobian`, one graph per batch for all
        tangents): J t by reverse over reverse, then J^T (M J t) by reverse mode."""
        obj = self.objective
        with torch.enable_grad(), native_rnn_kernels():
            why = f"{self.name}: no forward-mode rule ({self.forward_error})"
            rj = ReverseJacobian(self._f(batch), obj.params, obj.names, why)
            if not self._adjoint_checked:
                rj.check_adjoint()
                self._adjoint_checked = True
            return [rj.vjp(self._middle(rj.value.detach(), rj.jvp(t).detach(), batch)) for t in tangents]

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        """The operator times V (size x b), every column in one pass over the data."""
        if V.ndim != 2 or V.shape[0] != self.size:
            raise ValueError(f"V must be ({self.size}, b)")
        obj = self.objective
        self.num_matvecs += V.shape[1]
        V = V.to(self.device, self.dtype)
        tangents = [obj.unflat(v) for v in V.T]
        out = torch.zeros_like(V)
        with eval_mode(obj.model):
            for b in obj.batches:
                cols = self._batch_products(obj.on_device(b), tangents)
                out += torch.stack(cols, dim=1)
        return out / obj.norm

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.matmat(v.reshape(-1, 1)).reshape(-1)


class GGNOperator(_ProductOperator):
    """The generalised Gauss-Newton matrix G = (1/W) sum_b J_b^T H_b J_b of a :class:`ModelLoss`
    (module docstring)."""

    name = "ggn"

    def _f(self, batch: Any):
        return lambda p: self.objective.output(p, batch)

    def _middle(self, out: Any, jv: Any, batch: Any) -> Any:
        """H_b (J v): double backward through the loss as a function of a tensor output (forward-over-reverse
        for another output structure; it trips over some losses' constant tensors, e.g. class weights)."""
        if not isinstance(out, torch.Tensor):
            g = grad(lambda o: self.objective.loss_sum(o, batch))
            return jvp(g, (out,), (jv,))[1]
        with torch.enable_grad():
            o = out.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.objective.loss_sum(o, batch), o, create_graph=True)
            (hv,) = torch.autograd.grad(g, o, jv, allow_unused=True)
        return torch.zeros_like(out) if hv is None else hv


class EFOperator(_ProductOperator):
    """The empirical Fisher F = (1/W) sum_i g_i g_i^T of a :class:`ModelLoss` (module docstring)."""

    name = "ef"

    def _f(self, batch: Any):
        obj = self.objective
        return lambda p: per_example_losses(obj, obj.output(p, batch), batch)

    def _middle(self, value: Any, jv: Any, batch: Any) -> Any:
        return jv


class BlockOperator(ScipyExport):
    """The diagonal block op[I, I] of a symmetric operator for the indices ``index`` (a 1-D integer tensor):
    v -> (op pad(v))[I], with pad(v) zero outside I. ``name`` labels it (e.g. a parameter's name)."""

    def __init__(self, op: LinearOperator, index: torch.Tensor, name: str = "") -> None:
        self.op, self.name = op, name
        self.index = torch.as_tensor(index, dtype=torch.long, device=op.device)
        if self.index.ndim != 1 or len(self.index) == 0:
            raise ValueError("index must be a non-empty 1-D tensor of indices")
        self.size, self.dtype, self.device = len(self.index), op.dtype, op.device
        self.num_matvecs = 0

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        """The block times V (block size x b): V padded with zeros to the full operator, multiplied, and
        the block's rows of the product kept -- H[B, B] V."""
        self.num_matvecs += V.shape[1]
        full = torch.zeros(self.op.size, V.shape[1], dtype=self.dtype, device=self.device)
        full[self.index] = V.to(self.device, self.dtype)
        return matmat(self.op, full)[self.index]

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """The block times one vector, H[B, B] v."""
        return self.matmat(v.reshape(-1, 1)).reshape(-1)


def parameter_blocks(obj: ModelLoss, group: str = "parameter") -> list[tuple[str, torch.Tensor]]:
    """(name, flat indices) of each parameter tensor (``group="parameter"``) or of each module's own
    parameters together (``group="module"``: ``fc.weight`` and ``fc.bias`` form ``fc``), in the model's order."""
    if group not in ("parameter", "module"):
        raise ValueError(f"group must be 'parameter' or 'module', got {group!r}")
    blocks: dict[str, list[torch.Tensor]] = {}
    start = 0
    for name, numel in zip(obj.names, obj.numels):
        key = name if group == "parameter" else (name.rsplit(".", 1)[0] if "." in name else "(model)")
        blocks.setdefault(key, []).append(torch.arange(start, start + numel))
        start += numel
    return [(k, torch.cat(v)) for k, v in blocks.items()]


def exact_trace(op: LinearOperator, chunk: int = 64) -> torch.Tensor:
    """The diagonal of ``op`` from its products with the unit vectors (``op.size`` products, in blocks of
    ``chunk``): exact, for blocks small enough to afford it."""
    diag = []
    for i in range(0, op.size, chunk):
        cols = torch.arange(i, min(i + chunk, op.size), device=op.device)
        E = torch.zeros(op.size, len(cols), dtype=op.dtype, device=op.device)
        E[cols, torch.arange(len(cols), device=op.device)] = 1
        diag.append(matmat(op, E)[cols, torch.arange(len(cols), device=op.device)])
    return torch.cat(diag)


def curvature_operator(obj: ModelLoss, curvature: str, hessian: Any) -> LinearOperator:
    """The operator of ``curvature`` ("hessian": ``hessian()``, built lazily; "ggn"; "ef")."""
    if curvature == "hessian":
        return hessian()
    if curvature == "ggn":
        return GGNOperator(obj)
    if curvature == "ef":
        return EFOperator(obj)
    raise ValueError(f"curvature must be one of {CURVATURES}, got {curvature!r}")


__all__ = [
    "CURVATURES",
    "GGNOperator",
    "EFOperator",
    "BlockOperator",
    "ReverseJacobian",
    "native_rnn_kernels",
    "parameter_blocks",
    "per_example_losses",
    "exact_trace",
]
