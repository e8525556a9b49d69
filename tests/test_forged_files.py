"""Edited or forged run files are refused, not used: one line naming the file and the field, tensor or index,
exit 2, and every file left as it was -- on each reader (landscape, report) and on --resume.

The SHA-256 digests in run.json catch an edit; these forgeries also fix the digest (or drop it, as runs
from before it), so only the structural checks of ``flatfl.validate`` can catch them.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from flatfl import checkpoint as ckpt
from flatfl.config import identity_of
from tests.conftest import TINY

ROUNDS = 2
LANDSCAPE = ["--samples", "20", "--surface", "1d", "--grid", "2"]
REPORT = ["--samples", "20", "--no-hessian", "--trace-matvecs", "0", "--sharpness", "none", "--slices", "0"]
REPORT += ["--grid", "2", "--no-spread", "--no-match", "--no-progress", "--no-relative-flatness", "--no-fisher-rao"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from flatfl.cli import main

    out = tmp_path_factory.mktemp("forged") / "run"
    assert main(["train", *TINY, "--rounds", str(ROUNDS), "--out", str(out)]) == 0
    return out


def _files(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".flatfl.lock"}


def _refused(cli, run: Path, reader: str, *needles: str, tmp: Path) -> str:
    before = _files(run)
    args = {
        "landscape": ["landscape", "--ckpt", ckpt.round_path(run, ROUNDS), *LANDSCAPE, "--out", tmp / "l"],
        "client": ["landscape", "--ckpt", ckpt.round_path(run, ROUNDS), *LANDSCAPE, "--data", "client:0"],
        "resume": ["train", "--resume", run, "--rounds", str(ROUNDS + 1)],
        "report": ["report", run, "--out", tmp / "r", *REPORT],
        "prune": ["prune", run, "--keep", "1"],
    }[reader]
    code, out, err = cli(*args)
    assert code == 2, (out, err)
    assert err.startswith("flatfl: error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err
    assert _files(run) == before
    return err


# -- partition.json: edited, with run.json's digest made to match ---------------------------------------------------
def _forge_partition(run: Path, edit: Callable[[dict], None], digest: bool = True) -> None:
    obj = json.loads((run / ckpt.PARTITION_JSON).read_text())
    edit(obj)
    raw = ckpt.partition_json_bytes(obj)
    (run / ckpt.PARTITION_JSON).write_bytes(raw)
    info = json.loads((run / ckpt.RUN_JSON).read_text())
    if digest:
        info["partition_sha256"] = ckpt.sha256_hex(raw)
    else:  # a run from before the digest was recorded
        info.pop("partition_sha256")
    (run / ckpt.RUN_JSON).write_text(json.dumps(info))


def _set(client: int, pos: int, value: int) -> Callable[[dict], None]:
    def edit(obj: dict) -> None:
        obj["clients"][client][pos] = value

    return edit


def _share(obj: dict) -> None:  # client 1's first index replaced by client 0's: sizes unchanged
    obj["clients"][1][0] = obj["clients"][0][0]


PARTITIONS = {
    "index out of range": (_set(0, 0, 10**6), True, "client", ["client 0 holds index 1000000", "outside"]),
    "out of range, no digest": (_set(0, 0, 10**6), False, "client", ["client 0 holds index 1000000"]),
    "negative index": (_set(0, 0, -1), True, "resume", ["client 0 holds index -1"]),
    "index of two clients": (_share, True, "resume", ["held by both client 0 and client 1"]),
    "float index": (_set(2, 1, 1.5), True, "client", ["client 2 holds 1.5, not an integer"]),
    "a client dropped": (lambda o: o["clients"].pop(), True, "resume", ["num_clients is 6"]),
}


def _no_size(run: Path) -> None:  # run.json without the data set's record: no n_train to bound the indices by
    info = json.loads((run / ckpt.RUN_JSON).read_text())
    info.pop("dataset")
    (run / ckpt.RUN_JSON).write_text(json.dumps(info))


@pytest.mark.parametrize("reader", ["client", "resume", "prune"])
def test_partition_index_too_large_for_any_data_set_is_refused(base, cli, tmp_path, reader):
    run = tmp_path / "run"
    shutil.copytree(base, run)
    _forge_partition(run, _set(0, 0, 10**30))
    _no_size(run)
    _refused(cli, run, reader, "partition.json", "client 0 holds index 10000000000000000000000000000", tmp=tmp_path)


@pytest.mark.parametrize("case", list(PARTITIONS))
def test_forged_partition_is_refused(base, cli, tmp_path, case):
    edit, digest, reader, needles = PARTITIONS[case]
    run = tmp_path / "run"
    shutil.copytree(base, run)
    _forge_partition(run, edit, digest)
    _refused(cli, run, reader, "partition.json", *needles, tmp=tmp_path)


@pytest.mark.parametrize("reader", ["landscape", "report", "prune"])
def test_forged_partition_is_refused_by_readers_that_do_not_use_it(base, cli, tmp_path, reader):
    # landscape on the test data, report and prune never read a client's indices, but a forged partition means the
    # run's files cannot be trusted: each refuses it (and prune deletes nothing)
    run = tmp_path / "run"
    shutil.copytree(base, run)
    _forge_partition(run, _share, digest=True)
    _refused(cli, run, reader, "partition.json", "held by both client 0 and client 1", tmp=tmp_path)


# -- an index moved between clients: every structural check passes, the split the config draws does not ----------
def _move_index(run: Path, same_label: bool = False, counts: bool = True) -> None:
    """Client 0's last index moved to client 1 (or, ``same_label``, swapped with one of client 1's of the same
    label: sizes and label counts unchanged), run.json's sizes, ``counts`` (label counts) and digest made to match."""
    from flatfl.config import DataConfig
    from flatfl.data import load_dataset
    from flatfl.partition import label_counts

    info = json.loads((run / ckpt.RUN_JSON).read_text())
    data = load_dataset(DataConfig(**info["config"]["data"]))
    labels = data.train.y.numpy()
    obj = json.loads((run / ckpt.PARTITION_JSON).read_text())
    a, b = obj["clients"][0], obj["clients"][1]
    if same_label:
        j = next(j for j, i in enumerate(b) if labels[i] == labels[a[-1]])
        a[-1], b[j] = b[j], a[-1]
    else:
        b.append(a.pop())
    raw = ckpt.partition_json_bytes(obj)
    (run / ckpt.PARTITION_JSON).write_bytes(raw)
    info["partition_sha256"] = ckpt.sha256_hex(raw)
    info["partition"]["sizes"] = [len(c) for c in obj["clients"]]
    if counts:
        parts = [np.asarray(c) for c in obj["clients"]]
        info["partition"]["label_counts"] = label_counts(parts, labels, data.num_classes).tolist()
    (run / ckpt.RUN_JSON).write_text(json.dumps(info))


