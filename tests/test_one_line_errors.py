"""Cases that used to end in a traceback: one line naming the file or flag, exit 2; Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
import torch

from flatfl import checkpoint as ckpt
from tests.conftest import TINY
from tests.conftest import copy_run as _copy
from tests.test_cli import _one_line_error
from tests.test_faults import flatfl_proc


def _tiny(**values: str) -> list[str]:
    """TINY with some of its values changed (not TINY + the flag again: a flag given twice gets a note line)."""
    flags = {"--" + k.replace("_", "-"): v for k, v in values.items()}
    return [flags.get(TINY[i - 1], v) if i else v for i, v in enumerate(TINY)]


def test_ckpt_directory_names_its_latest_round(cli, run3):
    code, _, err = cli("landscape", "--ckpt", run3, "--hessian")
    _one_line_error(code, err, "is a directory", "round_0003.safetensors")


def test_round_in_file_differs_from_its_name(cli, run3, tmp_path):
    run = _copy(run3, tmp_path)
    tensors, meta = ckpt.load_tensors(run / "round_0003.safetensors")
    ckpt.save_tensors(run / "round_0003.safetensors", tensors, meta | {"round": 1})
    code, _, err = cli("landscape", "--ckpt", run / "round_0003.safetensors", "--hessian")
    _one_line_error(code, err, "round_0003.safetensors", "metadata say round 1, its name round 3")


def test_non_finite_checkpoint_is_named(cli, run3, tmp_path):
    run = _copy(run3, tmp_path)
    tensors, meta = ckpt.load_tensors(run / "round_0003.safetensors")
    key = sorted(tensors)[1]
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] = float("nan")
    ckpt.save_tensors(run / "round_0003.safetensors", tensors, meta)
    code, _, err = cli("landscape", "--ckpt", run / "round_0003.safetensors", "--hessian")
    _one_line_error(code, err, "round_0003.safetensors", key, "NaN or Inf")
    code, _, err = cli("train", "--resume", run, "--rounds", "4")
    _one_line_error(code, err, "round_0003.safetensors", key, "NaN or Inf")
    assert "last finite" not in err


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--hessian", "--topk", "20000", "--max-vectors", "20000"], ["--topk 20000", "parameters"]),
        (["--surface", "1d", "--grid", "1"], ["--grid 1", "at least 2"]),
        (["--sharpness", "sam", "--m", "51"], ["--m 51", "at most the 50 analysed samples"]),
        (["--surface", "2d", "--grid", "100000000"], ["--grid 100000000", "GiB"]),
        (["--surface", "1d", "--surface-dirs", "interp", "--to", "mutant:\u00b2"], ["mutant:\u00b2"]),
    ],
)
def test_landscape_flags_out_of_range(cli, run3, args, needles):
    code, _, err = cli("landscape", "--ckpt", run3 / "round_0002.safetensors", "--samples", "50", *args)
    _one_line_error(code, err, *needles)


def test_connect_to_a_mutant_of_the_last_round_names_connect(cli, run3):
    last = max(int(p.stem.split("_")[1]) for p in run3.glob("round_*.safetensors"))
    code, _, err = cli("landscape", "--ckpt", run3 / f"round_{last:04d}.safetensors", "--samples", "50",
                       "--connect", "mutant:0")  # fmt: skip
    _one_line_error(code, err, "--connect mutant:0", "the run's last")


def test_cut_surface_cache_is_recomputed(cli, run3, tmp_path):
    args = ["landscape", "--ckpt", run3 / "round_0002.safetensors", "--samples", "50", "--surface", "1d"]
    code, _, err = cli(*args, "--grid", "3", "--out", tmp_path / "s")
    assert code == 0, err
    want = json.loads((tmp_path / "s" / "surface.json").read_text())
    for name in ("surface.npz", "surface.json"):
        path = tmp_path / "s" / name
        path.write_bytes(path.read_bytes()[:20])
        code, _, err = cli(*args, "--grid", "3", "--out", tmp_path / "s")
        assert code == 0, err
        assert json.loads((tmp_path / "s" / "surface.json").read_text())["points"] == want["points"]


def test_filesystem_errors_name_the_path(cli, tmp_path):
    (tmp_path / "file").write_text("x")
    code, _, err = cli("train", *TINY, "--rounds", "1", "--out", tmp_path / "file" / "run")
    _one_line_error(code, err, "file/run", "Not a directory")
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        code, _, err = cli("train", *TINY, "--rounds", "1", "--out", ro)
        _one_line_error(code, err, str(ro), "Permission denied")


def test_sigint_stops_and_prints_the_resume_command(cli, tmp_path):
    out = tmp_path / "run with space"
    proc = flatfl_proc("train", *TINY, "--rounds", "100000", "--out", out)
    deadline = time.monotonic() + 120
    while len(ckpt.read_metrics(out)) < 3 or not (out / ckpt.STATE_FILE).exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].endswith(f"continue with: flatfl train --resume '{out}'"), err
    identity = json.loads((out / ckpt.RUN_JSON).read_text())["identity"]
    done = ckpt.load_state(out, identity)[0]
    assert [r["round"] for r in ckpt.read_metrics(out)] == list(range(done + 1))
    code, _, err = cli("train", "--resume", out, "--rounds", str(done + 1))
    assert code == 0, err
    assert [r["round"] for r in ckpt.read_metrics(out)] == list(range(done + 2))


def test_report_out_is_a_file(cli, run3, tmp_path):
    (tmp_path / "f").write_text("x")
    code, _, err = cli("report", run3, "--out", tmp_path / "f")
    _one_line_error(code, err, "--out", "is a file")


def test_debug_shows_the_traceback(tmp_path):
    from flatfl.cli import main
    from flatfl.errors import UserError

    assert main(["train", "--resume", str(tmp_path / "none")]) == 2
    with pytest.raises(UserError, match="does not exist"):
        main(["--debug", "train", "--resume", str(tmp_path / "none")])


def test_file_size_limit_is_one_line_and_the_run_resumes(cli, tmp_path):
    """A write that the OS refuses (here RLIMIT_FSIZE: EFBIG, as a full disk gives ENOSPC) stops the trainer with
    one line naming the file and the reason; the rounds already committed stay, and --resume finishes the run."""
    import resource

    def limit() -> None:  # in the child: clients files (3 clients x 2 x 55 kB) exceed 150 kB, round files do not
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, 150_000))

    out = tmp_path / "run"
    args = ["train", *TINY, "--algo", "fedmut", "--rounds", "3", "--out", out]
    proc = flatfl_proc(*args, "--save-clients", "2", preexec_fn=limit)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    lines = [s for s in err.strip().splitlines() if s.startswith("flatfl:")]
    assert len(lines) == 1 and "File too large" in lines[0] and "clients_0001" in lines[0], err
    assert "Traceback" not in err
    assert ckpt.list_rounds(out) == [0]  # round 0 committed; round 1 never was (its clients file failed)
    code, _, err = cli("train", "--resume", out, "--rounds", "3")
    assert code == 0, err
    assert ckpt.list_rounds(out) == [0, 1, 2, 3] and [m["round"] for m in ckpt.read_metrics(out)] == [0, 1, 2, 3]


@pytest.mark.parametrize("key", ["identity", "model"])
def test_landscape_on_a_run_json_without_a_key(cli, run3, tmp_path, key):
    out = _copy(run3, tmp_path)
    info = json.loads((out / "run.json").read_text())
    info.pop(key)
    (out / "run.json").write_text(json.dumps(info))
    code, _, err = cli("landscape", "--ckpt", out / "round_0003.safetensors", "--hessian", "--samples", "50")
    _one_line_error(code, err, "run.json", key)


@pytest.mark.parametrize("key", ["round", "algo", "algo_state", "run_identity"])
def test_state_metadata_without_a_key(cli, run3, tmp_path, key):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    out = _copy(run3, tmp_path)
    path = out / ckpt.STATE_FILE
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    inner = json.loads(meta[ckpt.META_KEY])
    inner.pop(key)
    meta[ckpt.META_KEY] = json.dumps(inner)
    save_file(load_file(str(path)), str(path), metadata=meta)
    code, _, err = cli("train", "--resume", out, "--rounds", "4", "--no-progress")
    _one_line_error(code, err, "state.safetensors")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--no-match", "--match-loss", "2"], "--no-match"),
        (
            ["--no-hessian", "--trace-matvecs", "0", "--sharpness", "none", "--slices", "0", "--no-surface"]
            + ["--no-spread", "--no-relative-flatness", "--no-fisher-rao"],
            "nothing to measure",
        ),
        (["--grid", "1"], "--grid 1"),
        (["--sharpness", "sam,adaptive_l2,sam"], "sam given twice"),
        (["--widths", "0.1,0.1"], "a threshold given twice"),
        (["--at-rounds", "2,2"], "a round given twice"),
        (["--label"], "given twice ('a', 'b')"),
    ],
)
def test_report_flags_that_contradict_or_measure_nothing(cli, run3, tmp_path, args, needle):
    if args == ["--label"]:  # one run named twice
        args = ["--label", f"{run3}=a", "--label", f"{run3}=b"]
    code, _, err = cli("report", run3, "--out", tmp_path / "r", *args)
    _one_line_error(code, err, needle)
    assert not (tmp_path / "r").exists()  # refused before anything is written


# -- damaged files that used to raise a Python error ----------------------------------------------------------------
LANDSCAPE_CHEAP = ["--samples", "20", "--surface", "1d", "--grid", "2"]


@pytest.mark.parametrize("meta", [[1, 2], 3], ids=["list", "number"])
@pytest.mark.parametrize("reader", ["landscape", "resume", "report"])
def test_round_metadata_that_is_not_an_object(cli, run3, tmp_path, meta, reader):
    run = _copy(run3, tmp_path)
    path = run / "round_0003.safetensors"
    tensors, _ = ckpt.load_tensors(path)
    ckpt.save_tensors(path, tensors, meta)  # the flatfl header entry holds a JSON list or number
    args = {
        "landscape": ["landscape", "--ckpt", path, *LANDSCAPE_CHEAP, "--out", tmp_path / "l"],
        "resume": ["train", "--resume", run, "--rounds", "4"],
        "report": ["report", run, "--out", tmp_path / "r", "--no-hessian", "--trace-matvecs", "0"],
    }[reader]
    code, _, err = cli(*args)
    _one_line_error(code, err, "round_0003.safetensors", "metadata are a JSON")


@pytest.mark.parametrize(
    "text",
    ['{"a":' * 100_000 + "1" + "}" * 100_000, '{"format": "flatfl.run", "x": 1' + "0" * 5000 + "}"],
    ids=["nested 100000 deep", "5000-digit integer"],
)
@pytest.mark.parametrize("reader", ["landscape", "resume"])
def test_run_json_that_python_json_cannot_hold(cli, run3, tmp_path, text, reader):
    run = _copy(run3, tmp_path)
    (run / "run.json").write_text(text)
    args = ["train", "--resume", run] if reader == "resume" else ["landscape", "--ckpt", run / "round_0003.safetensors"]
    code, _, err = cli(*args, *(LANDSCAPE_CHEAP if reader == "landscape" else []))
    _one_line_error(code, err, "run.json: not valid JSON")


# -- user factories: one line naming the flag, the factory and the exception; --debug shows the user's traceback
TASK = """
import sys
import torch


