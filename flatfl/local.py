"""Local training on one client: plain minibatch SGD over in-memory tensors.

The client's data stay on the device; each epoch is a fresh permutation drawn from the
generator passed in (the last, smaller batch is kept, as PyTorch's DataLoader does by
default). A new ``torch.optim.SGD`` is made per call, so no momentum carries over
between rounds -- as in the FedMut reference code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from flatfl.algorithms.base import LocalBatch
from flatfl.config import LocalConfig


def minibatches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    epochs: int,
    generator: torch.Generator,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """A client's minibatches in order: a fresh permutation from ``generator`` per epoch, the
    last smaller batch kept, each batch's inputs through ``augment`` (drawing from the same
    generator). Shared by sequential and stacked (``flatfl.parallel``) training, so both see the
    same batches."""
    n = int(y.shape[0])
    for _ in range(epochs):
        perm = torch.randperm(n, generator=generator).to(x.device)
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
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
) -> tuple[torch.Tensor, int]:
    """Train ``model`` in place for ``cfg.epochs`` epochs; return (mean minibatch loss, steps).

    ``extra(named parameters, batch)`` is added to every minibatch loss (FedProx, SCAFFOLD); the
    reported loss is the data loss alone. The loss is a 0-d tensor on the model's device (no
    host sync per step). ``augment(x_batch, generator)`` transforms each minibatch's inputs
    (CIFAR's crop + flip), drawing from the same client generator. ``first_loss``, when given,
    receives the first minibatch's loss: that of the model as it was passed in.
    """
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    model.train()
    losses = []
    params = dict(model.named_parameters()) if extra is not None else None
    for xb, yb in minibatches(x, y, cfg.batch_size, cfg.epochs, generator, augment):
        logits = model(xb)
        loss = F.cross_entropy(logits, yb)
        total = loss if extra is None else loss + extra(params, LocalBatch(xb, yb, logits, model, generator))
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        losses.append(loss.detach())
    if not losses:
        return torch.zeros((), device=x.device), 0
    if first_loss is not None:
        first_loss.append(losses[0])
    return torch.stack(losses).mean(), len(losses)


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
