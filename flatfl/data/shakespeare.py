"""Shakespeare next-character prediction, LEAF style: every speaking role of every play is a client.

Two sources, one format. ``--data-root DIR`` holds ``DIR/shakespeare/``, with either

* LEAF's own split JSON: ``train/*.json`` and ``test/*.json`` (e.g. ``all_data_niid_0_keep_0_train_9.json``),
  each ``{"users": [...], "num_samples": [...], "user_data": {user: {"x": [...], "y": [...]}}}``
  where ``x`` are 80-character strings and ``y`` the character that follows each; or
* LEAF's unsplit ``all_data/*.json`` (same keys), split here per user: the first 90% of a
  role's samples train, the rest test (contiguous, as LEAF's sequence split, so no window
  straddles the two).

``flatfl data shakespeare --plays DIR --out DIR/shakespeare`` builds the split JSON from raw
play texts in the Project Gutenberg layout (a speech starts with the speaker's abbreviated
name alone on a line ending in a period, stage directions in square brackets, ``ACT I.`` /
``Scene I.`` headings): the speeches of each role are joined with newlines, and every
80-character window is a sample whose target is the next character (LEAF's
``preprocess_shakespeare.py`` + ``gen_all_data.py``).

Characters are encoded with the reference's 80-character vocabulary (``ALL_LETTERS`` of LEAF
and of the FedMut code); a character outside it becomes a space (the reference's ``find``
would return -1, an out-of-range embedding index). Roles with fewer than ``min_size`` (``--min-size``)
training samples are dropped; of the rest, ``num_clients`` are chosen with ``split_seed``
(``--clients 0``: all of them). The natural partition gives each client its role's samples;
the test set is the union of the chosen roles' test samples.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flatfl.config import DataConfig
from flatfl.data import Dataset, TensorData, register_dataset
from flatfl.errors import UserError

ALL_LETTERS = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
SEQ_LEN = 80
_INDEX = {c: i for i, c in enumerate(ALL_LETTERS)}
_SPACE = _INDEX[" "]

_SPEAKER = re.compile(r"^([A-Z][A-Za-z'\- ]{0,40}?)\.$")
_HEADING = re.compile(r"^(ACT|Act|SCENE|Scene)\b")


def encode(text: str) -> list[int]:
    return [_INDEX.get(c, _SPACE) for c in text]


def parse_play(text: str) -> OrderedDict[str, list[str]]:
    """Speeches per role of one play in the Gutenberg layout (role -> list of speeches).

    A speaker line is a heuristic match: after a blank line, at most four words, each
    capitalised, ending in a period (``Ham.``, ``First Clown.``, ``AEGEON.``), not an act or
    scene heading. A one-word capitalised sentence alone after a blank line inside a speech
    (rare; e.g. ``Perpend.``) is taken for a speaker too.
    """
    roles: OrderedDict[str, list[str]] = OrderedDict()
    speaker, lines = None, []

    def flush() -> None:
        if speaker is not None:
            speech = " ".join(line for line in lines if line).strip()
            if speech:
                roles.setdefault(speaker, []).append(speech)

    for raw in text.splitlines():
        line = re.sub(r"\[[^\]]*\]", "", raw).strip()  # stage directions
        if not line:
            flush()
            speaker, lines = None, []
            continue
        m = _SPEAKER.match(line)
        words = line[:-1].replace("-", " ").split()
        if m and not _HEADING.match(line) and len(words) <= 4 and all(w[0].isupper() for w in words) and not lines:
            flush()
            speaker, lines = m.group(1).strip().upper(), []
            continue
        if speaker is not None:
            lines.append(line)
    flush()
    return roles


def role_samples(speeches: list[str]) -> tuple[list[str], list[str]]:
    """Every 80-character window of the role's text and the character after it."""
    text = "\n".join(speeches)
    xs = [text[i : i + SEQ_LEN] for i in range(len(text) - SEQ_LEN)]
    ys = [text[i + SEQ_LEN] for i in range(len(text) - SEQ_LEN)]
    return xs, ys


