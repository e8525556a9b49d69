"""Models flatfl did not train: ``flatfl landscape --model ... --weights ... --data ...``.

``--model``: ``MODULE:FACTORY`` (a function of no arguments returning an ``nn.Module``; MODULE is
imported from the current folder or the installed packages) or a torchvision model name
(``resnet18``, ``vit_b_16``; ``--model-kwargs '{"num_classes": 10}'``).
``--weights``: a ``.pt``/``.pth`` state dict (loaded with ``weights_only=True``: no pickle code runs;
``{"state_dict": ...}``/``{"model": ...}`` wrappers and DDP's ``module.`` prefix are unwrapped) or a
``.safetensors`` file. Without it the factory's own weights are analysed.
``--data``: ``MODULE:FACTORY`` returning a DataLoader, a Dataset or ``(x, y)`` tensors;
``NAME:ROOT[:train|test]`` for a torchvision data set (``cifar10:/data``, ``mnist:/data:test``; tensors
via ``ToTensor()``); ``imagefolder:DIR`` (resize 256, centre crop 224, ImageNet normalisation -- the
torchvision classifiers' evaluation transform); ``digits[:train|test]`` (flatfl's embedded data).
``--forward``/``--targets`` ``MODULE:FUNC`` take batches other than (x, y).

The record (landscape.json) names the model, the weights file with its SHA-256 and the data source.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flatfl.analysis.operators import ModelLoss
from flatfl.atomic import file_kind
from flatfl.errors import UserError
from flatfl.runs.problem import Problem, from_tensors
from flatfl.runs.settings import DTYPES, LandscapeSettings
from flatfl.runs.sources import (
    call_factory,
    data_pair,
    data_source,
    file_digest,
    load_object,
    subset,
    tensors_of,
)
from flatfl.statedict import first_nonfinite


@dataclass(frozen=True)
class ForeignSpec:
    """Where the model, its weights and the data come from (as typed on the command line)."""

    model: str
    weights: str | None = None
    data: str = ""
    model_kwargs: str = "{}"
    forward: str | None = None
    targets: str | None = None

    @property
    def name(self) -> str:
        return Path(self.weights).stem if self.weights else self.model.replace(":", "-").replace(".", "-")


def build(spec: ForeignSpec) -> nn.Module:
    """The model of ``--model`` (and ``--model-kwargs``), its weights not yet loaded."""
    try:
        kwargs = json.loads(spec.model_kwargs)
    except json.JSONDecodeError as exc:
        raise UserError(f"--model-kwargs: not JSON ({exc.msg}); e.g. '{{\"num_classes\": 10}}'") from None
    if not isinstance(kwargs, dict):
        raise UserError("--model-kwargs: must be a JSON object, e.g. '{\"num_classes\": 10}'")
    if ":" in spec.model:
        model = call_factory(spec.model, kwargs, "--model")
        if not any(p.requires_grad for p in model.parameters()):
            raise UserError(f"--model {spec.model}: the model has no trainable parameters; there is no landscape")
        return model
    import torchvision

    if spec.model not in torchvision.models.list_models():
        raise UserError(f"--model {spec.model}: not MODULE:FACTORY and not a torchvision model name")
    return torchvision.models.get_model(spec.model, weights=None, **kwargs)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or ``.pt``/``.pth`` (``weights_only=True``), unwrapped."""
    if path.is_dir():
        raise UserError(f"--weights: {path} is a folder; give a .safetensors, .pt or .pth file")
    if path.exists() and not path.is_file():  # a FIFO or a device (/dev/null): no state dict to read
        raise UserError(f"--weights: {path} is not a regular file ({file_kind(path)}); give a .safetensors, .pt or "
                        ".pth file")  # fmt: skip
    if not path.is_file():
        raise UserError(f"--weights: {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one line
        raise UserError(f"--weights: {path} is not a readable state dict ({str(exc).splitlines()[0][:160]})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"--weights: {path} holds no state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def load_weights(model: nn.Module, path: Path) -> None:
    state = read_weights(path)
    want = model.state_dict()
    for k, v in state.items():  # load_state_dict would cast int64/bool/half weights silently
        if k in want and want[k].is_floating_point() and v.dtype != want[k].dtype:
            exact = v.is_floating_point() and torch.equal(v.to(want[k].dtype).to(v.dtype), v)
            if not exact:
                raise UserError(
                    f"--weights: {path}: tensor {k} is {str(v.dtype).removeprefix('torch.')}, the model's is "
                    f"{str(want[k].dtype).removeprefix('torch.')}; save the weights in the model's dtype"
                )
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise UserError(f"--weights: {path} does not fit --model ({first[:200]})") from None
    bad = first_nonfinite(model.state_dict())
    if bad is not None:
        raise UserError(
            f"--weights: {path}: tensor {bad} holds NaN or Inf; a diverged model has no landscape to measure"
        )


def check_foreign(spec: ForeignSpec, settings: LandscapeSettings) -> None:
    """Flag errors before anything is computed: foreign models have no run (no federated view, no clients)."""
    if settings.federated:
        raise UserError("--federated: needs a flatfl run (--ckpt); a --model has no clients")
    if settings.surface_dirs == "pca":
        raise UserError(
            "--surface-dirs pca: needs a flatfl run's trajectory (--ckpt); use random, eigen, interp or models"
        )
    if (spec.forward is None) != (spec.targets is None):
        raise UserError("--forward and --targets: give both (batches other than (x, y)) or neither")


def of_foreign(spec: ForeignSpec, settings: LandscapeSettings, log: Callable[[str], None] = lambda s: None) -> Problem:
    """The problem of a model flatfl did not train, with provenance for landscape.json."""
    model = build(spec)
    digest = ""
    if spec.weights:
        load_weights(model, Path(spec.weights))
        digest = file_digest(Path(spec.weights))
    elif (bad := first_nonfinite(model.state_dict())) is not None:
        raise UserError(f"--model {spec.model}: its weights hold NaN or Inf in {bad}; nothing to measure")
    model.eval()
    source = {
        "model": spec.model,
        "model_kwargs": json.loads(spec.model_kwargs),
        "weights": spec.weights,
        "weights_sha256": digest or None,
        "data": {"selection": spec.data},
    }
    resolve = lambda other: (Path(other).stem, lambda: _state_of(spec, other))  # noqa: E731
    data = data_source(spec.data)
    pair = None
    if not spec.forward:
        pair, data = tensors_of(data, settings.batch_size, spec.data)
    if pair is not None:
        x, y, info = subset(pair[0], pair[1], settings.samples, settings.seed, what="--data")
        source["data"].update(info)
        bn = [
            x[i : i + settings.batch_size]
            for i in range(0, min(len(x), settings.bn_reestimate * settings.batch_size), settings.batch_size)
        ]
        return from_tensors(model, x, y, settings, source, digest or spec.model, log, bn_inputs=bn, resolve=resolve)
    return _of_batches(model, data, spec, settings, source, digest, resolve)


def _of_batches(
    model: nn.Module, data: Any, spec: ForeignSpec, settings: LandscapeSettings, source: dict, digest: str, resolve: Any
) -> Problem:
    """Batches of another shape (dicts, several inputs): the whole data, through the --forward/--targets hooks."""
    if settings.samples is not None or settings.samples_auto:
        raise UserError("--samples: only for (x, y) data; a factory of other batches chooses its own data")
    fwd = _guarded(load_object(spec.forward, "--forward"), "--forward", spec.forward) if spec.forward else None
    tgt = _guarded(load_object(spec.targets, "--targets"), "--targets", spec.targets) if spec.targets else None
    if isinstance(data, torch.utils.data.Dataset):
        data = torch.utils.data.DataLoader(data, batch_size=settings.batch_size, shuffle=False)
    try:
        obj = ModelLoss(
            model,
            batches=data,
            dtype=DTYPES[settings.dtype],
            device=settings.device,
            loss_fn=torch.nn.functional.cross_entropy,
            forward=fwd,
            targets=tgt,
        )
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        if spec.targets:  # the batches are counted by what --targets returns for each
            raise UserError(f"--targets {spec.targets}: returned what flatfl cannot count as labels ({exc})") from None
        raise UserError(
            f"--data {spec.data}: batches flatfl cannot read ({exc}); pass --forward and --targets"
        ) from None
    _check_hooks(obj, spec)
    source["data"].update(samples=obj.n, of=obj.n, subset_seed=None)
    source["memory_budget_gb"] = settings.memory_budget_gb
    return Problem(
        model,
        obj,
        obj,
        source,
        digest or spec.model,
        forward=fwd,
        resolve=resolve,
        bn_inputs=list(obj.batches)[: settings.bn_reestimate],
    )


def _check_hooks(obj: ModelLoss, spec: ForeignSpec) -> None:
    """What ``--forward`` and ``--targets`` return fits the cross-entropy, checked before any analysis (else a
    traceback from deep inside the loss): the output of the first batch (a copy of the buffers, so BatchNorm
    statistics stay) a floating tensor (batch, classes, ...), and for every batch a tensor of targets with as many
    rows as the output -- integer labels in 0..classes-1 (or -100, ignored), or class probabilities."""
    fwd, tgt = f"--forward {spec.forward}", f"--targets {spec.targets}"
    try:
        with torch.no_grad():
            first = obj.on_device(obj.batches[0])
            out = obj.output(obj.params, first, {k: v.clone() for k, v in obj.buffers.items()})
    except (RuntimeError, NotImplementedError) as exc:  # the other exceptions: _guarded's line already
        raise UserError(f"{fwd}: raised {repr(exc)[:300]} on batch 0") from exc
    if not isinstance(out, torch.Tensor) or not out.is_floating_point() or out.ndim < 2:
        what = f"a tensor of shape {tuple(out.shape)}, {out.dtype}" if isinstance(out, torch.Tensor) else type(out)
        raise UserError(f"{fwd}: returned {what}, not the (batch, classes) logits the cross-entropy takes")
    rows, classes = out.shape[0], out.shape[1]
    for b, batch in enumerate(obj.batches):
        y = obj.targets(batch)
        if not isinstance(y, torch.Tensor):
            raise UserError(f"{tgt}: returned {type(y).__name__} for batch {b}, not a tensor of labels")
        if b == 0 and (y.ndim == 0 or y.shape[0] != rows):
            n = "a scalar" if y.ndim == 0 else f"{y.shape[0]} labels"
            raise UserError(f"{tgt}: returned {n} for batch 0, on which {fwd} gives {rows} outputs; one label per row")
        if y.is_floating_point():
            continue  # class probabilities: their shape is checked by the loss below
        bad = y[(y != -100) & ((y < 0) | (y >= classes))]
        if len(bad):
            raise UserError(f"{tgt}: label {int(bad[0])} in batch {b} is outside 0..{classes - 1} ({classes} outputs)")
    try:
        with torch.no_grad():
            obj.loss_sum(out, first)
    except (RuntimeError, ValueError, IndexError) as exc:
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        y = obj.targets(first)
        raise UserError(
            f"{tgt}: targets of shape {tuple(y.shape)} ({str(y.dtype).removeprefix('torch.')}) do not fit {fwd}'s "
            f"output {tuple(out.shape)} in the cross-entropy ({why})"
        ) from None


def _guarded(fn: Any, flag: str, name: str) -> Any:
    """The user's ``--forward``/``--targets`` hook: what it raises is one line naming the flag (traceback with
    ``flatfl --debug``), as for the factories (:func:`flatfl.runs.sources.user_code`) -- except torch's
    RuntimeError/NotImplementedError, on which vmap and forward-mode checks fall back to plain loops."""

    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (RuntimeError, NotImplementedError):  # torch's own (vmap, jvp): the analysis falls back on these
            raise
        except (UserError, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 -- the user's hook may raise anything: one line, --debug shows it
            raise UserError(f"{flag} {name} raised {repr(exc)[:300]}") from exc

    return call


def _state_of(spec: ForeignSpec, other: str) -> dict[str, torch.Tensor]:
    """``--to``/``--models`` for a foreign model: another weights file of the same architecture."""
    model = build(spec)
    load_weights(model, Path(other))
    return model.state_dict()


__all__ = [
    "ForeignSpec",
    "build",
    "call_factory",
    "check_foreign",
    "data_pair",
    "data_source",
    "load_weights",
    "of_foreign",
    "read_weights",
]
