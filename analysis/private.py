"""A model evaluated at many points one after the other: a private copy whose parameters are overwritten in place.

:func:`flatfl.analysis.points.points_loss` evaluates a point at a time where stacking points (``vmap``) is
slower, as on a CPU, where ``vmap`` turns convolutions into grouped ones (1D slices and surfaces: hundreds of
points per checkpoint, each a full pass over the analysis data). It used to swap the point's parameters into
the model for every batch (``torch.func.functional_call``). :class:`PrivateModel` instead copies the model once
and, for each point, writes the point's parameters into the copy's own tensors (``Tensor.copy_``, no
allocation), then calls the copy directly. On a CPU it also hooks every ``nn.Conv2d`` of the copy so that its
output is in channels-last layout: with a one-channel input (grey images, the demo's digits) PyTorch leaves
the first convolution's output in the default layout, where max-pooling ran 10-25x slower than in
channels-last on this project's 2-core CPU (``F.max_pool2d`` of a 1000x16x8x8 tensor: 19.7 ms against
0.7 ms), and every later layer stayed in it.

Along a line theta + t d (the 1D slices, :meth:`PrivateModel.set_line`) the first layer -- an ``nn.Conv2d``
or ``nn.Linear`` called once on the input tensor itself -- is not evaluated at each point: it is linear in
its weight and bias, so its output at theta + t d is

    layer(x; W + t D_W, b + t D_b) = layer(x; W, b) + t layer(x; D_W, D_b) = A + t B,

with A and B computed once per direction and batch (``torch.add(A, B, alpha=t)`` per point). On the demo's
model the one-input-channel convolution was about as costly as the second one (a profile of the slices:
27% of the time each), the combination a small fraction of it.

None of this changes what is computed: the parameters are the same float tensors, a layout is not a value,
a convolution on channels-last inputs is the one the old loop already ran for inputs of several channels,
and A + t B is the first layer's output to rounding (float32: a relative difference of about 1e-7 in the
demo's slices, ``bench/slices_cost.py``; float64: 1e-12, ``tests/test_fast_slices.py``).

The user's model is never touched: the copy is deep, and its tensors are replaced by clones of the
objective's own (``ModelLoss.params`` and ``buffers``, in the analysis dtype and device); the copy is in eval
mode for good. Taken only where it computes what ``functional_call`` computes: no ``forward`` hook (a hook
may close over the user's model itself rather than use the module it is given) and the objective's own
buffers (not per-point BatchNorm statistics); a model that cannot be deep-copied, or whose copy fails to run
(e.g. ``x.view(n, -1)`` of a channels-last tensor), falls back to ``functional_call``.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from flatfl.analysis.model_loss import ModelLoss


def _channels_last_output(module: nn.Module, args: Any, out: Any) -> Any:
    """Forward hook: a 4-D tensor output in channels-last layout (the same values)."""
    if isinstance(out, torch.Tensor) and out.ndim == 4:
        return out.contiguous(memory_format=torch.channels_last)
    return out


def _tensor_of(net: nn.Module, name: str) -> torch.Tensor:
    try:
        return net.get_parameter(name)
    except AttributeError:
        return net.get_buffer(name)


class PrivateModel:
    """A deep copy of ``obj.model`` holding obj's parameters and buffers; :meth:`load` writes a flat point into
    its trainable parameters (in ``obj.names`` order), :meth:`__call__` runs it (no autograd needed: call it
    under ``torch.no_grad()``)."""

    def __init__(self, obj: ModelLoss) -> None:
        net = copy.deepcopy(obj.model)
        cpu = obj.device.type == "cpu"
        with torch.no_grad():
            # .data = keeps tied parameters tied (one Parameter object shared by two modules) and may change the
            # dtype and device, as Module.to does; 4-D weights in channels-last layout on a CPU, as the old loop
            for name, t in {**obj.buffers, **obj.params}.items():
                t = t.detach().clone()
                if cpu and t.ndim == 4:
                    t = t.contiguous(memory_format=torch.channels_last)
                _tensor_of(net, name).data = t
        for p in net.parameters():
            p.requires_grad_(False)
        net.eval()
        if cpu:
            for m in net.modules():
                if isinstance(m, nn.Conv2d):
                    m.register_forward_hook(_channels_last_output)
        self.net = net
        self.names = list(obj.names)
        self.targets = [_tensor_of(net, n) for n in obj.names]
        self.numels = list(obj.numels)
        self._first: list[tuple[nn.Module, dict[str, int]]] | None = None  # found on first use of a line
        self._line: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._t: float | None = None

    def load(self, flat: torch.Tensor, t: float | None = None) -> None:
        """Write the flat parameter vector ``flat`` (length ``obj.size``) into the copy, in place. ``t``: flat is
        the point theta + t d of the line set by :meth:`set_line` (its first layers' outputs are then combined)."""
        with torch.no_grad():
            for p, part in zip(self.targets, torch.split(flat, self.numels)):
                p.copy_(part.view(p.shape))
        self._t = t

    def _first_layers(self, inputs: torch.Tensor) -> list[tuple[nn.Module, dict[str, int]]]:
        """The ``nn.Conv2d``/``nn.Linear`` modules called on the model's input tensor itself, once per forward
        pass, with their trainable weight (and bias) -- (module, {"weight": index in names, ...})."""
        calls: dict[int, int] = {}
        seen: list[nn.Module] = []

        def pre(module: nn.Module, args: Any) -> None:
            calls[id(module)] = calls.get(id(module), 0) + 1
            if args and args[0] is inputs and module not in seen:
                seen.append(module)

        mods = [m for m in self.net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        handles = [m.register_forward_pre_hook(pre) for m in mods]
        try:
            with torch.no_grad():
                self.net(inputs)
        except (RuntimeError, NotImplementedError):  # the copy cannot run (points_loss falls back): no line
            return []
        finally:
            for h in handles:
                h.remove()
        index = {id(t): i for i, t in enumerate(self.targets)}
        out = []
        for m in seen:
            where = {k: index.get(id(getattr(m, k))) for k in ("weight", "bias") if getattr(m, k) is not None}
            if calls[id(m)] == 1 and None not in where.values() and "weight" in where:
                out.append((m, where))
        return out

    def set_line(self, theta: torch.Tensor, d: torch.Tensor, inputs: list[torch.Tensor], budget: float) -> bool:
        """Points theta + t d follow (:meth:`load` with ``t``): each first layer's output on each of ``inputs``
        becomes A + t B with A = layer(x; theta's weight and bias) and B = layer(x; d's), computed here once --
        a convolution or linear layer is linear in its weight and bias, so this is its output at the point, to
        rounding. Not done (False) when A and B of every input would take more than ``budget`` bytes."""
        self.clear_line()
        if self._first is None:
            self._first = self._first_layers(inputs[0])
            for m, _ in self._first:
                m.forward = self._combined(m, m.forward)
        if not self._first:
            return False
        line = {}
        with torch.no_grad():
            for m, where in self._first:
                for x in inputs:
                    a, b = (self._layer(m, where, v, x) for v in (theta, d))
                    line[(id(m), id(x))] = (a, b)
        if sum(a.numel() * a.element_size() * 2 for a, _ in line.values()) > budget:
            return False
        self._line = line
        return True

    def clear_line(self) -> None:
        self._line, self._t = {}, None

    def _layer(self, m: nn.Module, where: dict[str, int], flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(flat, self.numels)
        params = {k: parts[i].view(self.targets[i].shape) for k, i in where.items()}
        out = torch.func.functional_call(m, params, (x,))
        return _channels_last_output(m, (x,), out) if isinstance(m, nn.Conv2d) and x.device.type == "cpu" else out

    def _combined(self, m: nn.Module, forward: Any) -> Any:
        def combined(x: torch.Tensor) -> torch.Tensor:
            ab = self._line.get((id(m), id(x))) if self._t is not None else None
            return forward(x) if ab is None else torch.add(ab[0], ab[1], alpha=self._t)

        return combined

    def __call__(self, inputs: Any) -> Any:
        return self.net(inputs)


def private_model(obj: ModelLoss) -> PrivateModel | None:
    """obj's :class:`PrivateModel`, made on first use and kept on obj; None where it does not apply (a
    ``forward`` hook) or the model cannot be deep-copied."""
    if obj.forward is not None:
        return None
    cached = getattr(obj, "_private_model", None)
    if cached is None:
        try:
            cached = PrivateModel(obj)
        except (TypeError, RuntimeError, AttributeError, copy.Error):
            cached = False  # not again
        obj._private_model = cached
    return cached or None