def build_leaf_json(plays: Path, out: Path, train_frac: float = 0.9) -> dict[str, Any]:
    """Write ``out/train/*.json`` and ``out/test/*.json`` (LEAF layout) from raw play texts."""
    from flatfl.checkpoint import atomic_write_json

    files = sorted(p for p in Path(plays).glob("*.txt"))
    if not files:
        raise UserError(f"--plays: no .txt play files in {plays}")
    train: dict[str, Any] = {"users": [], "num_samples": [], "user_data": {}}
    test: dict[str, Any] = {"users": [], "num_samples": [], "user_data": {}}
    for f in files:
        play = re.sub(r"_gut$", "", f.stem).upper()
        for role, speeches in parse_play(f.read_text(encoding="utf-8", errors="replace")).items():
            xs, ys = role_samples(speeches)
            if len(xs) < 2:
                continue
            user = f"{play}_{role.replace(' ', '_')}"
            n_train = max(1, int(train_frac * len(xs)))
            for split, lo, hi in ((train, 0, n_train), (test, n_train, len(xs))):
                split["users"].append(user)
                split["num_samples"].append(hi - lo)
                split["user_data"][user] = {"x": xs[lo:hi], "y": ys[lo:hi]}
    if not train["users"]:
        raise UserError(f"--plays: found no speaking roles in {plays} (expected the Gutenberg layout)")
    out = Path(out)
    (out / "train").mkdir(parents=True, exist_ok=True)
    (out / "test").mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "train" / "all_data_niid_0_keep_0_train_9.json", train)
    atomic_write_json(out / "test" / "all_data_niid_0_keep_0_test_9.json", test)
    return {"plays": len(files), "roles": len(train["users"]), "train_samples": sum(train["num_samples"])}


def _read_dir(folder: Path) -> dict[str, dict[str, list[str]]]:
    data: dict[str, dict[str, list[str]]] = {}
    for f in sorted(folder.glob("*.json")):
        try:
            d = json.loads(f.read_text())
            data.update(d["user_data"])
        except (json.JSONDecodeError, KeyError, OSError) as exc:
            raise UserError(f"{f}: not a LEAF JSON file with users/user_data ({exc})") from None
    return data


def read_leaf(root: Path) -> tuple[dict[str, dict], dict[str, dict]]:
    """(train, test) user_data from ``root`` (split train/ + test/, or unsplit all_data/)."""
    if (root / "train").is_dir() and (root / "test").is_dir():
        return _read_dir(root / "train"), _read_dir(root / "test")
    if (root / "all_data").is_dir():
        train, test = {}, {}
        for user, d in _read_dir(root / "all_data").items():
            n = max(1, int(0.9 * len(d["x"])))
            train[user] = {"x": d["x"][:n], "y": d["y"][:n]}
            test[user] = {"x": d["x"][n:], "y": d["y"][n:]}
        return train, test
    raise UserError(
        f"--data-root: {root} holds neither train/ + test/ nor all_data/ LEAF JSON; build it from play texts with "
        f"'flatfl data shakespeare --plays PLAYS_DIR --out {root}'"
    )


def _tensor(xs: list[str], ys: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.tensor([encode(s.ljust(SEQ_LEN)[:SEQ_LEN]) for s in xs], dtype=torch.long).reshape(-1, SEQ_LEN)
    y = torch.tensor([encode(c)[0] for c in ys], dtype=torch.long)
    return x, y


@register_dataset(
    "shakespeare",
    info=lambda cfg: {"num_classes": len(ALL_LETTERS), "input_shape": [SEQ_LEN], "input_dtype": "long"},
    description="LEAF Shakespeare next-character prediction, one client per role (--data-root DIR/shakespeare/)",
)
def load_shakespeare(cfg: DataConfig, download: bool = False) -> Dataset:
    root = Path(cfg.data_root).expanduser() / "shakespeare"
    train, test = read_leaf(root)
    users = sorted(u for u in train if len(train[u]["x"]) >= cfg.min_size and u in test)
    if not users:
        raise UserError(f"--min-size: no role in {root} has {cfg.min_size} training samples")
    if cfg.num_clients and cfg.num_clients < len(users):
        pick = np.random.default_rng(cfg.split_seed).choice(len(users), cfg.num_clients, replace=False)
        users = [users[i] for i in sorted(pick)]
    elif cfg.num_clients > len(users):
        raise UserError(
            f"--clients: {root} has only {len(users)} roles with >= {cfg.min_size} training samples "
            f"(asked for {cfg.num_clients}); lower --clients or --min-size"
        )
    xs, ys, parts, start = [], [], [], 0
    txs, tys = [], []
    for u in users:
        x, y = _tensor(train[u]["x"], train[u]["y"])
        xs.append(x)
        ys.append(y)
        parts.append(np.arange(start, start + len(y)))
        start += len(y)
        if test[u]["x"]:
            tx, ty = _tensor(test[u]["x"], test[u]["y"])
            txs.append(tx)
            tys.append(ty)
    return Dataset(
        name="shakespeare",
        train=TensorData(torch.cat(xs), torch.cat(ys)),
        test=TensorData(torch.cat(txs), torch.cat(tys)),
        num_classes=len(ALL_LETTERS),
        input_shape=(SEQ_LEN,),
        source=f"{root} ({len(users)} roles)",
        natural_parts=parts,
        client_names=users,
    )
