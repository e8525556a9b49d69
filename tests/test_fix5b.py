"""fix5b (issue #27's last hostile pass): a partition file bound to its training set, bounded loop counts of
train, --data-root refused on embedded data, and landscape options that would be ignored refused."""

from __future__ import annotations

import hashlib
import json

import pytest

from flatfl import checkpoint as ckpt
from flatfl.errors import UserError
from tests.test_partition_file import BASE


def _one_line(err: str) -> str:
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# -- 1. partition.json records the training set its indices refer to ------------------------------------------------
def test_partition_json_records_its_training_set(tiny):
    run = tiny("a", rounds=1)
    split = json.loads((run / "partition.json").read_text())["split"]
    info = ckpt.read_run_json(run)
    assert split["dataset"] == "digits" and split["split_seed"] == 0 and split["test_frac"] == 0.2
    assert split["num_train"] == info["dataset"]["n_train"] == 1438


def test_partition_file_with_another_split_seed_is_refused(cli, tiny, tmp_path):
    run = tiny("a", rounds=1)
    out = tmp_path / "b"
    code, _, err = cli("train", *BASE, "--rounds", "1", "--partition-file", run / "partition.json",
                       "--split-seed", "5", "--out", out)  # fmt: skip
    line = _one_line(err)
    assert code == 2 and "partition.json" in line and "--split-seed" in line and "split_seed 0" in line
    assert not out.exists()
    code, _, err = cli("train", *BASE, "--rounds", "1", "--partition-file", run / "partition.json",
                       "--test-frac", "0.3", "--out", out)  # fmt: skip
    assert code == 2 and "--test-frac" in _one_line(err)


def test_edited_training_labels_digest_is_refused(cli, tiny, tmp_path):
    run = tiny("a", rounds=1)
    doc = json.loads((run / "partition.json").read_text())
    doc["split"]["train_labels_sha256"] = "0" * 64
    f = tmp_path / "p.json"
    f.write_text(json.dumps(doc))
    code, _, err = cli("train", *BASE, "--rounds", "1", "--partition-file", f, "--out", tmp_path / "b")
    line = _one_line(err)
    assert code == 2 and "train_labels_sha256" in line and str(f) in line


def _make_old(run):
    """The run as flatfl wrote it before partition.json recorded its split (run.json's digest made to match)."""
    doc = json.loads((run / "partition.json").read_text())
    del doc["split"]
    raw = ckpt.partition_json_bytes(doc)
    (run / "partition.json").write_bytes(raw)
    info = ckpt.read_run_json(run)
    info["partition_sha256"] = hashlib.sha256(raw).hexdigest()
    (run / "run.json").write_text(json.dumps(info))
    return raw


def test_an_old_partition_json_is_checked_against_the_run_json_beside_it(cli, tiny, tmp_path):
    run = tiny("a", rounds=1)
    raw = _make_old(run)
    code, _, err = cli("train", *BASE, "--rounds", "1", "--partition-file", run / "partition.json",
                       "--split-seed", "5", "--out", tmp_path / "b")  # fmt: skip
    assert code == 2 and "--split-seed" in _one_line(err)
    code, _, err = cli("train", *BASE, "--rounds", "1", "--partition-file", run / "partition.json",
                       "--out", tmp_path / "c")  # fmt: skip
    assert code == 0 and "note:" not in err, err
    # copied away from its run.json: nothing to check against but the index range -- a note says so
    lone = tmp_path / "lone.json"
    lone.write_bytes(raw)
    code, _, err = cli("train", *BASE, "--rounds", "1", "--partition-file", lone, "--split-seed", "5",
                       "--out", tmp_path / "d")  # fmt: skip
    assert code == 0
    assert "note:" in err and "could not be verified" in err and str(lone) in err


