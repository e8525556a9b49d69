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

import importlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flatfl.analysis.operators import ModelLoss
from flatfl.errors import UserError
from flatfl.runs.problem import DTYPES, Problem, from_tensors, subset
from flatfl.statedict import first_nonfinite

TV_SPLITS = ("train", "test")
MAX_SAMPLES = 10**9  # --data read into memory: a Dataset claiming more is refused before a batch is read


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


def user_code(flag: str, spec: str, fn: Callable[..., Any], *args: Any, doing: str = "", **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, the user's code: whatever it raises -- or a ``sys.exit`` it calls -- is one line
    naming the flag, the factory and the exception (``--data task:make raised KeyError('missing')``); the
    user's traceback stays chained for ``flatfl --debug``. A ``UserError`` (flatfl's own check) passes through."""
    what = " ".join(s for s in (flag, spec) if s) + (f" ({doing})" if doing else "")
    try:
        return fn(*args, **kwargs)
    except (UserError, KeyboardInterrupt):
        raise
    except SystemExit as exc:
        raise UserError(
            f"{what} called sys.exit({exc.code!r}); a factory must return its object, not end the program"
        ) from exc
    except MemoryError as exc:
        raise UserError(f"{what} ran out of memory (MemoryError); give it less data") from exc
    except Exception as exc:  # noqa: BLE001 - the user's code may raise anything: one line, traceback with --debug
        text = repr(exc)
        raise UserError(f"{what} raised {text if len(text) <= 300 else text[:300] + '...'}") from exc


def load_object(spec: str, flag: str) -> Any:
    """``MODULE:NAME`` imported (the current folder first, as ``python -m`` does)."""
    module, _, name = spec.partition(":")
    if not module or not name:
        raise UserError(f"{flag} {spec}: expected MODULE:NAME, e.g. mymodels:make_net")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        if exc.name is None or not module.startswith(exc.name.split(".")[0]):
            raise UserError(f"{flag} {spec}: importing {module} raised {exc!r}") from exc  # an import inside it
        raise UserError(f"{flag} {spec}: cannot import {module} ({exc}); run from its folder or install it") from None
    except (KeyboardInterrupt, UserError):
        raise
    except BaseException as exc:  # SyntaxError, an error at import time, sys.exit in the module
        user_code(flag, spec, _reraise, exc, doing=f"importing {module}")
    if not hasattr(mod, name):
        raise UserError(f"{flag} {spec}: module {module} has no {name}")
    return getattr(mod, name)


def _reraise(exc: BaseException) -> None:
    raise exc


def build(spec: ForeignSpec) -> nn.Module:
    """The model of ``--model`` (and ``--model-kwargs``), its weights not yet loaded."""
    try:
        kwargs = json.loads(spec.model_kwargs)
    except json.JSONDecodeError as exc:
        raise UserError(f"--model-kwargs: not JSON ({exc.msg}); e.g. '{{\"num_classes\": 10}}'") from None
    if not isinstance(kwargs, dict):
        raise UserError("--model-kwargs: must be a JSON object, e.g. '{\"num_classes\": 10}'")
    if ":" in spec.model:
        return call_factory(spec.model, kwargs, "--model")
    import torchvision

    if spec.model not in torchvision.models.list_models():
        raise UserError(f"--model {spec.model}: not MODULE:FACTORY and not a torchvision model name")
    return torchvision.models.get_model(spec.model, weights=None, **kwargs)


def call_factory(spec: str, kwargs: dict[str, Any], flag: str) -> nn.Module:
    """``MODULE:FACTORY(**kwargs)``, checked: one line when the call fails on its arguments or does not
    return a torch.nn.Module."""
    factory = load_object(spec, flag)
    if not callable(factory):
        raise UserError(f"{flag} {spec}: is a {type(factory).__name__}, not a function returning a torch.nn.Module")
    try:
        model = user_code(flag, spec, factory, **kwargs)
    except UserError as exc:
        if isinstance(exc.__cause__, TypeError) and kwargs:
            raise UserError(f"{flag} {spec}: calling it with {kwargs} failed ({exc.__cause__})") from exc.__cause__
        raise
    if not isinstance(model, nn.Module):
        raise UserError(f"{flag} {spec}: returned {type(model).__name__}, not a torch.nn.Module")
    return model


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or ``.pt``/``.pth`` (``weights_only=True``), unwrapped."""
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


def _torchvision_datasets() -> dict[str, type]:
    """torchvision's data set classes by lower-case name (``mnist`` is the class MNIST, not the module)."""
    import torchvision

    ds = torchvision.datasets
    return {
        n.lower(): getattr(ds, n)
        for n in dir(ds)
        if isinstance(getattr(ds, n), type) and issubclass(getattr(ds, n), torch.utils.data.Dataset)
    }


def _torchvision_dataset(name: str, root: str, split: str) -> Any:
    from torchvision import transforms

    if split not in TV_SPLITS:
        raise UserError(f"--data {name}:{root}:{split}: the split must be train or test")
    cls = _torchvision_datasets()[name.lower()]
    try:
        return cls(root, train=split == "train", download=False, transform=transforms.ToTensor())
    except (RuntimeError, OSError) as exc:
        raise UserError(f"--data {name}:{root}: {str(exc).splitlines()[0]} (pass the folder holding it)") from None


