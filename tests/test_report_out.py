"""--out of flatfl report / landscape / partition: one writer, the whole old or the whole new set, plain refusals.

The report's files are swapped as one set (:mod:`flatfl.reportdir`); the kills here raise at each
step of that swap (publishing has no cleanup of its own, so a raise leaves what a kill leaves), and
one subprocess is killed for real (``FLATFL_FAULT_AT``) between two of the report's file writes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flatfl import reportdir
from flatfl.faults import ENV, KILLED
from flatfl.reportdir import ReportDir
from flatfl.rundir import LOCK_FILE, locked_folder
from tests.test_cli import _one_line_error

OLD = {"report.html": "old page", "report.json": "old json", "verdict.csv": "old v", "spread.png": "old spread"}
NEW = {"report.html": "new page", "report.json": "new json", "verdict.csv": "new v", "curves.csv": "new curves"}


class Killed(Exception):
    pass


def writer(files: dict[str, str], fail_after: int | None = None):
    def write(folder: Path) -> dict[str, Path]:
        for i, (name, text) in enumerate(files.items()):
            if i == fail_after:
                raise Killed(name)
            (folder / name).write_text(text)
        return {name: folder / name for name in files}

    return write


def visible(out: Path) -> dict[str, str]:
    """What a reader opening OUT/NAME gets (a dangling link reads as no file)."""
    files = [p for p in out.iterdir() if not p.name.startswith(".") and p.is_file()]
    return {p.name: p.read_bytes().decode("latin-1") for p in files}


def assert_clean(out: Path, want: dict[str, str]) -> None:
    assert visible(out) == want
    assert [p.name for p in out.iterdir() if not p.exists()] == []  # no dangling link left
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == sorted(
        [LOCK_FILE, reportdir.CURRENT, os.readlink(out / reportdir.CURRENT)]
    )


def test_rerun_replaces_the_set_and_drops_files_it_no_longer_writes(tmp_path):
    out = tmp_path / "rep"
    with ReportDir(out) as d:
        files = d.write(writer(OLD))
    assert files["spread.png"] == out / "spread.png" and visible(out) == OLD
    with ReportDir(out) as d:
        d.write(writer(NEW))
    assert_clean(out, NEW)  # spread.png gone, one version folder, no staging


STEPS = [("write", k) for k in range(len(NEW))] + [
    (point, 0) for point in ("report:staged", "report:renamed", "report:linked", "report:switched")
]


@pytest.mark.parametrize("step, k", STEPS)
def test_killed_at_every_step_leaves_the_old_or_the_new_set(tmp_path, monkeypatch, step, k):
    out = tmp_path / "rep"
    with ReportDir(out) as d:
        d.write(writer(OLD))

    def die(point, before_exit=None):
        if point == step:
            raise Killed(point)

    monkeypatch.setattr(reportdir, "fault_point", die)
    with pytest.raises(Killed), ReportDir(out) as d:
        d.write(writer(NEW, fail_after=k if step == "write" else None))
    # before the switch nothing new shows; after it, all of the new set and nothing of the old
    assert visible(out) == (NEW if step == "report:switched" else OLD)
    monkeypatch.undo()
    with ReportDir(out):  # the next writer tidies what the killed one left
        pass
    assert_clean(out, visible(out))
    with ReportDir(out) as d:
        d.write(writer(NEW))
    assert_clean(out, NEW)


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_a_folder_of_plain_files_from_an_older_flatfl_is_migrated_without_a_mixed_state(tmp_path, monkeypatch, k):
    out = tmp_path / "rep"
    out.mkdir()
    for name, text in OLD.items():
        (out / name).write_text(text)
    real = reportdir._link
    calls = []

    def link(*a):
        calls.append(a)
        if len(calls) > k:
            raise Killed
        real(*a)

    monkeypatch.setattr(reportdir, "_link", link)
    with pytest.raises(Killed), ReportDir(out):
        pass
    assert visible(out) == OLD
    monkeypatch.undo()
    with ReportDir(out) as d:
        assert visible(out) == OLD and all((out / n).is_symlink() for n in OLD)
        d.write(writer(NEW))
    assert_clean(out, NEW)


def test_a_second_writer_is_one_line_and_the_first_keeps_its_folder(cli, tmp_path):
    out = tmp_path / "rep"
    with ReportDir(out) as d:
        d.write(writer(OLD))
        with pytest.raises(Exception, match="another flatfl process .* is writing a report here"):
            ReportDir(out).__enter__()
    assert_clean(out, OLD)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    from flatfl.cli import main
    from tests.conftest import TINY

    root = tmp_path_factory.mktemp("out")
    for algo in ("fedavg", "fedmut"):
        assert main(["train", *TINY, "--rounds", "2", "--algo", algo, "--out", str(root / "exp" / "runs" / algo)]) == 0
    return root / "exp" / "runs"


CKPT = Path("fedavg") / "round_0002.safetensors"
LANDSCAPE = ["--hessian", "--samples", "50"]
FAST = ["--samples", "100", "--grid", "3", "--trace-matvecs", "6", "--sharpness", "sam", "--slices", "2",
        "--no-match", "--no-progress"]  # fmt: skip


def test_report_rerun_with_fewer_sections_and_a_locked_folder(cli, pair, tmp_path):
    out = tmp_path / "rep"
    code, stdout, err = cli("report", pair / "fedavg", pair / "fedmut", "--out", out, *FAST, "--no-spread")
    assert code == 0, err
    assert (out / "surfaces.png").is_file() and f"wrote {out / 'report.html'}" in stdout
    first = visible(out)
    code, _, err = cli("report", pair / "fedavg", pair / "fedmut", "--out", out, *FAST, "--no-spread", "--no-surface")
    assert code == 0, err
    now = visible(out)
    assert "surfaces.png" not in now and "surfaces.pdf" not in now and "slices.png" in now
    assert now["report.csv"] == first["report.csv"]  # cache reused: same numbers
    assert '"surface": false' in now["report.json"]
    with locked_folder(out, "writing a report here"):  # another report holds the folder
        code, _, err = cli("report", pair / "fedavg", pair / "fedmut", "--out", out, *FAST)
    _one_line_error(code, err, str(out), "another flatfl process")
    assert visible(out) == now


def test_report_killed_between_two_file_writes_keeps_the_old_set(cli, pair, tmp_path):
    out = tmp_path / "rep"
    args = ["report", pair / "fedavg", pair / "fedmut", "--out", out, *FAST, "--no-spread", "--no-surface"]
    assert cli(*args)[0] == 0
    old = visible(out)
    env = {**os.environ, ENV: "report.html:commit:1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "flatfl", *map(str, args), "--widths", "0.5"], env=env,
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == KILLED, proc.stderr
    assert visible(out) == old  # report.csv, verdict.csv, report.html new in staging only
    assert any(p.name.startswith(reportdir.STAGING) for p in out.iterdir())
    code, _, err = cli(*args, "--widths", "0.5")
    assert code == 0, err
    assert_clean(out, visible(out))
    assert "width_0.5" in visible(out)["report.csv"]


def test_out_into_the_input_runs_is_refused(cli, pair, tmp_path):
    code, _, err = cli("report", pair / "fedavg", pair / "fedmut", "--out", pair / "fedavg", *FAST)
    _one_line_error(code, err, "--out", "run directory", "separate folder")
    code, _, err = cli("report", pair / "fedavg", pair / "fedmut", "--out", pair.parent, *FAST)
    _one_line_error(code, err, "--out", "runs", "--out")
    assert not (pair.parent / "report.html").exists() and not (pair.parent / LOCK_FILE).exists()
    code, _, err = cli("landscape", "--ckpt", pair / CKPT, "--out", pair / "fedavg", *LANDSCAPE)
    _one_line_error(code, err, "--out", "run directory")
    assert sorted(p.name for p in (pair / "fedavg").iterdir() if "landscape" in p.name) == []


def test_a_run_without_metrics_is_named(cli, pair, tmp_path):
    import shutil

    shutil.copytree(pair / "fedmut", tmp_path / "nometrics")
    (tmp_path / "nometrics" / "metrics.jsonl").unlink()
    code, _, err = cli("report", pair / "fedavg", tmp_path / "nometrics", "--out", tmp_path / "o", *FAST)
    _one_line_error(code, err, str(tmp_path / "nometrics" / "metrics.jsonl"), "missing")
    assert not (tmp_path / "o").exists()  # a refused first report leaves no folder


@pytest.mark.parametrize("where", ["afile", "afile/sub", "/proc/sys/x"])
@pytest.mark.parametrize("command", ["report", "landscape"])
def test_an_out_that_cannot_be_a_folder_is_one_line(cli, pair, tmp_path, where, command):
    (tmp_path / "afile").write_text("x")
    out = tmp_path / where if not where.startswith("/") else Path(where)
    if command == "report":
        code, _, err = cli("report", pair / "fedavg", pair / "fedmut", "--out", out, *FAST)
    else:
        code, _, err = cli("landscape", "--ckpt", pair / CKPT, "--out", out, *LANDSCAPE)
    _one_line_error(code, err, "--out", str(out), "choose another folder")


def test_partition_plot_paths(cli, tmp_path):
    args = ["partition", "--dataset", "digits", "--clients", "6", "--dirichlet", "0.5"]
    code, stdout, err = cli(*args, "--plot", tmp_path / "new" / "deep" / "x.png")
    assert code == 0 and (tmp_path / "new" / "deep" / "x.png").stat().st_size > 0, err
    (tmp_path / "d").mkdir()
    code, stdout, err = cli(*args, "--plot", tmp_path / "d")
    assert code == 0 and f"wrote {tmp_path / 'd' / 'partition.png'}" in stdout, err
    assert (tmp_path / "d" / "partition.png").is_file()
    code, _, err = cli(*args, "--plot", tmp_path / "x.txt")
    _one_line_error(code, err, "--plot", ".txt", ".png")
    (tmp_path / "afile").write_text("x")
    code, _, err = cli(*args, "--plot", tmp_path / "afile" / "x.png")
    _one_line_error(code, err, "--plot", "choose another folder")


@pytest.mark.parametrize("limit", [3_000, 30_000, 600_000])  # a small file, a large figure, report.html
def test_report_under_a_file_size_limit_names_the_file_and_leaves_no_staging_folder(pair, tmp_path, limit):
    # F15 (#27): EFBIG from a figure's write named no file, and .staging-PID/ stayed behind
    import resource
    import signal

    def child() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    out = tmp_path / "rep"
    cheap = ["--samples", "20", "--no-hessian", "--trace-matvecs", "0", "--sharpness", "none", "--grid", "2"]
    args = ["report", pair / "fedavg", pair / "fedmut", "--out", out, *cheap, "--slices", "2", "--no-spread",
            "--no-surface", "--no-match", "--no-progress"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "flatfl", *map(str, args)], env=env, capture_output=True, text=True,
                          preexec_fn=child)  # fmt: skip
    last = proc.stderr.strip().splitlines()[-1]
    _one_line_error(proc.returncode, last, "cannot write (File too large)", "ulimit -f")
    assert "Traceback" not in proc.stderr, proc.stderr
    named = last.split("flatfl: error: ", 1)[1].split(": cannot write", 1)[0]
    assert Path(named).parent in (out, *out.glob("runs/**")) and reportdir.STAGING not in named, proc.stderr
    assert not [p for p in out.rglob("*") if p.name.startswith(reportdir.STAGING) or p.name.endswith(".tmp")]
    assert not Path(named).exists() or Path(named).is_symlink()  # no half-written file under the name


def test_a_forged_current_link_or_linked_version_never_deletes_a_folder_outside_out(tmp_path):
    """hostile2: OUT/.report-current edited to point at any folder made the rerun delete that folder."""
    out, victim, victim2 = tmp_path / "rep", tmp_path / "victim", tmp_path / "victim2"
    for v in (victim, victim2):
        v.mkdir()
        (v / "thesis.tex").write_text("precious")
    with ReportDir(out) as d:
        d.write(writer(OLD))
    (out / reportdir.CURRENT).unlink()
    os.symlink(victim, out / reportdir.CURRENT)
    os.symlink(victim2, out / ".report-v9")
    with ReportDir(out) as d:
        d.write(writer(NEW))
    assert (victim / "thesis.tex").read_text() == "precious" and (victim2 / "thesis.tex").read_text() == "precious"
    assert visible(out) == NEW
