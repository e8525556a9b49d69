"""The mean loss of a model over a fixed data set as a function of its parameters (:class:`ModelLoss`), and its
exact Hessian-vector products.

H is the Hessian of the *mean* loss over a whole data set,
    H = d^2/dw^2 [ (1/N) sum_i loss(f(x_i; w), y_i) ],
evaluated exactly (every sample, in batches), not on one mini-batch. Hessian-vector
products use double backward (grad of g.v, Pearlmutter 1994) or forward-over-reverse
(``torch.func.jvp`` of ``torch.func.grad``). Measured on this project's 2-core CPU for a
0.88M-parameter CIFAR-size CNN on 1,000 images (batches of 250): double backward 1.44 s per
HVP, forward-over-reverse 1.53 s, one gradient 0.81 s. Keeping the first-order graphs of all
batches and only back-propagating g.v through them (``method="cached"``) roughly halves the
HVP time again (1.9x in the same measurement) at the cost of keeping those graphs in
memory (:class:`~flatfl.analysis.hessian_operator.HessianOperator`'s ``method="auto"`` takes it when they
fit its ``memory_budget``). The model is evaluated in eval mode (BatchNorm uses its running statistics,
dropout is off) on detached copies of its parameters: the user's model and its train/eval mode are left as
they were.

Blocks: :meth:`ModelLoss.hvp_block` computes H V for b vectors in one pass over the data. Per
batch the first-order graph g(w) is built once (or taken from the cache) and the b products
H v_j = d(g . v_j)/dw are back-propagated through it, either together -- one batched backward,
``torch.autograd.grad(g, w, V, is_grads_batched=True)``, which vmaps the backward over the
vectors -- or one after the other through the same graph (``mode="loop"``); or, with no
first-order graph at all, forward-over-reverse vmapped over the b tangents (``mode="fwd-rev"``:
the primal forward and backward once per batch, the tangent parts batched).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, grad_and_value, jvp, vmap

from flatfl.analysis import batches as bt
from flatfl.analysis import checks
from flatfl.analysis.linear import eval_mode, twice_differentiable
from flatfl.analysis.losses import LossFn, batch_loss

BLOCK_MODES = ("batched", "loop", "fwd-rev")

ForwardFn = Callable[[nn.Module, Any], Any]
TargetsFn = Callable[[Any], Any]


def _default_forward(model: nn.Module, batch: Any) -> Any:
    return model(_pair(batch)[0])


def _default_targets(batch: Any) -> Any:
    return _pair(batch)[1]


def _pair(batch: Any) -> Any:
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch
    raise ValueError(
        f"a batch of type {type(batch).__name__} is not an (inputs, targets) pair: pass forward=lambda model, "
        "batch: ... and targets=lambda batch: ... to say where the inputs and the labels are"
    )


def _check_data_arguments(model: nn.Module, x: Any, y: Any, batches: Any) -> None:
    """Plain ValueErrors for what :class:`ModelLoss` cannot take (x/y lengths and ``batch_size``:
    :func:`batches.split <flatfl.analysis.batches.split>`)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, not {type(model).__name__}")
    if next(model.parameters(), None) is None:
        raise ValueError(f"the model ({type(model).__name__}) has no parameters: nothing to analyse")
    checks.initialised(model)
    if (batches is None) == (x is None or y is None):
        raise ValueError("give either x and y tensors or batches=")
    if batches is None and len(y) == 0:
        raise ValueError("empty data set")


class _Hooked(nn.Module):
    """The user's model behind a ``forward(model, batch)`` hook, so ``functional_call`` swaps its parameters."""

    def __init__(self, model: nn.Module, forward: ForwardFn) -> None:
        super().__init__()
        self.model = model
        self.hook = forward

    def forward(self, batch: Any) -> Any:
        return self.hook(self.model, batch)


