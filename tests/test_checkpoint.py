"""Run directories: resume equals straight, seeds reproduce bytes, writes are atomic."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from flatfl import checkpoint as ckpt
from flatfl.errors import UserError
from flatfl.local import evaluate
from flatfl.runs.run import Run


def _files(d: Path) -> dict[str, bytes]:
    """Every file of a run directory (client_state/ included) but metrics.jsonl, by relative path."""
    return {
        str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file() and p.name != "metrics.jsonl"
    }


@pytest.mark.parametrize("algo", ["fedavg", "fedmut"])
def test_resume_equals_straight_run_bitwise(tiny, cli, algo):
    straight = tiny("straight", "--save-clients", rounds=10, algo=algo)
    split = tiny("split", "--save-clients", rounds=5, algo=algo)
    code, out, err = cli("train", "--resume", split, "--rounds", "10", "--no-progress")
    assert code == 0, err
    assert "resuming" in out
    a, b = _files(straight), _files(split)
    assert set(a) == set(b) and "round_0010.safetensors" in a and "clients_0010.safetensors" in a
    for name in a:
        assert a[name] == b[name], name
    ma = [(r["round"], r["test_acc"], r["test_loss"]) for r in Run.open(straight).metrics()]
    mb = [(r["round"], r["test_acc"], r["test_loss"]) for r in Run.open(split).metrics()]
    assert ma == mb and len(ma) == 11


def test_resume_after_a_crash_mid_round(tiny, cli):
    """A crash after round_N was written but before the state commit: resume redoes round N."""
    straight = tiny("straight", rounds=4)
    crashed = tiny("crashed", rounds=4)
    # roll the commit point back to round 3, as if the process died before writing state
    ref = tiny("ref3", rounds=3)
    (crashed / ckpt.STATE_FILE).write_bytes((ref / ckpt.STATE_FILE).read_bytes())
    (crashed / "round_0004.safetensors").write_bytes(b"partial garbage")
    code, _, err = cli("train", "--resume", crashed, "--no-progress")
    assert code == 0, err
    assert _files(straight) == _files(crashed)
    assert [r["round"] for r in Run.open(crashed).metrics()] == [0, 1, 2, 3, 4]


def test_same_seed_same_bytes_other_seed_differs(tiny):
    a, b = _files(tiny("a", rounds=3)), _files(tiny("b", rounds=3))
    c = _files(tiny("c", "--seed", "1", rounds=3))
    assert a == b
    assert a["round_0003.safetensors"] != c["round_0003.safetensors"]


def test_run_json_rebuilds_model_and_data(tiny):
    """The analysis side recomputes the logged test metrics from files alone."""
    run = Run.open(tiny("r", rounds=3, algo="fedavg"))
    info = run.info
    assert info["config"]["algo"] == "fedavg" and info["model"]["num_parameters"] == 13706
    assert info["partition"]["sizes"] == [len(p) for p in run.partition()]
    assert sum(info["partition"]["sizes"]) == info["dataset"]["n_train"] == 1438
    assert run.rounds() == [0, 1, 2, 3]
    data = run.dataset()
    model = run.model(3).eval()
    with torch.no_grad():
        logits = model(data.test.x)
    acc = (logits.argmax(1) == data.test.y).double().mean().item()
    loss = torch.nn.functional.cross_entropy(logits.double(), data.test.y).item()
    logged = run.metrics()[3]
    assert acc == pytest.approx(logged["test_acc"], abs=1e-12)
    assert loss == pytest.approx(logged["test_loss"], rel=1e-5)
    # and the trainer's own evaluate agrees on another round
    l1, a1 = evaluate(run.model(1), data.test.x, data.test.y, 100)
    assert a1 == pytest.approx(run.metrics()[1]["test_acc"]) and l1 == pytest.approx(
        run.metrics()[1]["test_loss"], rel=1e-5
    )


def test_fedavg_clients_receive_the_global_model(tiny):
    run = Run.open(tiny("avg", "--save-clients", rounds=2, algo="fedavg"))
    sent, returned, info = run.clients(2)
    g = run.global_state(1)
    assert len(sent) == 3 and len(info["clients"]) == 3 and "mutation_coefficients" not in info
    assert all(torch.equal(s[k], g[k]) for s in sent for k in g)
    assert not all(torch.equal(r[k], g[k]) for r in returned for k in g)
    # weighted FedAvg: new global = sample-weighted mean of the returned models
    n = info["num_samples"]
    mean = {k: sum(w * r[k].double() for w, r in zip(n, returned)) / sum(n) for k in g}
    assert all(torch.allclose(run.global_state(2)[k].double(), mean[k], atol=1e-6) for k in g)


def test_exception_during_write_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "x.safetensors"
    ckpt.save_tensors(path, {"w": torch.ones(3)}, {"v": "1"})
    old = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(UserError, match="x.safetensors: cannot write \\(disk full\\)"):
        ckpt.save_tensors(path, {"w": torch.zeros(3)}, {"v": "2"})
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]  # temp file cleaned up


WRITER = """
import sys, torch
from flatfl.checkpoint import save_tensors
i = 0
print("ready", flush=True)
while True:
    i += 1
    save_tensors(sys.argv[1], {"w": torch.full((1_000_000,), float(i))}, {"i": i})
"""


def test_killed_writer_leaves_a_valid_file(tmp_path):
    """SIGKILL a process that rewrites a 4 MB checkpoint in a loop: the file is always whole."""
    path = tmp_path / "w.safetensors"
    for delay in (0.3, 0.55, 0.8):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE)
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        tensors, meta = ckpt.load_tensors(path)
        i = int(meta["i"])
        assert i >= 1 and torch.equal(tensors["w"], torch.full((1_000_000,), float(i)))


def test_metrics_jsonl_has_one_record_per_round(tiny):
    run = tiny("m", rounds=3)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    assert [r["round"] for r in recs] == [0, 1, 2, 3]
    for r in recs[1:]:
        assert set(r) >= {"round", "test_loss", "test_acc", "train_loss", "wall_time", "clients"}
        assert 0 <= r["test_acc"] <= 1 and r["wall_time"] > 0 and len(r["clients"]) == 3
