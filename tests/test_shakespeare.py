"""Shakespeare: a tiny play in the Gutenberg layout -> LEAF JSON -> natural clients -> LSTM training."""

from __future__ import annotations

import json

import pytest
import torch

from flatfl.config import DataConfig
from flatfl.data import load_dataset
from flatfl.data.shakespeare import ALL_LETTERS, SEQ_LEN, encode, parse_play
from tests.test_cli import _one_line_error

PLAY = """THE TRAGEDY OF TESTUS

by William Shakespeare


PERSONS REPRESENTED.

Testus, a King.
Probo, his Fool.

ACT I.

Scene I. A hall.

[Enter Testus and Probo.]

Test.
What news, good fool? The day is long and grey,
And all my lords are gone to sleep away.

Pro.
No news, my liege, but that the wind is high. [Aside.] And so am I.

Test.
Then let us talk of kings until we die,
Or till the supper bell shall call us in.

First Lord.
My lord, the supper waits, and so does sin.

Pro.
A fool may jest, a king may weep, a lord may dine; the fool alone shall keep the time.
"""


def _repeat(play: str, k: int) -> str:
    head, body = play.split("ACT I.", 1)
    return head + "ACT I." + body * k


def test_parse_play_finds_roles_and_drops_directions():
    roles = parse_play(PLAY)
    assert list(roles) == ["TEST", "PRO", "FIRST LORD"]
    assert roles["PRO"][0] == "No news, my liege, but that the wind is high.  And so am I."
    assert roles["TEST"][1].startswith("Then let us talk") and len(roles["TEST"]) == 2
    assert "[" not in "".join(s for v in roles.values() for s in v)


def test_builder_writes_leaf_json_and_loader_makes_natural_clients(cli, tmp_path):
    plays = tmp_path / "plays"
    plays.mkdir()
    (plays / "testus_gut.txt").write_text(_repeat(PLAY, 6))
    (plays / "other_gut.txt").write_text(_repeat(PLAY.replace("Pro.", "Clown."), 3))
    code, out, err = cli("data", "shakespeare", "--plays", plays, "--out", tmp_path / "d" / "shakespeare")
    assert code == 0, err
    train = json.loads(next((tmp_path / "d" / "shakespeare" / "train").glob("*.json")).read_text())
    test = json.loads(next((tmp_path / "d" / "shakespeare" / "test").glob("*.json")).read_text())
    assert set(train) >= {"users", "num_samples", "user_data"} and train["users"] == test["users"]
    u = "TESTUS_TEST"
    xs, ys = train["user_data"][u]["x"], train["user_data"][u]["y"]
    assert all(len(x) == SEQ_LEN for x in xs) and len(xs) == len(ys) == train["num_samples"][train["users"].index(u)]
    # consecutive windows: x[i+1] is x[i] shifted by one with y[i] appended
    assert xs[1] == xs[0][1:] + ys[0]
    n_tr, n_te = len(xs), len(test["user_data"][u]["x"])
    assert n_tr == int(0.9 * (n_tr + n_te))
    # loader: clients are roles with >= min_size samples, chosen with split_seed
    ds = load_dataset(DataConfig(dataset="shakespeare", data_root=str(tmp_path / "d"), partition="natural",
                                 num_clients=3, min_size=50))  # fmt: skip
    assert ds.num_classes == 80 and ds.input_shape == (80,) and ds.train.x.dtype == torch.long
    assert len(ds.natural_parts) == 3 and sum(len(p) for p in ds.natural_parts) == len(ds.train)
    k = ds.client_names.index(u) if u in ds.client_names else None
    if k is not None:
        p = ds.natural_parts[k]
        assert ds.train.x[p[0]].tolist() == encode(xs[0]) and ds.train.y[p[0]].item() == ALL_LETTERS.index(ys[0])
    # too many clients: one clear line
    with pytest.raises(Exception, match="--clients"):
        load_dataset(DataConfig(dataset="shakespeare", data_root=str(tmp_path / "d"), num_clients=50, min_size=50))


def write_leaf_all_data(data_root, repeats: int) -> dict:
    """An unsplit LEAF ``shakespeare/all_data/all_data.json`` under ``data_root``: three roles of
    80-character windows (the text, its upper case, its reverse); returns the users written."""
    text = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer. " * repeats
    users = {}
    for name, t in (("A_HAM", text), ("A_OPH", text.upper()), ("A_POL", text[::-1])):
        users[name] = {"x": [t[i : i + 80] for i in range(len(t) - 80)], "y": [t[i + 80] for i in range(len(t) - 80)]}
    root = data_root / "shakespeare" / "all_data"
    root.mkdir(parents=True)
    doc = {"users": list(users), "num_samples": [len(v["x"]) for v in users.values()], "user_data": users}
    (root / "all_data.json").write_text(json.dumps(doc))
    return users


def test_unsplit_leaf_all_data_and_a_training_run(cli, tmp_path):
    users = write_leaf_all_data(tmp_path / "d", repeats=8)
    code, _, err = cli(
        "train", "--dataset", "shakespeare", "--data-root", tmp_path / "d", "--clients", "3", "--frac", "0.67",
        "--min-size", "10", "--rounds", "2", "--local-epochs", "1", "--batch-size", "64", "--lr", "0.5",
        "--no-progress", "--out", tmp_path / "run",
    )  # fmt: skip
    assert code == 0, err
    from flatfl.runs.run import Run

    run = Run.open(tmp_path / "run")
    assert run.config["data"]["partition"] == "natural" and run.info["model"]["name"] == "lstm"
    assert run.info["partition"]["sizes"] == [int(0.9 * len(v["x"])) for v in users.values()]
    ds = run.dataset()
    assert run.model(2)(ds.test.x[:5]).shape == (5, 80)
    # the analysis side on the LSTM: lambda_max and a 1D surface over character inputs
    code, _, err = cli("landscape", "--ckpt", tmp_path / "run" / "round_0002.safetensors", "--hessian", "--topk", "1",
                       "--samples", "40", "--surface", "1d", "--grid", "3", "--out", tmp_path / "ls")  # fmt: skip
    assert code == 0, err
    res = json.loads((tmp_path / "ls" / "landscape.json").read_text())
    assert res["model"] == "lstm" and res["hessian"]["eigenvalues"][0] > 0
    assert res["surface"]["loss_at_checkpoint"] == pytest.approx(res["loss"], rel=1e-5)
    code, _, err = cli("train", "--dataset", "digits", "--partition", "natural", "--out", tmp_path / "x")
    _one_line_error(code, err, "natural")
    code, _, err = cli(
        "train", "--dataset", "shakespeare", "--data-root", tmp_path / "nowhere", "--out", tmp_path / "y"
    )
    _one_line_error(code, err, "flatfl data shakespeare")
