"""Runs that differ only in their seed form a group; each group gets a short label.

``group_runs`` splits run directories into groups (FedAvg seeds 0-2, FedMut seeds 0-2, ...):
two runs belong together when their configs are equal once ``seed``, ``rounds`` and every
setting that changes only what is stored or how it is computed (:data:`NOT_IDENTITY`) are left
out. A group's label is its algorithm, plus the settings that tell it apart
from another group of the same algorithm or that differ between groups at all (e.g.
``fedmut radius=2``); ``--label RUN=NAME`` overrides it. ``reference_group`` picks the group the
others are compared with (``--reference``, else FedAvg's with the fewest confounds), and
``differences`` lists, in words, every setting besides the seed in which two groups differ -- the
algorithm, settings both have with other values (confounds, e.g. the aggregation), and settings of
one side's algorithm alone (FedMut's radius). ``run_status`` says whether a run
finished, stopped early, or diverged (a ``diverged.json`` written by the trainer, or a
non-finite metric): diverged runs are listed, never averaged in.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
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
        except (OSError, ValueError, AttributeError, RecursionError):  # AttributeError: JSON other than an object
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
    chosen_reference: bool = False  # set by group_runs(reference=...): the group every other is compared with

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


def group_runs(
    runs: Sequence[Run], labels: Mapping[str, str] | None = None, reference: str | None = None
) -> list[Group]:
    """Groups in order of first appearance; ``labels`` maps a run path to a group name; ``reference`` (a group
    label or one of the runs' paths, ``--reference``) names the group the others are compared with."""
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
    if reference is not None:
        _find_group(out, reference).chosen_reference = True
    return out


def _find_group(groups: Sequence[Group], name: str) -> Group:
    """The group labelled ``name``, else the group holding the run at path ``name``."""
    hit = [g for g in groups if g.label == name]
    if not hit:
        hit = [g for g in groups if any(Path(r.path).resolve() == Path(name).resolve() for r in g.runs.values())]
    if not hit:
        have = ", ".join(repr(g.label) for g in groups)
        raise ValueError(f"--reference {name}: neither a group label ({have}) nor one of the runs")
    return hit[0]


def reference_group(groups: Sequence[Group]) -> Group:
    """The group the others are compared with: the one ``--reference`` names; else FedAvg's -- of several
    FedAvg groups the one that differs from the other algorithms' groups in the fewest settings besides the
    algorithm (e.g. FedAvg with FedMut's plain-mean aggregation), the first on a tie; else the first group."""
    chosen = [g for g in groups if g.chosen_reference]
    if chosen:
        return chosen[0]
    fedavg = [g for g in groups if g.algo == "fedavg"]
    if len(fedavg) <= 1:
        return fedavg[0] if fedavg else groups[0]
    others = [h for h in groups if h.algo != "fedavg"]
    return min(fedavg, key=lambda g: sum(not d.algorithm for h in others for d in differences(g, h)))


# Readable names of the settings a researcher changes most; any other key is shown as key=value.
SETTING_NAMES: dict[str, str] = {
    "algo": "algorithm",
    "algo_config.weighted": "aggregation",
    "local.lr": "local lr",
    "local.momentum": "momentum",
    "local.batch_size": "batch size",
    "local.epochs": "local epochs",
    "local.weight_decay": "weight decay",
    "frac": "client fraction per round",
    "model": "model",
    "data.dataset": "dataset",
    "data.partition": "partition",
    "data.dirichlet_alpha": "Dirichlet alpha",
    "data.num_clients": "clients",
    "data.shards_per_client": "shards per client",
    "data.min_size": "min client size",
    "data.test_frac": "test fraction",
    "data.split_seed": "split seed",
    "data.augment": "augmentation",
    "data.partition_sha256": "partition file (SHA-256)",
    "algo_config.radius": "radius",
    "algo_config.mut_acc_rate": "mutation acceleration β₀ (--mut-acc-rate)",
    "algo_config.mut_bound": "round β reaches 0 (--mut-bound)",
    "algo_config.mutate": "mutate",
    "algo_config.mutation_cap": "mutation cap",
    "algo_config.mu": "FedProx mu",
    "algo_config.global_lr": "server lr",
}


# --algo names as their papers spell them: the algorithm in prose ('algorithm FedMut (FedAvg)'); a group's
# label (the --algo name, or the user's --label) is left as it is
PAPER_NAMES: dict[str, str] = {
    "fedavg": "FedAvg", "fedmut": "FedMut", "fedprox": "FedProx", "scaffold": "SCAFFOLD", "clusamp": "CluSamp",
    "fedcluster": "FedCluster", "feddf": "FedDF", "fedgen": "FedGen", "fedaux": "FedAUX", "fedsam": "FedSAM",
    "fedasam": "FedASAM", "mofedsam": "MoFedSAM", "fedswa": "FedSWA", "fedlesam": "FedLESAM",
}  # fmt: skip


def _value_text(key: str, v: Any) -> str:
    """One setting's value in words (an algorithm as its paper spells it; aggregation: sample-weighted /
    plain mean; numbers with %g)."""
    if key == "algo":
        return PAPER_NAMES.get(str(v), str(v))
    if key == "algo_config.weighted":
        return "sample-weighted" if v else "plain mean"
    if v is None:
        return "off"
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, dict)):
        return json.dumps(v, sort_keys=True)
    return str(v)