MOVES = {  # (same_label, label counts fixed too, what the refusal names)
    "moved": (False, False, "client 0's labels per class are"),
    "moved, counts fixed": (False, True, "client 0 holds 162 indices where the split run.json's config draws"),
    "swapped, same label": (True, True, "client 0 holds index"),
}


@pytest.mark.parametrize("reader", ["resume", "client", "landscape", "report"])
@pytest.mark.parametrize("case", list(MOVES))
def test_an_index_moved_between_clients_is_refused(base, cli, tmp_path, case, reader):
    # F3 (#27): sizes and digest edited to match, the forged split was trained on (--resume) and analysed
    same_label, counts, needle = MOVES[case]
    run = tmp_path / "run"
    shutil.copytree(base, run)
    _move_index(run, same_label, counts)
    _refused(cli, run, reader, "partition.json", needle, tmp=tmp_path)


def test_the_redraw_is_skipped_for_a_run_of_another_numpy(base, cli, tmp_path):
    # numpy's Generator promises no stream across versions: a run drawn by another numpy is not refused for that
    # (its label counts are still checked), and the untouched run is accepted by the same reader
    run = tmp_path / "run"
    shutil.copytree(base, run)
    code, _, err = cli("landscape", "--ckpt", ckpt.round_path(run, ROUNDS), *LANDSCAPE, "--data", "client:0")
    assert code == 0, err
    _move_index(run, same_label=True)
    info = json.loads((run / ckpt.RUN_JSON).read_text())
    info["versions"]["numpy"] = "0.0.1"
    (run / ckpt.RUN_JSON).write_text(json.dumps(info))
    code, _, err = cli("landscape", "--ckpt", ckpt.round_path(run, ROUNDS), *LANDSCAPE, "--data", "client:0")
    assert code == 0, err


