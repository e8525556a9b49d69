"""What a report costs: the stage timer, the run's data loaded once per run, report.json's time table."""

from __future__ import annotations

import contextlib
import csv
import json

import pytest

from flatfl.runs import datacache, timing


class FakeClock:
    """A clock that advances only when told to."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_stage_times_are_exclusive_and_add_up_to_the_total():
    clock = FakeClock()
    with timing.timed(clock) as timer:
        clock.t += 1.0  # outside every stage: other
        with timing.stage("outer"):
            clock.t += 2.0
            with timing.stage("inner"):
                clock.t += 5.0  # charged to inner only: outer's clock stops
            clock.t += 3.0
        with timing.stage("inner"):
            clock.t += 0.5
        timing.count("things", 2)
        timing.count("things")
    t = timer.result()
    assert t.seconds == {"outer": 5.0, "inner": 5.5}
    assert t.counts == {"outer": 1, "inner": 2}
    assert t.total == 11.5 and t.other == 1.0 and t.dominant() == "inner"
    assert t.tallies == {"things": 3}
    j = t.as_json()
    assert j["seconds"] == {"outer": 5.0, "inner": 5.5, "other": 1.0} and j["dominant"] == "inner"
    assert timing.Timing.from_json(json.loads(json.dumps(j))) == t
    table = t.table()
    lines = table.splitlines()
    assert lines[2].split()[:2] == ["inner", "5.50"] and lines[3].split()[:2] == ["outer", "5.00"]  # largest first
    assert "47.8%" in lines[2] and lines[-2].split()[0] == "total" and "things: 3" in lines[-1]


def test_no_active_timer_costs_nothing_and_a_failing_stage_is_still_charged():
    with timing.stage("x"):  # no timer: nothing recorded, nothing raised
        timing.count("y")
    clock = FakeClock()
    with timing.timed(clock) as timer, pytest.raises(ValueError), timing.stage("boom"):
        clock.t += 2.0
        raise ValueError
    assert timer.result().seconds == {"boom": 2.0}


def test_shared_data_loads_each_identity_once_and_only_inside_its_scope():
    calls = []

    def load(k):
        calls.append(k)
        return [k]

    a = datacache.cached("a", lambda: load("a"))
    b = datacache.cached("a", lambda: load("a"))
    assert calls == ["a", "a"] and a is not b  # outside a scope: loaded every time, nothing kept
    with datacache.shared_data(), timing.timed() as timer:
        first = datacache.cached("a", lambda: load("a"))
        with datacache.shared_data():  # a nested scope reuses the enclosing one
            assert datacache.cached("a", lambda: load("a")) is first
        datacache.cached("b", lambda: load("b"))
    assert calls == ["a", "a", "a", "b"]
    assert timer.result().counts["data"] == 2 and timer.result().tallies["data reused"] == 1
    datacache.cached("a", lambda: load("a"))
    assert calls[-1] == "a" and len(calls) == 5  # the scope is gone


REPORT = ["--at-rounds", "1,3", "--samples", "60", "--grid", "3", "--trace-matvecs", "12", "--sharpness", "sam",
          "--spread-samples", "20", "--slices", "2", "--no-progress"]  # fmt: skip
STAGES = ("matching", "digests", "checkpoint", "data", "loss and gradient", "hessian", "trace", "sharpness sam",
          "slices", "norms", "surfaces", "verdict", "lines", "curves and spread", "page")  # fmt: skip


def test_report_loads_each_runs_data_once_with_the_same_numbers_and_times_every_stage(cli, tiny, tmp_path, monkeypatch):
    import flatfl.runs.report
    import flatfl.runs.run

    runs = [tiny("avg", "--save-clients", algo="fedavg"), tiny("mut", "--save-clients", algo="fedmut")]
    loads = []
    real = flatfl.runs.run.load_dataset
    monkeypatch.setattr(flatfl.runs.run, "load_dataset", lambda cfg, **kw: loads.append(cfg) or real(cfg, **kw))
    code, out, err = cli("report", *runs, "--out", tmp_path / "rep", *REPORT)
    assert code == 0, err
    assert len(loads) == 1  # the two runs share one data identity: loaded once for the whole report
    # before: every checkpoint, loss curve, line and spread loaded it again -- the same numbers, bit for bit
    monkeypatch.setattr(flatfl.runs.report, "shared_data", contextlib.nullcontext)
    code, _, err = cli("report", *runs, "--out", tmp_path / "old", *REPORT)
    assert code == 0, err
    assert len(loads) - 1 > 4  # 4 checkpoints: at least one load each without the cache
    new, old = (list(csv.DictReader(open(tmp_path / d / "report.csv"))) for d in ("rep", "old"))
    assert len(new) == len(old) == 4 and [r.keys() for r in new] == [r.keys() for r in old]
    for a, b in zip(new, old):
        for k in a:  # equal; the trace to float32 reordering (its block products pick their fastest way by timing)
            assert a[k] == b[k] or float(a[k]) == pytest.approx(float(b[k]), rel=1e-6), k

    t = json.loads((tmp_path / "rep" / "report.json").read_text())["timing"]
    for s in STAGES:
        assert s in t["seconds"] and t["seconds"][s] >= 0, s
    assert t["seconds"]["other"] >= 0 and t["total"] >= sum(t["seconds"].values()) - t["seconds"]["other"] - 1e-3
    assert t["counts"]["hessian"] == t["counts"]["slices"] == 4 and t["counts"]["data"] == 1
    assert t["counts"]["surfaces"] == 4  # each group's first seed at both equal rounds
    assert t["tallies"]["checkpoints measured"] == 4 and t["dominant"] in t["seconds"]
    # printed at the end, after the files written
    tail = out[out.index("wrote ") :]
    assert "flatfl report: time per stage" in tail
    for s in (*STAGES, "other", "total"):
        assert any(line.split("  ")[1].strip() == s for line in tail.splitlines() if line.startswith("  ")), s
    # a rerun reuses every checkpoint: no solver runs, and the table says so
    code, out, err = cli("report", *runs, "--out", tmp_path / "rep", *REPORT)
    t = json.loads((tmp_path / "rep" / "report.json").read_text())["timing"]
    assert code == 0 and t["tallies"]["checkpoints reused"] == 4 and "hessian" not in t["seconds"]
    assert "checkpoints reused: 4" in out