def test_old_run_json_label_counts_catch_an_unrecorded_split_change(cli, tiny, tmp_path):
    """run.json's config edited to agree, its label counts do not: the indices hold other labels."""
    run = tiny("a", rounds=1)
    _make_old(run)
    info = ckpt.read_run_json(run)
    info["partition"]["label_counts"][0][0] += 1
    (run / "run.json").write_text(json.dumps(info))
    code, _, err = cli("train", *BASE, "--rounds", "1", "--partition-file", run / "partition.json",
                       "--out", tmp_path / "b")  # fmt: skip
    line = _one_line(err)
    assert code == 2 and "client 0" in line and "label_counts" in line


# -- 2. train's loop counts have stated bounds ---------------------------------------------------------------------
# flag -> (the most it takes, the algorithm whose flag it is)
LOOP_FLAGS = {
    "rounds": (1_000_000, "fedavg"),
    "local-epochs": (100_000, "fedavg"),
    "mut-bound": (1_000_000, "fedmut"),
    "swa-start": (1_000_000, "fedswa"),
    "swa-cycle": (1_000_000, "fedswa"),
    "distill-steps": (100_000, "feddf"),
    "gen-epochs": (100_000, "fedgen"),
    "gen-iters": (100_000, "fedgen"),
    "aux-pretrain-steps": (100_000, "fedaux"),
    "save-clients": (1_000_000, "fedavg"),
}


@pytest.mark.parametrize("name", sorted(LOOP_FLAGS))
def test_loop_counts_are_bounded_in_the_config_parser(name):
    from flatfl.run_flags import parse_flags

    most, _ = LOOP_FLAGS[name]
    assert parse_flags({name: str(most)})[name.replace("-", "_")] == most
    for bad in (most + 1, 2**70):
        with pytest.raises(UserError, match=f"--{name}"):
            parse_flags({name: str(bad)})


@pytest.mark.parametrize("name", sorted(LOOP_FLAGS))
def test_a_loop_count_of_2_70_is_one_line_and_its_bound_is_in_help(cli, tmp_path, name):
    most, algo = LOOP_FLAGS[name]
    code, out, _ = cli("train", "--help")
    assert code == 0
    entry = " ".join(out[out.index(f"\n  --{name} ") :].split())  # the option's own help, not the usage line
    assert f"at most {most:,}" in entry[:400], entry[:400]
    code, _, err = cli("train", *BASE, "--algo", algo, f"--{name}", str(2**70), "--out", tmp_path / "r")
    line = _one_line(err)
    assert code == 2 and f"--{name}" in line and f"{most:,}" in line
    assert not (tmp_path / "r").exists()


def test_save_every_and_resume_rounds_are_bounded(cli, tiny, tmp_path):
    code, _, err = cli("train", *BASE, "--save-every", str(2**70), "--out", tmp_path / "r")
    assert code == 2 and "--save-every" in _one_line(err)
    run = tiny("a", rounds=1)
    code, _, err = cli("train", "--resume", run, "--rounds", "1000001")
    assert code == 2 and "--rounds" in _one_line(err) and "1,000,000" in err


# -- 3. --data-root on the embedded digits is refused, as --download is -------------------------------------------
@pytest.mark.parametrize("root", ["/dev/null", "data", "somewhere/else"])
def test_data_root_on_embedded_digits_is_refused(cli, tmp_path, root):
    code, _, err = cli("train", *BASE, "--data-root", root, "--out", tmp_path / "r")
    line = _one_line(err)
    assert code == 2 and f"--data-root {root}" in line and "embedded" in line
    assert not (tmp_path / "r").exists()
    code, _, err = cli("partition", "--dataset", "digits", "--data-root", root, "--plot", tmp_path / "p.png")
    assert code == 2 and "--data-root" in _one_line(err)
    assert not (tmp_path / "p.png").exists()


def test_data_root_on_resuming_a_digits_run_is_refused(cli, tiny):
    run = tiny("a", rounds=1)
    code, _, err = cli("train", "--resume", run, "--rounds", "2", "--data-root", "/dev/null")
    assert code == 2 and "--data-root" in _one_line(err)
    assert ckpt.list_rounds(run) == [0, 1]