def net():
    from flatfl.models import build_model
    return build_model("smallcnn", in_channels=1, num_classes=10, image_size=8)


def net_fails():
    raise RuntimeError("no GPU here")


def make():
    raise KeyError("missing")


def mismatched():
    return torch.randn(20, 1, 8, 8), torch.zeros(7, dtype=torch.long)


def none():
    return None


def exit0():
    sys.exit(0)


def exit3():
    sys.exit(3)


class Items(torch.utils.data.Dataset):
    n = 10
    def __len__(self):
        return self.n
    def __getitem__(self, i):
        return torch.zeros(1, 8, 8), 0


class Negative(Items):
    n = -1


class Huge(Items):
    n = 10**15


class Raises(Items):
    def __getitem__(self, i):
        raise IndexError("boom")


def negative():
    return Negative()


def huge():
    return Huge()


def raises():
    return Raises()


def nan_data():
    return torch.full((20, 1, 8, 8), float("nan")), torch.zeros(20, dtype=torch.long)
"""


@pytest.fixture
def task(tmp_path, monkeypatch):
    """A user module ``task_<test>`` of factories, importable from the current folder; its name."""
    name = f"task_{abs(hash(str(tmp_path))) % 10**8}"
    (tmp_path / f"{name}.py").write_text(TASK)
    (tmp_path / f"{name}_broken.py").write_text("def make(:\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


@pytest.mark.parametrize(
    ("model", "data", "needles"),
    [
        ("net", "make", ["--data {t}:make raised KeyError('missing')"]),
        ("net", "none", ["--data {t}:none: gave None"]),
        ("net", "exit0", ["--data {t}:exit0 called sys.exit(0)"]),
        ("net", "exit3", ["--data {t}:exit3 called sys.exit(3)"]),
        ("net", "negative", ["--data {t}:negative", "ValueError"]),
        ("net", "huge", ["--data {t}:huge", "__len__ is 1000000000000000"]),
        ("net", "raises", ["--data {t}:raises", "raised IndexError('boom')"]),
        ("net", "nan_data", ["--data {t}:nan_data", "NaN or Inf"]),
        ("net", "mismatched", ["--data {t}:mismatched", "different numbers of samples", "(20, 1, 8, 8) and (7,)"]),
        ("net_fails", "make", ["--model {t}:net_fails raised RuntimeError('no GPU here')"]),
    ],
)
def test_failing_user_factory_is_one_line(cli, task, tmp_path, model, data, needles):
    code, _, err = cli("landscape", "--model", f"{task}:{model}", "--data", f"{task}:{data}", "--hessian",
                       "--samples", "10", "--out", tmp_path / "o")  # fmt: skip
    _one_line_error(code, err, *[n.format(t=task) for n in needles])


def test_factory_module_with_a_syntax_error_is_one_line(cli, task, tmp_path):
    code, _, err = cli("landscape", "--model", f"{task}:net", "--data", f"{task}_broken:make", "--hessian")
    _one_line_error(code, err, f"--data {task}_broken:make (importing {task}_broken) raised SyntaxError")


def test_debug_shows_the_factory_traceback(task, tmp_path):
    from flatfl.cli import main
    from flatfl.errors import UserError

    with pytest.raises(UserError, match=f"--data {task}:make raised KeyError") as info:
        main(["--debug", "landscape", "--model", f"{task}:net", "--data", f"{task}:make", "--hessian"])
    assert isinstance(info.value.__cause__, KeyError)  # the user's own traceback, chained


def test_non_finite_weights_of_a_foreign_model_are_one_line(cli, task, tmp_path):
    import importlib

    import torch

    sd = importlib.import_module(task).net().state_dict()
    sd["fc2.bias"][0] = float("inf")
    torch.save(sd, tmp_path / "w.pt")
    code, _, err = cli("landscape", "--model", f"{task}:net", "--weights", tmp_path / "w.pt", "--data", "digits",
                       "--hessian", "--samples", "10")  # fmt: skip
    _one_line_error(code, err, "w.pt", "fc2.bias", "NaN or Inf")


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool])  # float16 -> float32 is exact: accepted
def test_foreign_weights_of_the_wrong_dtype_are_refused(cli, task, tmp_path, dtype):
    import importlib

    sd = importlib.import_module(task).net().state_dict()
    torch.save({k: v.to(dtype) for k, v in sd.items()}, tmp_path / "w.pt")
    code, _, err = cli("landscape", "--model", f"{task}:net", "--weights", tmp_path / "w.pt", "--data", "digits",
                       "--hessian", "--samples", "10")  # fmt: skip
    _one_line_error(code, err, "w.pt", "is " + str(dtype).removeprefix("torch."), "the model's is float32")


# -- flags that crashed or were accepted silently -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["train", *TINY, "--seed", str(2**70)], ["--seed", "0 to 4294967295"]),
        (["train", *TINY, "--split-seed", str(2**32)], ["--split-seed", "0 to 4294967295"]),
        (["landscape", "--ckpt", "x.safetensors", "--seed", str(2**70)], ["--seed", "0 to 4294967295"]),
        (["train", *TINY, "--threads", "100000"], ["--threads 100000", "per core"]),
        (["landscape", "--ckpt", "x.safetensors", "--threads", "1000000"], ["--threads 1000000"]),
        (["train", *_tiny(clients="10"), "--algo", "fedcluster", "--clusters", "50"], ["--clusters 50", "10"]),
        (["train", "--dataset", "digits", "--centralised", "--algo", "fedmut"], ["--algo fedmut", "--centralised"]),
        (["train", *_tiny(clients="10", frac="0.1"), "--algo", "fedmut"], ["--frac 0.1", "unmutated"]),
        (["train", "--dataset", "digits", "--centralised", "--algo", "feddf"], ["--algo feddf", "ensemble of one"]),
        (["train", "--dataset", "digits", "--centralised", "--algo", "scaffold"], ["--algo scaffold", "c - c_i"]),
        (["train", "--dataset", "digits", "--centralised", "--algo", "clusamp"], ["--algo clusamp", "at least 2"]),
        (["landscape", "--ckpt", "x.safetensors", "--curvature", "ggn,ggn"], ["--curvature ggn,ggn", "twice"]),
        (["landscape", "--ckpt", "x.safetensors", "--sharpness", "sam,sam"], ["--sharpness sam,sam", "twice"]),
    ],
)
def test_flags_out_of_range_are_refused(cli, tmp_path, args, needles):
    code, _, err = cli(*args, "--out", tmp_path / "o")
    _one_line_error(code, err, *needles)
    assert not (tmp_path / "o").exists()


def test_a_misspelt_digits_split_is_refused_naming_the_splits(cli, task):
    code, _, err = cli("landscape", "--model", f"{task}:net", "--data", "digits:trian", "--hessian")
    _one_line_error(code, err, "digits:trian", "train and test")


def test_digits_test_split_is_still_accepted():
    from flatfl.runs.foreign import data_source

    x, _ = data_source("digits:test")
    assert len(x) == 359  # the embedded test split (20% of 1797)


@pytest.mark.parametrize("flag", ["--seed", "--split-seed"])
def test_seed_range_is_stated_in_help(capsys, flag):
    from flatfl.cli import main

    assert main(["train", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"{flag} " in help_text and "0 to 4294967295 = 2^32 - 1" in help_text


def test_huge_round_ranges_are_cut_at_the_run_not_expanded(cli, run3, tmp_path):
    from flatfl.storage import parse_round_spec

    assert parse_round_spec("1-100000000000,every:5", "--keep", 7) == ((1, 2, 3, 4, 5, 6, 7), 5)
    with pytest.raises(Exception, match="more than 10,000,000 rounds"):
        parse_round_spec("0-10000000000", "--keep")
    run = _copy(run3, tmp_path)
    code, out, err = cli("prune", run, "--keep", "0-10000000000", "--dry-run")
    assert code == 0 and "would delete 0 files" in out, err
    code, _, err = cli("train", *TINY, "--rounds", "2", "--save-every", "0", "--save-rounds", "1-100000000000",
                       "--out", tmp_path / "new")  # fmt: skip
    assert code == 0, err
    assert json.loads((tmp_path / "new" / "run.json").read_text())["storage"]["save_rounds"] == [1, 2]


def test_report_grid_1_is_refused_without_surfaces(cli, run3, tmp_path):
    code, _, err = cli("report", run3, "--out", tmp_path / "r", "--grid", "1", "--no-surface")
    _one_line_error(code, err, "--grid 1")


def test_landscape_under_a_file_size_limit_is_one_line(run3, tmp_path):
    import resource

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    args = ["landscape", "--ckpt", run3 / "round_0003.safetensors", *LANDSCAPE_CHEAP, "--out", tmp_path / "l"]
    proc = flatfl_proc(*args, preexec_fn=limit)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("flatfl: error:"), err
    assert "File too large" in err and "--resume" not in err and f"error: {tmp_path / 'l'}/" in err, err


def test_a_full_disk_names_resume_only_for_a_run_file(tmp_path):
    import errno

    full = OSError(errno.ENOSPC, "No space left on device")
    assert "--resume" in str(ckpt.os_error(tmp_path / "round_0003.safetensors", full))
    assert "--resume" in str(ckpt.os_error(tmp_path / "client_state" / "c_1.safetensors", full))
    for name in ("report.json", "surface.npz", "landscape.json"):
        text = str(ckpt.os_error(tmp_path / name, full))
        assert "--resume" not in text and "No space left on device" in text and "run the command again" in text


@pytest.mark.parametrize("after", [2.0, 6.0], ids=["at 2 s", "at 6 s"])  # after Python set up SIGINT
def test_ctrl_c_in_report_is_a_message_and_130(run3, tmp_path, after):
    proc = flatfl_proc("report", run3, "--out", tmp_path / "r", "--samples", "50", "--no-progress")
    time.sleep(after)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "flatfl: interrupted" and "Traceback" not in err, err


def test_fedswa_schedule_outside_the_run_is_one_line(cli, tmp_path):
    """FedSWA's --swa-start / --swa-cycle beyond --rounds and an --swa-lr above --lr: refused, nothing written."""
    base = ["train", "--dataset", "digits", "--clients", "10", "--frac", "0.5", "--rounds", "2", "--algo", "fedswa"]
    for extra, flag in ((["--swa-start", "100"], "--swa-start"), (["--swa-cycle", "50"], "--swa-cycle"),
                        (["--swa-lr", "1.0", "--lr", "0.01"], "--swa-lr")):  # fmt: skip
        out = tmp_path / flag.strip("-")
        code, _, err = cli(*base, *extra, "--out", out)
        assert code == 2 and err.startswith(f"flatfl: error: {flag} ") and err.count("\n") == 1, err
        assert not out.exists()
