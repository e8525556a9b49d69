"""Local training on one client: minibatch steps over in-memory tensors.

The client's data stay on the device; each epoch is a fresh permutation drawn from the
generator passed in (the last, smaller batch is kept, as PyTorch's DataLoader does by
default; ``batch_size="full"``: one batch of all the client's data, full-batch gradient
descent). Each step follows the round's :class:`flatfl.algorithms.step.LocalStep` (SGD, SAM,
ASAM, ...: the algorithm's ``local_step`` hook). Momentum buffers start empty for every client in
every round, so no momentum carries over between rounds -- as in the FedMut reference code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from flatfl.algorithms.base import LocalBatch
from flatfl.algorithms.step import LocalStep, sgd_direction
from flatfl.config import LocalConfig


def batch_rows(batch_size: int | str, n: int) -> int:
    """Rows per minibatch: ``batch_size``, or all ``n`` for ``"full"`` (at least 1)."""
    return max(n, 1) if batch_size == "full" else int(batch_size)


def minibatches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int | str,
    epochs: int,
    generator: torch.Generator,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """A client's minibatches in order: a fresh permutation from ``generator`` per epoch, the
    last smaller batch kept, each batch's inputs through ``augment`` (drawing from the same
    generator). Shared by sequential and stacked (``flatfl.parallel``) training, so both see the
    same batches."""
    n = int(y.shape[0])
    rows = batch_rows(batch_size, n)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=generator).to(x.device)
        for start in range(0, n, rows):
            idx = perm[start : start + rows]
            yield (x[idx] if augment is None else augment(x[idx], generator)), y[idx]


def local_sgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: LocalConfig,
    generator: torch.Generator,
    extra: Callable[[dict[str, torch.Tensor], LocalBatch], torch.Tensor] | None = None,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    first_loss: list[torch.Tensor] | None = None,
    step: LocalStep | None = None,
) -> tuple[torch.Tensor, int]:
    """Train ``model`` in place for ``cfg.epochs`` epochs; return (mean minibatch loss, steps).

    Every minibatch step follows ``step`` (default: ``LocalStep.from_config(cfg)``, SGD with
    ``cfg.opt``'s perturbation). ``extra(named parameters, batch)`` is added to every minibatch loss
    (FedProx, SCAFFOLD); the reported loss is the data loss alone, at w (for FedLESAM, which makes no
    pass at w, at w + e). The loss is a 0-d tensor on the model's device (no host sync per step).
    ``augment(x_batch, generator)`` transforms each minibatch's inputs (CIFAR's crop + flip), drawing
    from the same client generator. ``first_loss``, when given, receives the first minibatch's loss:
    that of the model as it was passed in.
    """
    step = step if step is not None else LocalStep.from_config(cfg)
    model.train()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    bufs: dict[str, torch.Tensor | None] = {n: None for n, _ in named}
    losses = []
    params = dict(model.named_parameters()) if extra is not None else None
    for xb, yb in minibatches(x, y, cfg.batch_size, cfg.epochs, generator, augment):
        at_w, restore = _perturb(model, named, xb, yb, step) if step.perturbation is not None else (None, None)
        for _, p in named:
            p.grad = None
        logits = model(xb)
        loss = F.cross_entropy(logits, yb)
        total = loss if extra is None else loss + extra(params, LocalBatch(xb, yb, logits, model, generator))
        total.backward()
        if restore is not None:
            restore()
        _sgd_update(named, bufs, step)
        losses.append((loss if at_w is None else at_w).detach())
    if not losses:
        return torch.zeros((), device=x.device), 0
    if first_loss is not None:
        first_loss.append(losses[0])
    return torch.stack(losses).mean(), len(losses)


def _perturb(
    model: nn.Module, named: list[tuple[str, nn.Parameter]], xb: torch.Tensor, yb: torch.Tensor, step: LocalStep
) -> tuple[torch.Tensor | None, Callable[[], None]]:
    """Move the model to w + e (``step.perturbation``); (the data loss at w when the perturbation took
    the gradient there, a function putting w and the buffers back exactly).

    BatchNorm running statistics: with an ascent pass (SAM, ASAM) that pass, at w, updates them as a
    plain step would and the descent pass at w + e does not (its buffers are put back afterwards), the
    usual practice of disabling running-statistic updates in SAM's second pass (github davda54/sam);
    a fixed perturbation (FedLESAM) makes one pass, at w + e, which updates them as its reference does."""
    assert step.perturbation is not None
    loss = None
    w = {n: p.detach().clone() for n, p in named}
    if step.perturbation.needs_gradient:
        loss = F.cross_entropy(model(xb), yb)
        grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
        g = {n: torch.zeros_like(p) if gr is None else gr for (n, p), gr in zip(named, grads)}
        e = step.perturbation(w, g)
    else:
        e = step.perturbation(w, w)
    buffers = [(b, b.detach().clone()) for b in model.buffers()] if loss is not None else []
    with torch.no_grad():
        for n, p in named:
            p.add_(e[n])

    @torch.no_grad()
    def restore() -> None:
        for n, p in named:
            p.copy_(w[n])
        for b, saved in buffers:
            b.copy_(saved)

    return loss, restore


@torch.no_grad()
def _sgd_update(named: list[tuple[str, nn.Parameter]], bufs: dict[str, torch.Tensor | None], step: LocalStep) -> None:
    """w <- w - lr * b for every parameter with a gradient (``sgd_direction``, torch.optim.SGD's rule)."""
    grads = step.descent({n: p.grad for n, p in named if p.grad is not None})
    for n, p in named:
        if n in grads:
            d, bufs[n] = sgd_direction(grads[n], p, bufs[n], step.momentum, step.dampening, step.weight_decay)
            p.add_(d, alpha=-step.lr)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[float, float]:
    """(mean cross-entropy, accuracy in [0, 1]) of ``model`` in eval mode; restores its mode."""
    was_training = model.training
    model.eval()
    try:
        loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
        correct = torch.zeros((), dtype=torch.long, device=x.device)
        for start in range(0, int(y.shape[0]), batch_size):
            out = model(x[start : start + batch_size])
            t = y[start : start + batch_size]
            loss_sum += F.cross_entropy(out, t, reduction="sum").double()
            correct += (out.argmax(1) == t).sum()
        n = max(int(y.shape[0]), 1)
        return float(loss_sum) / n, int(correct) / n
    finally:
        model.train(was_training)
