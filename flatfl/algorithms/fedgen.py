"""FedGen (Zhu, Hong, Zhou; ICML 2021): data-free knowledge distillation through a generator.

The server learns a label-conditioned generator G(eps, y) of *latent features* -- the input of
the model's classifier head (``latent``/``head`` of the model registry). After the clients
have trained, G is fitted so that the clients' heads agree on its outputs:

    L_G = sum_k mean_b[ a_{y_b,k} * CE(head_k(G(eps_b, y_b)), y_b) ] + eta * L_div,

with a_{y,k} the share of label y's samples held by sampled client k (labels no sampled client
holds more than one sample of are not drawn) and the diversity loss of Mao et al. (2019),
L_div = exp(-mean_{ij} ||eps_i - eps_j||^2 * |G_i - G_j|_1). Adam (``gen_lr``, weight decay
``gen_weight_decay``), ``gen_epochs`` x ``gen_iters`` steps a round, a fresh optimiser each
round; G itself persists across rounds and is saved with the algorithm state.

Each client (from the second round on) adds a regulariser to its minibatch loss:

    alpha * CE(head(G(eps, y~)), y~)               y~ uniform over the classes (``gen_batch``)
  + beta  * KL( softmax(head(G(eps, y))) || softmax(f(x)) )   y the minibatch's labels,

the first term teaching the head the ensemble's consensus latents, the second pulling the
model's predictions on real data towards what its own head says on generated latents of the
same labels (target detached). Aggregation is FedAvg's.

Defaults follow the FedMut authors' code (``Training_FedGen.py``, ``utils/model_config.py``
for CIFAR-10): hidden 512, noise 100 (drawn uniform on [0, 1) as there), one-hot labels, Adam
lr 3e-4 with weight decay 1e-2, 10 epochs x 5 iterations, batch 128, alpha = beta = 0.2, eta 1,
no regulariser in the first round. The generator is one Linear-BatchNorm-ReLU block and a
linear output layer; it runs in eval mode on the clients (as there) and in train mode on the
server.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from flatfl.algorithms.base import ClientUpdate, FederatedAlgorithm, Federation, LocalBatch, LocalTerm
from flatfl.models import latent_split
from flatfl.statedict import StateDict

MIN_SAMPLES_PER_LABEL = 1  # a label is drawn for the generator when some sampled client has more


@dataclass(frozen=True)
class FedGenConfig:
    gen_hidden: int = 512
    gen_noise: int = 100
    gen_lr: float = 3e-4
    gen_weight_decay: float = 1e-2
    gen_epochs: int = 10
    gen_iters: int = 5
    gen_batch: int = 128
    gen_alpha: float = 0.2  # client: CE of the head on generated latents
    gen_beta: float = 0.2  # client: KL between real-data predictions and the head on G(y)
    diversity: float = 1.0  # server: weight eta of the diversity loss
    weighted: bool = True


class LatentGenerator(nn.Module):
    """G(eps, y) = W2 relu(BN(W1 [eps, onehot(y)])): a latent vector per (noise, label)."""

    def __init__(self, num_classes: int, latent_dim: int, hidden: int = 512, noise_dim: int = 100) -> None:
        super().__init__()
        self.num_classes, self.noise_dim = num_classes, noise_dim
        self.fc = nn.Linear(noise_dim + num_classes, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.out = nn.Linear(hidden, latent_dim)

    def forward(self, eps: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = torch.cat([eps, F.one_hot(y, self.num_classes).to(eps.dtype)], 1)
        return self.out(torch.relu(self.bn(self.fc(h))))

    def sample(self, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(noise, latents) for labels ``y``; noise uniform on [0, 1) from ``gen``."""
        eps = torch.rand((len(y), self.noise_dim), generator=gen).to(y.device)
        return eps, self(eps, y)


