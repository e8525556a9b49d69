"""Runs that differ only in their seed form a group; each group gets a short label.

``group_runs`` splits run directories into groups (FedAvg seeds 0-2, FedMut seeds 0-2, ...):
two runs belong together when their configs are equal once ``seed``, ``rounds`` and every
setting that changes only what is stored or how it is computed (:data:`NOT_IDENTITY`) are left
out. A group's label is its algorithm, plus the settings that tell it apart
from another group of the same algorithm or that differ between groups at all (e.g.
``fedmut radius=2``); ``--label RUN=NAME`` overrides it. ``run_status`` says whether a run
finished, stopped early, or diverged (a ``diverged.json`` written by the trainer, or a
non-finite metric): diverged runs are listed, never averaged in.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flatfl.checkpoint import DIVERGED_JSON
from flatfl.runs.run import Run

# RunConfig's fields, one by one: what a group is NOT defined by. Everything else (algo, algo_config,
# model, model_kwargs, data.* but the two below, local.*, frac) changes the trained models and splits.
# ``--save-every``, ``--save-rounds``, ``--clients-dtype`` and the incremental state layout live in
# run.json's ``storage``, outside the config, so they never split a group either.
NOT_IDENTITY: dict[str, str] = {
    "seed": "the seed is what varies within a group",
    "rounds": "runs are compared at rounds they all have",
    "data.data_root": "where the data live (the same data moved elsewhere)",
    "data.partition_file": "where the partition file lies (its SHA-256, data.partition_sha256, counts)",
    "save_clients": "which rounds' client models are saved (storage only; training is the same)",
    "eval_batch_size": "the batch size of test evaluation (runtime only; the model is the same)",
    "preset": "the name of the --preset the values came from (the values themselves count)",
}
_NOT_IDENTITY = tuple(NOT_IDENTITY)


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flat(v, key + "."))
        else:
            out[key] = json.dumps(v, sort_keys=True)
    return out


def group_key(config: Mapping[str, Any]) -> str:
    """The config as one string without :data:`NOT_IDENTITY`'s settings: equal for seeds of one setting."""
    flat = _flat(config)
    return json.dumps({k: v for k, v in flat.items() if k not in _NOT_IDENTITY}, sort_keys=True)


@dataclass(frozen=True)
class RunStatus:
    """``state``: complete | incomplete | diverged; ``last``: last saved round; ``why``: one line."""

    state: str
    last: int
    planned: int
    why: str = ""


def run_status(run: Run) -> RunStatus:
    """Finished, stopped early, or diverged (see module doc)."""
    rounds = run.rounds()
    last = rounds[-1] if rounds else -1
    planned = int(run.config.get("rounds", last))
    marker = run.path / DIVERGED_JSON
    if marker.is_file():
        try:
            info = json.loads(marker.read_text())
            why = str(info.get("message", "")) or f"diverged at round {info.get('round')}"
        except (OSError, ValueError):
            why = f"{marker} exists (unreadable)"
        return RunStatus("diverged", last, planned, why)
    for m in run.metrics():
        for key in ("test_loss", "train_loss"):
            v = m.get(key)
            if isinstance(v, float) and not math.isfinite(v):
                return RunStatus("diverged", last, planned, f"{key} is {v} at round {m.get('round')}")
    if last < planned:
        return RunStatus("incomplete", last, planned, f"last saved round {last} of {planned}")
    return RunStatus("complete", last, planned)


@dataclass
class Group:
    """Runs of one setting, by seed; ``excluded`` holds diverged runs with their status."""

    label: str
    key: str
    algo: str
    runs: dict[int, Run] = field(default_factory=dict)
    status: dict[int, RunStatus] = field(default_factory=dict)

    @property
    def seeds(self) -> list[int]:
        return sorted(s for s in self.runs if self.status[s].state != "diverged")

    @property
    def diverged(self) -> list[int]:
        return sorted(s for s in self.runs if self.status[s].state == "diverged")

    def first(self) -> tuple[int, Run] | None:
        """The lowest-seed run that did not diverge (the one drawn where a figure shows one seed)."""
        seeds = self.seeds
        return (seeds[0], self.runs[seeds[0]]) if seeds else None


def _labels(groups: list[Group], configs: dict[str, Mapping[str, Any]]) -> None:
    flats = {g.key: _flat(configs[g.key]) for g in groups}
    keys = sorted({k for f in flats.values() for k in f} - set(_NOT_IDENTITY) - {"algo"})
    for g in groups:
        same_algo = [h for h in groups if h.algo == g.algo]
        differing = []
        for k in keys:
            pool = same_algo if k.startswith("algo_config.") else groups
            if len({flats[h.key].get(k) for h in pool}) > 1 and k in flats[g.key]:
                differing.append(f"{k.rsplit('.', 1)[-1]}={json.loads(flats[g.key][k])}")
        g.label = g.algo + (" " + ", ".join(differing) if differing else "")


def group_runs(runs: Sequence[Run], labels: Mapping[str, str] | None = None) -> list[Group]:
    """Groups in order of first appearance; ``labels`` maps a run path to a group name."""
    groups: dict[str, Group] = {}
    configs: dict[str, Mapping[str, Any]] = {}
    for run in runs:
        key = group_key(run.config)
        g = groups.setdefault(key, Group("", key, run.config["algo"]))
        configs.setdefault(key, run.config)
        seed = int(run.config["seed"])
        if seed in g.runs:
            raise ValueError(f"{run.path} and {g.runs[seed].path} are the same setting with the same seed {seed}")
        g.runs[seed] = run
        g.status[seed] = run_status(run)
    out = list(groups.values())
    _labels(out, configs)
    for path, name in (labels or {}).items():
        hit = [g for g in out if any(Path(r.path).resolve() == Path(path).resolve() for r in g.runs.values())]
        if not hit:
            raise ValueError(f"--label {path}={name}: {path} is not one of the runs")
        hit[0].label = name
    names = [g.label for g in out]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"two groups share the label(s) {dup}; name them apart with --label RUN=NAME")
    return out


def reference_group(groups: Sequence[Group]) -> Group:
    """The group the others are compared with: FedAvg's if there is one, else the first."""
    return next((g for g in groups if g.algo == "fedavg"), groups[0])


# local.* keys of the step's perturbation (SAM, ASAM, FedLESAM): the treatment a flatness comparison such
# as FedSAM vs FedAvg studies, not a confound; groups differing only in them are compared by default
PERTURBATION_KEYS = ("opt", "rho", "eta")


def local_optimizers(groups: Sequence[Group]) -> dict[str, str]:
    """Each group's local SGD settings as one line (lr, momentum, batch, epochs, weight decay), without the
    perturbation keys (``PERTURBATION_KEYS``)."""
    out = {}
    for g in groups:
        run = next(iter(g.runs.values()))
        local = {k: v for k, v in run.config.get("local", {}).items() if k not in PERTURBATION_KEYS}
        out[g.label] = ", ".join(f"{k} {local[k]}" for k in sorted(local))
    return out
