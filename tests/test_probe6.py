"""probe6's findings (issue #27's final hostile pass), each failing before its fix:

* landscape's hidden folders of ``--out`` (flatfl/runs/outset.py): a ``.flatfl-earlier`` that is a symbolic link
  moved the earlier set's files outside ``--out`` and replaced a file of the same name there; a ``.flatfl-cache``
  link had the surface's cache written outside ``--out``; either of them as a plain file gave a traceback;
* a lock file held by another process showed its bytes as they were: terminal escapes and binary reached the
  terminal, and any first line was called a PID;
* ``flatfl data shakespeare --out RUN`` wrote train/ and test/ into a run directory.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from flatfl.errors import UserError
from flatfl.rundir import lock_dir

CHEAP = ("--samples", "20", "--sharpness", "sam")


def _landscape(cli, run3: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    return cli("landscape", "--ckpt", run3 / "round_0003.safetensors", "--out", out, *extra)


def test_an_earlier_folder_linked_outside_out_is_refused_and_nothing_moves(cli, run3, tmp_path):
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (outside / "surface.html").write_text("precious")  # would be replaced by the earlier set's surface.html
    (out / "surface.html").write_text("earlier set")  # a known output this run does not write: to be set aside
    (out / ".flatfl-earlier").symlink_to(outside)
    code, _, err = _landscape(cli, run3, out, *CHEAP)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and ".flatfl-earlier" in err and "symbolic link" in err, err
    assert (outside / "surface.html").read_text() == "precious"
    assert sorted(p.name for p in outside.iterdir()) == ["surface.html"]
    assert (out / "surface.html").read_text() == "earlier set"
    assert not (out / "landscape.json").exists()


@pytest.mark.parametrize("name", [".flatfl-earlier", ".flatfl-cache"])
def test_a_file_in_place_of_a_hidden_folder_is_one_line(cli, run3, tmp_path, name):
    out = tmp_path / "out"
    out.mkdir()
    (out / "surface.html").write_text("earlier set")
    (out / name).write_text("not a folder")
    code, _, err = _landscape(cli, run3, out, *CHEAP, "--surface", "1d", "--grid", "3")
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and name in err and "not a folder" in err, err
    assert (out / name).read_text() == "not a folder" and (out / "surface.html").read_text() == "earlier set"


def test_a_cache_folder_linked_outside_out_is_refused_before_measuring(cli, run3, tmp_path):
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (out / ".flatfl-cache").symlink_to(outside)
    code, _, err = _landscape(cli, run3, out, *CHEAP, "--surface", "1d", "--grid", "3")
    assert code == 2 and ".flatfl-cache" in err and "symbolic link" in err, err
    assert list(outside.iterdir()) == []  # no surface cache written outside --out


def _held(folder: Path, content: bytes):
    """The lock file of ``folder`` holding ``content``, flock-held through a descriptor of this process (a
    separate open file description conflicts with lock_dir's own, as another process's would)."""
    path = folder / ".flatfl.lock"
    path.write_bytes(content)
    fd = os.open(path, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


@pytest.mark.parametrize(
    "content",
    [b"1\x1b[2J\nformatting\x1b[31m your disk\x00\n", bytes(range(256)), b"\xff\xfe\n\x9b2J\x07" * 40],
)
def test_a_forged_lock_file_reaches_the_message_printable_only(tmp_path, content):
    fd = _held(tmp_path, content)
    try:
        with pytest.raises(UserError) as caught:
            lock_dir(tmp_path, "writing a landscape here")
    finally:
        os.close(fd)
    msg = str(caught.value)
    assert msg.isprintable() and "\n" not in msg, repr(msg)
    assert "(PID unknown)" in msg, msg  # no first line of digits: not called a PID
    assert len(msg) < 300, msg


def test_a_well_formed_lock_file_still_names_its_holder(tmp_path):
    fd = _held(tmp_path, b"4242\ntraining this run\n")
    try:
        with pytest.raises(UserError, match=r"\(PID 4242\) is training this run;"):
            lock_dir(tmp_path, "writing a landscape here")
    finally:
        os.close(fd)


def test_data_shakespeare_into_a_run_directory_is_refused(cli, run3, tmp_path):
    plays = tmp_path / "plays"
    plays.mkdir()
    (plays / "a.txt").write_text("HAM. To be, or not to be.\nHOR. My lord.\n")
    before = sorted(p.name for p in run3.iterdir())
    code, _, err = cli("data", "shakespeare", "--plays", plays, "--out", run3)
    assert code == 2 and "--out" in err and "run directory" in err, err
    assert sorted(p.name for p in run3.iterdir()) == before


@pytest.mark.parametrize("config", [[], None, "x"])
def test_a_round_file_whose_metadata_config_is_not_an_object_is_refused(cli, run3, tmp_path, config):
    import json
    import shutil

    from safetensors import safe_open
    from safetensors.torch import save_file

    run = tmp_path / "run"
    shutil.copytree(run3, run)
    f = run / "round_0003.safetensors"
    with safe_open(str(f), "pt") as s:
        tensors, meta = {k: s.get_tensor(k) for k in s.keys()}, json.loads(s.metadata()["flatfl"])
    save_file(tensors, str(f), metadata={"flatfl": json.dumps({**meta, "config": config})})
    code, _, err = cli("landscape", "--ckpt", f, "--out", tmp_path / "l", *CHEAP)
    assert code == 2 and "round_0003.safetensors" in err and "config" in err, err
    code, _, err = cli("train", "--resume", run, "--rounds", "4", "--no-progress")
    assert code == 2 and "round_0003.safetensors" in err and "config" in err, err


def test_resume_from_a_round_file_whose_metadata_name_another_round_is_refused(cli, run3, tmp_path):
    import json
    import shutil

    from safetensors import safe_open
    from safetensors.torch import save_file

    run = tmp_path / "run"
    shutil.copytree(run3, run)
    f = run / "round_0003.safetensors"  # the round --resume continues from
    with safe_open(str(f), "pt") as s:
        tensors, meta = {k: s.get_tensor(k) for k in s.keys()}, json.loads(s.metadata()["flatfl"])
    save_file(tensors, str(f), metadata={"flatfl": json.dumps({**meta, "round": 2})})
    code, _, err = cli("train", "--resume", run, "--rounds", "4", "--no-progress")
    assert code == 2 and "round_0003.safetensors" in err and "say round 2" in err, err
    assert not (run / "round_0004.safetensors").exists()


@pytest.mark.parametrize("index", [10**400, 2**63, -(2**70)])
def test_a_partition_file_index_beyond_int64_is_one_line(cli, tmp_path, index):
    import json

    f = tmp_path / "partition.json"
    f.write_text(json.dumps({"clients": [[0, 1, index], [2, 3]]}))
    code, _, err = cli("partition", "--dataset", "digits", "--partition-file", f, "--plot", tmp_path / "p.png")
    assert code == 2 and "--partition-file" in err and str(index) in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "p.png").exists()


@pytest.mark.parametrize("version", ["1", 1.0, True])
def test_a_run_json_format_version_of_another_json_type_is_refused_as_it_is(cli, run3, tmp_path, version):
    import json
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run3, run)
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "format_version": version}))
    code, _, err = cli("prune", run, "--keep", "1", "--dry-run")
    assert code == 2 and f"format version {version!r} is not supported" in err, err


def test_a_run_reader_refuses_a_round_file_whose_metadata_name_another_round(run3, tmp_path):
    """What report and landscape read a run's rounds with (Run.global_state)."""
    import json
    import shutil

    from safetensors import safe_open
    from safetensors.torch import save_file

    from flatfl.runs.run import Run

    run = tmp_path / "run"
    shutil.copytree(run3, run)
    f = run / "round_0002.safetensors"
    with safe_open(str(f), "pt") as s:
        tensors, meta = {k: s.get_tensor(k) for k in s.keys()}, json.loads(s.metadata()["flatfl"])
    save_file(tensors, str(f), metadata={"flatfl": json.dumps({**meta, "round": 1})})
    with pytest.raises(UserError, match="say round 1, its name round 2"):
        Run.open(run).global_state(2)


