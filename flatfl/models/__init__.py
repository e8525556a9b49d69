"""Model registry: a name and constructor kwargs rebuild any model the trainer made.

``run.json`` records ``model`` and ``model_kwargs``; ``build_model(name, **kwargs)`` is all
the analysis side needs to turn a checkpoint back into a module. Every model maps an input
batch to class logits (a plain tensor), and splits as ``forward(x) == head(latent(x))`` with
``latent_dim`` features: the latent is the classifier head's input (FedGen's generator
targets it, FedAUX scores on it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from flatfl.errors import UserError


@dataclass(frozen=True)
class ModelEntry:
    """A registered constructor and how it derives its kwargs from a dataset."""

    name: str
    build: Callable[..., nn.Module]
    kwargs_for: Callable[[dict[str, Any]], dict[str, Any]]
    description: str


MODELS: dict[str, ModelEntry] = {}
# The model ``flatfl train`` uses for a dataset when ``--model`` is not given.
DEFAULT_MODEL: dict[str, str] = {}


def register_model(
    name: str,
    kwargs_for: Callable[[dict[str, Any]], dict[str, Any]],
    description: str,
    default_for: tuple[str, ...] = (),
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        MODELS[name] = ModelEntry(name, fn, kwargs_for, description)
        for ds in default_for:
            DEFAULT_MODEL[ds] = name
        return fn

    return deco


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Construct a registered model; unknown names list the choices."""
    if name not in MODELS:
        raise UserError(f"--model: unknown model {name!r}; choose from {', '.join(sorted(MODELS))}")
    return MODELS[name].build(**kwargs)


def model_kwargs_for(name: str, dataset_summary: dict[str, Any]) -> dict[str, Any]:
    """Constructor kwargs of ``name`` for a dataset (input shape, number of classes)."""
    if name not in MODELS:
        raise UserError(f"--model: unknown model {name!r}; choose from {', '.join(sorted(MODELS))}")
    return MODELS[name].kwargs_for(dataset_summary)


def latent_split(model: nn.Module, name: str = "") -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable, int]:
    """``(latent, head, latent_dim)`` of a registered model; a clear error if it has no split."""
    if not all(hasattr(model, a) for a in ("latent", "head", "latent_dim")):
        raise UserError(f"--model: {name or type(model).__name__} has no feature/head split (latent, head, latent_dim)")
    return model.latent, model.head, int(model.latent_dim)


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def check_fits(
    model: nn.Module, name: str, dataset: str, input_shape: tuple[int, ...], dtype: torch.dtype = torch.float32
) -> None:
    """One forward pass on a zero batch; a shape error becomes a clear ``--model`` message."""
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros((2, *input_shape), dtype=dtype))
    except (RuntimeError, IndexError, TypeError) as exc:
        raise UserError(
            f"--model: {name} does not fit --dataset {dataset} (inputs {tuple(input_shape)}): "
            f"{str(exc).splitlines()[0]}"
        ) from exc
    finally:
        model.train(was_training)


from flatfl.models import cifar as _cifar  # noqa: E402,F401
from flatfl.models import cnn as _cnn  # noqa: E402,F401  (registers the CNNs)
from flatfl.models import lstm as _lstm  # noqa: E402,F401
