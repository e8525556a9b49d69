"""The scale of the compared models: context under the verdict, never a vote.

For each measured checkpoint, the Euclidean norm of the global model's trainable parameters,

    ||θ||₂ = sqrt(Σ_l ||θ_l||₂²),    ||θ_l||₂ = sqrt(Σ_i θ_{l,i}²)  per parameter tensor l,

in float64 over run.json's ``model.parameters`` (BatchNorm running statistics and other buffers left
out; the tensors the Hessian and the sharpness measures are taken over). Sharpness in raw parameter
units changes under a function-preserving rescaling of a ReLU net -- W_l·α, b_l·α, W_{l+1}/α leaves the
function unchanged and multiplies the Hessian block of W_{l+1} by α² (Dinh et al., ICML 2017, "Sharp
minima can generalize for deep nets") -- so when only scale-dependent measures favour a group, the ratio
of the groups' weight norms is the number that says whether a difference of scale could explain it.

:func:`norm_ratio` compares two groups seed by seed, as the verdict compares ratio measures: the
geometric mean over shared seeds s of ||θ_B,s|| / ||θ_A,s||. :func:`scale_context` puts each condition's
norms (mean with its 95% t-interval, per seed, per layer) into report.json's verdict as ``context`` rows
and each comparison's ``norm_ratio``; :data:`CONTEXT_KEYS` are never among the measures that vote.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

import torch

from flatfl.analysis.verdict import summarize

NORM_KEY = "weight_norm"
CONTEXT_KEYS = (NORM_KEY,)  # row keys shown as context, never verdict measures
NORM_LABEL = "‖θ‖₂ of the global model"


def parameter_norms(state: Mapping[str, torch.Tensor], names: Iterable[str] | None = None) -> tuple[float, dict]:
    """(||θ||₂, {tensor name: ||θ_l||₂}) over ``names`` (default: every floating-point tensor), in float64."""
    keys = list(names) if names is not None else [k for k, v in state.items() if v.is_floating_point()]
    layers = {k: float(torch.linalg.vector_norm(state[k].detach().to(torch.float64))) for k in keys if k in state}
    return math.sqrt(sum(v * v for v in layers.values())), layers


def checkpoint_norms(run: Any, rnd: int) -> tuple[float, dict]:
    """:func:`parameter_norms` of a run's global model at round ``rnd`` (its trainable parameters)."""
    return parameter_norms(run.global_state(rnd), run.info.get("model", {}).get("parameters"))


def norm_ratio(ref: Mapping[int, float | None], other: Mapping[int, float | None]) -> float | None:
    """exp(mean_s log(other_s / ref_s)) over the seeds both have with positive finite norms (None if none):
    how many times larger the second group's weights are than the reference's, paired by seed."""
    logs = [
        math.log(other[s] / ref[s])
        for s in sorted(set(ref) & set(other))
        if ref[s] and other[s] and math.isfinite(ref[s]) and math.isfinite(other[s]) and ref[s] > 0 < other[s]
    ]
    return math.exp(sum(logs) / len(logs)) if logs else None


def norm_ratio_text(ratio: float | None, ref: str, other: str) -> str:
    """'‖θ‖₂ fedmut/fedavg ×0.9925' for a comparison's ``norm_ratio`` ('' when there is none): the number a
    sentence invoking parametrisation scale should quote."""
    return "" if ratio is None else f"‖θ‖₂ {other}/{ref} ×{ratio:.4g}"


def per_seed_norms(values: Mapping[str, Mapping[int, Mapping[str, Any]]], label: str) -> dict[int, float]:
    return {s: r[NORM_KEY] for s, r in values.get(label, {}).items() if r.get(NORM_KEY) is not None}


def scale_context(
    verdict: Sequence[dict[str, Any]],
    labels: Sequence[str],
    conds: Sequence[Any],
    layer_norms: Mapping[tuple[str, int, int], Mapping[str, float]],
) -> None:
    """Add to each condition of ``verdict`` (report.json's list, in the order of ``conds``) the context rows
    ``context``: [{measure, label, vote: False, groups: {label: summary + seeds}, layers: {label: {seed:
    {tensor: norm}}}}] and to each comparison ``norm_ratio`` (:func:`norm_ratio`, other / reference) with
    ``norm_ratios`` per seed. ``layer_norms``: (group label, seed, round) -> {tensor: ||θ_l||₂}."""
    for v, c in zip(verdict, conds):
        groups: dict[str, Any] = {}
        layers: dict[str, dict[str, dict[str, float]]] = {}
        for lab in labels:
            seeds = per_seed_norms(c.values, lab)
            s = summarize(list(seeds.values()))
            groups[lab] = None if s is None else {**asdict(s), "seeds": {str(k): x for k, x in seeds.items()}}
            for seed, m in c.rounds.get(lab, {}).items():
                if m.round is not None and (lab, seed, m.round) in layer_norms:
                    layers.setdefault(lab, {})[str(seed)] = dict(layer_norms[(lab, seed, m.round)])
        v["context"] = [{"measure": NORM_KEY, "label": NORM_LABEL, "vote": False, "groups": groups, "layers": layers}]
        ref = v["reference"]
        for lab, comp in v["comparisons"].items():
            a, b = per_seed_norms(c.values, ref), per_seed_norms(c.values, lab)
            comp.setdefault("norm_ratio", norm_ratio(a, b))  # report.verdicts() already set it for the caution
            comp["norm_ratios"] = {str(s): b[s] / a[s] for s in sorted(set(a) & set(b)) if a[s] > 0}