def diversity_loss(eps: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """exp(-mean_ij d2(eps_i, eps_j) * d1(z_i, z_j)), d2 the mean squared and d1 the mean absolute
    difference (Mao et al., 2019, as in FedGen): small when different noise gives different latents."""
    d_eps = (eps[:, None] - eps[None]).pow(2).mean(-1)
    d_z = (z[:, None] - z[None]).abs().mean(-1)
    return torch.exp(-(d_eps * d_z).mean())


def label_weights(counts: np.ndarray, clients: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(a, qualified): a[y, k] = share of label y's samples among sampled clients held by client k
    (0 where nobody has y); qualified labels have a client with more than one sample."""
    c = np.asarray(counts, dtype=np.float64)[list(clients)].T  # (labels, k)
    tot = c.sum(1, keepdims=True)
    a = np.divide(c, tot, out=np.zeros_like(c), where=tot > 0)
    return a, np.flatnonzero(c.max(1) > MIN_SAMPLES_PER_LABEL)


def generator_loss(
    generator: LatentGenerator,
    heads: Sequence[nn.Module | Any],
    weights: torch.Tensor,
    y: torch.Tensor,
    gen: torch.Generator,
    diversity: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """L_G on one batch of labels ``y`` (see the module docstring); ``weights`` is a[y, k]."""
    eps, z = generator.sample(y, gen)
    teacher = sum(
        (F.cross_entropy(head(z), y, reduction="none") * weights[y, k]).mean() for k, head in enumerate(heads)
    )
    div = diversity_loss(eps, z)
    loss = teacher + diversity * div
    return loss, {"teacher": float(teacher.detach()), "diversity": float(div.detach())}


class FedGen(FederatedAlgorithm):
    name = "fedgen"
    config_cls = FedGenConfig

    def __init__(self, config: FedGenConfig, **kw: Any) -> None:
        super().__init__(config, **kw)
        if self.client_label_counts is None:
            raise ValueError("FedGen needs the clients' label counts")
        self.num_classes = int(np.asarray(self.client_label_counts).shape[1])
        self.generator: LatentGenerator | None = None
        self._pending: StateDict | None = None  # loaded state waiting for the latent size
        self.last_info: dict[str, Any] = {}

    # -- the generator ------------------------------------------------------------------
    def _ensure_generator(self, federation: Federation, global_state: StateDict, seed: int) -> None:
        if self.generator is not None:
            return
        model = federation.new_model(global_state)
        _, _, dim = latent_split(model)
        device = next(iter(global_state.values())).device
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            g = LatentGenerator(self.num_classes, dim, self.config.gen_hidden, self.config.gen_noise)
        if self._pending:
            g.load_state_dict(self._pending)
            self._pending = None
        self.generator = g.to(device)

    def train_generator(self, heads: Sequence[Any], clients: Sequence[int], gen: torch.Generator) -> dict[str, float]:
        """Fit G to the clients' heads for ``gen_epochs * gen_iters`` Adam steps (module docstring)."""
        c, g = self.config, self.generator
        assert g is not None
        device = next(g.parameters()).device
        a, qualified = label_weights(self.client_label_counts, clients)
        if len(qualified) == 0:
            return {}
        weights = torch.as_tensor(a, dtype=torch.float32, device=device)
        labels = torch.as_tensor(qualified, device=device)
        opt = torch.optim.Adam(g.parameters(), lr=c.gen_lr, weight_decay=c.gen_weight_decay)
        g.train()
        first: dict[str, float] = {}
        parts: dict[str, float] = {}
        for _ in range(c.gen_epochs * c.gen_iters):
            y = labels[torch.randint(len(labels), (c.gen_batch,), generator=gen).to(device)]
            loss, parts = generator_loss(g, heads, weights, y, gen, c.diversity)
            first = first or parts
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        g.eval()
        return {f"{k}_first": v for k, v in first.items()} | {f"{k}_last": v for k, v in parts.items()}

    # -- the round ----------------------------------------------------------------------
    def before_round(
        self, round: int, global_state: StateDict, rng: np.random.Generator, federation: Federation
    ) -> StateDict:
        """The generator, built (seeded) in the run's first round."""
        init_seed = int(rng.integers(2**62))  # drawn every round, so a resumed run draws as a straight one
        self._ensure_generator(federation, global_state, init_seed)
        return global_state

    def after_aggregate(
        self,
        round: int,
        start: StateDict,
        aggregate: StateDict,
        updates: list[ClientUpdate],
        rng: np.random.Generator,
        federation: Federation,
    ) -> StateDict:
        """The generator trained on the returned models' heads; the aggregate is the new global model."""
        teachers = [federation.new_model(u.state).eval() for u in updates]
        for m in teachers:
            m.requires_grad_(False)
        heads = [latent_split(m)[1] for m in teachers]
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        self.last_info = self.train_generator(heads, [u.client for u in updates], gen)
        return aggregate

    def local_term(self, round: int, client: int, sent: StateDict) -> LocalTerm | None:
        c, g = self.config, self.generator
        if round <= 1 or g is None or (c.gen_alpha == 0 and c.gen_beta == 0):
            return None  # no regulariser in the first round: the generator has not been trained
        g.eval()
        num_classes = self.num_classes

        def regulariser(params: dict[str, torch.Tensor], batch: LocalBatch) -> torch.Tensor:
            head = batch.model.head
            with torch.no_grad():
                _, z_y = g.sample(batch.y, batch.generator)
                y_tilde = torch.randint(num_classes, (c.gen_batch,), generator=batch.generator).to(batch.y.device)
                _, z_tilde = g.sample(y_tilde, batch.generator)
                target = F.softmax(head(z_y), 1)
            latent_kl = F.kl_div(F.log_softmax(batch.logits, 1), target, reduction="batchmean")
            teacher = F.cross_entropy(head(z_tilde), y_tilde)
            return c.gen_beta * latent_kl + c.gen_alpha * teacher

        return regulariser

    def dispatch_info(self) -> dict[str, Any]:
        return {"generator": self.last_info}

    # -- state ----------------------------------------------------------------------------
    def state_tensors(self) -> StateDict:
        if self.generator is None:  # not built yet: a loaded generator waits in _pending for its latent size
            return {f"generator.{k}": v for k, v in (self._pending or {}).items()}
        return {f"generator.{k}": v.detach().clone() for k, v in self.generator.state_dict().items()}

    def load_state(self, tensors: StateDict, meta: dict[str, Any]) -> None:
        sd = {k.removeprefix("generator."): v for k, v in tensors.items() if k.startswith("generator.")}
        if not sd:
            return
        if self.generator is None:
            self._pending = sd
        else:
            self.generator.load_state_dict(sd)
