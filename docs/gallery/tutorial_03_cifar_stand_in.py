"""
FedMut vs FedAvg with the authors' partition files (a stand-in run)
===================================================================

The real experiment needs CIFAR-10 and the FedMut authors' partition files; its exact commands are in
:doc:`/tutorials/cifar10`. This tutorial runs the *same commands* on a stand-in that the build can afford:
random images written in the official CIFAR-10 python layout (``cifar-10-batches-py/data_batch_1..5``,
``test_batch``) and a partition file in the authors' format (``{"dataset", "num_users", "iid",
"noniid_case", "data_beta", "train_data": {"0": [indices], ...}}``). The numbers it prints say nothing about
CIFAR-10: the images are noise. What it shows is that the pipeline -- reading the official files, the
authors' clients, FedAvg and FedMut with the same local SGD, the report -- runs end to end.
"""

# %%
# A CIFAR-10 folder and an authors' partition file
# ------------------------------------------------
# 5 training batches of 40 images each (200 in all) and 40 test images; the official archive has 10,000 per
# batch, and flatfl warns that these files differ from it.
import json
import pickle
import tempfile
from pathlib import Path

import numpy as np

root = Path(tempfile.mkdtemp(prefix="flatfl-cifar-"))
folder = root / "data" / "cifar-10-batches-py"
folder.mkdir(parents=True)
rng = np.random.default_rng(0)


def batch(n: int) -> dict:
    """One batch as the official pickles hold it: uint8 rows of 3072 bytes (R, G, B planes) and labels."""
    labels = [int(v) for v in rng.integers(0, 10, n)]
    return {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": labels}


for i in range(1, 6):
    (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch(40), protocol=2))
(folder / "test_batch").write_bytes(pickle.dumps(batch(40), protocol=2))
meta = {b"label_names": [b"airplane"], b"num_cases_per_batch": 40, b"num_vis": 3072}
(folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))

# 10 clients of 20 images each, as the authors' utils/get_dataset.py writes them (json.dump of this dict)
clients = np.array_split(rng.permutation(200), 10)
authors = {"dataset": "cifar10", "num_users": 10, "iid": 0, "noniid_case": 5, "data_beta": 0.1,
           "train_data": {str(k): c.tolist() for k, c in enumerate(clients)}}  # fmt: skip
(root / "cifar10_10users_beta0.1.json").write_text(json.dumps(authors))

# %%
# FedAvg and FedMut on the authors' clients
# -----------------------------------------
# The flags are the real experiment's (LeNet ``cnn``, the authors' clients, 50 % of them a round) with
# 4 rounds, 2 local epochs and lr 0.05, so that the models move on 20 images a client. ``--partition-file``
# fixes the clients; its SHA-256 goes into ``run.json``.
from flatfl.cli import main

common = ["--dataset", "cifar10", "--data-root", str(root / "data"), "--model", "cnn",
          "--partition-file", str(root / "cifar10_10users_beta0.1.json"), "--frac", "0.5",
          "--rounds", "4", "--local-epochs", "2", "--lr", "0.05", "--seed", "0", "--no-progress"]  # fmt: skip
for algo in ("fedavg", "fedmut"):
    assert main(["train", *common, "--algo", algo, "--out", str(root / f"c10-{algo}-s0")]) == 0

from flatfl.runs.run import Run

run = Run.open(root / "c10-fedmut-s0")
print("rounds", run.rounds(), "| test accuracy", [round(m["test_acc"], 3) for m in run.metrics()])

# %%
# The report
# ----------
# As for the real runs, with fewer samples and measures.
code = main(["report", str(root / "c10-fedavg-s0"), str(root / "c10-fedmut-s0"), "--out", str(root / "report"),
             "--at-rounds", "4", "--samples", "40", "--grid", "3", "--trace-matvecs", "0", "--sharpness", "none",
             "--no-spread", "--no-match", "--slices", "0", "--no-progress"])  # fmt: skip
assert code == 0
