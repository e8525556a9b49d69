"""Many clients' local SGD at once on one device: stacked parameters and ``torch.func.vmap``.

Small models (the CNNs, the LSTM) leave a GPU mostly idle when clients train one after another.
Here the k clients of a group keep their parameters stacked along a new leading dimension and
take their steps in lockstep: step s evaluates ``vmap(grad(loss))`` over the clients' s-th
minibatches in one batched call, then applies every client's own update by the round's
:class:`flatfl.algorithms.step.LocalStep`, the rule sequential training runs: the perturbation
(SAM, ASAM: ``vmap`` of the same function, so each client's norm is its own; then a second batched
gradient at w + e), the descent direction and ``sgd_direction``, torch.optim.SGD's update.

Each client's minibatches come from ``flatfl.local.minibatches`` with its own generator, as in
``local_sgd`` (a permutation per epoch, then augmentation per minibatch), so they are the same;
a client with fewer or smaller batches is padded and masked (a masked example weighs 0 in the
mean loss; a client that has finished does not move). Results equal sequential training up to
float summation order (tested).

Which models qualify: no BatchNorm running statistics (buffers updated in place by a forward
pass cannot be vmapped), no dropout (its random masks would not be the sequential ones) and no
fused RNN: ``smallcnn``, ``cnn``, ``resnet18 --norm group``; not ``resnet18`` (BatchNorm),
``vgg16`` (BatchNorm, dropout) nor ``lstm`` -- PyTorch has no vmap batching rule for its fused
LSTM kernel and runs it client by client through a slow fallback (measured on CPU: 2.7x slower
than sequential training), so LSTM rounds train sequentially. Rounds whose clients have a local term (FedProx's proximal
term, SCAFFOLD's correction, FedGen's regulariser) train sequentially, and so do clients whose
steps follow different rules.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from flatfl import seeding
from flatfl.algorithms.base import ClientJob, ClientUpdate
from flatfl.algorithms.step import sgd_direction
from flatfl.errors import DivergenceError
from flatfl.local import batch_rows, minibatches


class ClientPool(Protocol):
    """What the parallel runner needs of a simulation (``flatfl.simulation.Simulation`` is one): the run config
    (``cfg.seed``, ``cfg.local``), the model, each client's data, the augmentation and the per-client callback.
    A protocol, so this module never imports the trainer that calls it."""

    cfg: Any
    model: nn.Module
    client_x: Sequence[torch.Tensor]
    client_y: Sequence[torch.Tensor]
    augment: Any
    on_client_done: Callable[[int, int], None] | None


def model_qualifies(model: nn.Module) -> bool:
    """True when the model has no buffers (BatchNorm statistics), no dropout and no fused RNN."""
    if any(True for _ in model.buffers()):
        return False
    return not any(isinstance(m, (nn.modules.dropout._DropoutNd, nn.RNNBase)) for m in model.modules())


def auto_parallel_clients(device: torch.device, clients_per_round: int) -> int:
    """``--parallel-clients auto``: every sampled client at once on an accelerator, one after another on a CPU.

    Measured on this project's 2-core CPU (bench/parallel_clients.py): stacked clients run at 0.67-0.75x
    of sequential training (vmap turns each convolution into a grouped one), so on a CPU the automatic
    choice is sequential -- never slower, and bit-for-bit the same checkpoints as without the flag. On a
    GPU stacking fills the device (the bench measures the ratio; see bench/gpu_check.sh).
    """
    return clients_per_round if torch.device(device).type != "cpu" else 1


def parallel_eligible(sim: ClientPool, jobs: Sequence[ClientJob]) -> bool:
    """Several jobs, none with a local term, all with one step rule (``job.step``, resolved), a model that qualifies."""
    return (
        len(jobs) > 1
        and all(j.local_term is None and j.step is not None and j.step is jobs[0].step for j in jobs)
        and model_qualifies(sim.model)
    )


def train_parallel(sim: ClientPool, round: int, jobs: Sequence[ClientJob]) -> list[ClientUpdate]:
    """Local SGD of every job at once (see the module docstring); updates in job order."""
    cfg, model, step = sim.cfg.local, sim.model, jobs[0].step
    assert step is not None and all(j.step is step for j in jobs)
    names = [n for n, _ in model.named_parameters()]
    k = len(jobs)
    params = {n: torch.stack([j.state[n] for j in jobs]).detach() for n in names}
    schedules = []
    for j in jobs:
        gen = torch.Generator().manual_seed(seeding.derive_seed(sim.cfg.seed, seeding.CLIENT, round, j.client))
        schedules.append(
            list(
                minibatches(
                    sim.client_x[j.client], sim.client_y[j.client], cfg.batch_size, cfg.epochs, gen, sim.augment
                )
            )
        )
    steps = [len(s) for s in schedules]
    x0 = sim.client_x[jobs[0].client]
    B = max(batch_rows(cfg.batch_size, len(sim.client_y[j.client])) for j in jobs)

    def loss_fn(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(functional_call(model, p, (x,)), y, reduction="none")
        return (ce * m).sum() / m.sum().clamp_min(1.0)

    step_fn = vmap(grad_and_value(loss_fn))
    pert = step.perturbation
    was_training = model.training
    model.train()
    loss_sum = torch.zeros(k, dtype=torch.float64, device=x0.device)
    bufs: dict[str, torch.Tensor] = {}
    first = torch.full((k,), float("nan"), dtype=torch.float64, device=x0.device)
    try:
        for s in range(max(steps)):
            active = torch.tensor([s < n for n in steps], device=x0.device)
            X = torch.zeros((k, B, *x0.shape[1:]), dtype=x0.dtype, device=x0.device)
            Y = torch.zeros((k, B), dtype=torch.long, device=x0.device)
            M = torch.zeros((k, B), dtype=params[names[0]].dtype, device=x0.device)
            for i, sched in enumerate(schedules):
                if s < len(sched):
                    xb, yb = sched[s]
                    X[i, : len(yb)], Y[i, : len(yb)], M[i, : len(yb)] = xb, yb, 1.0
            if pert is not None and not pert.needs_gradient:  # FedLESAM: one pass, at w + e
                grads, losses = step_fn({n: params[n] + pert.fixed[n] for n in names}, X, Y, M)  # type: ignore[index]
            else:
                grads, losses = step_fn(params, X, Y, M)
                if pert is not None:  # SAM, ASAM: each client's e from its own gradient, then the gradient at w + e
                    e = vmap(pert)(params, grads)
                    grads, _ = step_fn({n: params[n] + e[n] for n in names}, X, Y, M)
            if s == 0:
                first = losses.detach().double()  # each client's sent model on its first minibatch
            loss_sum += torch.where(active, losses.double(), 0.0)
            grads = step.descent(grads)  # elementwise: broadcasts over the stacked clients
            for n in names:
                p = params[n]
                keep = active.view(-1, *[1] * (p.ndim - 1))
                d, buf = sgd_direction(grads[n], p, bufs.get(n), step.momentum, step.dampening, step.weight_decay)
                if buf is not None:
                    bufs[n] = torch.where(keep, buf, bufs.get(n, buf))
                params[n] = torch.where(keep, p.add(d, alpha=-step.lr), p)
    finally:
        model.train(was_training)
    mean_loss = (loss_sum / torch.tensor(steps, device=x0.device).clamp_min(1)).tolist()
    sent_loss = first.tolist()
    out = []
    for i, j in enumerate(jobs):
        if not np.isfinite(mean_loss[i]):
            raise DivergenceError(
                f"round {round}, client {j.client}: local training produced a non-finite loss ({mean_loss[i]})",
                round,
                j.client,
            )
        state = {n: params[n][i].clone() for n in names}
        if sim.on_client_done is not None:
            sim.on_client_done(j.slot, j.client)
        out.append(
            ClientUpdate(
                j.client,
                len(sim.client_y[j.client]),
                state,
                mean_loss[i],
                steps[i],
                step.lr,
                step.momentum,
                sent_loss[i],
            )
        )
    return out
