"""Mode connectivity: a curved low-loss path between two models (Garipov, Izmailov, Podoprikhin, Vetrov &
Wilson, "Loss Surfaces, Mode Connectivity, and Fast Ensembling of DNNs", NeurIPS 2018).

The path is the quadratic Bézier curve

    φ_c(t) = (1 - t)^2 a + 2 t (1 - t) c + t^2 b,    t ∈ [0, 1],

from the model's parameters a to the other model's b through a bend c, trained to minimise the loss along
the curve, E_{t ~ U[0,1]} L(φ_c(t)) (Garipov et al., eq. 3, with the uniform distribution on t): each SGD
step draws t and a batch from a seeded generator and follows ∇_c L_batch(φ_c(t)) = 2 t (1 - t) ∇L_batch(φ_c(t)).
c starts at (a + b) / 2, where the curve is the straight line, so the curve starts from the line's loss.

The barrier of a path γ between the endpoints is max_t [L(γ(t)) - ((1 - t) L(a) + t L(b))], the largest
excess over the linear interpolation of the endpoint losses (Frankle et al., ICML 2020; Entezari et al.,
ICLR 2022); 0 where the loss along the path never exceeds it (e.g. a convex loss along the line).
Every point is evaluated with the first model's buffers (BatchNorm statistics), as the loss surfaces are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from flatfl.analysis import checks
from flatfl.analysis.api import _common, _flat_state, _problem
from flatfl.analysis.operators import ModelLoss


@dataclass(frozen=True)
class Connectivity:
    """The loss along the trained Bézier curve and along the straight line between two models."""

    t: np.ndarray
    curve_loss: np.ndarray
    line_loss: np.ndarray
    curve_barrier: float
    line_barrier: float
    control: torch.Tensor  # the trained bend c (flat, in the objective's parameter order)
    train_loss: np.ndarray  # the batch loss at φ_c(t) at each step, before the step
    settings: dict = field(default_factory=dict)


def bezier(a: torch.Tensor, c: torch.Tensor, b: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """φ_c(t) = (1 - t)^2 a + 2 t (1 - t) c + t^2 b; ``t`` a number, or a vector of P values (P x size)."""
    t = torch.as_tensor(t, dtype=a.dtype, device=a.device).reshape(-1, 1)
    out = (1 - t) ** 2 * a + 2 * t * (1 - t) * c + t**2 * b
    return out[0] if out.shape[0] == 1 else out


def barrier(t: np.ndarray, loss: np.ndarray) -> float:
    """max_t [L(t) - ((1 - t) L(0) + t L(1))] (module docstring); ``t`` from 0 to 1."""
    return float(np.max(loss - ((1 - t) * loss[0] + t * loss[-1])))


def mode_connectivity(
    model: nn.Module | ModelLoss,
    other: nn.Module | Mapping[str, torch.Tensor],
    data: Any = None,
    *,
    steps: int = 300,
    lr: float = 0.01,
    momentum: float = 0.9,
    num_points: int = 21,
    seed: int | torch.Generator = 0,
    **objective_kw: Any,
) -> Connectivity:
    """Train the bend c of the Bézier curve from ``model`` (a) to ``other`` (b; a model or state dict of the
    same architecture) to minimise E_t L(φ_c(t)) (module docstring), and evaluate the loss at ``num_points``
    evenly spaced t along the curve and along the straight line (1 - t) a + t b, with both barriers.

    ``steps`` SGD steps with ``momentum`` and learning rate ``lr`` decayed to 0 by a half cosine; each step
    draws t ~ U[0, 1] and one of the objective's batches (``batch_size``) from ``seed``: the same seed gives
    bit-for-bit the same curve. Neither model is modified."""
    checks.integer("steps", steps, 1)
    checks.integer("num_points", num_points, 3)
    checks.positive("lr", lr)
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    gen = checks.generator(seed)
    obj = _problem(model, data, objective_kw)
    a = obj.flat().clone()
    b = _flat_state(obj, other, "other")
    if torch.equal(a, b):
        raise ValueError("other has the same parameters as the model: there is no path to find")
    c = (a + b) / 2
    velocity = torch.zeros_like(c)
    train = []
    for k in range(steps):
        t = float(torch.rand((), generator=gen, dtype=torch.float64))
        i = int(torch.randint(len(obj.batches), (), generator=gen))
        loss, g = obj.loss_and_gradient(bezier(a, c, b, t), batches=[obj.batches[i]])
        train.append(loss)
        velocity = momentum * velocity + 2 * t * (1 - t) * g
        c = c - lr * 0.5 * (1 + math.cos(math.pi * k / steps)) * velocity
    ts = np.linspace(0.0, 1.0, num_points)
    tt = torch.as_tensor(ts, dtype=obj.dtype, device=obj.device)
    curve = obj.losses(bezier(a, c, b, tt))
    line = obj.losses((1 - tt)[:, None] * a + tt[:, None] * b)
    settings = {"steps": steps, "lr": lr, "momentum": momentum, "num_points": num_points, **_common(obj, seed)}
    return Connectivity(ts, curve, line, barrier(ts, curve), barrier(ts, line), c.detach().cpu(),
                        np.asarray(train), settings)  # fmt: skip
