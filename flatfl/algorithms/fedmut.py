"""FedMut (Hu, Chen, Li, Liu, Zhang, Wang; AAAI 2024): mutate the global model per client.

Instead of sending one global model w_t to all m sampled clients, the server sends each
client a *mutant* along the last global update, so that the aggregate is pulled towards a
region where all mutants do well (a flat minimum). Mechanics follow the authors' reference
code (github HMHelloWorld/FedMut, ``Algorithm/Training_FedMut.py``):

* The server keeps the previous global model; the mutation direction is
  d = w_t - w_{t-1}, the last global update. In round 1 there is no previous model, so
  round 1 is plain FedAvg dispatch (every client gets w_0).
* For each state-dict tensor (each layer) separately, a coefficient list of floor(m/2)
  pairs (+1, -1 + beta) is shuffled, beta = ``mut_acc_rate`` * (1 - min(r / ``mut_bound``, 1))
  with r the 0-based index of the round that produced d (so the first mutated dispatch, in
  round 2, uses r = 0 and beta = ``mut_acc_rate``; from r >= ``mut_bound`` on beta = 0 and the
  pairs are exactly +-1). The signs are balanced per tensor: each tensor has floor(m/2)
  coefficients +1 and floor(m/2) coefficients -1 + beta. If m is odd the last slot gets
  the unmutated global model.
* Slot i receives w_t + c[tensor][i] * alpha * d for every tensor, alpha = ``radius``.
* The new global model is the *plain* mean of the returned models, as in the reference
  (``Aggregation(w_locals, None)``); ``--weighted`` gives the sample-weighted mean.

What is mutated: the reference adds the mutation to every ``state_dict`` entry, BatchNorm
running mean/variance included. ``mutate="all"`` (default) does the same for every
floating-point entry; integer entries (``num_batches_tracked``) are never mutated.
``mutate="params"`` mutates trainable parameters only and sends buffers unchanged. Note that
a mutated running variance can become negative for large radii; that is the reference's
behaviour and a reason to prefer ``--mutate params`` with BatchNorm models.

Randomness: the reference draws the coefficients from Python's global ``random``; here they
come from the per-round generator the trainer derives from (seed, round), so the same seed
gives the same mutants on every machine, rank and resume.

Paper vs code: the paper states SGD momentum 0.9; the reference's parser default is 0.5,
flatfl's default (``--preset paper`` for 0.9). With radius 4 and momentum 0.9 FedMut diverged on
real CIFAR-10 within 6 rounds; the trainer stops on non-finite values and keeps the last finite
checkpoint. Each round records ``mutation_norm`` = radius*||d|| and ``mutation_rel`` =
radius*||d||/||w_t|| (over the mutated entries; 0 in round 1) in metrics.jsonl.

Safeguard, NOT in the paper nor the reference code (off by default): ``mutation_cap`` = rho
caps the mutation step at rho*||w_t||, i.e. the radius used is min(radius, rho*||w_t||/||d||)
(recorded as ``mutation_radius``), so a large global update cannot throw the mutants arbitrarily
far. With the cap off the mutants are exactly the reference's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from flatfl.algorithms.base import FederatedAlgorithm
from flatfl.diagnostics import diff_norm, state_norm
from flatfl.statedict import StateDict, clone


@dataclass(frozen=True)
class FedMutConfig:
    """FedMut's hyperparameters (reference defaults; the paper tunes mut_acc_rate per model)."""

    radius: float = 4.0
    mut_acc_rate: float = 0.3
    mut_bound: int = 50
    mutate: Literal["all", "params"] = "all"
    weighted: bool = False
    mutation_cap: float | None = None  # safeguard, not in the paper: radius*||d|| <= cap*||w_t||

    OMIT_AT_DEFAULT: ClassVar[tuple[str, ...]] = ("mutation_cap",)


def ctrl_rate(r: int, mut_acc_rate: float, mut_bound: int) -> float:
    """beta_r = mut_acc_rate * (1 - min(r / mut_bound, 1)), r = 0-based round index."""
    return mut_acc_rate * (1.0 - min(r / mut_bound, 1.0))


