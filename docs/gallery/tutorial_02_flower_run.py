"""
A Flower run into a report
==========================

``flatfl.flower`` runs FedMut and FedAvg as Flower strategies and records every round as a flatfl run
directory, which ``flatfl report`` reads like any other run. This tutorial runs Flower's own
``ServerApp``/``ClientApp`` machinery in this process on :class:`flatfl.flower.local_grid.LocalGrid` (no Ray,
no SuperLink: messages are handled one after another), trains FedMut and FedAvg for three rounds on 6
digits clients, and compares the two runs in one report.

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
settings = {"clients": 6, "frac": 0.5, "rounds": 3, "local-epochs": 1, "lr": 0.05, "seed": 0}


def flower_run(algo: str) -> Path:
    """Runs the ServerApp and ClientApp of flatfl.flower on a LocalGrid; returns the run directory."""
    config = dict(settings, algo=algo)
    grid = LocalGrid(app, 6, config)
    out = root / f"flower-{algo}"
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=dict(config, out=str(out)))
    make_server_app()(grid, context)
    return out


fedmut, fedavg = flower_run("fedmut"), flower_run("fedavg")
print(sorted(p.name for p in fedmut.iterdir()))

# %%
# What was recorded
# -----------------
# The run directory is flatfl's own (see :doc:`/reference/run-directory`): ``run.json`` records the
# strategy and the Flower version, every round's global model is a safetensors file, and
# :class:`flatfl.runs.run.Run` opens it from Python.
from flatfl.runs.run import Run

run = Run.open(fedmut)
print("rounds", run.rounds(), "| flower", run.info["flower"])
print("test accuracy by round", [round(m["test_acc"], 3) for m in run.metrics()])

# %%
# One report from both runs
# -------------------------
# ``flatfl report`` measures each run at the given rounds and writes a self-contained ``report.html`` with
# the verdict. Two runs (one seed each) give no interval, so the verdict says so; with several seeds per
# algorithm it compares groups (see :doc:`/getting-started`). Small settings for the build: 100 samples,
# λmax only, no surfaces.
from flatfl.cli import main

code = main(["report", str(fedavg), str(fedmut), "--out", str(root / "report"), "--at-rounds", "3",
             "--samples", "100", "--grid", "3", "--trace-matvecs", "0", "--sharpness", "none",
             "--no-spread", "--no-match", "--slices", "0", "--no-progress"])  # fmt: skip
assert code == 0
print(sorted(p.name for p in (root / "report").iterdir()))
