"""Where the sent models (FedMut's mutants) and the returned client models sit around the global model.

FedMut's claim (Hu et al., AAAI 2024) is geometric: the server sends each sampled client a
different mutant w_{t-1} + c_k * radius * (w_{t-1} - w_{t-2}) of the global model, so the
clients explore a neighbourhood of w_{t-1} and the average settles where all of them do well.
For a run saved with ``--save-clients`` this module measures, for round t (dispatch origin
w_{t-1}, new global w_t):

* distances of every sent model s_k and returned model r_k to the origin, three ways:
  L2 ``||s_k - w_{t-1}||``, relative ``||s_k - w_{t-1}|| / ||w_{t-1}||``, and filter-normalised
  ``sqrt(mean_f (||Δ_f|| / ||w_f||)^2)`` over the filters f (output rows of every weight
  tensor with >= 2 dimensions; each 1-D tensor -- bias, norm scale/shift -- counts as one
  filter), the same per-filter scale Li et al. (2018) use to normalise surface directions;
* the returned models' distances to the new global w_t (the client drift around the result);
* the cosine similarity of the client updates u_k = r_k - s_k (what local training did), as a
  matrix and its mean off-diagonal value;
* optionally each model's loss and accuracy on a data set (one ``vmap`` pass over all models);
* positions on a plane: least-squares coordinates of every model in a plane (origin, d1, d2),
  plus its off-plane distance -- by default the plane of the round's own top-2 principal
  directions of {s_k - w_{t-1}, r_k - w_{t-1}}.

For FedAvg every s_k equals w_{t-1}: the sent-model distances are exactly zero, which the
spread curve shows. Only parameters count (not BatchNorm running statistics).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from flatfl.analysis.operators import NOT_FINITE


def flatten(state: dict[str, torch.Tensor], names: Sequence[str]) -> torch.Tensor:
    """Parameters ``names`` of a state dict as one float64 vector (buffers left out)."""
    return torch.cat([state[n].detach().reshape(-1).double().cpu() for n in names])


def filter_slices(shapes: Sequence[torch.Size]) -> list[tuple[int, int, int]]:
    """(start, rows, row_length) of every filter group in the flat layout of ``shapes``."""
    out, start = [], 0
    for s in shapes:
        n = int(np.prod(s)) if len(s) else 1
        if len(s) >= 2:
            out.append((start, int(s[0]), n // int(s[0])))
        else:
            out.append((start, 1, n))
        start += n
    return out


def filter_normalized_distance(delta: torch.Tensor, w: torch.Tensor, groups: list[tuple[int, int, int]]) -> float:
    """sqrt(mean over filters f of (||delta_f|| / ||w_f||)^2); filters with ||w_f|| = 0 are skipped."""
    ratios = []
    for start, rows, length in groups:
        d = delta[start : start + rows * length].view(rows, length).norm(dim=1)
        n = w[start : start + rows * length].view(rows, length).norm(dim=1)
        ok = n > 0
        ratios.append((d[ok] / n[ok]) ** 2)
    r = torch.cat(ratios)
    return float(r.mean().sqrt()) if len(r) else 0.0


def plane_coordinates(
    points: torch.Tensor, origin: torch.Tensor, d1: torch.Tensor, d2: torch.Tensor | None
) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares coordinates (a, b) of each row of ``points`` in origin + a d1 + b d2.

    Returns (coords (P, 2 or 1), off-plane distance (P,)): the norm of the part of
    ``p - origin`` the plane does not explain. Exact for points in the plane whatever the
    angle between d1 and d2.
    """
    D = torch.stack([d1] if d2 is None else [d1, d2], dim=1).double()  # (n, 2)
    R = (points.double() - origin.double()).T  # (n, P)
    if not (torch.isfinite(D).all() and torch.isfinite(R).all()):  # LAPACK fails on them with an internal assert
        raise ValueError(NOT_FINITE)
    coef = torch.linalg.lstsq(D, R).solution  # (2, P)
    resid = (R - D @ coef).norm(dim=0)
    return coef.T.numpy(), resid.numpy()