@pytest.mark.parametrize("name", [".flatfl-earlier", ".flatfl-cache", ".flatfl-staging-123", ".flatfl-cache/mine",
                                  ".flatfl-staging-999999/mine", ".flatfl-earlier/a/b"])  # fmt: skip
def test_out_naming_a_hidden_folder_of_another_out_is_refused(cli, run3, tmp_path, name):
    """--out OUT/.flatfl-earlier: a later landscape into OUT would move its older files in beside this set; a set
    in OUT/.flatfl-cache/mine or OUT/.flatfl-staging-N/mine would be removed with the cache or the staging folder."""
    out = tmp_path / "out" / name
    code, _, err = _landscape(cli, run3, out, *CHEAP)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--out" in err and name.split("/")[0] in err, err
    assert not out.exists() or not any(out.iterdir())


def test_partition_seed_with_a_partition_file_is_refused(cli, tmp_path):
    """The file fixes the partition: --seed would change nothing but the heading ('seed 4')."""
    import json

    f = tmp_path / "partition.json"
    f.write_text(json.dumps({"clients": [[0, 1], [2, 3]]}))
    code, _, err = cli(
        "partition", "--dataset", "digits", "--partition-file", f, "--seed", "4", "--plot", tmp_path / "p.png"
    )
    assert code == 2 and "--seed" in err and "--partition-file" in err and len(err.strip().splitlines()) == 1, err


def test_prune_says_in_the_lock_file_that_it_is_pruning(run3, tmp_path, monkeypatch):
    """prune held the run's lock as "training this run": a trainer started meanwhile was told so."""
    import shutil

    import flatfl.prune as pr
    from flatfl.rundir import LOCK_FILE

    run = tmp_path / "run"
    shutil.copytree(run3, run)
    seen, real = [], pr.plan
    monkeypatch.setattr(pr, "plan", lambda *a, **k: (seen.append((run / LOCK_FILE).read_text()), real(*a, **k))[1])
    pr.prune(run, {0}, None, dry_run=True, say=lambda line: None)
    assert seen == [f"{os.getpid()}\npruning this run\n"], seen
