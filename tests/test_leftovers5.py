"""#27's leftovers (session 12, helper left5): counts above the data said, not silently cut; one landscape
invocation's outputs as one set; FedDF's rejected distillation said; partition --plot DIR/, prune RUN/run.json
and a FIFO metrics.jsonl named for what they are."""

from __future__ import annotations

import json
import os
import resource
import signal
from pathlib import Path

from conftest import TINY, copy_run
from test_cli import _one_line_error
from test_faults import LANDSCAPE_CHEAP, REPORT_CHEAP, flatfl_proc

HUGE = str(2**70)


def _landscape(cli, run3, out: Path, *extra: str) -> tuple[int, str, str]:
    return cli("landscape", "--ckpt", run3 / "round_0003.safetensors", "--out", out, *extra)


# -- 1. counts above what is there: all of it, said on stderr and recorded ------------------------------------
def test_landscape_samples_above_the_data_take_all_of_it_and_say_so(cli, run3, tmp_path):
    code, _, err = _landscape(cli, run3, tmp_path / "l", "--samples", HUGE, "--sharpness", "sam")
    assert code == 0, err
    assert f"note: --samples {HUGE}: the train selection holds" in err, err
    data = json.loads((tmp_path / "l" / "landscape.json").read_text())["data"]
    assert data["requested"] == 2**70 and data["samples"] == data["of"] > 0
    code, _, err = _landscape(cli, run3, tmp_path / "m", "--samples", "30", "--sharpness", "sam")  # a real subset
    assert code == 0 and "note:" not in err, err
    assert "requested" not in json.loads((tmp_path / "m" / "landscape.json").read_text())["data"]


def test_report_spread_samples_above_the_test_split_say_so(cli, run3, tmp_path):
    cheap = [a for a in REPORT_CHEAP if a != "--no-spread"]
    code, _, err = cli("report", run3, "--out", tmp_path / "r", *cheap, "--no-surface", "--spread-samples", HUGE)
    assert code == 0, err
    assert f"note: --spread-samples {HUGE}: the test selection holds" in err, err
    assert err.count("--spread-samples") == 1, err  # once, not once per checkpoint


def test_slq_steps_above_max_vectors_is_refused_not_cut(cli, run3, tmp_path):
    code, _, err = _landscape(cli, run3, tmp_path / "l", "--samples", "20", "--slq-steps", "50", "--max-vectors", "20")
    _one_line_error(code, err, "--slq-steps 50", "--max-vectors 20")


def test_train_batch_size_above_every_client_says_full_batch(cli, tmp_path):
    code, out, err = cli("train", *TINY, "--rounds", "1", "--local-epochs", "1", "--batch-size", HUGE,
                         "--out", tmp_path / "r")  # fmt: skip
    assert code == 0, err
    assert f"note: --batch-size {HUGE}: no client holds more than" in out, out
    code, out, err = cli("train", *TINY, "--rounds", "1", "--local-epochs", "1", "--out", tmp_path / "s")
    assert code == 0 and "note: --batch-size" not in out, out


# -- 2. a rerun into the same --out: earlier outputs leave the set, not lost -----------------------------------
def test_landscape_rerun_without_surface_sets_the_earlier_surface_aside(cli, run3, tmp_path):
    out = tmp_path / "l"
    code, _, err = _landscape(cli, run3, out, *LANDSCAPE_CHEAP)
    assert code == 0, err
    earlier = {n: (out / n).read_bytes() for n in ("surface.npz", "surface.json", "surface.html", "surface.png")}
    code, stdout, err = _landscape(cli, run3, out, "--samples", "20", "--sharpness", "sam")
    assert code == 0, err
    assert "moved" in stdout and ".flatfl-earlier" in stdout, stdout
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["landscape.json"]
    assert json.loads((out / "landscape.json").read_text())["files"] == ["landscape.json"]
    for name, data in earlier.items():  # nothing lost: moved whole
        assert (out / ".flatfl-earlier" / name).read_bytes() == data
    code, _, err = _landscape(cli, run3, out, *LANDSCAPE_CHEAP)  # the same surface again: back in the set
    assert code == 0, err
    files = json.loads((out / "landscape.json").read_text())["files"]
    assert {"landscape.json", "surface.npz", "surface.json", "surface.html", "surface.png"} <= set(files)
    assert all((out / n).is_file() for n in files)
    assert (out / "surface.json").read_bytes() == earlier["surface.json"]
    assert not any(p.name.startswith(".flatfl-staging") for p in out.iterdir())
    (out / ".flatfl-staging-999999").mkdir()  # a killed invocation's staging folder: removed by the next one
    (out / ".flatfl-staging-999999" / "landscape.json").write_text("{}")
    code, stdout, err = _landscape(cli, run3, out, "--samples", "20", "--sharpness", "sam")
    assert code == 0 and "replaced the older surface.npz" in stdout, stdout  # the older set there: said, not silent
    assert not any(p.name.startswith(".flatfl-staging") for p in out.iterdir())


