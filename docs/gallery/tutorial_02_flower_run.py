"""
A Flower run into a report
==========================

``flatfl.flower`` runs FedMut and FedAvg as Flower strategies and records every round as a flatfl run
directory, which ``flatfl report`` reads like any other run. This tutorial runs Flower's own
``ServerApp``/``ClientApp`` machinery in this process on :class:`flatfl.flower.local_grid.LocalGrid` (no Ray,
no SuperLink: messages are handled one after another), trains FedMut and FedAvg for three rounds on 6
digits clients with two seeds each, and compares the two groups in one report.

The real runtimes (``run_simulation``, ``flwr run``, the deployment engine) run the same apps: see
:doc:`/howto/flower`. Needs ``pip install 'flatfl[flower]'``.
"""

# %%
# One run on the in-process grid
# ------------------------------
# The run config is ``flatfl train``'s flags without the dashes (``[tool.flwr.app.config]`` of an app's
# ``pyproject.toml``), plus ``out``, the run directory. FedMut sends every sampled node its own mutant, so
# the grid needs a node per sampled client: 6 clients, half of them a round.
import logging
import tempfile
from pathlib import Path

from flwr.app import Context, RecordDict

from flatfl.flower.client_app import app
from flatfl.flower.local_grid import LocalGrid
from flatfl.flower.server_app import make_server_app

logging.getLogger("flwr").setLevel(logging.WARNING)  # Flower logs every message at INFO
root = Path(tempfile.mkdtemp(prefix="flatfl-flower-"))
settings = {"clients": 6, "frac": 0.5, "rounds": 3, "local-epochs": 1, "lr": 0.05}


def flower_run(algo: str, seed: int) -> Path:
    """Runs the ServerApp and ClientApp of flatfl.flower on a LocalGrid; returns the run directory."""
    config = dict(settings, algo=algo, seed=seed)
    grid = LocalGrid(app, 6, config)
    out = root / f"flower-{algo}-s{seed}"
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=dict(config, out=str(out)))
    make_server_app()(grid, context)
    return out


runs = [flower_run(algo, seed) for algo in ("fedavg", "fedmut") for seed in (0, 1)]
print(sorted(p.name for p in runs[-1].iterdir()))

# %%
# What was recorded
# -----------------
# The run directory is flatfl's own (see :doc:`/reference/run-directory`): ``run.json`` records the
# strategy and the Flower version, every round's global model is a safetensors file, and
# :class:`flatfl.runs.run.Run` opens it from Python.
from flatfl.runs.run import Run

run = Run.open(runs[-1])
print("rounds", run.rounds(), "| flower", run.info["flower"])
print("test accuracy by round", [round(m["test_acc"], 3) for m in run.metrics()])

# %%
# Runs that differ only in their seed form one group: two groups of two seeds here.
from flatfl.runs.groups import group_runs

groups = group_runs([Run.open(r) for r in runs])
print({g.label: sorted(g.runs) for g in groups})
assert len(groups) == 2

# %%
# One report from both runs
# -------------------------
# ``flatfl report`` measures each run at the given rounds and writes a self-contained ``report.html`` with
# the verdict: runs that differ only in their seed form a group, and the groups are compared seed by seed
# (see :doc:`/getting-started`). Two seeds give wide intervals; the real comparison takes more seeds and
# rounds. Small settings for the build: 100 samples, λmax only, no surfaces.
from flatfl.cli import main

code = main(["report", *map(str, runs), "--out", str(root / "report"), "--at-rounds", "3",
             "--samples", "100", "--grid", "3", "--trace-matvecs", "0", "--sharpness", "none",
             "--no-spread", "--no-match", "--slices", "0", "--no-progress"])  # fmt: skip
assert code == 0
print(sorted(p.name for p in (root / "report").iterdir()))