@dataclass(frozen=True)
class Difference:
    """One setting (beyond the seed and :data:`NOT_IDENTITY`) in which a group differs from the reference.

    ``key``: the flat config key (``algo``, ``algo_config.weighted``, ``local.lr``, ...); ``value`` and
    ``reference``: this group's and the reference group's values (None where that side has no such
    setting); ``side``: ``both``, ``this`` (a setting of this group alone, e.g. FedMut's radius against
    FedAvg) or ``reference`` (of the reference alone); ``text``: in words, e.g. ``aggregation plain mean
    (fedavg: sample-weighted)``, ``algorithm FedMut (FedAvg)``, or ``radius 4`` for a setting of this
    group alone.
    """

    key: str
    value: Any
    reference: Any
    side: str
    text: str

    @property
    def algorithm(self) -> bool:
        """The algorithm itself, or a setting only one side's algorithm has (what that algorithm adds);
        False: a setting both have with different values, or any other setting (a confound when the
        algorithms differ too)."""
        return self.key == "algo" or (self.side != "both" and self.key.startswith("algo_config."))

    def as_json(self) -> dict[str, Any]:
        """report.json's record: the fields and ``algorithm``."""
        return {**asdict(self), "algorithm": self.algorithm}


def differences(ref: Group, group: Group) -> list[Difference]:
    """Every config setting in which ``group``'s runs differ from ``ref``'s, the seed and
    :data:`NOT_IDENTITY` left out: the algorithm first, then settings both sides have, then each side's own."""
    a, b = _flat(_config(ref)), _flat(_config(group))
    out: list[Difference] = []
    keys = (set(a) | set(b)) - set(_NOT_IDENTITY)
    for k in sorted(keys, key=lambda k: (k != "algo", k not in a or k not in b, k)):
        if a.get(k) == b.get(k):
            continue
        va = json.loads(a[k]) if k in a else None
        vb = json.loads(b[k]) if k in b else None
        name = SETTING_NAMES.get(k, k)
        sep = " " if k in SETTING_NAMES else "="
        if k in a and k in b:
            ref_text = _value_text(k, va)
            theirs = ref_text if k == "algo" and ref.label == va else f"{ref.label}: {ref_text}"
            text = f"{name}{sep}{_value_text(k, vb)} ({theirs})"
            out.append(Difference(k, vb, va, "both", text))
        elif k in b:  # e.g. what this group's algorithm adds
            out.append(Difference(k, vb, None, "this", f"{name}{sep}{_value_text(k, vb)}"))
        else:
            out.append(Difference(k, None, va, "reference", f"no {name} ({ref.label}: {_value_text(k, va)})"))
    return out


def differences_text(ref: Group, group: Group, diffs: Sequence[Difference] | None = None) -> str:
    """All differences in one line: 'fedmut differs from fedavg by: algorithm FedMut (FedAvg); aggregation
    plain mean (fedavg: sample-weighted); fedmut's own settings: radius 4, ...' ('by the algorithm alone:'
    when nothing else differs; '' when there are no differences)."""
    diffs = differences(ref, group) if diffs is None else diffs
    if not diffs:
        return ""
    both = [d.text for d in diffs if d.side != "this"]
    own = [d.text for d in diffs if d.side == "this"]
    parts = "; ".join(both)
    if own:
        parts += ("; " if parts else "") + f"{group.label}'s own settings: " + ", ".join(own)
    alone = " the algorithm alone" if all(d.algorithm for d in diffs) and any(d.key == "algo" for d in diffs) else ""
    return f"{group.label} differs from {ref.label} by{alone}: {parts}"


def confound_sentence(ref: Group, group: Group, diffs: Sequence[Difference] | None = None) -> str:
    """The sentence the answer carries when the groups differ in more than the algorithm ('' otherwise):
    'fedmut also differs by: aggregation plain mean (fedavg: sample-weighted).' -- 'also' when the
    algorithms differ, else 'fedmut radius=0 differs from fedmut by: radius 0 (fedmut: 4).'"""
    diffs = differences(ref, group) if diffs is None else diffs
    extra = [d.text for d in diffs if not d.algorithm]
    if not extra:
        return ""
    if any(d.key == "algo" for d in diffs):
        return f"{group.label} also differs by: {'; '.join(extra)}."
    return f"{group.label} differs from {ref.label} by: {'; '.join(extra)}."


def _config(g: Group) -> Mapping[str, Any]:
    return next(iter(g.runs.values())).config


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
