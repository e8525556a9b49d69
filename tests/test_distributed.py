"""torchrun on CPU (gloo, localhost): the files equal the single-process run's, bit for bit.

Thread count changes CPU reduction order, and torchrun starts each rank with OMP_NUM_THREADS=1,
so the single-process references here run with one thread too.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[1]
FAST = {
    "fedavg": [],
    "fedmut": ["--save-clients"],
    "fedprox": ["--mu", "0.1"],
    "scaffold": [],
    "clusamp": [],
    "fedcluster": ["--clusters", "2"],
    "feddf": ["--distill-steps", "10"],
    "fedgen": ["--gen-epochs", "1", "--gen-batch", "32"],
    "fedaux": ["--distill-steps", "10", "--aux-pretrain-steps", "3"],
    "fedsam": [],
    "mofedsam": [],
    "fedswa": ["--swa-start", "1", "--swa-cycle", "2"],
    "fedlesam": [],
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", *args]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _same_files(a: Path, b: Path) -> None:
    names = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file())  # client_state/ too
    assert names == sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file())
    for n in names:
        if n == "run.json":  # the distributed run also records its launch
            ja, jb = json.loads((a / n).read_text()), json.loads((b / n).read_text())
            assert jb.pop("launch") == {"world_size": 2, "backend": "gloo"}
            assert ja == jb
        elif n == "metrics.jsonl":  # wall times differ; the numbers must not
            for la, lb in zip((a / n).read_text().splitlines(), (b / n).read_text().splitlines(), strict=True):
                ra, rb = json.loads(la), json.loads(lb)
                assert {
                    k: ra.get(k) for k in ("round", "test_loss", "test_acc", "train_loss", "client_train_loss")
                } == {k: rb.get(k) for k in ("round", "test_loss", "test_acc", "train_loss", "client_train_loss")}
        else:
            assert (a / n).read_bytes() == (b / n).read_bytes(), (a.name, n)


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def test_torchrun_two_ranks_equal_one_process_for_every_algorithm(cli, tmp_path, one_thread):
    runs = []
    for algo, extra in FAST.items():
        runs.append(["train", *TINY, "--algo", algo, "--rounds", "3", *extra, "--out", str(tmp_path / "d" / algo)])
    # resume under torchrun: 2 rounds, then 2 more
    runs.append(["train", *TINY, "--algo", "fedmut", "--rounds", "2", "--out", str(tmp_path / "d" / "resumed")])
    runs.append(["train", "--resume", str(tmp_path / "d" / "resumed"), "--rounds", "4", "--no-progress"])
    proc = _torchrun("tests/scripts/dist_train.py", json.dumps(runs))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for algo, extra in FAST.items():
        code, _, err = cli("train", *TINY, "--algo", algo, "--rounds", "3", *extra, "--out", tmp_path / "s" / algo)
        assert code == 0, err
        _same_files(tmp_path / "s" / algo, tmp_path / "d" / algo)
    code, _, err = cli("train", *TINY, "--algo", "fedmut", "--rounds", "4", "--out", tmp_path / "s" / "straight")
    assert code == 0, err
    _same_files(tmp_path / "s" / "straight", tmp_path / "d" / "resumed")


def test_torchrun_module_entry_point_and_errors_once(cli, tmp_path, one_thread):
    out = tmp_path / "dist"
    proc = _torchrun("-m", "flatfl", "train", *TINY, "--algo", "fedmut", "--rounds", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("done:") == 1  # rank 0 alone reports
    code, _, err = cli("train", *TINY, "--algo", "fedmut", "--rounds", "2", "--out", tmp_path / "single")
    assert code == 0, err
    _same_files(tmp_path / "single", out)
    # a bad flag combination: one line from rank 0, exit 2 on every rank, nothing written
    proc = _torchrun("-m", "flatfl", "train", *TINY, "--out", str(out))
    assert proc.returncode != 0
    lines = [s for s in proc.stderr.splitlines() if s.startswith("flatfl: error:")]
    assert len(lines) == 1 and "--resume" in lines[0]


def test_torchrun_landscape_splits_hvps_and_grid_points(tiny, cli, tmp_path, one_thread):
    import numpy as np

    run = tiny("run", rounds=2, algo="fedavg")
    args = ["landscape", "--ckpt", str(run / "round_0002.safetensors"), "--hessian", "--topk", "2", "--trace",
            "--trace-matvecs", "6", "--surface", "2d", "--grid", "4", "--samples", "200"]  # fmt: skip
    code, _, err = cli(*args, "--out", tmp_path / "one")
    assert code == 0, err
    proc = _torchrun("-m", "flatfl", *args, "--out", str(tmp_path / "two"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = json.loads((tmp_path / "one" / "landscape.json").read_text())
    b = json.loads((tmp_path / "two" / "landscape.json").read_text())
    assert b["ranks"] == 2 and "ranks" not in a
    assert b["hessian"]["eigenvalues"] == pytest.approx(a["hessian"]["eigenvalues"], rel=1e-5)
    assert b["hessian"]["num_hvps"] == a["hessian"]["num_hvps"]
    assert b["trace"]["estimate"] == pytest.approx(a["trace"]["estimate"], rel=1e-5)
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-6)
    sa, sb = np.load(tmp_path / "one" / "surface.npz"), np.load(tmp_path / "two" / "surface.npz")
    assert not np.isnan(sb["loss"]).any()
    np.testing.assert_allclose(sb["loss"], sa["loss"], rtol=1e-5)
    np.testing.assert_allclose(sb["accuracy"], sa["accuracy"], atol=1e-9)


def test_two_nodes_by_rendezvous_equal_one_process(cli, tmp_path, one_thread):
    """The README's several-machines command, both 'machines' on localhost (c10d rendezvous)."""
    out = tmp_path / "nodes"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    port = _free_port()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                f"--node-rank={n}",
                "--nproc_per_node=1",
                "--rdzv-backend=c10d",
                f"--rdzv-endpoint=127.0.0.1:{port}",
                "-m",
                "flatfl",
                "train",
                *TINY,
                "--algo",
                "scaffold",
                "--rounds",
                "2",
                "--out",
                str(out),
            ],  # fmt: skip
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in (0, 1)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    code, _, err = cli("train", *TINY, "--algo", "scaffold", "--rounds", "2", "--out", tmp_path / "single")
    assert code == 0, err
    _same_files(tmp_path / "single", out)