class ModelLoss:
    """The mean loss of a model over a fixed data set, as a function of its parameters::

        L(w) = sum_b W_b * loss_fn(forward(w, batch_b), targets(batch_b)) / sum_b W_b,

    where ``loss_fn`` is a mean over batch b (``nn.CrossEntropyLoss()``, ``nn.MSELoss()``, ``F.cross_entropy``
    or a plain function) and W_b its denominator: the number of examples (the first dimension of the targets),
    or for cross-entropy / NLL the (class-weighted) number of kept targets (``analysis.losses``) -- so L is the
    loss of all the data in one batch, whatever the batching. ``n`` is the number of examples, ``norm`` the
    sum of the W_b (equal to ``n`` for a plain mean over examples).

    Batches are ``(x, y)`` pairs by default; ``forward(model, batch)`` and ``targets(batch)`` hooks take any
    other batch (dicts, several inputs). Holds detached copies of the parameters (``params``, optionally cast
    to ``dtype``) and buffers; ``loss``, ``gradient`` and ``hvp`` take parameter dicts or flat vectors and
    never touch the model's own tensors. The data stay on ``device`` when they take at most half of
    ``memory_budget`` bytes, else on the host, one batch moved to the device at a time (data larger than the
    device's memory work); ``stream`` forces either way.
    """

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        *,
        batches: Iterable[Any] | None = None,
        batch_size: int = 250,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        loss_fn: LossFn = F.cross_entropy,
        forward: ForwardFn | None = None,
        targets: TargetsFn | None = None,
        memory_budget: float = 2 * 2**30,
        stream: bool | None = None,
    ) -> None:
        _check_data_arguments(model, x, y, batches)
        first = next(model.parameters())
        self.device = torch.device(device) if device is not None else first.device
        self.dtype = dtype or first.dtype
        self.model = model
        self.loss_fn = loss_fn
        self.bookkeeping = batch_loss(loss_fn)
        self.forward = forward
        self.targets = targets or _default_targets
        self._net = model if forward is None else _Hooked(model, forward)
        self._prefix = "" if forward is None else "model."
        self._set_tensors(model)
        raw = bt.split(x, y, batch_size) if batches is None else list(batches)
        if not raw:
            raise ValueError("the data yielded no batches")
        self.counts = [bt.count(self.targets(b)) for b in raw]
        self.n = int(sum(self.counts))
        if self.n == 0:
            raise ValueError("empty data set")
        self.norm = sum(self.batch_weight(b) for b in raw)
        self.labelled = sum(self.bookkeeping.labelled(self.targets(b)) for b in raw)
        if self.norm == 0:
            raise ValueError("no batch has a target that counts (every label is ignore_index, or every weight 0)")
        self.data_bytes = sum(bt.nbytes(b) for b in raw)
        big = self.device.type != "cpu" and self.data_bytes > memory_budget / 2
        self.streamed = big if stream is None else stream
        home = torch.device("cpu") if self.streamed else self.device
        self.batches = [bt.to(b, home, self.dtype) for b in raw]

    def _set_tensors(self, model: nn.Module) -> None:
        """Copies of the trainable parameters (``params``, differentiated) and of the buffers and frozen
        parameters (``buffers``: constants of the functional call), cast to the analysis dtype and device;
        never the model's own tensors, so a forward that updates a buffer in place leaves the model alone."""
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not trainable:
            raise ValueError(
                "every parameter of the model has requires_grad=False: nothing to differentiate (the Hessian is "
                "over the trainable parameters; frozen ones are constants)"
            )
        self.names = [n for n, _ in trainable]
        self.shapes = [p.shape for _, p in trainable]
        self.numels = [p.numel() for _, p in trainable]
        self.size = sum(self.numels)
        self.params = {n: p.detach().to(self.device, self.dtype).clone() for n, p in trainable}

        def copy(t: torch.Tensor) -> torch.Tensor:
            t = t.detach()
            return (t.to(self.device, self.dtype) if t.is_floating_point() else t.to(self.device)).clone()

        frozen = {n: copy(p) for n, p in model.named_parameters() if not p.requires_grad}
        self.buffers = {n: copy(b) for n, b in model.named_buffers()} | frozen

    @classmethod
    def from_loader(cls, model: nn.Module, loader: Iterable[Any], **kwargs) -> ModelLoss:
        """The mean loss over every batch a DataLoader (or any iterable) yields, read once and kept (on the
        device, or on the host when large -- see the class docstring). A shuffling loader is fine: the mean
        over all examples does not depend on their order."""
        return cls(model, batches=loader, **kwargs)

    # batches -------------------------------------------------------------------------------
    def on_device(self, batch: Any) -> Any:
        """``batch`` on the operator's device (a no-op unless the data are streamed from the host)."""
        return bt.to(batch, self.device, self.dtype) if self.streamed else batch

    def batch_count(self, batch: Any) -> int:
        """The number of examples in a batch: the first dimension of its targets."""
        return bt.count(self.targets(batch))

    def batch_weight(self, batch: Any) -> float:
        """W_b, the denominator of the batch's mean loss (class docstring)."""
        return self.bookkeeping.weight(self.targets(batch))

    def output(self, params: dict[str, torch.Tensor], batch: Any, buffers: dict | None = None) -> Any:
        """The model's output on ``batch`` with parameters ``params`` (the model's own tensors untouched)."""
        buffers = self.buffers if buffers is None else buffers
        if self._prefix:
            params = {self._prefix + n: p for n, p in params.items()}
            buffers = {self._prefix + n: b for n, b in buffers.items()}
        args = (batch,) if self._prefix else (batch[0],)
        if not torch.is_grad_enabled():
            return functional_call(self._net, (params, buffers), args)
        with twice_differentiable():
            return functional_call(self._net, (params, buffers), args)

    def loss_sum(self, out: Any, batch: Any) -> torch.Tensor:
        """The batch's summed loss from the model's output (see the class docstring for the bookkeeping)."""
        return self.bookkeeping.total(out, self.targets(batch))

    def correct(self, out: Any, batch: Any) -> torch.Tensor | None:
        """Number of examples whose arg-max output is the integer target, or None when the task is not
        classification with integer labels (regression, token-level targets of another shape)."""
        t = self.targets(batch)
        if not isinstance(out, torch.Tensor) or not isinstance(t, torch.Tensor) or t.is_floating_point():
            return None
        if out.ndim != t.ndim + 1 or out.shape[:-1] != t.shape:
            return None
        return (out.argmax(-1) == t).sum()

    def batch_loss_sum(self, params: dict[str, torch.Tensor], batch: Any) -> torch.Tensor:
        """W_b times the batch's mean loss at ``params`` (name -> tensor): the batch's term of L's numerator."""
        return self.loss_sum(self.output(params, batch), batch)

    # flat <-> dict ------------------------------------------------------------------------
    def flat(self, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Parameters (name -> tensor; default: the held copy) as one flat vector, in ``names`` order."""
        params = self.params if params is None else params
        return torch.cat([params[n].reshape(-1) for n in self.names])

    def unflat(self, v: torch.Tensor) -> dict[str, torch.Tensor]:
        """A flat vector of length ``size`` -> name -> tensor of the parameter's shape (views, no copy)."""
        parts = torch.split(v, self.numels)
        return {n: p.view(s) for n, p, s in zip(self.names, parts, self.shapes)}

    def unflat_batch(self, V: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(P, size)`` stacked flat vectors -> name -> ``(P, *shape)``, for ``vmap``."""
        parts = torch.split(V, self.numels, dim=1)
        return {n: p.reshape(V.shape[0], *s) for n, p, s in zip(self.names, parts, self.shapes)}

    # the loss ----------------------------------------------------------------------------
    def loss(self, w: torch.Tensor | None = None, batches: Sequence[tuple] | None = None) -> float:
        """Mean loss at flat parameters ``w`` (default: the model's) over ``batches`` (default: all)."""
        params = self.params if w is None else self.unflat(w)
        batches = self.batches if batches is None else batches
        n = sum(self.batch_weight(b) for b in batches)
        with torch.no_grad(), eval_mode(self.model):
            total = sum(self.batch_loss_sum(params, self.on_device(b)) for b in batches)
        return float(total) / n

    def losses(self, W: torch.Tensor, vectorize: bool | None = None) -> np.ndarray:
        """Mean loss at each row of ``W`` (P x size) over all the data, the P points in one pass over the
        batches: stacked through ``vmap`` (default on an accelerator) or in a loop (default on a CPU, where
        vmap turns convolutions into slower grouped ones)."""
        from flatfl.analysis.points import points_loss  # points imports this module

        vec = self.device.type != "cpu" if vectorize is None else vectorize
        loss, _ = points_loss(self, W.to(self.device, self.dtype), vec)
        return loss.cpu().numpy()

    def loss_and_gradient(
        self, w: torch.Tensor | None = None, batches: Sequence[tuple] | None = None
    ) -> tuple[float, torch.Tensor]:
        """Mean loss and its gradient (flat) at ``w`` over ``batches``."""
        self.check_differentiable()
        params = self.params if w is None else self.unflat(w)
        batches = self.batches if batches is None else batches
        n = sum(self.batch_weight(b) for b in batches)
        total_loss = 0.0
        total_grad = torch.zeros(self.size, dtype=self.dtype, device=self.device)
        with eval_mode(self.model):
            for b in batches:
                b = self.on_device(b)
                g, val = grad_and_value(lambda p, b=b: self.batch_loss_sum(p, b))(params)
                total_grad += self.flat(g)
                total_loss += float(val)
        return total_loss / n, total_grad / n

    def check_differentiable(self) -> None:
        """ValueError when reverse-mode autograd misses part of how the loss depends on the parameters.

        A forward pass that runs a part using trainable parameters under ``torch.no_grad()`` (or through
        ``.data``) gives a gradient without that part, while forward-mode AD (which ``no_grad`` does not stop)
        sees it: Hessian-vector products would mix the two and the operator would not be symmetric. Compares
        g . v (reverse mode) with the directional derivative d/de L(w + e v) (forward mode) on two examples of
        the first batch for one seeded v; once per objective (a layer without a forward-mode rule skips it)."""
        if getattr(self, "_differentiable", False):
            return
        probe = bt.slice_batch(self.on_device(self.batches[0]), 0, 2)
        f = lambda p: self.batch_loss_sum(p, probe)  # noqa: E731
        g = torch.Generator().manual_seed(0)
        v = {n: torch.randn(p.shape, generator=g, dtype=torch.float64).to(p) for n, p in self.params.items()}
        with eval_mode(self.model), torch.enable_grad():
            leaves = {n: p.detach().requires_grad_(True) for n, p in self.params.items()}
            loss = f(leaves)
            if not loss.requires_grad:
                raise ValueError(
                    "the loss does not depend on the model's parameters through autograd: is the forward pass (or "
                    "the loss) under torch.no_grad(), or are the outputs detached?"
                )
            gs = torch.autograd.grad(loss, [leaves[n] for n in self.names], allow_unused=True)
            terms = [float((gi * v[n]).sum()) for gi, n in zip(gs, self.names) if gi is not None]
            try:
                forward = float(jvp(f, (self.params,), (v,))[1])
            except (RuntimeError, NotImplementedError):
                forward = None
        reverse, scale = sum(terms), sum(abs(t) for t in terms)
        eps = torch.finfo(self.dtype).eps
        tol = max(1e-3, 8 * eps)  # half precision rounds the two modes apart
        # absolute slack: at a near-perfect fit (per-example loss ~1e-6) both modes form 1 - p in the working
        # precision, so g.v itself is a few hundred ulps of an O(1) quantity (seen: float32 g.v -5.5e-6 against
        # forward -3.8e-6 = -2^-18, equal in float64); a missing no_grad part is far larger than that
        if forward is not None and abs(reverse - forward) > tol * (scale + abs(forward)) + 256 * eps:
            raise ValueError(
                f"reverse-mode autograd misses part of the loss's dependence on the parameters (g.v = {reverse:.6g}, "
                f"forward mode {forward:.6g}): a part of forward() that uses trainable parameters runs under "
                "torch.no_grad() or through .data; set requires_grad=False on those parameters, or drop the no_grad"
            )
        self._differentiable = True

    def hvp(
        self, v: torch.Tensor, method: str = "double-backward", batches: Sequence[tuple] | None = None
    ) -> torch.Tensor:
        """H v for the mean loss over ``batches`` (default: all), at the model's parameters."""
        batches = self.batches if batches is None else batches
        n = sum(self.batch_weight(b) for b in batches)
        tangents = self.unflat(v.to(self.device, self.dtype))
        out = torch.zeros(self.size, dtype=self.dtype, device=self.device)
        with eval_mode(self.model):
            for b in batches:
                if method == "cached":
                    break
                b = self.on_device(b)
                if method == "fwd-rev":
                    f = lambda p, b=b: self.batch_loss_sum(p, b)  # noqa: E731
                    _, hv = jvp(grad(f), (self.params,), (tangents,))
                    out += self.flat(hv)
                elif method == "double-backward":
                    params = {n: p.detach().requires_grad_(True) for n, p in self.params.items()}
                    with torch.enable_grad():
                        loss = self.batch_loss_sum(params, b)
                        gs = torch.autograd.grad(loss, [params[n] for n in self.names], create_graph=True)
                        dot = sum((g * tangents[n]).sum() for g, n in zip(gs, self.names))
                        hv = torch.autograd.grad(dot, [params[n] for n in self.names])
                    out += torch.cat([h.reshape(-1) for h in hv])
                else:
                    raise ValueError(f"unknown HVP method {method!r}")
            if method == "cached":
                out = self._cached_hvp(tangents, batches)
        return out / n

    def hvp_block(
        self,
        V: torch.Tensor,
        method: str = "double-backward",
        mode: str = "batched",
        batches: Sequence[tuple] | None = None,
    ) -> torch.Tensor:
        """H V for the mean loss (V: b x size, rows are vectors; returns b x size).

        ``mode`` "batched" or "loop": the first-order graph of each batch is built once (kept across
        calls with ``cached``) and the b products go through it, in one batched backward or one after
        the other (``method="fwd-rev"``, a model without double-backward rules: one product at a time).
        ``mode="fwd-rev"``: forward-over-reverse vmapped over the b tangents (:meth:`_fwd_rev_block`),
        whatever ``method``.
        """
        batches = self.batches if batches is None else batches
        n = sum(self.batch_weight(b) for b in batches)
        V = V.to(self.device, self.dtype)
        if mode not in BLOCK_MODES:
            raise ValueError(f"unknown block mode {mode!r}")
        if mode == "fwd-rev":
            return self._fwd_rev_block(self.unflat_batch(V), batches) / n
        if method == "fwd-rev":
            return torch.stack([self.hvp(v, method, batches) for v in V])
        if method not in ("double-backward", "cached"):
            raise ValueError(f"unknown HVP method {method!r}")
        batched = mode == "batched"
        tangents = self.unflat_batch(V)
        with eval_mode(self.model):
            if method == "cached":
                leaves, grads = self._first_order_graph(batches)
                return self._back_block(leaves, grads, tangents, batched, retain=True) / n
            out = torch.zeros_like(V)
            for b in batches:
                leaves, grads = self._first_order_graph_of([b])
                out += self._back_block(leaves, grads, tangents, batched, retain=False)
        return out / n

    def _fwd_rev_block(self, tangents: dict[str, torch.Tensor], batches: Sequence[tuple]) -> torch.Tensor:
        """sum over batches of H_b v_j for each row v_j of ``tangents`` (b x size), forward-over-reverse:
            H_b v = d/de grad L_b(w + e v) at e = 0 = jvp(grad L_b, (w,), (v,))[1]
        (Pearlmutter 1994; the ``torch.func`` hvp recipe), ``vmap``-ped over the b tangents. The primal
        forward and backward run once per batch; only the tangent parts carry the block dimension, so a
        layer with unbatched weights sees the b tangents as one larger batch. Holds about one batch's
        activations per vector."""
        b = next(iter(tangents.values())).shape[0]
        out = torch.zeros(b, self.size, dtype=self.dtype, device=self.device)
        with eval_mode(self.model):
            for batch in batches:
                batch = self.on_device(batch)
                g = grad(lambda p, batch=batch: self.batch_loss_sum(p, batch))
                hv = vmap(lambda t, g=g: jvp(g, (self.params,), (t,))[1])(tangents)
                out += torch.cat([hv[n].reshape(b, -1) for n in self.names], dim=1)
        return out

    def _back_block(
        self, leaves: dict, grads: list, tangents: dict[str, torch.Tensor], batched: bool, retain: bool
    ) -> torch.Tensor:
        """sum over graphs of d(g . v_j)/dw for each row v_j of ``tangents`` (b x size)."""
        inputs = [leaves[n] for n in self.names]
        outs = [g for gs in grads for g in gs]
        b = next(iter(tangents.values())).shape[0]
        with torch.enable_grad():
            if batched:
                gos = [tangents[n] for _ in grads for n in self.names]
                hv = torch.autograd.grad(outs, inputs, grad_outputs=gos, retain_graph=True, is_grads_batched=True)
                return torch.cat([h.reshape(b, -1) for h in hv], dim=1)
            rows = []
            for j in range(b):
                gos = [tangents[n][j] for _ in grads for n in self.names]
                hv = torch.autograd.grad(outs, inputs, grad_outputs=gos, retain_graph=retain or j + 1 < b)
                rows.append(torch.cat([h.reshape(-1) for h in hv]))
            return torch.stack(rows)

    def _first_order_graph_of(self, batches: Sequence[tuple]) -> tuple[dict, list]:
        """Leaves and per-batch gradients recorded with ``create_graph=True`` (in eval mode, as every
        evaluation here: a model left in train mode would otherwise update its BatchNorm statistics)."""
        leaves = {n: p.detach().requires_grad_(True) for n, p in self.params.items()}
        grads = []
        with torch.enable_grad(), eval_mode(self.model):
            for b in batches:
                loss = self.batch_loss_sum(leaves, self.on_device(b))
                grads.append(torch.autograd.grad(loss, [leaves[n] for n in self.names], create_graph=True))
        return leaves, grads

    def _first_order_graph(self, batches: Sequence[tuple]) -> tuple[dict, list]:
        """The kept first-order graphs of ``batches`` (built on first use, see :meth:`_cached_hvp`)."""
        key = tuple(id(b) for b in batches)
        if getattr(self, "_graph_key", None) != key:
            self._graph, self._graph_key = self._first_order_graph_of(batches), key
        return self._graph

    def _cached_hvp(self, tangents: dict[str, torch.Tensor], batches: Sequence[tuple]) -> torch.Tensor:
        """H v through first-order graphs built once and kept (``method="cached"``).

        The forward pass and first backward of every batch are recorded once with
        ``create_graph=True``; each HVP is then a single backward of g.v through them --
        PyHessian's trick, here over the whole data set. Costs the memory of those graphs
        (about two forward passes' activations per sample, for all samples) until
        :meth:`release_graph`; use it when the data fit.
        """
        leaves, grads = self._first_order_graph(batches)
        with torch.enable_grad():
            dot = sum((g * tangents[n]).sum() for gs in grads for g, n in zip(gs, self.names))
            hv = torch.autograd.grad(dot, [leaves[n] for n in self.names], retain_graph=True)
        return torch.cat([h.reshape(-1) for h in hv])

    def release_graph(self) -> None:
        """Free the graphs kept by ``method="cached"``."""
        self._graph = self._graph_key = None