# -- 4. landscape options that would be ignored are refused in one line naming both flags ---------------------------
IGNORED = [
    ("--hessian --model-kwargs '{\"a\":1}'", "--model-kwargs", "--model"),
    ("--sharpness epsilon --m 10", "--m", "--sharpness sam"),
    ("--sharpness epsilon --rho 0.1", "--rho", "--sharpness sam"),
    ("--sharpness sam --sigma 0.1", "--sigma", "--sharpness average_adaptive"),
    ("--sharpness sam --sharpness-samples 3", "--sharpness-samples", "--sharpness average_adaptive"),
    ("--sharpness average_isotropic --sharpness-steps 3", "--sharpness-steps", "--sharpness sam"),
    ("--sharpness sam --eps 0.01", "--eps", "--sharpness epsilon"),
    ("--hessian --data-tol 0.1", "--data-tol", "--samples auto"),
    ("--surface 1d --grid 3 --levels 5", "--levels", "--surface 2d"),
    ("--surface 1d --grid 3 --zrange 0,1", "--zrange", "--surface 2d"),
    ("--surface 1d --grid 3 --bn-reestimate 2", "--bn-reestimate", "BatchNorm"),
    ("--federated --federated-clients 1,1", "--federated-clients 1,1", "twice"),
    ("--federated --federated-clients 1,,2", "--federated-clients 1,,2", "empty"),
]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    from flatfl.cli import main
    from tests.conftest import TINY

    out = tmp_path_factory.mktemp("land") / "run"
    assert main(["train", *map(str, TINY), "--algo", "fedavg", "--rounds", "1", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize(("flags", "flag", "needs"), IGNORED)
def test_landscape_option_that_would_be_ignored_is_refused(cli, base_run, tmp_path, flags, flag, needs):
    import shlex

    out = tmp_path / "L"
    code, _, err = cli("landscape", "--ckpt", base_run / "round_0001.safetensors", "--samples", "40", "--out", out,
                       *shlex.split(flags))  # fmt: skip
    line = _one_line(err)
    assert code == 2 and flag in line and needs in line, line
    assert not out.exists() or not any(out.iterdir())


def test_landscape_options_with_what_they_need_still_run(cli, base_run, tmp_path):
    ckpt_file = base_run / "round_0001.safetensors"
    code, _, err = cli("landscape", "--ckpt", ckpt_file, "--samples", "40", "--out", tmp_path / "a",
                       "--sharpness", "sam,average_isotropic", "--m", "20", "--sharpness-steps", "2",
                       "--sharpness-samples", "2", "--federated", "--federated-clients", "0,2")  # fmt: skip
    assert code == 0, err
    # --to means --surface 1d (the help): the interpolation line is computed alongside --hessian
    code, _, err = cli("landscape", "--ckpt", ckpt_file, "--samples", "40", "--out", tmp_path / "b", "--hessian",
                       "--to", base_run / "round_0000.safetensors", "--grid", "3")  # fmt: skip
    assert code == 0, err
    kind = json.loads((tmp_path / "b" / "surface.json").read_text())
    assert "interp" in json.dumps(kind)


def test_a_setting_that_leaves_the_training_labels_unchanged_is_free(tmp_path):
    """CIFAR's official split ignores --test-frac: same dataset, size and label digest -> the same training set."""
    import numpy as np

    from flatfl.config import DataConfig
    from flatfl.partition_file import check_split, read_partition_file, split_record

    labels = np.arange(30) % 10
    f = tmp_path / "p.json"
    rec = split_record(DataConfig(dataset="cifar10", test_frac=0.2), labels)
    f.write_text(json.dumps({"clients": [[0, 1], [2, 3]], "split": rec}))
    pf = read_partition_file(f)
    assert check_split(pf, f, DataConfig(dataset="cifar10", test_frac=0.3), labels) is None
    with pytest.raises(UserError, match="--test-frac"):  # other labels: the differing setting is named
        check_split(pf, f, DataConfig(dataset="cifar10", test_frac=0.3), labels[::-1].copy())