def test_torchrun_report_equals_one_process(tiny, cli, tmp_path, one_thread):
    import csv

    runs = [tiny("avg", "--save-clients", rounds=2, algo="fedavg"), tiny("mut", "--save-clients", rounds=2)]
    args = ["report", *map(str, runs), "--at-rounds", "2", "--samples", "100", "--grid", "3", "--trace-matvecs", "6",
            "--sharpness", "sam", "--no-progress"]  # fmt: skip
    code, _, err = cli(*args, "--out", tmp_path / "one")
    assert code == 0, err
    proc = _torchrun("-m", "flatfl", *args, "--out", str(tmp_path / "two"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("report.html") == 1  # rank 0 alone writes and prints
    a = list(csv.DictReader(open(tmp_path / "one" / "report.csv")))
    b = list(csv.DictReader(open(tmp_path / "two" / "report.csv")))
    assert [(r["run"], r["round"]) for r in a] == [(r["run"], r["round"]) for r in b]
    assert {r["run"] for r in a} == {"fedavg", "fedmut"}
    for ra, rb in zip(a, b):
        for k in ("lambda_max", "trace", "train_loss", "sharpness_sam", "width_0.1"):
            assert float(rb[k]) == pytest.approx(float(ra[k]), rel=1e-4), k
    assert (tmp_path / "two" / "report.html").is_file() and (tmp_path / "two" / "curves.csv").is_file()
    from flatfl.rundir import locked_folder

    with locked_folder(tmp_path / "two", "writing a report here"):  # rank 0 cannot take --out: every rank stops
        proc = _torchrun("-m", "flatfl", *args, "--out", str(tmp_path / "two"))
    assert proc.returncode != 0 and "another flatfl process" in proc.stderr, proc.stderr[-3000:]  # no hang


def test_torchrun_divergence_stops_every_rank_like_one_process(cli, tmp_path, one_thread):
    bad = [*TINY, "--algo", "fedmut", "--rounds", "6", "--lr", "50", "--momentum", "0.9"]
    code, _, err = cli("train", *bad, "--out", tmp_path / "single")
    assert code == 1 and "diverged" in err, err
    proc = _torchrun("-m", "flatfl", "train", *bad, "--out", str(tmp_path / "dist"))
    assert proc.returncode != 0
    lines = [s for s in proc.stderr.splitlines() if s.startswith("flatfl: diverged:")]
    assert len(lines) == 1, proc.stderr[-3000:]  # one message, from rank 0
    single = [s for s in err.splitlines() if s.startswith("flatfl: diverged:")]  # after the note on --lr given twice
    assert lines[0].split(";")[0] == single[0].split(";")[0].replace(str(tmp_path / "single"), str(tmp_path / "dist"))
    _same_files(tmp_path / "single", tmp_path / "dist")
