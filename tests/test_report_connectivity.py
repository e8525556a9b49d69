"""flatfl report --connect: mode connectivity (Garipov et al. 2018) between the compared groups' models and between
each global model and its clients' returned models -- the report's numbers against a direct mode_connectivity
call on the same data and seed, its section, figure, csv and json, its cache, and bad input in one line."""

from __future__ import annotations

import csv
import json
import statistics

import numpy as np
import pytest

from flatfl.analysis import mode_connectivity
from flatfl.runs.landscape import select_data
from flatfl.runs.run import Run
from tests.test_cli import _one_line_error

STEPS = 15
FAST = ["--samples", "100", "--no-hessian", "--trace-matvecs", "0", "--sharpness", "none", "--slices", "0",
        "--no-surface", "--no-spread", "--no-progress", "--at-rounds", "2"]  # fmt: skip
CONNECT = ["--connect", "--connect-steps", str(STEPS)]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """FedAvg and FedMut, seed 0, 2 rounds, client models saved (3 clients per round)."""
    from tests.conftest import train_pair

    return train_pair(tmp_path_factory.mktemp("conn"), 2, "--save-clients")


@pytest.fixture(scope="module")
def report(pair, tmp_path_factory):
    from flatfl.cli import main

    out = tmp_path_factory.mktemp("conn-rep") / "rep"
    assert main(["report", str(pair / "fedavg"), str(pair / "fedmut"), "--out", str(out), *FAST, *CONNECT]) == 0
    return out


def _direct(run: Run, rnd: int, other: dict) -> object:
    """mode_connectivity called directly: the report's data (100 seeded train samples, seed 0) and seed stream."""
    x, y, _ = select_data(run, "train", 100, 0)
    return mode_connectivity(run.model(rnd), other, (x, y), steps=STEPS, lr=0.01, seed=905)


def test_numbers_equal_a_direct_mode_connectivity_call(pair, report):
    conn = json.loads((report / "report.json").read_text())["connectivity"]
    avg, mut = Run.open(pair / "fedavg"), Run.open(pair / "fedmut")
    # groups: FedAvg's global model of seed 0 (t = 0) to FedMut's (t = 1), at the equal round and at equal loss
    assert {p["condition"] for p in conn["pairs"]} == {"round", "loss"}
    for p in conn["pairs"]:
        assert (p["reference"], p["other"], p["seed"]) == ("fedavg", "fedmut", 0)
        r = _direct(avg, p["round_a"], mut.global_state(p["round_b"]))
        assert p["curve_loss"] == r.curve_loss.tolist() and p["line_loss"] == r.line_loss.tolist()
        assert (p["line_barrier"], p["curve_barrier"]) == (r.line_barrier, r.curve_barrier)
        assert p["t"] == r.t.tolist()
    # clients: each global model to the 3 models its clients returned in that round
    for lab, run in (("fedavg", avg), ("fedmut", mut)):
        mine = [c for c in conn["clients"] if c["group"] == lab]
        rounds = sorted({c["round"] for c in mine})
        assert 2 in rounds and len(mine) == 3 * len(rounds)
        for c in mine:
            _, returned, info = run.clients(c["round"])
            assert c["client"] == info["clients"][c["slot"]]
            r = _direct(run, c["round"], returned[c["slot"]])
            assert (c["line_barrier"], c["curve_barrier"]) == (r.line_barrier, r.curve_barrier)
            assert c["curve_loss"] == r.curve_loss.tolist()
        # the per-group summary: median and range over its clients (and seeds) at the equal round
        summ = next(s for s in conn["client_summary"] if s["group"] == lab and s["condition"] == "round")
        at = [c["curve_barrier"] for c in mine if "round" in c["conditions"]]
        assert summ["paths"] == len(at) == 3
        assert summ["curve_barrier_median"] == statistics.median(at)
        assert (summ["curve_barrier_min"], summ["curve_barrier_max"]) == (min(at), max(at))
    # the curve is trained: its mean loss below the line's on at least one path (the point of the bend)
    paths = conn["pairs"] + conn["clients"]
    assert any(sum(p["curve_loss"]) < sum(p["line_loss"]) for p in paths)
    assert conn["settings"]["steps"] == STEPS and conn["settings"]["seed"] == 905