def pca_plane(vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-2 right singular vectors of the (uncentred) rows of ``vectors``, unit norm.

    Uncentred, so the plane passes through the origin the rows are measured from. When the
    rows span fewer than two dimensions (FedAvg's sent models are all zero rows) the missing
    axis is any unit vector orthogonal to the first.
    """
    _, S, Vh = torch.linalg.svd(vectors.double(), full_matrices=False)
    d1 = Vh[0]
    if len(S) > 1 and S[1] > 1e-12 * max(float(S[0]), 1e-300):
        d2 = Vh[1]
    else:
        g = torch.Generator().manual_seed(0)
        d2 = torch.randn(vectors.shape[1], generator=g, dtype=torch.float64)
        d2 = d2 - (d2 @ d1) * d1
        d2 = d2 / d2.norm()
    return d1, d2


@dataclass(frozen=True)
class RoundSpread:
    """The spread of one round's sent and returned models (see the module docstring)."""

    round: int
    clients: list[int]
    origin_norm: float  # ||w_{t-1}||
    step_norm: float  # ||w_t - w_{t-1}||
    sent_l2: list[float]
    sent_relative: list[float]
    sent_filter: list[float]
    returned_l2: list[float]
    returned_relative: list[float]
    returned_filter: list[float]
    returned_to_new_l2: list[float]
    update_cosines: list[list[float]]
    mean_update_cosine: float
    mutation_coefficients: list | None = None
    losses: dict[str, Any] | None = None  # name -> list (sent/returned) or float (origin/new), + accuracies
    positions: dict[str, Any] | None = None  # plane + coordinates + off-plane distances
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, float]:
        """Per-round scalars for the spread curve."""
        row = {
            "round": self.round,
            "sent_l2_mean": float(np.mean(self.sent_l2)),
            "sent_l2_max": float(np.max(self.sent_l2)),
            "sent_relative_mean": float(np.mean(self.sent_relative)),
            "sent_filter_mean": float(np.mean(self.sent_filter)),
            "returned_l2_mean": float(np.mean(self.returned_l2)),
            "returned_relative_mean": float(np.mean(self.returned_relative)),
            "returned_filter_mean": float(np.mean(self.returned_filter)),
            "returned_to_new_l2_mean": float(np.mean(self.returned_to_new_l2)),
            "step_l2": self.step_norm,
            "mean_update_cosine": self.mean_update_cosine,
        }
        if self.losses:
            row["sent_loss_mean"] = float(np.mean(self.losses["sent_loss"]))
            row["sent_loss_max"] = float(np.max(self.losses["sent_loss"]))
            row["returned_loss_mean"] = float(np.mean(self.losses["returned_loss"]))
            row["origin_loss"] = self.losses["origin_loss"]
            row["new_global_loss"] = self.losses["new_global_loss"]
        return row


def model_losses(
    model: torch.nn.Module,
    flats: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int = 250,
    device: str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Mean loss and accuracy on (x, y) of each row of ``flats`` (flat parameters of ``model``).

    Evaluated in eval mode with ``model``'s buffers (BatchNorm running statistics) for every
    row: the flat vectors hold parameters only.
    """
    from flatfl.analysis.operators import ModelLoss
    from flatfl.analysis.surfaces import points_loss

    obj = ModelLoss(model, x, y, batch_size=batch_size, device=device)
    loss, acc = points_loss(obj, flats.to(obj.device, obj.dtype))
    return loss.cpu().numpy(), acc.cpu().numpy()


def _losses(
    model: nn.Module,
    origin: torch.Tensor,
    new: torch.Tensor,
    S: torch.Tensor,
    R: torch.Tensor,
    data: tuple[torch.Tensor, torch.Tensor],
    batch_size: int,
    device: str,
) -> dict[str, Any]:
    """Loss and accuracy of the origin, the new global and every sent/returned model (one pass over the data)."""
    m = len(S)
    allm = torch.cat([origin[None], new[None], S, R])
    lv, av = model_losses(model, allm, data[0], data[1], batch_size=batch_size, device=device)
    return {
        "origin_loss": float(lv[0]),
        "origin_accuracy": float(av[0]),
        "new_global_loss": float(lv[1]),
        "new_global_accuracy": float(av[1]),
        "sent_loss": lv[2 : 2 + m].tolist(),
        "sent_accuracy": av[2 : 2 + m].tolist(),
        "returned_loss": lv[2 + m :].tolist(),
        "returned_accuracy": av[2 + m :].tolist(),
    }


def _positions(
    origin: torch.Tensor,
    new: torch.Tensor,
    S: torch.Tensor,
    R: torch.Tensor,
    plane: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
) -> dict[str, Any]:
    """Least-squares coordinates of every model in ``plane`` (default: the round's own PCA plane)."""
    if plane is None:
        d1, d2 = pca_plane(torch.cat([S - origin, R - origin]))
        plane_o, plane_desc = origin, "top-2 principal directions of the round's sent and returned models"
    else:
        plane_o, d1, d2 = plane
        plane_desc = "given plane"
    sc, so = plane_coordinates(S, plane_o, d1, d2)
    rc, ro = plane_coordinates(R, plane_o, d1, d2)
    nc, no = plane_coordinates(torch.stack([origin, new]), plane_o, d1, d2)
    return {
        "plane": plane_desc,
        "origin": nc[0].tolist(),
        "new_global": nc[1].tolist(),
        "sent": sc.tolist(),
        "returned": rc.tolist(),
        "sent_off_plane": so.tolist(),
        "returned_off_plane": ro.tolist(),
        "new_global_off_plane": float(no[1]),
    }


def spread_of(
    origin_state: dict[str, torch.Tensor],
    new_state: dict[str, torch.Tensor],
    sent: Sequence[dict[str, torch.Tensor]],
    returned: Sequence[dict[str, torch.Tensor]],
    model: nn.Module,
    *,
    round: int,
    clients: Sequence[int],
    mutation_coefficients: Any = None,
    data: tuple[torch.Tensor, torch.Tensor] | None = None,
    plane: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    batch_size: int = 250,
    device: str = "cpu",
    extra: dict[str, Any] | None = None,
) -> RoundSpread:
    """How the models ``sent`` to and ``returned`` by the clients of one round spread around the dispatch
    origin ``origin_state`` (w_{t-1}); ``new_state`` is the aggregate w_t.

    ``model`` (any module with the states' architecture, holding the origin's buffers) gives the
    parameter names and, with ``data`` (x, y), every model's loss/accuracy there. ``plane`` (origin, d1,
    d2) as flat float64 vectors: report positions in it; default: the round's PCA plane.
    """
    net = model
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    shapes = [p.shape for n, p in net.named_parameters() if p.requires_grad]
    groups = filter_slices(shapes)
    origin = flatten(origin_state, names)
    new = flatten(new_state, names)
    S = torch.stack([flatten(s, names) for s in sent])
    R = torch.stack([flatten(r, names) for r in returned])
    on = float(origin.norm())

    def dists(M: torch.Tensor, ref: torch.Tensor) -> tuple[list[float], list[float], list[float]]:
        l2 = (M - ref).norm(dim=1)
        filt = [filter_normalized_distance(M[i] - ref, ref, groups) for i in range(len(M))]
        return l2.tolist(), (l2 / max(on, 1e-300)).tolist(), filt

    s_l2, s_rel, s_f = dists(S, origin)
    r_l2, r_rel, r_f = dists(R, origin)
    U = R - S
    Un = U / U.norm(dim=1, keepdim=True).clamp_min(1e-300)
    C = (Un @ Un.T).numpy()
    m = len(C)
    mean_cos = float((C.sum() - np.trace(C)) / (m * (m - 1))) if m > 1 else float("nan")

    losses = None
    if data is not None:
        losses = _losses(model, origin, new, S, R, data, batch_size, device)
    positions = _positions(origin, new, S, R, plane)
    return RoundSpread(
        round=round,
        clients=list(clients),
        origin_norm=on,
        step_norm=float((new - origin).norm()),
        sent_l2=s_l2,
        sent_relative=s_rel,
        sent_filter=s_f,
        returned_l2=r_l2,
        returned_relative=r_rel,
        returned_filter=r_f,
        returned_to_new_l2=(R - new).norm(dim=1).tolist(),
        update_cosines=C.tolist(),
        mean_update_cosine=mean_cos,
        mutation_coefficients=mutation_coefficients,
        losses=losses,
        positions=positions,
        extra=dict(extra or {}),
    )