def test_flower_resume_refuses_an_index_moved_between_clients(tmp_path):
    from flatfl.errors import UserError
    from tests.test_flower import flower_run

    config = {"algo": "fedavg", "clients": 2, "frac": 1.0, "rounds": 1, "local-epochs": 1}
    run = tmp_path / "run"
    flower_run(config, run, nodes=2)
    _move_index(run, counts=True)
    before = _files(run)
    with pytest.raises(UserError, match="partition.json: client 0 holds .* indices where the split run.json's config"):
        flower_run(config | {"rounds": 2, "resume": True}, run, nodes=2)
    assert _files(run) == before


# -- run.json: config edited (alone, with its identity recomputed, or together with model) --------------------------
def _edit_run_json(run: Path, edit: Callable[[dict], None], identity: bool = False) -> None:
    info = json.loads((run / ckpt.RUN_JSON).read_text())
    edit(info)
    if identity:
        info["identity"] = identity_of(info["config"])
    (run / ckpt.RUN_JSON).write_text(json.dumps(info))


def _lr(v):
    def edit(info: dict) -> None:
        info["config"]["local"]["lr"] = v

    return edit


def _split_seed(info: dict) -> None:
    info["config"]["data"]["split_seed"] = 1


def _model_kwargs(info: dict) -> None:
    info["config"]["model_kwargs"]["num_classes"] = 11
    info["model"]["kwargs"]["num_classes"] = 11


def _model_only(info: dict) -> None:
    info["model"]["name"] = "cnn"


def _per_round(info: dict) -> None:
    info["clients_per_round"] = 5


def _preset(info: dict) -> None:
    info["config"]["preset"] = "bogus"


def _preset_to(name: str | None, record: bool = False) -> Callable[[dict], None]:
    def edit(info: dict) -> None:
        info["config"]["preset"] = name
        if record:
            info["preset"] = {"name": name, "values": {}}

    return edit


RUN_JSONS = {
    "preset unknown": (_preset, True, "resume", ["config.preset is 'bogus', not a preset"]),
    # a valid preset's name on a run trained without one (its record forged too): the round files disagree
    "preset added": (_preset_to("paper"), False, "resume", ["config.preset is 'paper'", "trained with None"]),
    "preset and record": (_preset_to("paper", True), False, "landscape", ["config.preset is 'paper'", "with None"]),
    "lr edited": (_lr(0.5), False, "resume", ["config.local.lr is 0.5", "round_0000.safetensors was trained with"]),
    "lr edited, digest fixed": (_lr(0.5), True, "resume", ["config.local.lr is 0.5", "trained with 0.05"]),
    "lr text": (_lr("0.05"), False, "landscape", ["config.local.lr is '0.05', not a finite number"]),
    "lr nan": (_lr(float("nan")), True, "landscape", ["config.local.lr is nan, not a finite number"]),
    "split_seed": (_split_seed, True, "landscape", ["config.data.split_seed is 1", "trained with 0"]),
    "model kwargs": (_model_kwargs, True, "resume", ["config.model_kwargs.num_classes is 11", "trained with 10"]),
    "model record": (_model_only, False, "landscape", ["model.name is 'cnn', its config says 'smallcnn'"]),
    "clients_per_round": (_per_round, False, "landscape", ["clients_per_round is 5", "gives 3"]),
}


@pytest.mark.parametrize("case", list(RUN_JSONS))
def test_edited_run_json_is_refused_naming_the_field(base, cli, tmp_path, case):
    edit, identity, reader, needles = RUN_JSONS[case]
    run = tmp_path / "run"
    shutil.copytree(base, run)
    _edit_run_json(run, edit, identity)
    err = _refused(cli, run, reader, "run.json", *needles, tmp=tmp_path)
    assert "--overwrite" not in err and "same command again" not in err


@pytest.mark.parametrize("record", [False, True])
@pytest.mark.parametrize("reader", ["resume", "landscape"])
def test_preset_edited_to_another_valid_name_is_refused(base, cli, tmp_path, record, reader):
    # #27: a run trained with --preset reference, its config.preset (and its preset record) edited to 'paper':
    # the preset is a label the identity digest leaves out, so only run.json's record and the round files tell
    run = tmp_path / "run"
    assert cli("train", *TINY, "--preset", "reference", "--rounds", str(ROUNDS), "--out", run)[0] == 0
    _edit_run_json(run, _preset_to("paper", record))
    needle = "trained with 'reference'" if record else "its preset record names 'reference'"
    _refused(cli, run, reader, "run.json: config.preset is 'paper'", needle, tmp=tmp_path)


