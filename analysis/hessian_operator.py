"""The Hessian of a :class:`~flatfl.analysis.model_loss.ModelLoss` as a linear operator
(:class:`HessianOperator`).

Products (:meth:`~flatfl.analysis.model_loss.ModelLoss.hvp`): ``method="auto"`` keeps the first-order
graphs of all batches and back-propagates only g.v through them (``cached``) when they fit ``memory_budget``,
else double backward, and forward-over-reverse where a layer lacks a double-backward rule.

Blocks: ``matmat(V)`` (V: size x b) computes H V for b vectors in one pass over the data, in one of the
block modes of :meth:`~flatfl.analysis.model_loss.ModelLoss.hvp_block` (batched backward, a loop through
the same graph, vmapped forward-over-reverse). ``block_mode="auto"`` times each on equal trial blocks of
real work and keeps the fastest per vector, as the surfaces do for their points; b is capped by the memory
budget (:meth:`HessianOperator.block_size`). With kept graphs (``cached``) a loop costs what single
products cost; without them (data too large for the budget) every block saves b - 1 forward and
first-backward passes per batch. Measured on this project's 2-core CPU (``bench/curvature_blocks.py``,
bench CNN, 100 images): the loop was the fastest way, the batched backward and forward-over-reverse
1.3-1.7x slower per vector (docs/explanation/curvature-at-scale.md, "Curvature at scale").
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import nn

from flatfl.analysis import batches as bt
from flatfl.analysis.linear import ScipyExport
from flatfl.analysis.model_loss import BLOCK_MODES, ModelLoss

# Vectors per way in "auto"'s trial blocks: enough to time a block (a few products), few enough that the
# slower ways cost little (on the 2-core CPU a trial of 9 vectors per way made Hutch++ 99 ~10% slower).
TRIAL_WIDTH = 4


class HessianOperator(ScipyExport):
    """The Hessian of a :class:`ModelLoss` as a :class:`LinearOperator`; counts HVPs.

    ``method``: "auto", "cached", "double-backward" or "fwd-rev" (module docstring). ``memory_budget``
    (bytes) bounds the kept graphs and the vectors per block; ``block_mode``: "auto", "batched", "loop" or
    "fwd-rev" for :meth:`matmat`; ``max_block``: most vectors per pass even when the budget holds more (a
    loop holds only the vectors, so 64 lets Hutch++'s 33-column calls share one first-order graph).
    """

    def __init__(
        self,
        objective: ModelLoss,
        method: str = "auto",
        memory_budget: float = 2 * 2**30,
        block_mode: str = "auto",
        max_block: int = 64,
    ) -> None:
        if block_mode not in ("auto", *BLOCK_MODES):
            raise ValueError(f"unknown block mode {block_mode!r}")
        self.objective = objective
        self.size = objective.size
        self.dtype = objective.dtype
        self.device = objective.device
        self.num_matvecs = 0
        self.graph_bytes_estimate = None
        self.batch_graph_bytes: float | None = None
        self.memory_budget = memory_budget
        self.max_block = max_block
        self.block_mode = block_mode
        self.block_seconds: dict[str, list[float]] = {m: [] for m in BLOCK_MODES}  # per vector, for "auto"
        self.failed_modes: set[str] = set()  # block modes a layer has no rule for (auto skips them)
        objective.check_differentiable()
        if method == "auto":
            method = self._choose_method(memory_budget) if self._estimate_graph_bytes() else "fwd-rev"
        self.method = method
        if method == "fwd-rev":
            self._check_fwd_rev()

    def _estimate_graph_bytes(self) -> bool:
        """Estimate the first-order graphs' size from the bytes autograd saves (a saved-tensors hook)
        for probes of 2 and 4 samples, fitted as per-batch + per-sample bytes and scaled to one batch
        (``batch_graph_bytes``) and the data set (``graph_bytes_estimate``). False where a layer has no
        double-backward rule."""
        obj = self.objective
        first = obj.batches[0]
        zero = torch.zeros(self.size, dtype=self.dtype, device=self.device)

        def saved_bytes(m: int) -> int:
            total = [0]

            def pack(t: torch.Tensor) -> torch.Tensor:
                total[0] += t.numel() * t.element_size()
                return t

            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                obj.hvp(zero, "double-backward", [bt.slice_batch(first, 0, m)])
            return total[0]

        try:
            s1, s2 = saved_bytes(2), saved_bytes(4)
        except (NotImplementedError, RuntimeError) as e:
            self._double_backward_error = str(e).splitlines()[0]
            return False
        per_sample = max(s2 - s1, 0) / 2  # bytes(m) = per_batch + per_sample * m
        per_batch = max(s1 - 2 * per_sample, 0)
        self.graph_bytes_estimate = per_batch * len(obj.batches) + per_sample * obj.n
        self.batch_graph_bytes = per_batch + per_sample * obj.counts[0]
        return True

    def _check_fwd_rev(self) -> None:
        """NotImplementedError naming both failures when neither double backward nor forward-over-reverse
        can differentiate the model twice (a layer with no second-derivative rule, e.g. nn.EmbeddingBag)."""
        obj = self.objective
        try:
            probe = [bt.slice_batch(obj.batches[0], 0, 2)]
            obj.hvp(torch.zeros(self.size, dtype=self.dtype, device=self.device), "fwd-rev", probe)
        except (NotImplementedError, RuntimeError) as e:
            raise NotImplementedError(
                "the model cannot be differentiated twice: double backward failed ("
                f"{getattr(self, '_double_backward_error', '?')}) and forward-over-reverse failed ("
                f"{str(e).splitlines()[0]}); a layer has no second-derivative rule in PyTorch"
            ) from None

    def _choose_method(self, memory_budget: float) -> str:
        """``cached`` when the kept graphs fit ``memory_budget`` bytes, else double backward
        (layers without a double-backward rule: forward-over-reverse, decided before)."""
        return "cached" if self.graph_bytes_estimate <= memory_budget else "double-backward"

    @classmethod
    def from_model(cls, model: nn.Module, x: torch.Tensor, y: torch.Tensor, **kwargs) -> HessianOperator:
        """The Hessian of the mean loss of ``model`` on ``(x, y)``: ``ModelLoss(model, x, y, **kwargs)`` with the
        HVP ``method`` (default ``auto``) taken from ``kwargs``."""
        method = kwargs.pop("method", "auto")
        return cls(ModelLoss(model, x, y, **kwargs), method=method)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """H v, the exact Hessian-vector product of the mean loss (Pearlmutter 1994); counts one product."""
        self.num_matvecs += 1
        return self.objective.hvp(v, self.method)

    def block_size(self, mode: str = "batched") -> int:
        """Most vectors per pass. A batched backward holds about one batch's graph per vector (its
        intermediate gradients) plus 3 parameter-sized vectors, and so does vmapped forward-over-reverse
        (the tangents of one batch's activations and gradients); a loop only the vectors. Each must fit
        the memory budget left after the kept graphs (``cached``) or one batch's graph."""
        if self.method == "fwd-rev" or (self.batch_graph_bytes is None and not self._estimate_graph_bytes()):
            return 1
        held = self.graph_bytes_estimate if self.method == "cached" else self.batch_graph_bytes
        per_vector = 3 * self.size * torch.finfo(self.dtype).bits // 8
        if mode != "loop":
            per_vector += self.batch_graph_bytes
        return int(max(1, min(self.max_block, (self.memory_budget - held) // max(per_vector, 1))))

    def _next_mode(self) -> str:
        """``block_mode``, or under "auto": each way once (batched, loop, fwd-rev; one without a rule for
        some layer is dropped), then the fastest per vector so far (the running means keep being updated,
        so a wrong early pick is corrected)."""
        if self.block_mode != "auto":
            return self.block_mode
        untried = self._untried()
        ways = [m for m in BLOCK_MODES if m not in self.failed_modes]
        return untried[0] if untried else min(ways, key=lambda m: np.mean(self.block_seconds[m]))

    def _untried(self) -> list[str]:
        """Block modes "auto" has not timed yet (none under a fixed ``block_mode``)."""
        if self.block_mode != "auto":
            return []
        return [m for m in BLOCK_MODES if m not in self.failed_modes and not self.block_seconds[m]]

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        """H V for V of shape (size, b): the columns in blocks of :meth:`block_size` per pass.

        While "auto" has ways left to time, each gets a trial block of the same width,
        min(ceil(b / (untried + 1)), TRIAL_WIDTH), so the ways are compared per vector at the same block
        size (a product's cost per vector falls with the block as the first-order graph is shared) and a
        slow way costs at most TRIAL_WIDTH vectors; the rest is cut into equal blocks of at most
        :meth:`block_size` (33 columns: 17 + 16, not 32 + 1)."""
        if V.ndim != 2 or V.shape[0] != self.size:
            raise ValueError(f"V must be ({self.size}, b)")
        self.num_matvecs += V.shape[1]
        if self.method == "cached":
            self.objective._first_order_graph(self.objective.batches)  # built once, outside the timings
        trial = min(math.ceil(V.shape[1] / (len(self._untried()) + 1)), TRIAL_WIDTH)
        cols, i = [], 0
        while i < V.shape[1]:
            mode = self._next_mode()
            size = min(self.block_size(mode), trial) if self._untried() else self.block_size(mode)
            left = V.shape[1] - i
            width = math.ceil(left / math.ceil(left / size))  # the rest in equal blocks of <= size
            block = V[:, i : i + width].T
            i += block.shape[0]
            t0 = time.perf_counter()
            try:
                hv = self.objective.hvp_block(block, self.method, mode)
            except (RuntimeError, NotImplementedError):
                if mode == "loop" or self.block_mode != "auto":
                    raise
                self.failed_modes.add(mode)  # no batched rule for some layer: not this way again
                mode = "loop"
                hv = self.objective.hvp_block(block, self.method, mode)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.block_seconds[mode].append((time.perf_counter() - t0) / block.shape[0])
            cols.append(hv.T)
        return torch.cat(cols, dim=1)
