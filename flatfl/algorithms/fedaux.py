"""FedAUX (Sattler, Korjakow, Rischke, Samek; IEEE TNNLS 2022, arXiv:2102.02514).

Unlabelled auxiliary data on the server serve three purposes:

1. *Pre-training* (optional, ``pretrain_steps`` > 0): the feature extractor h (the model's
   ``latent``) is trained self-supervised on the auxiliary data before round 1, and the
   global model starts from it. The paper uses contrastive learning; flatfl uses rotation
   prediction (Gidaris et al., ICLR 2018: a throw-away linear layer on h(x) predicts which of
   0/90/180/270 degrees x was rotated by, Adam ``pretrain_lr``), which needs no augmentation
   pipeline and works on 8x8 digits as on CIFAR. Image inputs only.
2. *Certainty scores*: before round 1 every client k fits an l2-regularised logistic
   regression separating its own features (label 1) from the auxiliary features (label 0),

       min_v  mean_i log(1 + exp(-s_i v^T u_i)) + (lambda / 2) ||v||^2,
       u = [h(x) / M, 1] / sqrt(2)   (M the largest ||h|| of the client's fit: ||u|| <= 1;
                                      the bias is the last weight),

   and reports s_k(x) = sigmoid(v_k^T u(x)) for every auxiliary x: how much x looks like
   client k's data. With ``dp_epsilon`` > 0 the weights are released with Gaussian output
   perturbation (Chaudhuri et al., 2011): sensitivity 2 / (n lambda), n = the number of
   terms of the mean, sigma = 2 sqrt(2 ln(1.25 / delta)) / (n lambda epsilon). Off by default.
   The scores are fixed for the run and saved with the algorithm state.
3. *Certainty-weighted distillation*: after FedAvg's aggregation the server distils the
   ensemble into the global model on the auxiliary data, as FedDF, but with the target

       p(x) = softmax( sum_k s_k(x) f(x; w_k) / (T sum_k s_k(x)) ),

   the certainty-weighted mean of the clients' logits (FedDF's plain mean of logits when all
   scores are equal), each client's vote counting where its data look like x.

Against the authors' code (github fedl-repo/fedaux, ``fl_devices.py``): the weighted *logits*
and the max-norm feature scaling are theirs. Their scorer is scikit-learn's
``LogisticRegression(C=1/lambda)``, i.e. a *sum* of losses + ||v||^2 / 2 with an unpenalised
intercept -- on the mean that is a regulariser lambda / n, while their noise uses the
sensitivity 2 / (n lambda) of the mean form; flatfl fits the mean form the sensitivity belongs
to (so ``--score-l2`` is that lambda, and the same number regularises more than theirs).
Their teachers and student run in train mode (BatchNorm batch statistics); flatfl's in eval mode.

The auxiliary data are a held-out unlabelled slice of the training set (``proxy_frac``;
indices in ``partition.json`` under ``server``) or a share of another dataset
(``proxy_data``), as for FedDF. The distillation settings
(temperature, Adam steps and lr, early stopping) are FedDF's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from flatfl.algorithms.base import Federation
from flatfl.algorithms.feddf import FedDF, teacher_logits
from flatfl.errors import UserError
from flatfl.models import latent_split
from flatfl.statedict import StateDict, clone


@dataclass(frozen=True)
class FedAUXConfig:
    proxy_data: str = "holdout"  # or the name of another dataset whose training inputs are used unlabelled
    proxy_frac: float = 0.1
    pretrain_steps: int = 0
    pretrain_lr: float = 1e-3
    score_l2: float = 0.01
    dp_epsilon: float = 0.0  # 0: no privacy noise on the scorers
    dp_delta: float = 1e-5
    temperature: float = 1.0
    steps: int = 100
    lr: float = 1e-3
    batch_size: int = 64
    eval_every: int = 10
    patience: int = 3
    weighted: bool = True


def scorer_inputs(features: torch.Tensor, scale: float) -> torch.Tensor:
    """u = [h / scale, 1] / sqrt(2) in float64 (rows of norm <= 1 when scale >= every ||h||),
    the last coordinate carrying the bias."""
    h = features.double() / max(scale, 1e-12)
    return torch.cat([h, torch.ones(len(h), 1, dtype=h.dtype, device=h.device)], 1) / math.sqrt(2.0)


def fit_logistic(pos: torch.Tensor, neg: torch.Tensor, l2: float, max_iter: int = 200) -> torch.Tensor:
    """Weights v minimising mean log(1 + exp(-s v^T u)) + l2/2 ||v||^2 (s = +1 on ``pos``, -1 on
    ``neg``; rows already in ``scorer_inputs`` form), by L-BFGS in float64 (strictly convex)."""
    u = torch.cat([pos, neg]).double()
    s = torch.cat([torch.ones(len(pos)), -torch.ones(len(neg))]).to(u)
    v = torch.zeros(u.shape[1], dtype=u.dtype, device=u.device, requires_grad=True)
    opt = torch.optim.LBFGS(
        [v], lr=1.0, max_iter=max_iter, tolerance_grad=1e-12, tolerance_change=1e-14, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.softplus(-s * (u @ v)).mean() + 0.5 * l2 * v.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return v.detach()


def dp_sigma(n: int, l2: float, epsilon: float, delta: float) -> float:
    """Gaussian output-perturbation scale for l2-regularised logistic regression (module docstring)."""
    return 2.0 * math.sqrt(2.0 * math.log(1.25 / delta)) / (n * l2 * epsilon)


def weighted_ensemble_log_probs(logits: torch.Tensor, scores: torch.Tensor, T: float) -> torch.Tensor:
    """log_softmax( sum_k s_k z_k / (T sum_k s_k) ) for logits z (k, n, C) and scores s (k, n)."""
    w = scores / scores.sum(0, keepdim=True).clamp_min(1e-30)
    return F.log_softmax((w.unsqueeze(-1) * logits).sum(0) / T, -1)


def rotation_pretrain(
    model: torch.nn.Module, x: torch.Tensor, steps: int, lr: float, batch: int, gen: torch.Generator
) -> float:
    """Self-supervised rotation prediction on ``x`` (square images), training ``model.latent`` in
    place through a temporary linear layer; returns the last minibatch loss."""
    latent, _, dim = latent_split(model)
    if x.ndim != 4 or x.shape[-1] != x.shape[-2]:
        raise UserError("--aux-pretrain-steps: rotation pre-training needs square images (not text); use 0")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(2**62, (1,), generator=gen)))
        rot_head = torch.nn.Linear(dim, 4).to(x.device)
    opt = torch.optim.Adam(list(model.parameters()) + list(rot_head.parameters()), lr=lr)
    model.train()
    loss = torch.zeros(())
    for _ in range(steps):
        idx = torch.randint(len(x), (min(batch, len(x)),), generator=gen).to(x.device)
        k = torch.randint(4, (len(idx),), generator=gen).to(x.device)
        xb = torch.stack([torch.rot90(xi, int(ki), (1, 2)) for xi, ki in zip(x[idx], k.tolist())])
        loss = F.cross_entropy(rot_head(latent(xb)), k)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return float(loss.detach())


class FedAUX(FedDF):
    name = "fedaux"
    config_cls = FedAUXConfig

    def __init__(self, config: FedAUXConfig, **kw: Any) -> None:
        super().__init__(config, **kw)
        self.scores: torch.Tensor | None = None  # (num_clients, n_aux) certainty scores
        self.prepare_info: dict[str, Any] = {}

    @torch.no_grad()
    def _features(self, model: torch.nn.Module, x: torch.Tensor, batch: int = 500) -> torch.Tensor:
        latent, _, _ = latent_split(model)
        model.eval()
        return torch.cat([latent(x[i : i + batch]) for i in range(0, len(x), batch)])

    def prepare(self, global_state: StateDict, federation: Federation, gen: torch.Generator) -> StateDict:
        """Steps 1 and 2: optional pre-training (returns the new initial model) and every client's scores."""
        c = self.config
        aux = federation.server_data()
        model = federation.new_model(global_state)
        latent_split(model)  # a clear error for a model without a feature/head split
        state = global_state
        if c.pretrain_steps > 0:
            last = rotation_pretrain(model, aux, c.pretrain_steps, c.pretrain_lr, c.batch_size, gen)
            state = clone(global_state) | {k: v.detach().clone() for k, v in model.state_dict().items()}
            self.prepare_info["pretrain_last_loss"] = last
        h_aux = self._features(model, aux)
        rows, accs = [], []
        for k in range(self.num_clients):
            h_k = self._features(model, federation.client_inputs(k))
            scale = float(torch.cat([h_k, h_aux]).norm(dim=1).max())  # the largest norm of this fit
            pos, neg = scorer_inputs(h_k, scale), scorer_inputs(h_aux, scale)
            v = fit_logistic(pos, neg, c.score_l2)
            if c.dp_epsilon > 0:
                sigma = dp_sigma(len(pos) + len(neg), c.score_l2, c.dp_epsilon, c.dp_delta)
                v = v + sigma * torch.randn(len(v), generator=gen, dtype=v.dtype).to(v.device)
            rows.append(torch.sigmoid(neg @ v).float())
            accs.append(float(((pos @ v) > 0).double().mean()))
        self.scores = torch.stack(rows)
        self.prepare_info["scorer_train_acc_pos_mean"] = float(np.mean(accs)) if accs else None
        return state

    def before_round(
        self, round: int, global_state: StateDict, rng: np.random.Generator, federation: Federation
    ) -> StateDict:
        """Round 1 (or the first round of a run without scores): pre-training and the clients' scorers."""
        prep_gen = torch.Generator().manual_seed(int(rng.integers(2**62)))  # drawn every round (resume)
        if self.scores is None:
            return self.prepare(global_state, federation, prep_gen)
        self.prepare_info = {}
        return global_state

    def teacher_log_probs(
        self, teachers: Sequence[torch.nn.Module], clients: Sequence[int], x: torch.Tensor
    ) -> torch.Tensor:
        """Certainty-weighted ensemble: log_softmax(sum_k s_k(x) f_k(x) / (T sum_k s_k(x)))."""
        assert self.scores is not None
        s = self.scores[list(clients)].to(x.device)
        return weighted_ensemble_log_probs(teacher_logits(teachers, x), s, self.config.temperature)

    def dispatch_info(self) -> dict[str, Any]:
        return {"distillation": getattr(self, "last_info", None), "prepare": self.prepare_info or None}

    def state_tensors(self) -> StateDict:
        return {} if self.scores is None else {"scores": self.scores.detach().clone()}

    def load_state(self, tensors: StateDict, meta: dict[str, Any]) -> None:
        self.scores = tensors.get("scores")
