"""What one measurement works on, resolved once: the model, the analysis data and the loss over them.

:func:`of_checkpoint` builds it from a flatfl run (``round_NNNN.safetensors`` + ``run.json``: model from the
registry, data and partition as in training); :mod:`flatfl.runs.foreign` from any model, weights file and
data. :func:`flatfl.runs.measure.measure` then computes curvature, sharpness and surfaces on the same
objects -- the model is rebuilt and the data loaded once per checkpoint, not once per quantity.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from flatfl import checkpoint as ckpt
from flatfl.analysis.distributed import shard
from flatfl.analysis.distributed import world as dist_world
from flatfl.analysis.operators import HessianOperator, ModelLoss
from flatfl.analysis.subsample import SubsampleSettings, subsample
from flatfl.errors import UserError
from flatfl.runs.run import Run
from flatfl.runs.settings import DTYPES, LandscapeSettings, ReportSettings
from flatfl.runs.sources import file_digest, subset


@dataclass
class Problem:
    """A model at one point, the loss over the analysis data, and where both came from.

    ``objective``: the mean loss over all the analysis data; ``hvp_objective``: the one Hessian products
    run over (this rank's shard under torchrun, else ``objective``); ``source``: JSON-ready provenance
    (checkpoint or weights file with SHA-256, model, data selection); ``run``/``round``: the flatfl run
    when there is one (federated view, mutants and client models on surfaces, trajectories);
    ``bn_inputs``: training batches to re-estimate BatchNorm statistics with, when asked for.
    """

    model: nn.Module
    objective: ModelLoss
    hvp_objective: ModelLoss
    source: dict[str, Any]
    digest: str
    run: Run | None = None
    round: int | None = None
    ranks: tuple[int, int] | None = None
    bn_inputs: list[Any] = field(default_factory=list)
    forward: Callable[[nn.Module, Any], Any] | None = None
    # a model named by --to/--models: spec -> (label, loader of its state dict); None: no other models
    resolve: Callable[[str], tuple[str, Callable[[], dict[str, torch.Tensor]]]] | None = None

    @property
    def memory_budget(self) -> float:
        return self.source.get("memory_budget_gb", 2.0) * 2**30


# flatfl report's defaults of --samples / --spread-samples: a subset of "up to" that many, cut to the data without a
# note (every digits report would otherwise carry one)
REPORT_UP_TO = {"--samples": ReportSettings().landscape.samples, "--spread-samples": ReportSettings().spread_samples}


def select_data(
    run: Run, spec: str, samples: int | None, seed: int, flag: str = "--samples"
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """The (x, y) a measurement uses: ``train``, ``test`` or ``client:K`` (a user-data run: ``train``, ``test``
    or a data name, :meth:`Run.user_data_pair`); optionally a seeded subset."""
    x, y = run.user_data_pair(spec, 500) if run.user_data else _run_data(run, spec)
    if len(y) == 0:
        raise UserError(f"--data: the selection {spec!r} holds no samples")
    quiet = samples == REPORT_UP_TO.get(flag)  # flatfl report's own defaults are "up to" (its page says so)
    x, y, info = subset(x, y, samples, seed, flag=flag, what=f"the {spec} selection", quiet=quiet)
    return x, y, {"selection": spec, **info}


def _run_data(run: Run, spec: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``train``, ``test`` or ``client:K`` of a flatfl data set, split as in training."""
    ds = run.dataset()
    if spec == "train":
        return ds.train.x, ds.train.y
    if spec == "test":
        return ds.test.x, ds.test.y
    if not spec.startswith("client:"):
        raise UserError(f"--data: {spec!r} is not one of train, test, client:K")
    try:
        k = int(spec.split(":", 1)[1])
    except ValueError:
        raise UserError(f"--data: {spec!r} is not client:K with an integer K") from None
    parts = run.partition()
    if not 0 <= k < len(parts):
        raise UserError(f"--data: client {k} does not exist (the run has clients 0..{len(parts) - 1})")
    idx = torch.as_tensor(parts[k])
    return ds.train.x[idx], ds.train.y[idx]


def auto_subset(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: LandscapeSettings, log: Callable[[str], None]
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """``--samples auto``: the random subset whose data-sampling error of lambda_max (``--hessian``) and
    the trace (``--trace``) is below ``data_tol`` (see :mod:`flatfl.analysis.subsample`); (x, y, record)."""
    if dist_world() is not None:
        raise UserError("--samples auto: not available under torchrun; pass a number of samples")
    quantities = tuple(q for q, on in (("lambda_max", settings.hessian), ("trace", settings.trace)) if on)
    quantities = quantities or ("lambda_max",)
    dtype = DTYPES[settings.dtype]

    def make_op(idx: np.ndarray) -> HessianOperator:
        i = torch.as_tensor(idx)
        obj = ModelLoss(model, x[i], y[i], batch_size=settings.batch_size, dtype=dtype, device=settings.device)
        return HessianOperator(obj, memory_budget=settings.memory_budget_gb * 2**30)

    st = SubsampleSettings(
        data_tol=settings.data_tol, tol=max(settings.tol, 1e-6), seed=settings.seed, full_values=False
    )  # the measurement computes the full-data values itself
    r = subsample(len(y), make_op, quantities, st, log)
    record = {
        "data_tol": settings.data_tol,
        "converged": r.converged,
        "values": r.values,
        "data_errors": r.data_errors,
        "groups": st.groups,
        "levels": r.levels,
    }
    i = torch.as_tensor(r.indices)
    return x[i], y[i], record


def check_model_takes(model: nn.Module, x: Any, y: torch.Tensor, source: dict[str, Any]) -> None:
    """One line, not a traceback, when the model cannot take the data: the cross-entropy of two samples,
    in eval mode without gradients (nothing of the model changes; its mode is restored)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x[:2])
            torch.nn.functional.cross_entropy(out, y[:2])
        if not y.is_floating_point() and out.ndim >= 2:  # every label, not only the two: a class the model has
            bad = y[(y != -100) & ((y < 0) | (y >= out.shape[1]))]
            if len(bad):
                raise IndexError(f"label {int(bad[0])} is outside 0..{out.shape[1] - 1} ({out.shape[1]} outputs)")
    except (RuntimeError, TypeError, ValueError, IndexError) as exc:
        what = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        data = source.get("data", {}).get("selection", "?")
        raise UserError(
            f"--data {data}: model {source.get('model', '?')} cannot take these batches (x {tuple(x.shape)}, "
            f"y {tuple(y.shape)}: {type(exc).__name__}: {what}); give --data of the model's input shape with "
            "integer class labels"
            + ("" if "checkpoint" in source else ", or batches of another kind with --forward/--targets")
        ) from None
    finally:
        model.train(was_training)


def from_tensors(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    settings: LandscapeSettings,
    source: dict[str, Any],
    digest: str,
    log: Callable[[str], None] = lambda s: None,
    **extra: Any,
) -> Problem:
    """A problem over (x, y) tensors: ``--samples auto`` applied, sharded under torchrun."""
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        i = int((~torch.isfinite(x)).flatten(1).any(1).nonzero()[0]) if x.dim() > 1 else 0
        raise UserError(f"--data {settings.data}: sample {i} of the selection holds NaN or Inf; the loss is not finite")
    check_model_takes(model, x, y, source)
    if settings.samples_auto:
        x, y, auto = auto_subset(model, x, y, settings, log)
        source["data"].update(samples=int(len(y)), subset_seed=settings.seed, auto=auto)
    kw = dict(batch_size=settings.batch_size, dtype=DTYPES[settings.dtype], device=settings.device)
    obj = ModelLoss(model, x, y, **kw)
    ranks = dist_world()
    hvp_obj = obj
    if ranks is not None:  # under torchrun: HVPs, loss and gradient over this rank's shard, reduced over ranks
        part = shard(len(y), *ranks)
        hvp_obj = ModelLoss(model, x[part], y[part], **kw)
    source["memory_budget_gb"] = settings.memory_budget_gb
    return Problem(model, obj, hvp_obj, source, digest, ranks=ranks, **extra)


def of_checkpoint(ckpt: Path, settings: LandscapeSettings, log: Callable[[str], None] = lambda s: None) -> Problem:
    """The problem of a flatfl checkpoint: its global model on the selection ``settings.data`` names."""
    run, rnd = Run.of_checkpoint(ckpt)
    if run.user_data and settings.federated:
        raise UserError(
            f"--federated: {run.path} is a recorded run of a user's model on its own data; it holds no partition "
            "(client data) -- leave --federated out"
        )
    model = run.model(rnd)
    x, y, data_info = select_data(run, settings.data, settings.samples, settings.seed)
    digest = file_digest(ckpt)
    source = {
        "checkpoint": str(ckpt),
        "checkpoint_sha256": digest,
        "run": str(run.path),
        "round": rnd,
        "algo": run.config["algo"],
        "model": run.info["model"]["name"],
        "data": data_info,
    }
    bn = bn_batches(_train_inputs(run), settings) if settings.bn_reestimate else []
    resolve = lambda spec: run_model_spec(run, rnd, spec)[::2]  # noqa: E731
    return from_tensors(model, x, y, settings, source, digest, log, run=run, round=rnd, bn_inputs=bn, resolve=resolve)


def _train_inputs(run: Run) -> torch.Tensor:
    """The run's training inputs (BatchNorm re-estimation): flatfl's data set, or a user run's train data."""
    if not run.user_data:
        return run.dataset().train.x
    if not run.config["data"].get("train"):
        raise UserError(
            f"--bn-reestimate: {run.path / 'run.json'} names no train data to re-estimate BatchNorm on; "
            "leave --bn-reestimate out"
        )
    return run.user_data_pair("train", 500)[0]


def bn_batches(x: torch.Tensor, settings: LandscapeSettings) -> list[torch.Tensor]:
    """``settings.bn_reestimate`` seeded random training batches (inputs only) for BatchNorm re-estimation."""
    g = torch.Generator().manual_seed(settings.seed + 17)
    idx = torch.randperm(len(x), generator=g)[: settings.bn_reestimate * settings.batch_size]
    xb = x[idx]
    return [xb[i : i + settings.batch_size] for i in range(0, len(xb), settings.batch_size)]


def run_model_spec(run: Run, rnd: int, spec: str) -> tuple[str, Run, Callable[[], dict[str, torch.Tensor]]]:
    """A model named on the command line: a checkpoint file, ``mutant:SLOT`` (a model sent in
    round rnd+1, i.e. a mutant of this checkpoint) or ``returned:SLOT`` (a model returned in
    round rnd, whose mean is this checkpoint). Returns (label, its run, a loader of its state);
    every error is found here, before anything is computed."""
    kind, _, slot = spec.partition(":")
    if kind in ("mutant", "returned") and is_slot(slot):
        r = rnd + 1 if kind == "mutant" else rnd
        path = ckpt.clients_path(run.path, r)
        if not path.is_file():
            if kind == "mutant" and r > int(run.config.get("rounds", r)):
                raise UserError(
                    f"--to/--models {spec}: round {rnd} is the run's last, so no round {r} sent mutants of it; "
                    "use returned:SLOT or an earlier checkpoint"
                )
            raise UserError(f"--to/--models {spec}: {path} is missing (train with --save-clients)")
        sent, returned, info = run.clients(r)
        models = sent if kind == "mutant" else returned
        if int(slot) >= len(models):
            raise UserError(f"--to/--models {spec}: round {r} has slots 0..{len(models) - 1}")
        return f"{kind} {slot} (client {info['clients'][int(slot)]})", run, lambda: models[int(slot)]
    file = Path(spec)
    if not file.is_file():
        raise UserError(f"--models/--to: {spec!r} is neither a checkpoint file nor mutant:SLOT / returned:SLOT")
    other, r = Run.of_checkpoint(file)
    if other.info["model"] != run.info["model"]:
        raise UserError(
            f"{spec}: model {other.info['model']['name']} {other.info['model']['kwargs']} differs from "
            f"the checkpoint's {run.info['model']['name']} {run.info['model']['kwargs']}"
        )
    return f"{other.config['algo']} round {r}", other, lambda: other.global_state(r)


def is_slot(text: str) -> bool:
    """A slot number in ASCII digits (``str.isdigit`` accepts '²', which ``int`` refuses)."""
    return text.isascii() and text.isdigit()