def test_round_metadata_edited_names_the_round_file(base, cli, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(base, run)
    path = ckpt.round_path(run, 1)
    tensors, meta = ckpt.load_tensors(path)
    meta["config"]["local"]["lr"] = 0.5
    ckpt.save_tensors(path, tensors, meta)
    needle = "config.local.lr is 0.5, run.json says 0.05"
    _refused(cli, run, "landscape", "round_0001.safetensors", needle, tmp=tmp_path)


def test_metrics_round_twice_with_different_values_refused_by_report(base, cli, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(base, run)
    lines = (run / ckpt.METRICS_FILE).read_text().splitlines(keepends=True)
    other = json.loads(lines[1]) | {"test_acc": 0.99}
    (run / ckpt.METRICS_FILE).write_text("".join([*lines[:2], json.dumps(other) + "\n", *lines[2:]]))
    _refused(cli, run, "report", "metrics.jsonl: round 1 is out of order or recorded twice", tmp=tmp_path)
    _refused(cli, run, "resume", "metrics.jsonl: round 1 is out of order or recorded twice", tmp=tmp_path)


@pytest.mark.parametrize(("key", "value"), [("train_loss", "abc"), ("test_acc", True), ("client_train_loss", ["x"])])
def test_metrics_value_that_is_not_a_number_is_refused(base, cli, tmp_path, key, value):
    run = tmp_path / "run"
    shutil.copytree(base, run)
    lines = (run / ckpt.METRICS_FILE).read_text().splitlines(keepends=True)
    lines[1] = json.dumps(json.loads(lines[1]) | {key: value}) + "\n"
    (run / ckpt.METRICS_FILE).write_text("".join(lines))
    _refused(cli, run, "report", f"metrics.jsonl: line 2 (round 1): {key} is", "not a number", tmp=tmp_path)


@pytest.mark.parametrize("damage", ["empty", "a folder", "mislabelled"])
def test_prune_deletes_nothing_when_a_round_it_keeps_is_damaged(base, cli, tmp_path, damage):
    # prune keeps the last round whatever --keep says; were that file damaged, deleting the others would lose the
    # run's last readable models
    run = tmp_path / "run"
    shutil.copytree(base, run)
    last = ckpt.round_path(run, ROUNDS)
    if damage == "empty":
        last.write_bytes(b"")
    elif damage == "a folder":
        last.unlink()
        last.mkdir()
    else:  # round 1's file under a later round's name: the highest round, so the one kept as 'the last round'
        last = ckpt.round_path(run, ROUNDS + 5)
        shutil.copy(ckpt.round_path(run, 1), last)
    rounds = sorted(p.name for p in run.glob("round_*"))
    code, _, err = cli("prune", run, "--keep", "0")
    assert code == 2 and err.count("\n") == 1 and last.name in err and "deletes nothing" in err, err
    assert sorted(p.name for p in run.glob("round_*")) == rounds


# -- tensors of the wrong kind ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.float16])
@pytest.mark.parametrize("reader", ["landscape", "resume", "report"])
def test_round_file_of_the_wrong_dtype_is_refused(base, cli, tmp_path, dtype, reader):
    run = tmp_path / "run"
    shutil.copytree(base, run)
    path = ckpt.round_path(run, ROUNDS)
    tensors, meta = ckpt.load_tensors(path)
    ckpt.save_tensors(path, {k: v.to(dtype) for k, v in tensors.items()}, meta)
    name = str(dtype).removeprefix("torch.")
    _refused(cli, run, reader, f"round_000{ROUNDS}.safetensors: tensor conv1.weight is {name}", "float32", tmp=tmp_path)


def test_float64_round_file_converts_exactly_and_is_accepted(base, tmp_path):
    from flatfl.runs.run import Run

    run = tmp_path / "run"
    shutil.copytree(base, run)
    path = ckpt.round_path(run, ROUNDS)
    tensors, meta = ckpt.load_tensors(path)
    ckpt.save_tensors(path, {k: v.double() for k, v in tensors.items()}, meta)
    model = Run.open(run).model(ROUNDS)
    for k, v in model.state_dict().items():
        assert v.dtype == torch.float32 and torch.equal(v, tensors[k]), k
    inexact = {k: v.double() + 1e-12 for k, v in tensors.items()}  # not representable in float32
    ckpt.save_tensors(path, inexact, meta)
    with pytest.raises(Exception, match="is float64"):
        Run.open(run).model(ROUNDS)


# -- fields no digest covers, and headers safetensors itself would refuse (fresh hostile pass) -----------------------
def _raw_metadata(path: Path, value: object) -> None:
    """``path``'s header with the flatfl metadata entry replaced by a raw JSON value (safetensors writes text only:
    an edited header)."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n]) | {"__metadata__": {"flatfl": value}}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + n :])


@pytest.mark.parametrize("value", [5, [1], {"round": 1}], ids=["number", "list", "object"])
@pytest.mark.parametrize("reader", ["landscape", "report", "resume", "prune"])
def test_round_header_metadata_that_is_not_text_is_one_line(base, cli, tmp_path, value, reader):
    run = tmp_path / "run"
    shutil.copytree(base, run)
    _raw_metadata(ckpt.round_path(run, ROUNDS), value)
    _refused(cli, run, reader, f"round_000{ROUNDS}.safetensors", tmp=tmp_path)


@pytest.mark.parametrize("damage", ["cut", "metadata not text"])
def test_prune_with_a_damaged_state_file_is_one_line_and_deletes_nothing(base, cli, tmp_path, damage):
    run = tmp_path / "run"
    shutil.copytree(base, run)
    state = run / ckpt.STATE_FILE
    if damage == "cut":
        state.write_bytes(state.read_bytes()[:100])
    else:
        _raw_metadata(state, {"round": ROUNDS})
    _refused(cli, run, "prune", "state.safetensors: unreadable", "deletes nothing", tmp=tmp_path)


def _info(path: str, value: object) -> Callable[[dict], None]:
    def edit(info: dict) -> None:
        *parents, key = path.split(".")
        d = info
        for p in parents:
            d = d[p]
        d[key] = value

    return edit


# run.json fields outside the identity digest (so a digest check does not see the edit): their types
UNDIGESTED = {
    "storage a string": ("storage", "abc", "resume", "'storage' is a JSON str"),
    "storage save_every inf": ("storage.save_every", float("inf"), "resume", "save_every is inf"),
    "storage save_rounds text": ("storage.save_rounds", "123", "resume", "save_rounds is '123'"),
    "storage incremental text": ("storage.incremental_state", "no", "resume", "incremental_state is 'no'"),
    "state_keys a number": ("model.state_keys", 5, "landscape", "model.state_keys is not a list"),
    "state_keys a number, report": ("model.state_keys", 5, "report", "model.state_keys is not a list"),
    "parameters of numbers": ("model.parameters", [1, 2], "landscape", "model.parameters is not a list"),
    "data_root a number": ("config.data.data_root", 5, "landscape", "config.data.data_root is 5, not a path"),
    "data_root a list, report": ("config.data.data_root", ["a"], "report", "config.data.data_root is ['a']"),
    "partition_file a number": ("config.data.partition_file", 5, "resume", "config.data.partition_file is 5"),
}


@pytest.mark.parametrize("case", list(UNDIGESTED))
def test_run_json_fields_outside_the_digest_of_the_wrong_type_are_one_line(base, cli, tmp_path, case):
    field, value, reader, needle = UNDIGESTED[case]
    run = tmp_path / "run"
    shutil.copytree(base, run)
    _edit_run_json(run, _info(field, value))
    _refused(cli, run, reader, "run.json", needle, tmp=tmp_path)


@pytest.fixture(scope="module")
def fedmut_base(tmp_path_factory):
    from flatfl.cli import main

    out = tmp_path_factory.mktemp("forged-state") / "run"
    args = ["train", *TINY, "--algo", "fedmut", "--rounds", str(ROUNDS), "--save-clients", "--out", str(out)]
    assert main(args) == 0
    return out


def _edit_state(run: Path, edit: Callable[[dict], dict]) -> None:
    path = run / ckpt.STATE_FILE
    tensors, meta = ckpt.load_tensors(path)
    ckpt.save_tensors(path, edit(tensors), meta)


STATES = {
    "int64 copy of the model": (lambda t: {k: v.to(torch.int64) for k, v in t.items()}, "is int64, the model holds"),
    "float16 copy of the model": (lambda t: {k: v.half() for k, v in t.items()}, "is float16, the model holds"),
    "previous model dropped": (lambda t: {}, "no prev_global/ tensor"),
}


@pytest.mark.parametrize("case", list(STATES))
def test_forged_algorithm_state_is_refused_on_resume(fedmut_base, cli, tmp_path, case):
    # FedMut's state is the previous global model: an int64 or float16 copy was used as it is (the resumed run's
    # mutations changed), and one without its tensors stopped with a KeyError after run.json was rewritten
    edit, needle = STATES[case]
    run = tmp_path / "run"
    shutil.copytree(fedmut_base, run)
    _edit_state(run, edit)
    _refused(cli, run, "resume", "state.safetensors", needle, tmp=tmp_path)


@pytest.mark.parametrize(
    ("key", "value", "what"),
    [
        ("test_acc", 7.0, "an accuracy in [0, 1]"),
        ("test_loss", -5.0, "a loss >= 0"),
        ("test_acc", -(10**400), "not a number"),
        ("test_loss", 10**400, "not a number"),  # >= 0, but no float training records it; float() overflows
    ],  # fmt: skip
)
def test_metrics_values_no_run_can_record_are_refused(base, cli, tmp_path, key, value, what):
    # averaged and matched on as they were (an accuracy of 7, a negative cross-entropy)
    run = tmp_path / "run"
    shutil.copytree(base, run)
    lines = (run / ckpt.METRICS_FILE).read_text().splitlines(keepends=True)
    lines[1] = json.dumps(json.loads(lines[1]) | {key: value}) + "\n"
    (run / ckpt.METRICS_FILE).write_text("".join(lines))
    _refused(cli, run, "report", f"metrics.jsonl: line 2 (round 1): {key} is", what, tmp=tmp_path)


def test_diverged_json_that_is_not_an_object_is_a_diverged_run_not_a_traceback(base, cli, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(base, run)
    (run / ckpt.DIVERGED_JSON).write_text("[1]")
    code, out, err = cli("report", run, "--out", tmp_path / "r", *REPORT)
    assert code == 2 and "Traceback" not in err and "every run diverged" in err, err
    assert "diverged.json exists (unreadable)" in out + err


def test_weights_so_large_the_surface_plane_overflows_are_one_line(fedmut_base, cli, tmp_path):
    # finite float32 weights near its largest value: the filter-normalised directions overflow to inf, and the
    # least-squares coordinates of the client models (markers, --save-clients) hit a LAPACK internal assert
    run = tmp_path / "run"
    shutil.copytree(fedmut_base, run)
    path = ckpt.round_path(run, ROUNDS)
    tensors, meta = ckpt.load_tensors(path)
    ckpt.save_tensors(path, {k: v * 0 + 3e38 for k, v in tensors.items()}, meta)
    _refused(cli, run, "landscape", "not finite", tmp=tmp_path)


def test_an_empty_metrics_file_is_refused_by_report(base, cli, tmp_path):
    # hostile pass: an empty metrics.jsonl gave a report (rc 0) where a missing one is refused
    run = tmp_path / "run"
    shutil.copytree(base, run)
    (run / ckpt.METRICS_FILE).write_text("")
    _refused(cli, run, "report", "metrics.jsonl: holds no line for round", tmp=tmp_path)


@pytest.mark.parametrize(("flag", "value", "needle"), [("--slices", "100000000", "0 to 10000"),
                                                        ("--grid", "5000", "1 to 1000")])  # fmt: skip
def test_report_work_flags_are_bounded(base, cli, tmp_path, flag, value, needle):
    # hostile pass: --slices 100000000 ran without a bound (each direction is a full pass per point)
    code, _, err = cli("report", base, "--out", tmp_path / "r", flag, value)
    assert code == 2 and err.count("\n") == 1 and flag in err and needle in err, err


def test_report_on_a_folder_name_that_is_not_utf8_names_it(base, cli, tmp_path):
    import os

    odd = Path(os.fsdecode(bytes(tmp_path) + b"/run-\xff"))
    shutil.copytree(base, odd)
    code, _, err = cli("report", odd, "--out", tmp_path / "r", *REPORT)
    assert code == 2 and err.count("\n") == 1 and "run-\\udcff" in err and "not UTF-8" in err, err
    assert not (tmp_path / "r").exists()
