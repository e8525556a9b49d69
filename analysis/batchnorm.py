"""BatchNorm statistics re-estimated at a perturbed point (:class:`BatchNormReestimator`) for surfaces."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.func import functional_call

from flatfl.analysis import batches as bt
from flatfl.analysis.model_loss import _Hooked


def has_batchnorm(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


class BatchNormReestimator:
    """Fresh BatchNorm running statistics for given parameters, from a few training batches.

    Li et al.'s surfaces keep the unperturbed model's running statistics at every grid point;
    a perturbed model's activations no longer match them. This recomputes them the way
    ``torch.optim.swa_utils.update_bn`` does -- statistics reset, ``momentum=None`` (an exact
    cumulative average over the batches), forward passes in train mode -- but functionally, on
    one private copy of the model made once (never per point), so the user's model is untouched.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        batches: Sequence[Any],
        forward: Callable[[torch.nn.Module, Any], Any] | None = None,
    ) -> None:
        """``batches``: input tensors, or whole batches when a ``forward(model, batch)`` hook is given."""
        self.model = copy.deepcopy(model)
        for m in self.model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.momentum = None
        self.batches = list(batches)
        self.forward = forward

    def buffers(self, params: dict[str, torch.Tensor], template: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        fresh = {}
        for name, b in template.items():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "running_mean":
                fresh[name] = torch.zeros_like(b)
            elif leaf == "running_var":
                fresh[name] = torch.ones_like(b)
            elif leaf == "num_batches_tracked":
                fresh[name] = torch.zeros_like(b)
            else:
                fresh[name] = b.clone()
        ref = next(iter(params.values()))
        was = self.model.training
        self.model.train()
        try:
            with torch.no_grad():
                for xb in self.batches:
                    xb = bt.to(xb, ref.device, ref.dtype)
                    if self.forward is None:
                        functional_call(self.model, (params, fresh), (xb,))
                    else:
                        p = {"model." + n: v for n, v in params.items()}
                        b = {"model." + n: v for n, v in fresh.items()}
                        functional_call(_Hooked(self.model, self.forward), (p, b), (xb,))
        finally:
            self.model.train(was)
        return fresh
