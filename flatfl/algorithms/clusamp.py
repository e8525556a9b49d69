"""Clustered sampling (Fraboni, Vidal, Kameni, Lorenzi; ICML 2021), Algorithm 2 -- "CluSamp".

Instead of sampling m clients uniformly, the server builds m sampling distributions
r_1..r_m over the K clients and draws one client from each, so that clients with similar
updates fall in different draws less often than chance and each round covers the federation
better. Every client keeps its importance p_i = n_i / n across the m draws
(sum_k r_k,i = m p_i), so the plain mean of the m returned models is unbiased.

* Representative gradient of client i: G_i = w_i - w_sent from the last round it took part
  in (zero before), over trainable parameters.
* Similarity of clients i, j: L1 ``sum |G_i - G_j|`` (default), L2 ``sum (G_i - G_j)^2`` or the
  angle ``arccos(cos(G_i, G_j))`` (``--similarity``); the matrix is updated for the sampled
  clients after every round, against every other client.
* Ward hierarchical clustering of the rows of that matrix (as the authors' and the FedMut
  reference code call ``scipy.cluster.hierarchy.linkage(sim, "ward")``); each merge's height is
  replaced by the total importance of the merged clients, and the tree is cut at 1/m: the
  largest groups of similar clients whose importance fits one draw. The m heaviest groups
  seed r_1..r_m; the clients of the remaining groups (in an order shuffled with the round's
  generator) fill the draws up to 1/m each, a client's importance split across two draws when
  it straddles one.
* Aggregation: the plain mean of the m returned models (the paper's unbiased estimator);
  ``--weighted`` gives the sample-weighted mean the FedMut reference code uses.

Differences from the FedMut reference code (``utils/clustering.py``): its
``get_matrix_similarity_from_grads_new`` updates only one pair per sampled client (the
assignment sits outside the inner loop); flatfl updates the whole row and column of every
sampled client, as the original authors' code does. The sampling distributions, the
similarity matrix and every client's representative gradient are saved with each saved round
(the gradients of the clients that took part since the last save only: ``flatfl.client_state``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from scipy.cluster.hierarchy import ClusterWarning, fcluster, linkage

from flatfl.algorithms.base import ClientUpdate, FederatedAlgorithm
from flatfl.statedict import StateDict


@dataclass(frozen=True)
class CluSampConfig:
    similarity: Literal["L1", "L2", "cosine"] = "L1"
    weighted: bool = False


def distance(g1: torch.Tensor, g2: torch.Tensor, kind: str) -> float:
    """The reference's client similarity (smaller = more alike) of two flat gradients."""
    if kind == "L1":
        return float((g1 - g2).abs().sum())
    if kind == "L2":
        return float((g1 - g2).pow(2).sum())
    n1, n2 = float(g1.norm()), float(g2.norm())
    if n1 == 0.0 or n2 == 0.0:
        return 0.0
    return float(np.arccos(np.clip(float(g1 @ g2) / (n1 * n2), -1.0, 1.0)))


def sampling_distributions(similarity: np.ndarray, m: int, weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Algorithm 2: (m, K) distributions, each summing to 1, with sum over rows = m * weights."""
    K = len(weights)
    with warnings.catch_warnings():  # rows of the matrix as observations, on purpose (see module docstring)
        warnings.simplefilter("ignore", ClusterWarning)
        Z = linkage(similarity, "ward").copy()
    node_w = list(weights.astype(float))
    for i in range(len(Z)):
        w = node_w[int(Z[i, 0])] + node_w[int(Z[i, 1])]
        node_w.append(w)
        Z[i, 2] = w  # heights become the merged importance (monotone along the tree)
    clusters = fcluster(Z, 1.0 / m + 1e-12, criterion="distance")
    labels = np.unique(clusters)
    mass = np.array([weights[clusters == c].sum() for c in labels])
    order = labels[np.argsort(mass, kind="stable")]
    kept, rest = order[len(order) - m :], order[: len(order) - m]
    R = np.zeros((m, K))
    queue: list[tuple[int, float]] = []  # (client, importance still to place), in fill order
    for k, c in enumerate(kept):
        idx = np.flatnonzero(clusters == c)
        R[k, idx] = m * weights[idx]
        if R[k].sum() > 1.0:  # a single client heavier than 1/m: the excess goes to other draws
            (i,) = idx
            queue.append((int(i), R[k, i] - 1.0))
            R[k, i] = 1.0
    for c in rest:
        queue += [(int(i), m * weights[i]) for i in rng.permutation(np.flatnonzero(clusters == c))]
    k = 0
    for i, left in queue:
        while left > 1e-15 and k < m:
            take = min(1.0 - R[k].sum(), left)
            R[k, i] += take
            left -= take
            if R[k].sum() >= 1.0 - 1e-12:
                k += 1
    return R / R.sum(axis=1, keepdims=True)


class CluSamp(FederatedAlgorithm):
    name = "clusamp"
    config_cls = CluSampConfig
    client_state_prefixes = ("gradient/",)

    def __init__(self, config: CluSampConfig, *, param_names: Sequence[str], **kw: Any) -> None:
        super().__init__(config, param_names=param_names, **kw)
        num_clients = self.num_clients
        self.gradients: dict[int, torch.Tensor] = {}  # client -> flat representative gradient
        self.similarity = np.zeros((num_clients, num_clients))
        self.last_distributions: np.ndarray | None = None

    def select_clients(self, round: int, m: int, rng: np.random.Generator) -> list[int]:
        K = self.num_clients
        sizes = np.asarray(self.client_sizes, dtype=float) if self.client_sizes is not None else np.ones(K)
        weights = sizes / sizes.sum()
        R = sampling_distributions(self.similarity, m, weights, rng)
        self.last_distributions = R
        return [int(rng.choice(K, p=R[k])) for k in range(m)]

    def aggregate(self, round: int, global_state: StateDict, updates: list[ClientUpdate]) -> StateDict:
        sent = torch.cat([global_state[n].reshape(-1).double().cpu() for n in self.param_names])
        for u in updates:
            self.gradients[u.client] = (
                torch.cat([u.state[n].reshape(-1).double().cpu() for n in self.param_names]) - sent
            )
        zero = torch.zeros_like(sent)
        for u in {u.client for u in updates}:
            gu = self.gradients[u]
            for j in range(self.num_clients):
                if j != u:
                    d = distance(gu, self.gradients.get(j, zero), self.config.similarity)
                    self.similarity[u, j] = self.similarity[j, u] = d
        return super().aggregate(round, global_state, updates)

    def dispatch_info(self) -> dict[str, Any]:
        return {} if self.last_distributions is None else {"sampling_distributions": self.last_distributions.tolist()}

    # -- state ------------------------------------------------------------------------------
    def state_tensors(self) -> StateDict:
        out: StateDict = {"similarity": torch.from_numpy(self.similarity.copy())}
        out.update({f"gradient/{k}": v for k, v in sorted(self.gradients.items())})
        return out

    def load_state(self, tensors: StateDict, meta: dict[str, Any]) -> None:
        self.similarity = tensors["similarity"].cpu().double().numpy().copy()
        self.gradients = {
            int(k.split("/", 1)[1]): v.cpu().double() for k, v in tensors.items() if k.startswith("gradient/")
        }
