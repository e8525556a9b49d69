"""Where a model and its data come from: user factories (``MODULE:FACTORY``), data names (``--data``) read
into (x, y) pairs, seeded subsets of them, and the SHA-256 digest of a file.

The bottom of the run side's data path: :class:`~flatfl.runs.run.Run` builds a user's model and reads a user's
data through it, :mod:`flatfl.runs.problem` and :mod:`flatfl.runs.foreign` select and subset the data.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flatfl.config import DataConfig
from flatfl.data import load_dataset
from flatfl.digest import file_digest
from flatfl.errors import UserError

__all__ = ["call_factory", "data_pair", "data_source", "file_digest", "load_object", "subset", "user_code"]

TV_SPLITS = ("train", "test")
MAX_SAMPLES = 10**9  # --data read into memory: a Dataset claiming more is refused before a batch is read


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


def tensors_of(source: Any, batch_size: int, spec: str = "") -> tuple[tuple[Any, Any] | None, Any]:
    """((x, y) tensors when the data are image-style pairs -- sub-sampling, --samples auto and torchrun shards
    then work as for flatfl's own runs -- else None, and the data as read, to be used instead of ``source``)."""
    if isinstance(source, (tuple, list)) and len(source) == 2 and all(isinstance(t, torch.Tensor) for t in source):
        if source[0].ndim == 0 or source[1].ndim == 0 or len(source[0]) != len(source[1]):
            shapes = f"{tuple(source[0].shape)} and {tuple(source[1].shape)}"
            raise UserError(f"--data {spec}: its inputs and targets hold different numbers of samples ({shapes})")
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
    pair, _ = tensors_of(data_source(spec, flag), batch_size, spec)
    if pair is None:
        raise UserError(f"{flag} {spec}: its batches are not (x, y) pairs of tensors; a run's data must be")
    return pair


_SAID: set[str] = set()  # emptied by flatfl.cli.main at the start of every command


def reset_notes() -> None:
    _SAID.clear()


def note(text: str) -> None:
    """``flatfl: TEXT`` on stderr, once per process (a report takes the same subset for every checkpoint); rank 0
    alone under torchrun."""
    if text in _SAID or os.environ.get("RANK", "0") != "0":
        return
    _SAID.add(text)
    print(f"flatfl: {text}", file=sys.stderr)


def subset(
    x: Any,
    y: torch.Tensor,
    samples: int | None,
    seed: int,
    *,
    flag: str = "--samples",
    what: str = "the selection",
    quiet: bool = False,
) -> tuple[Any, torch.Tensor, dict[str, Any]]:
    """A seeded random subset of ``samples`` examples (all when None), in their original order. ``samples`` is
    "up to": above the data's size, all of it is used -- said once per process on stderr (naming ``flag``) and
    recorded as ``requested`` in the returned description (``quiet``: recorded only, for a command's own default
    of "up to" that many)."""
    n_all = len(y)
    cut = {}
    if samples is not None:
        if samples <= 0:
            raise UserError(f"{flag}: must be a positive number of samples")
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(n_all, generator=g)[: min(samples, n_all)].sort().values
        x, y = x[idx], y[idx]
        if samples > n_all > 0:
            cut = {"requested": int(samples)}
            if not quiet:
                note(f"note: {flag} {samples}: {what} holds {n_all} samples; all {n_all} are used")
    if len(y) == 0:
        raise UserError("--data: the selection holds no samples")
    return x, y, {"samples": int(len(y)), "of": int(n_all), "subset_seed": seed if samples else None, **cut}