def test_section_figure_csv_and_json(report):
    page = (report / "report.html").read_text()
    assert ">Mode connectivity (Garipov et al. 2018)</h2>" in page and "'>Garipov et al. 2018</a>" in page
    assert "Loss surfaces, mode connectivity, and fast ensembling of DNNs" in page  # in the bibliography
    assert "Between each global model and its clients" in page and "curve barrier: median [min, max]" in page
    assert "Barrier</b> of a path" in page
    for name in ("connectivity.csv", "connectivity.png", "connectivity.pdf"):
        assert (report / name).is_file(), name
    assert (report / "connectivity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(open(report / "connectivity.csv")))
    conn = json.loads((report / "report.json").read_text())["connectivity"]
    assert len(rows) == len(conn["pairs"]) + len(conn["clients"])
    assert {r["kind"] for r in rows} == {"groups", "clients"}
    for r, p in zip(rows, conn["pairs"]):
        assert float(r["curve_barrier"]) == p["curve_barrier"] and float(r["loss_from"]) == p["line_loss"][0]
    rep = json.loads((report / "report.json").read_text())
    assert rep["settings"]["connect"]["steps"] == STEPS
    assert "connectivity" in rep["timing"]["seconds"]


def _tallies(out):
    return json.loads((out / "report.json").read_text())["timing"]["tallies"]


def test_cache_reused_and_invalidated(pair, report, tmp_path, cli):
    import shutil

    out = tmp_path / "rep"
    shutil.copytree(report, out, symlinks=True)
    runs = (pair / "fedavg", pair / "fedmut")
    before = json.loads((report / "report.json").read_text())["connectivity"]
    n = len(before["pairs"]) + len(before["clients"])
    # a path two conditions share (the same rounds) is computed once, then read back
    first = _tallies(report)
    assert first["connectivity paths computed"] + first.get("connectivity paths reused", 0) == n
    code, _, err = cli("report", *runs, "--out", out, *FAST, *CONNECT)
    assert code == 0, err
    assert _tallies(out).get("connectivity paths computed", 0) == 0
    assert _tallies(out)["connectivity paths reused"] == n
    assert json.loads((out / "report.json").read_text())["connectivity"] == before
    # a cached path whose other end's SHA-256 differs is recomputed (the same numbers again)
    cache = next((out / "runs").rglob("connect_client_slot001.json"))
    old = json.loads(cache.read_text())
    old["key"]["to_sha256"] = "0" * 64
    cache.write_text(json.dumps(old))
    code, _, err = cli("report", *runs, "--out", out, *FAST, *CONNECT)
    assert code == 0, err
    assert _tallies(out)["connectivity paths computed"] == 1
    assert json.loads(cache.read_text())["key"]["to_sha256"] != "0" * 64
    assert json.loads((out / "report.json").read_text())["connectivity"] == before
    # other settings: every path recomputed
    code, _, err = cli("report", *runs, "--out", out, *FAST, "--connect", "--connect-steps", str(STEPS + 1))
    assert code == 0, err
    assert _tallies(out)["connectivity paths computed"] == _tallies(report)["connectivity paths computed"]
    assert json.loads((out / "report.json").read_text())["connectivity"]["settings"]["steps"] == STEPS + 1


def test_off_by_default(report, pair, tmp_path, cli):
    out = tmp_path / "off"
    code, _, err = cli("report", pair / "fedavg", pair / "fedmut", "--out", out, *FAST, "--trace-matvecs", "12")
    assert code == 0, err
    rep = json.loads((out / "report.json").read_text())
    assert "connectivity" not in rep and rep["settings"]["connect"] is None
    assert not (out / "connectivity.csv").exists() and "Mode connectivity" not in (out / "report.html").read_text()


@pytest.fixture(scope="module")
def no_clients(tmp_path_factory):
    """Two 1-round runs that did not save their clients."""
    from tests.conftest import train_pair

    return train_pair(tmp_path_factory.mktemp("conn-none"), 1)


@pytest.mark.parametrize(
    "extra, needles",
    [
        (["--connect-steps", "5"], ["--connect-steps", "pass --connect"]),
        (["--connect-clients", "2", "--connect-lr", "0.1"], ["--connect-lr/--connect-clients", "pass --connect"]),
        (["--connect", "--connect-steps", "0"], ["--connect-steps"]),
        (["--connect", "--connect-steps", str(10**7)], ["--connect-steps", "at most"]),
        (["--connect", "--connect-lr", "-1"], ["--connect-lr"]),
        (["--connect", "--connect-clients", "0"], ["--connect-clients"]),
        (["--connect", "--connect-clients", "2"], ["--connect-clients 2", "--save-clients"]),
    ],
)
def test_bad_input_is_one_line(no_clients, tmp_path, cli, extra, needles):
    code, _, err = cli("report", no_clients / "fedavg", no_clients / "fedmut", "--out", tmp_path / "r", *FAST, *extra)
    _one_line_error(code, err, *needles)
    assert not (tmp_path / "r").exists()  # refused before any work


def test_runs_without_clients_get_the_group_paths_and_a_stated_reason(no_clients, tmp_path, cli):
    out = tmp_path / "r"
    args = [*FAST[:-2], "--at-rounds", "1", "--no-match", *CONNECT]
    code, _, err = cli("report", no_clients / "fedavg", no_clients / "fedmut", "--out", out, *args)
    assert code == 0, err
    conn = json.loads((out / "report.json").read_text())["connectivity"]
    assert len(conn["pairs"]) == 1 and conn["clients"] == [] and conn["client_summary"] == []
    assert "fedavg seed 0 round 1: no client models saved (train with --save-clients)" in conn["skipped"]
    page = (out / "report.html").read_text()
    assert "no client models saved (train with --save-clients)" in page and (out / "connectivity.png").is_file()


def test_equals_flatfl_landscape_connect(pair, report, tmp_path, cli):
    """The report's pair and client paths are flatfl landscape --connect's on the same data and seed stream."""
    conn = json.loads((report / "report.json").read_text())["connectivity"]
    ckpt = pair / "fedavg" / "round_0002.safetensors"
    client = next(c for c in conn["clients"] if c["group"] == "fedavg" and c["round"] == 2 and c["slot"] == 1)
    for spec, want in (
        (pair / "fedmut" / "round_0002.safetensors", next(p for p in conn["pairs"] if p["condition"] == "round")),
        ("returned:1", client),
    ):
        out = tmp_path / str(want["line_barrier"])
        code, _, err = cli("landscape", "--ckpt", ckpt, "--samples", "100", "--connect", spec, "--connect-steps",
                           str(STEPS), "--out", out)  # fmt: skip
        assert code == 0, err
        got = json.loads((out / "landscape.json").read_text())["literature"]["connectivity"]
        assert (got["line_barrier"], got["curve_barrier"]) == (want["line_barrier"], want["curve_barrier"])
        assert got["curve_loss"] == want["curve_loss"]


def _path(line: list[float], curve: list[float]) -> dict:
    from flatfl.analysis.connectivity import barrier

    t = np.linspace(0, 1, len(line))
    return {"line_loss": line, "curve_loss": curve, "line_barrier": barrier(t, np.array(line)),
            "curve_barrier": barrier(t, np.array(curve))}  # fmt: skip


def test_reading_tells_ends_that_are_not_minima_from_joined_minima():
    from flatfl.runs.connectivity_page import connectivity_csv_rows, curve_dip, reading

    # converged ends joined by a curve: the line rises, the curve stays at the end losses (no dip)
    minima = _path([0.10, 0.40, 0.10], [0.10, 0.11, 0.10])
    # ends that are not minima: the trained curve runs to half the lower end loss
    unconverged = _path([0.50, 0.45, 0.60], [0.50, 0.25, 0.60])
    assert curve_dip(minima) == pytest.approx(0.0) and curve_dip(unconverged) == pytest.approx(0.5)
    pair = {**minima, "condition": "round", "reference": "a", "other": "b", "seed": 0, "round_a": 4, "round_b": 4}
    client = {**unconverged, "conditions": ["round"], "group": "a", "client": 3, "seed": 0, "round": 4}
    text = reading({"pairs": [pair], "clients": [client]})
    assert "1 of 2 straight lines never rise above the chord" in text
    assert "On 1 of 2 paths the trained curve runs more than 5% below both end models (median 50%" in text
    assert "not minima" in reading({"pairs": [], "clients": [client]})
    assert "not minima" not in reading({"pairs": [pair], "clients": []})
    assert reading({"pairs": [], "clients": []}) == ""
    rows = connectivity_csv_rows({"pairs": [pair], "clients": [client]})
    assert [r["curve_dip"] for r in rows] == pytest.approx([0.0, 0.5])
    assert [r["curve_loss_min"] for r in rows] == pytest.approx([0.10, 0.25])