def _imagefolder(root: str) -> Any:
    from torchvision import datasets, transforms

    if not Path(root).is_dir():
        raise UserError(f"--data imagefolder:{root}: not a folder")
    tf = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    try:
        return datasets.ImageFolder(root, transform=tf)
    except (FileNotFoundError, OSError) as exc:
        raise UserError(f"--data imagefolder:{root}: {exc}") from None


def data_source(spec: str, flag: str = "--data") -> Any:
    """What ``--data`` names: a Dataset, a DataLoader / iterable of batches, or (x, y) tensors."""

    head, _, rest = spec.partition(":")
    if head == "imagefolder":
        return _imagefolder(rest)
    if head == "digits":
        from flatfl.config import DataConfig
        from flatfl.data import load_dataset

        if rest not in ("", *TV_SPLITS):
            raise UserError(f"{flag} {spec}: digits has the splits train and test, not {rest!r} (e.g. digits:test)")
        ds = load_dataset(DataConfig(dataset="digits"))
        part = ds.train if (rest or "train") == "train" else ds.test
        return part.x, part.y
    if head.lower() in _torchvision_datasets() and rest:
        root, _, split = rest.partition(":")
        return _torchvision_dataset(head, root, split or "train")
    made = load_object(spec, flag)
    if callable(made) and not isinstance(made, torch.utils.data.Dataset):
        made = user_code(flag, spec, made)
    if made is None:
        raise UserError(f"{flag} {spec}: gave None, not a DataLoader, a Dataset or (x, y) tensors")
    return made


def _tensors_of(source: Any, batch_size: int, spec: str = "") -> tuple[tuple[Any, Any] | None, Any]:
    """((x, y) tensors when the data are image-style pairs -- sub-sampling, --samples auto and torchrun shards
    then work as for flatfl's own runs -- else None, and the data as read, to be used instead of ``source``)."""
    if isinstance(source, (tuple, list)) and len(source) == 2 and all(isinstance(t, torch.Tensor) for t in source):
        return (source[0], source[1]), source
    if isinstance(source, torch.utils.data.Dataset):
        n = user_code("--data", spec, len, source, doing="its __len__") if hasattr(source, "__len__") else None
        if n is not None and not (isinstance(n, int) and 0 < n <= MAX_SAMPLES):
            raise UserError(
                f"--data {spec}: its Dataset's __len__ is {n!r}; flatfl reads the data into memory: "
                f"1 to {MAX_SAMPLES:,} samples"
            )
        source = torch.utils.data.DataLoader(source, batch_size=batch_size, shuffle=False)
    batches = user_code("--data", spec, list, source, doing="reading its batches")  # read once: a generator cannot
    # be read again, a loader need not be
    if not batches:
        raise UserError("--data: the data yielded no batches")
    pair = lambda b: isinstance(b, (tuple, list)) and len(b) == 2 and all(isinstance(t, torch.Tensor) for t in b)  # noqa: E731
    if not all(pair(b) for b in batches):
        return None, batches
    return (torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])), batches


def data_pair(spec: str, batch_size: int, flag: str = "--data") -> tuple[torch.Tensor, torch.Tensor]:
    """The (x, y) tensors of a data name (see :func:`data_source`); one line when its batches are not pairs."""
    pair, _ = _tensors_of(data_source(spec, flag), batch_size, spec)
    if pair is None:
        raise UserError(f"{flag} {spec}: its batches are not (x, y) pairs of tensors; a run's data must be")
    return pair


def check_foreign(spec: ForeignSpec, settings: Any) -> None:
    """Flag errors before anything is computed: foreign models have no run (no federated view, no clients)."""
    if settings.federated:
        raise UserError("--federated: needs a flatfl run (--ckpt); a --model has no clients")
    if settings.surface_dirs == "pca":
        raise UserError(
            "--surface-dirs pca: needs a flatfl run's trajectory (--ckpt); use random, eigen, interp or models"
        )
    if (spec.forward is None) != (spec.targets is None):
        raise UserError("--forward and --targets: give both (batches other than (x, y)) or neither")


def of_foreign(spec: ForeignSpec, settings: Any, log: Callable[[str], None] = lambda s: None) -> Problem:
    """The problem of a model flatfl did not train, with provenance for landscape.json."""
    from flatfl.runs.landscape import file_digest

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
        pair, data = _tensors_of(data, settings.batch_size, spec.data)
    if pair is not None:
        x, y, info = subset(pair[0], pair[1], settings.samples, settings.seed)
        source["data"].update(info)
        bn = [
            x[i : i + settings.batch_size]
            for i in range(0, min(len(x), settings.bn_reestimate * settings.batch_size), settings.batch_size)
        ]
        return from_tensors(model, x, y, settings, source, digest or spec.model, log, bn_inputs=bn, resolve=resolve)
    return _of_batches(model, data, spec, settings, source, digest, resolve)


def _of_batches(
    model: nn.Module, data: Any, spec: ForeignSpec, settings: Any, source: dict, digest: str, resolve: Any
) -> Problem:
    """Batches of another shape (dicts, several inputs): the whole data, through the --forward/--targets hooks."""
    if settings.samples is not None or settings.samples_auto:
        raise UserError("--samples: only for (x, y) data; a factory of other batches chooses its own data")
    fwd = load_object(spec.forward, "--forward") if spec.forward else None
    tgt = load_object(spec.targets, "--targets") if spec.targets else None
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
        raise UserError(
            f"--data {spec.data}: batches flatfl cannot read ({exc}); pass --forward and --targets"
        ) from None
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
