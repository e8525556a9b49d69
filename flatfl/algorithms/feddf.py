"""FedDF (Lin, Kong, Stich, Jaggi; NeurIPS 2020): ensemble distillation after averaging.

Each round starts as FedAvg (send w_t, train locally, average into w_avg). The server then
distils the ensemble of the returned client models into w_avg on unlabelled proxy data: with
teacher logits z = mean_k f(x; w_k) and temperature T it minimises

    L(w) = T^2 * KL( softmax(z / T) || softmax(f(x; w) / T) )

by Adam (``lr``) on minibatches of the proxy data for at most ``steps`` steps, checking the KL
on a validation part of the proxy data every ``eval_every`` steps and stopping after
``patience`` checks without improvement; the best student on the validation part becomes
w_{t+1} (w_avg itself when distillation never helps). Only trainable parameters are trained;
BatchNorm statistics stay those of w_avg (the student runs in eval mode).

Proxy data (``proxy_data``): ``"holdout"`` (default) is a seeded ``proxy_frac`` slice of the
training set held out from every client and used without labels (FedDF's setting when no other
unlabelled data is at hand; the indices are in ``partition.json`` under ``server``); the name
of another dataset with the same input shape (e.g. ``cifar100`` for a CIFAR-10 run, as the paper
does) uses a seeded ``proxy_frac`` share of that dataset's training inputs, and every client
keeps all of its data. 10% of the proxy data is the validation part.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from flatfl.algorithms.base import ClientUpdate, FederatedAlgorithm, Federation
from flatfl.errors import DivergenceError
from flatfl.statedict import StateDict, clone

REJECTED_WARN = 3  # rounds running without a kept distillation step before FedDF warns


@dataclass(frozen=True)
class FedDFConfig:
    proxy_data: str = "holdout"  # or the name of another dataset whose training inputs are used unlabelled
    proxy_frac: float = 0.1
    temperature: float = 1.0
    steps: int = 100
    lr: float = 1e-3
    batch_size: int = 64
    eval_every: int = 10
    patience: int = 3
    weighted: bool = True


@torch.no_grad()
def teacher_logits(models: Sequence[torch.nn.Module], x: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """Logits of every model on ``x`` (eval mode, in batches), stacked: (models, samples, classes)."""
    return torch.stack([torch.cat([m.eval()(x[i : i + batch]) for i in range(0, len(x), batch)]) for m in models])


def ensemble_logits(models: Sequence[torch.nn.Module], x: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """Mean logits of ``models`` on ``x`` (eval mode)."""
    return teacher_logits(models, x, batch).mean(0)


def distillation_loss(student_logits: torch.Tensor, teacher_logp: torch.Tensor, T: float) -> torch.Tensor:
    """T^2 * KL(p_teacher || softmax(student / T)), mean over the batch; ``teacher_logp`` = log p_teacher
    (for FedDF log_softmax(mean teacher logits / T))."""
    return F.kl_div(F.log_softmax(student_logits / T, -1), teacher_logp, log_target=True, reduction="batchmean") * (
        T * T
    )


class FedDF(FederatedAlgorithm):
    name = "feddf"
    config_cls = FedDFConfig

    @classmethod
    def server_fraction(cls, config: FedDFConfig) -> float:
        return config.proxy_frac if config.proxy_data == "holdout" else 0.0

    def after_aggregate(
        self,
        round: int,
        start: StateDict,
        aggregate: StateDict,
        updates: list[ClientUpdate],
        rng: np.random.Generator,
        federation: Federation,
    ) -> StateDict:
        """The aggregate's parameters distilled towards the clients' ensemble on the server's proxy data."""
        x = federation.server_data()
        self.last_kept = None
        if len(x) < 2:
            return aggregate
        teachers = [federation.new_model(u.state) for u in updates]
        student = federation.new_model(aggregate)
        target = self.teacher_log_probs(teachers, [u.client for u in updates], x)
        self.last_info = self.distill(student, target, x, torch.Generator().manual_seed(int(rng.integers(2**62))))
        if "nonfinite" in self.last_info:  # the aggregate itself is finite: say so now, not as a silent no-op
            c = self.config
            raise DivergenceError(
                f"round {round}: the server's distillation loss became {self.last_info['nonfinite']} at step "
                f"{self.last_info['steps']} (--distill-lr {c.lr}, --temperature {c.temperature}); lower --distill-lr",
                round,
                None,
            )
        new = clone(aggregate)
        new.update({k: v.detach().clone() for k, v in student.state_dict().items() if k in self.param_names})
        return new

    def teacher_log_probs(
        self, teachers: Sequence[torch.nn.Module], clients: Sequence[int], x: torch.Tensor
    ) -> torch.Tensor:
        """FedDF's target: log_softmax(mean_k f(x; w_k) / T)."""
        return F.log_softmax(ensemble_logits(teachers, x) / self.config.temperature, -1)

    def distill(
        self, student: torch.nn.Module, z: torch.Tensor, x: torch.Tensor, gen: torch.Generator
    ) -> dict[str, Any]:
        """Train ``student`` in place towards the target log-probabilities ``z`` on ``x``; keep the
        best student on the validation part."""
        c, T = self.config, self.config.temperature
        perm = torch.randperm(len(x), generator=gen).to(x.device)
        n_val = max(1, len(x) // 10)
        val, tr = perm[:n_val], perm[n_val:]
        student.eval()  # BatchNorm statistics and dropout fixed: only parameters move

        def val_loss() -> float:
            with torch.no_grad():
                return float(distillation_loss(student(x[val]), z[val], T))

        opt = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=c.lr)
        start = best = val_loss()
        best_state, bad, steps = clone(student.state_dict()), 0, 0
        self.last_kept = 0  # the step of the student kept: 0 = the aggregate itself (distillation never helped)
        for step in range(1, c.steps + 1):
            idx = tr[torch.randint(len(tr), (min(c.batch_size, len(tr)),), generator=gen).to(x.device)]
            loss = distillation_loss(student(x[idx]), z[idx], T)
            if not torch.isfinite(loss):
                student.load_state_dict(best_state)
                return {"val_kl_before": start, "val_kl_after": best, "steps": step, "nonfinite": float(loss.detach())}
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps = step
            if step % c.eval_every == 0:
                v = val_loss()
                if v < best:
                    best, best_state, bad = v, clone(student.state_dict()), 0
                    self.last_kept = step
                else:
                    bad += 1
                    if bad >= c.patience:
                        break
        student.load_state_dict(best_state)
        return {"val_kl_before": start, "val_kl_after": best, "steps": steps}

    def dispatch_info(self) -> dict[str, Any]:
        return {"distillation": getattr(self, "last_info", None)}

    def round_metrics(self) -> dict[str, Any]:
        """The round's distillation on the metrics line: steps run, the step whose student was kept (0: the
        validation KL never fell below the aggregate's, so w_{t+1} is the plain FedAvg mean) and the KL."""
        info, kept = getattr(self, "last_info", None), getattr(self, "last_kept", None)
        if info is None or kept is None:
            return {}
        return {
            "distill_steps": info["steps"],
            "distill_kept_step": kept,
            "distill_val_kl_before": info["val_kl_before"],
            "distill_val_kl_after": info["val_kl_after"],
        }

    def round_notes(self) -> list[str]:
        """A warning once distillation has been rejected (the FedAvg mean kept) ``REJECTED_WARN`` rounds running:
        FedDF then trains as FedAvg, which its metrics alone would not tell."""
        kept = getattr(self, "last_kept", None)
        if kept is None:
            return []
        self.rejected_run = 0 if kept else getattr(self, "rejected_run", 0) + 1
        if self.rejected_run != REJECTED_WARN:
            return []
        c = self.config
        return [
            f"warning: FedDF's distillation has not lowered the validation KL in {REJECTED_WARN} rounds running "
            f"(--distill-lr {c.lr:g}, --temperature {c.temperature:g}, --distill-steps {c.steps}): each such round "
            "keeps the plain FedAvg mean (metrics.jsonl: distill_kept_step 0); a smaller --distill-lr may help"
        ]
