"""A batch's loss as a sum, and what its mean is taken over.

flatfl analyses the mean loss over a whole data set, L = (sum over batches of S_b) / (sum over batches of
W_b), where S_b is the batch's summed loss and W_b the denominator of the batch's mean -- so L is what the
loss would give on all the data in one batch, whatever the batching. For most losses W_b is the number of
examples (the first dimension of the targets) and S_b = W_b * loss_fn(output, targets). Cross-entropy and
NLL with integer class targets (``F.cross_entropy``, ``F.nll_loss``, ``nn.CrossEntropyLoss``,
``nn.NLLLoss``) are summed directly (``reduction="sum"``), since PyTorch's mean for them is

    sum_i w[y_i] * l_i / sum_i w[y_i]     over the targets y_i != ignore_index (w = 1 without class weights),

so W_b = sum_i w[y_i] over the kept targets (token-level targets count every kept token; HuggingFace's -100
padding labels are left out of both sums), and for class-probability targets W_b is the number of
examples times any extra dimensions. The class weights are cast to the output's dtype and device (an
analysis in float64 of a loss built in float32 works).

A loss module whose ``reduction`` is not "mean" is refused: a summed loss's value depends on the batching.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from flatfl.analysis import batches as bt

LossFn = Callable[[Any, Any], torch.Tensor]


@dataclass(frozen=True)
class BatchLoss:
    """``loss_fn`` with the bookkeeping of the module docstring: ``total(out, t)`` is S_b, ``weight(t)`` W_b."""

    loss_fn: LossFn
    functional: Callable | None = None  # F.cross_entropy / F.nll_loss for class losses, else None
    options: dict = field(default_factory=dict)  # weight, ignore_index, label_smoothing

    def total(self, out: Any, targets: Any) -> torch.Tensor:
        if self.functional is not None:
            kw = dict(self.options)
            if kw.get("weight") is not None:
                kw["weight"] = kw["weight"].to(out.device, out.dtype)
            return self.functional(out, targets, reduction="sum", **kw)
        value = self.loss_fn(out, targets)
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(
                f"loss_fn returned {shape}, not one number: flatfl takes the batch's mean loss (a scalar tensor; "
                "reduction='mean')"
            )
        return value.reshape(()) * bt.count(targets)

    def weight(self, targets: Any) -> float:
        """W_b: the denominator of the batch's mean loss."""
        t = targets
        if self.functional is None or not isinstance(t, torch.Tensor):
            return float(bt.count(targets))
        if t.is_floating_point():  # class probabilities (N, C, d1, ...): the mean is over all but C
            return float(t.numel() // t.shape[1]) if t.ndim > 1 else 1.0
        kept = t[t != self.options.get("ignore_index", -100)]
        w = self.options.get("weight")
        return float(kept.numel()) if w is None else float(w.to(kept.device)[kept].double().sum())

    def labelled(self, targets: Any) -> int:
        """Examples with a label (integer targets other than ignore_index), for accuracy."""
        t = targets
        if self.functional is None or not isinstance(t, torch.Tensor) or t.is_floating_point():
            return bt.count(targets)
        return int((t != self.options.get("ignore_index", -100)).sum())


def batch_loss(loss_fn: LossFn) -> BatchLoss:
    """The :class:`BatchLoss` of ``loss_fn``; ValueError for a loss module that does not take the mean."""
    reduction = getattr(loss_fn, "reduction", "mean") if isinstance(loss_fn, nn.Module) else "mean"
    if reduction != "mean":
        raise ValueError(
            f"loss_fn has reduction={reduction!r}: flatfl takes each batch's mean loss (reduction='mean', the "
            "default) and weighs the batches, so the result is the mean over the whole data set"
        )
    if loss_fn is F.cross_entropy or loss_fn is F.nll_loss:
        return BatchLoss(loss_fn, loss_fn)
    if type(loss_fn) is nn.CrossEntropyLoss:  # a subclass may change forward: taken as a plain mean
        opts = {"weight": loss_fn.weight, "ignore_index": loss_fn.ignore_index}
        return BatchLoss(loss_fn, F.cross_entropy, opts | {"label_smoothing": loss_fn.label_smoothing})
    if type(loss_fn) is nn.NLLLoss:
        return BatchLoss(loss_fn, F.nll_loss, {"weight": loss_fn.weight, "ignore_index": loss_fn.ignore_index})
    return BatchLoss(loss_fn)
