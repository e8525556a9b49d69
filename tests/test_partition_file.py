"""--partition-file: flatfl's partition.json and the FedMut authors' data/*.json format."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from flatfl import checkpoint as ckpt
from tests.conftest import assert_same_rounds
from tests.test_cli import _one_line_error

# TINY without its split flags (the file gives the split)
BASE = ["--dataset", "digits", "--local-epochs", "1", "--lr", "0.05", "--frac", "0.5", "--no-progress"]
NUM_TRAIN = 1438  # digits: 1,797 images, 20 % held out for test


def authors_file(path, clients, **over):
    """A file as the authors' utils/get_dataset.py writes it (json.dump of this dict)."""
    doc = {
        "dataset": "digits",
        "num_users": len(clients),
        "iid": 0,
        "noniid_case": 5,
        "data_beta": 0.1,
        "train_data": {str(k): [int(i) for i in c] for k, c in enumerate(clients)},
    } | over
    path.write_text(json.dumps(doc))
    return path


def split(n_clients=5, seed=0):
    perm = np.random.default_rng(seed).permutation(NUM_TRAIN)
    return [p.tolist() for p in np.array_split(perm, n_clients)]


def test_flatfl_partition_json_reproduces_the_run(cli, tiny, tmp_path):
    a = tiny("a", rounds=2)
    b = tmp_path / "b"
    args = [*BASE, "--algo", "fedmut", "--rounds", "2", "--partition-file", a / "partition.json", "--out", b]
    code, _, err = cli("train", *args)
    assert code == 0, err
    assert ckpt.read_partition(b) == ckpt.read_partition(a)
    assert_same_rounds(a, b, 2)  # same split, same seed: the same run, bit for bit


def test_authors_format_is_used_as_written_and_hashed(cli, tmp_path):
    clients = split(5)
    f = authors_file(tmp_path / "digits_5_noniidCase5_beta0.1.json", clients)
    out = tmp_path / "r"
    code, _, err = cli("train", *BASE, "--rounds", "1", "--partition-file", f, "--out", out)
    assert code == 0, err
    assert ckpt.read_partition(out) == clients  # the file's clients, in the file's order
    info = ckpt.read_run_json(out)
    sha = hashlib.sha256(f.read_bytes()).hexdigest()
    assert info["config"]["data"]["partition_sha256"] == sha == info["partition"]["sha256"]
    assert info["config"]["data"]["num_clients"] == 5 and info["partition"]["scheme"] == "file"
    assert info["partition"]["sizes"] == [len(c) for c in clients]
    # resume reads the run's own partition.json: the file may be gone
    f.unlink()
    code, _, err = cli("train", "--resume", out, "--rounds", "2", "--no-progress")
    assert code == 0, err
    assert ckpt.list_rounds(out) == [0, 1, 2]


def _bad_files(tmp_path):
    c = split(4)
    dup = [list(x) for x in c]
    dup[3] = dup[3] + [c[1][0]]
    return {
        "not-json": (lambda p: p.write_text("{'train_data': "), ["not valid JSON"]),
        "no-format": (lambda p: p.write_text('{"users": []}'), ["neither", "train_data"]),
        "key-gap": (
            lambda p: p.write_text(json.dumps({"num_users": 2, "train_data": {"0": [1], "2": [3]}})),
            ["'0' .. '1'", "'2'"],
        ),
        "num-users": (lambda p: authors_file(p, c, num_users=100), ["num_users is 100", "4 clients"]),
        "duplicate": (lambda p: authors_file(p, dup), [f"index {c[1][0]}", "clients 1 and 3"]),
        "negative": (lambda p: authors_file(p, [[-1, 2], [3]]), ["client 0", "negative index -1"]),
        "empty": (lambda p: authors_file(p, [[1, 2], []]), ["client 1 holds no samples"]),
        "not-int": (lambda p: p.write_text('{"train_data": {"0": [1, 2.5]}}'), ["client 0", "integer"]),
        "range": (lambda p: authors_file(p, [[1, NUM_TRAIN]]), [f"index {NUM_TRAIN}", "1438 training samples"]),
        "dataset": (lambda p: authors_file(p, c, dataset="cifar10"), ["split of cifar10", "--dataset digits"]),
    }


@pytest.mark.parametrize(
    "case",
    ["not-json", "no-format", "key-gap", "num-users", "duplicate", "negative", "empty", "not-int", "range", "dataset"],
)
def test_bad_partition_files_are_one_line(cli, tmp_path, case):
    write, needles = _bad_files(tmp_path)[case]
    f = tmp_path / "split.json"
    write(f)
    code, _, err = cli("train", *BASE, "--rounds", "1", "--partition-file", f, "--out", tmp_path / "o")
    _one_line_error(code, err, "--partition-file", str(f), *needles)
    assert not (tmp_path / "o" / "round_0001.safetensors").exists()


@pytest.mark.parametrize(
    "flags, needles",
    [
        (["--clients", "7"], ["--clients 7", "holds 4 clients"]),
        (["--dirichlet", "0.5"], ["--dirichlet", "--partition-file"]),
        (["--partition", "iid"], ["--partition", "drop one"]),
    ],
)
def test_partition_file_conflicts(cli, tmp_path, flags, needles):
    f = authors_file(tmp_path / "s.json", split(4))
    code, _, err = cli("train", *BASE, "--rounds", "1", "--partition-file", f, *flags, "--out", tmp_path / "o")
    _one_line_error(code, err, *needles)


def test_missing_partition_file(cli, tmp_path):
    code, _, err = cli("train", *BASE, "--partition-file", tmp_path / "nope.json", "--out", tmp_path / "o")
    _one_line_error(code, err, "--partition-file", "nope.json", "cannot be read")


def test_a_file_changed_after_configuration_is_refused(tmp_path):
    from flatfl.errors import UserError
    from flatfl.partition_file import load_for_run, read_partition_file

    f = authors_file(tmp_path / "s.json", split(3))
    sha = read_partition_file(f).sha256
    authors_file(f, split(3, seed=1))
    with pytest.raises(UserError, match="changed since the run was configured"):
        load_for_run(f, sha, dataset="digits", num_train=NUM_TRAIN)


def test_partition_command_shows_a_files_split(cli, tmp_path):
    clients = split(3)
    f = authors_file(tmp_path / "s.json", clients)
    code, out, err = cli("partition", "--dataset", "digits", "--partition-file", f, "--plot", tmp_path / "p.png")
    assert code == 0, err
    assert "3 clients" in out and f"sizes: min {min(map(len, clients))}" in out
    assert (tmp_path / "p.png").is_file()