# -- 4. a write refused half-way: the set in --out is the earlier one, whole ----------------------------------
def _limit(size: int):
    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    return preexec


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")}


def test_landscape_surface_under_a_file_size_limit_keeps_the_earlier_set(cli, run3, tmp_path):
    out = tmp_path / "l"
    code, _, err = _landscape(cli, run3, out, "--samples", "20", "--sharpness", "sam")
    assert code == 0, err
    before = _files(out)
    small = max(len(b) for b in before.values()) + 2_000  # landscape.json and surface.json/.npz fit, the figures not
    args = ["landscape", "--ckpt", run3 / "round_0003.safetensors", *LANDSCAPE_CHEAP, "--out", out]
    proc = flatfl_proc(*args, preexec_fn=_limit(small))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    assert err.strip().splitlines()[-1].startswith("flatfl: error:") and "Traceback" not in err, err
    assert "File too large" in err and f"{out}/surface." in err and ".flatfl-staging" not in err, err
    assert _files(out) == before  # no landscape.json of this run beside no figures, no surface.npz without a page
    assert not any(p.name.startswith(".flatfl-staging") for p in out.iterdir())


def test_partition_plot_refused_write_keeps_the_earlier_figure(tmp_path):
    plot = tmp_path / "p.png"
    plot.write_bytes(b"earlier figure")
    args = ["partition", "--dataset", "digits", "--clients", "6", "--plot", plot]
    proc = flatfl_proc(*args, preexec_fn=_limit(1_000))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and f"{plot}: cannot write" in err and "Traceback" not in err, err
    assert plot.read_bytes() == b"earlier figure" and sorted(os.listdir(tmp_path)) == ["p.png"]


# -- 3. FedDF: a distillation that never helps is said ---------------------------------------------------------
def test_feddf_rejected_distillation_is_recorded_and_warned(cli, tmp_path):
    code, out, err = cli("train", *TINY, "--algo", "feddf", "--rounds", "3", "--local-epochs", "1",
                         "--distill-lr", "1e6", "--out", tmp_path / "r")  # fmt: skip
    assert code == 0, err
    lines = [json.loads(s) for s in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    rounds = [m for m in lines if m["round"] > 0]
    assert [m["distill_kept_step"] for m in rounds] == [0, 0, 0]
    assert all(m["distill_val_kl_after"] == m["distill_val_kl_before"] for m in rounds)
    assert all(0 < m["distill_steps"] <= 100 for m in rounds)
    assert "round 3: warning: FedDF's distillation has not lowered the validation KL in 3 rounds" in out, out
    assert "--distill-lr 1e+06" in out


def test_feddf_sane_distillation_keeps_a_step_and_says_nothing(cli, tmp_path):
    code, out, err = cli("train", *TINY, "--algo", "feddf", "--rounds", "2", "--local-epochs", "1",
                         "--out", tmp_path / "r")  # fmt: skip
    assert code == 0, err
    lines = [json.loads(s) for s in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    kept = [m["distill_kept_step"] for m in lines if m["round"] > 0]
    assert any(k > 0 for k in kept), kept  # a kept step is a student better than the mean on the validation part
    assert all(m["distill_val_kl_after"] < m["distill_val_kl_before"] for m in lines if m.get("distill_kept_step"))
    assert "warning" not in out


# -- 5-7. paths named for what they are ------------------------------------------------------------------------
def test_partition_plot_into_a_new_folder(cli, tmp_path):
    code, out, err = cli("partition", "--dataset", "digits", "--clients", "6", "--plot", f"{tmp_path / 'newdir'}/")
    assert code == 0, err
    assert (tmp_path / "newdir" / "partition.png").is_file() and not (tmp_path / "newdir.png").exists()


def test_prune_of_run_json_names_the_run_folder(cli, run3, tmp_path):
    run = copy_run(run3, tmp_path)
    code, _, err = cli("prune", run / "run.json", "--keep", "last")
    _one_line_error(code, err, f"{run / 'run.json'}: a file, not a run folder", f"did you mean its folder {run}?")
    code, _, err = cli("prune", tmp_path / "nothing", "--keep", "last")
    _one_line_error(code, err, "no such run directory")


def test_report_on_a_fifo_metrics_file_says_not_a_regular_file(cli, run3, tmp_path):
    run = copy_run(run3, tmp_path)
    (run / "metrics.jsonl").unlink()
    os.mkfifo(run / "metrics.jsonl")
    code, _, err = cli("report", run, "--out", tmp_path / "r", *REPORT_CHEAP)
    _one_line_error(code, err, "metrics.jsonl: not a regular file")