def mutation_coefficients(num_tensors: int, m: int, beta: float, rng: np.random.Generator) -> np.ndarray:
    """(num_tensors, m) coefficients: per row a shuffle of floor(m/2) pairs (+1, -1 + beta).

    With m odd the last column is 0 (that slot gets the plain global model).
    """
    half = m // 2
    coef = np.zeros((num_tensors, m))
    base = np.array([1.0, -1.0 + beta] * half)
    for t in range(num_tensors):
        coef[t, : 2 * half] = rng.permutation(base)
    return coef


class FedMut(FederatedAlgorithm):
    name = "fedmut"
    config_cls = FedMutConfig

    def __init__(self, config: FedMutConfig, *, param_names: Sequence[str], **kw: Any) -> None:
        super().__init__(config, param_names=param_names, **kw)
        self.prev_global: StateDict | None = None
        # Coefficients of the last dispatch, (tensor, slot), and the tensors they belong to.
        self.last_coefficients: np.ndarray | None = None
        self.last_keys: list[str] = []
        self.last_metrics: dict[str, Any] = {}

    def mutable_keys(self, state: StateDict) -> list[str]:
        """State-dict entries that are mutated, in state-dict order."""
        params = set(self.param_names)
        return [k for k, v in state.items() if v.is_floating_point() and (self.config.mutate == "all" or k in params)]

    def dispatch(
        self,
        round: int,
        global_state: StateDict,
        clients: Sequence[int],
        rng: np.random.Generator,
    ) -> list[StateDict]:
        m = len(clients)
        if self.prev_global is None:
            self.last_coefficients = None
            self.last_metrics = {"mutation_norm": 0.0, "mutation_rel": 0.0}
            return [global_state for _ in range(m)]
        keys = self.mutable_keys(global_state)
        radius = self._radius(global_state, keys)
        # d was produced by round (round - 1), whose 0-based index is round - 2.
        beta = ctrl_rate(round - 2, self.config.mut_acc_rate, self.config.mut_bound)
        coef = mutation_coefficients(len(keys), m, beta, rng)
        self.last_coefficients, self.last_keys = coef, keys
        deltas = {k: global_state[k] - self.prev_global[k] for k in keys}
        mutants: list[StateDict] = []
        for slot in range(m):
            sd = dict(global_state)
            for t, k in enumerate(keys):
                c = float(coef[t, slot])
                if c != 0.0:
                    sd[k] = global_state[k] + (c * radius) * deltas[k]
            mutants.append(sd)
        return mutants

    def _radius(self, w: StateDict, keys: list[str]) -> float:
        """The radius of this dispatch (``radius``, or less under ``mutation_cap``); sets the metrics."""
        r = self.config.radius
        d_norm = diff_norm(w, self.prev_global, keys)
        w_norm = state_norm(w, keys)
        cap = self.config.mutation_cap
        if cap is not None and r * d_norm > cap * w_norm:
            r = cap * w_norm / d_norm
        self.last_metrics = {
            "mutation_norm": r * d_norm,
            "mutation_rel": r * d_norm / w_norm if w_norm > 0 else None,
        } | ({"mutation_radius": r} if cap is not None else {})
        return r

    def round_metrics(self) -> dict[str, Any]:
        return dict(self.last_metrics)

    def dispatch_info(self) -> dict[str, Any]:
        if self.last_coefficients is None:
            return {}
        return {"mutation_keys": self.last_keys, "mutation_coefficients": self.last_coefficients.tolist()}

    def after_round(self, round: int, old_global: StateDict, new_global: StateDict) -> None:
        self.prev_global = clone(old_global)

    def state_tensors(self) -> StateDict:
        if self.prev_global is None:
            return {}
        return {f"prev_global/{k}": v for k, v in self.prev_global.items()}

    def state_json(self) -> dict[str, Any]:
        return {"has_prev_global": self.prev_global is not None}

    def load_state(self, tensors: StateDict, meta: dict[str, Any]) -> None:
        if meta.get("has_prev_global"):
            prefix = "prev_global/"
            self.prev_global = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            if not self.prev_global:
                raise ValueError("its metadata say it holds the previous global model, but no prev_global/ tensor")
        else:
            self.prev_global = None
