"""Named hyperparameter sets for ``flatfl train --preset``: the FedMut authors' code and paper.

``reference`` is every default of the authors' reference code (github HMHelloWorld/FedMut,
``utils/options.py`` and ``Algorithm/Training_FedMut.py``): SGD lr 0.01, momentum 0.5, local
batch 50, 5 local epochs, 100 clients, 10 % sampled per round; FedMut radius 4, beta0
(``--mut-acc-rate``) 0.3, T_b (``--mut-bound``) 50 and the plain mean of the returned models
(``Aggregation(w_locals, None)``). ``paper`` is what the paper (Hu et al., AAAI 2024, Sec.
"Experiments") states where it differs: momentum 0.9 and beta0 0.5 for ResNet-18.

A preset fills only the flags that were not given: explicit flags override it. The local
optimiser's values are the same for every algorithm (a comparison trains each algorithm with
one local SGD); algorithm values apply to the algorithms that have them (the FedMut values to
FedMut only: the reference's FedAvg aggregates with sample weights, as flatfl's does).
With ``--partition-file`` the file fixes the number of clients, so the preset's is not used.
"""

from __future__ import annotations

from typing import Any

# flag dest -> value; the same for every algorithm
_LOCAL = {"lr": 0.01, "batch_size": 50, "local_epochs": 5, "clients": 100, "frac": 0.1}
_FEDMUT = {"radius": 4.0, "mut_acc_rate": 0.3, "mut_bound": 50, "weighted": False}

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "reference": {"common": {**_LOCAL, "momentum": 0.5}, "fedmut": dict(_FEDMUT)},
    "paper": {"common": {**_LOCAL, "momentum": 0.9}, "fedmut": dict(_FEDMUT)},
}
# the paper tunes beta0 per model: 0.5 for ResNet-18, 0.3 for the CNN and VGG-16
PAPER_MUT_ACC_RATE = {"resnet18": 0.5}


def preset_values(name: str, algo: str, model: str | None) -> dict[str, Any]:
    """The flag values (by argparse dest) preset ``name`` sets for ``algo`` on ``model``."""
    p = PRESETS[name]
    values = dict(p["common"]) | dict(p.get(algo, {}))
    if name == "paper" and algo == "fedmut" and model in PAPER_MUT_ACC_RATE:
        values["mut_acc_rate"] = PAPER_MUT_ACC_RATE[model]
    return values


def apply_preset(ns: dict[str, Any], default_model: str | None) -> dict[str, Any]:
    """``ns`` with the preset's values for the flags not given (``ns`` itself without ``preset``)."""
    name = ns.get("preset")
    if name is None:
        return ns
    values = preset_values(name, ns.get("algo", "fedavg"), ns.get("model", default_model))
    if "partition_file" in ns:
        values.pop("clients")  # the file says how many clients there are
    return {**values, **ns}


def describe(name: str) -> str:
    """One line for --help: what the preset sets."""
    p = PRESETS[name]
    common = ", ".join(f"{k.replace('_', '-')} {v}" for k, v in p["common"].items())
    fm = ", ".join(f"{k.replace('_', '-')} {v}" for k, v in p["fedmut"].items() if k != "weighted")
    extra = "; beta0 0.5 with resnet18" if name == "paper" else ""
    return f"{name}: {common}; FedMut: {fm}, plain mean{extra}"
