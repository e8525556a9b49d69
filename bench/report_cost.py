"""What a ``flatfl report`` costs, and where the time goes (issue 28 §4).

Two settings, each trained here into a temporary folder and reported with ``flatfl report``'s
default measures (λmax, trace, the three default sharpness measures, 1D slices, 2D surfaces, the
spread, matching at equal training loss, the page):

* **digits** -- the demo's setting, small: FedAvg (same aggregation) vs FedMut on the embedded
  digits, Dirichlet(0.1) over 20 clients, ``--seeds`` x ``--rounds``, measured at the last round
  (``--at-rounds``, as the demo does) and at equal training loss;
* **cifar** -- a CIFAR-shaped one: random 32x32 RGB images with random labels written by this bench
  in the official CIFAR-10 python-pickle batch format (``data_batch_1..5``, ``test_batch``,
  ``batches.meta`` under ``cifar-10-batches-py/``, read by ``flatfl.data.cifar``; md5 differs from
  the official archive's, so flatfl warns once per load -- the bench counts those warnings:
  one per batch file per run's data load), LeNet ``cnn``, ``--samples`` analysis samples.

Each report's ``report.json`` holds ``timing`` (:mod:`flatfl.runs.timing`); the bench prints the
stage breakdowns side by side and the stage that dominates. With ``--compare`` it runs one untimed
warm-up report, then ``--repeats`` pairs interleaved (shared work off, on, on, off, ...:
``FLATFL_SHARE_WORK=0/1``, :mod:`flatfl.runs.share`; ``--toggle FLATFL_FAST_POINTS``: the faster point
evaluation off/on, :mod:`flatfl.analysis.private`), so that the machine's noise hits both, and prints
the before/after ratio of each stage and of the whole report (medians) and the largest relative
difference between the two reports' numbers.

    python bench/report_cost.py                      # ~5-7 min on 2 cores shared with other jobs
    python bench/report_cost.py --settings cifar --samples 1000   # the issue's 1,000 samples: ~17 min there
    python bench/report_cost.py --compare --repeats 2
    python bench/report_cost.py --settings digits --samples 1000 --compare --toggle FLATFL_FAST_POINTS
    python bench/report_cost.py --settings cifar --cifar-per-batch 10000 --rounds 100 --seeds 0,1,2
    python bench/report_cost.py --settings digits --candidates --seeds 0 --samples 1000 --repeats 1

With ``--candidates`` it decides the report's default set by measurement (issue 28 §3: the demo report may grow
by at most ~50%): after one untimed warm-up (at most 100 samples), ``--repeats`` rounds of reports, each round
every configuration once in a rotated order -- the *base* set (the report's own measures: every
``report_default`` measure switched off with its ``--no-NAME``), the base set plus each candidate alone
(:data:`CANDIDATES`, and ``--candidate NAME=FLAGS``), and the current default set (no flags) -- and prints each
one's median wall time and CPU time (this process's, ``time.process_time``: on a machine shared with other jobs
it moves far less than the wall time), their ratios to the base set and the candidate's own stage seconds (wall).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from flatfl.cli import main as flatfl

TOGGLE = ["FLATFL_SHARE_WORK"]  # the environment switch --compare turns off (before) and on (after)
GROUPS = {"fedavg-mean": ["--algo", "fedavg", "--unweighted"], "fedmut": ["--algo", "fedmut"]}


def write_fake_cifar10(root: Path, per_batch: int, test: int, seed: int = 0) -> Path:
    """Random images and labels in the official CIFAR-10 python format under ``root/cifar-10-batches-py``."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def batch(n: int, name: str) -> None:
        d = {
            b"batch_label": name.encode(),
            b"labels": rng.integers(0, 10, n).tolist(),
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"{i}.png".encode() for i in range(n)],
        }
        (folder / name).write_bytes(pickle.dumps(d, protocol=2))

    for i in range(1, 6):
        batch(per_batch, f"data_batch_{i}")
    batch(test, "test_batch")
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [n.encode() for n in names]}, protocol=2))
    return folder


def train_runs(kind: str, root: Path, seeds: list[int], rounds: int, data_root: Path) -> list[str]:
    """Train every group x seed of ``kind`` into ``root``; the run folders (group order, then seeds)."""
    data = ["--dataset", "digits", "--clients", "20", "--frac", "0.25", "--dirichlet", "0.1"]
    if kind == "cifar":
        data = ["--dataset", "cifar10", "--data-root", str(data_root), "--model", "cnn", "--clients", "10",
                "--frac", "0.3", "--dirichlet", "0.5", "--local-epochs", "1"]  # fmt: skip
    runs = []
    for g, flags in GROUPS.items():
        for s in seeds:
            out = root / f"{kind}-{g}-s{s}"
            args = ["train", *data, *flags, "--rounds", str(rounds), "--seed", str(s), "--out", str(out),
                    "--save-clients", str(max(1, rounds // 2)), "--no-progress"]  # fmt: skip
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
                code = flatfl(args)
            if code != 0:
                sys.exit(f"train {kind} {g} seed {s}: exit {code}\n{err.getvalue()[-2000:]}")
            runs.append(str(out))
    return runs


def report(runs: list[str], out: Path, samples: int, share: bool, extra: list[str]) -> tuple[dict, float, str]:
    """One ``flatfl report`` (fresh output folder: nothing cached); (report.json, wall seconds, stderr)."""
    labels = [x for r in runs for x in ("--label", f"{r}={Path(r).name.rsplit('-s', 1)[0].split('-', 1)[1]}")]
    args = ["report", *runs, "--out", str(out), "--samples", str(samples), "--reference", "fedavg-mean",
            "--no-progress", "--device", "cpu", *labels, *extra]  # fmt: skip
    os.environ[TOGGLE[0]] = "1" if share else "0"
    t0, c0 = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        code = flatfl(args)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if code != 0:
        sys.exit(f"report: exit {code}\n{err.getvalue()[-2000:]}")
    rep = json.loads((out / "report.json").read_text())
    rep["bench_cpu_seconds"] = cpu  # this process's CPU time: less sensitive than wall time to a loaded machine
    return rep, wall, err.getvalue()


def side_by_side(cols: dict[str, dict]) -> str:
    """Stage seconds (and share) of every setting in columns, largest stages first."""
    stages: dict[str, float] = {}
    for t in cols.values():
        for k, v in t["seconds"].items():
            stages[k] = max(stages.get(k, 0.0), v / t["total"])
    order = sorted(stages, key=lambda k: -stages[k])
    w = max(len(k) for k in order)
    head = f"{'stage':<{w}} " + " ".join(f"{c:>22}" for c in cols)
    lines = [head, "-" * len(head)]
    for k in order:
        cells = []
        for t in cols.values():
            s = t["seconds"].get(k)
            n = t["counts"].get(k, "")
            cells.append(f"{'-':>22}" if s is None else f"{s:>9.2f}s {100 * s / t['total']:>5.1f}% x{n!s:<4}")
        lines.append(f"{k:<{w}} " + " ".join(cells))
    lines.append(f"{'total':<{w}} " + " ".join(f"{t['total']:>9.2f}s {'':>12}" for t in cols.values()))
    lines.append(f"{'dominant':<{w}} " + " ".join(f"{t['dominant']:>22}" for t in cols.values()))
    return "\n".join(lines)


def numbers(rep: dict) -> dict[str, float]:
    """Every per-checkpoint number of report.csv's rows (run, seed, round -> measure)."""
    out = {}
    for r in rep["rounds"]:
        for k, v in r.items():
            if isinstance(v, float):
                out[f"{r['run']} s{r['seed']} r{r['round']} {k}"] = v
    return out


def compare(
    name: str, runs: list[str], tmp: Path, samples: int, repeats: int, extra: list[str]
) -> tuple[dict, float, str]:
    """Shared work off vs on, interleaved (after one untimed warm-up report; order off, on, on, off, ...); per-stage
    median ratios and the largest difference in the numbers. Returns the last "after" report."""
    by: dict[bool, list[dict]] = {False: [], True: []}
    walls: dict[bool, list[float]] = {False: [], True: []}
    reps: dict[bool, tuple] = {}
    report(runs, tmp / f"{name}-warm-up", samples, True, extra)  # not timed: first calls (kernels, JIT) are slow
    for i in range(repeats):
        for share in (False, True) if i % 2 == 0 else (True, False):  # ABBA: a trend in the load hits both alike
            reps[share] = report(runs, tmp / f"{name}-cmp-{share}-{i}", samples, share, extra)
            by[share].append(reps[share][0]["timing"])
            walls[share].append(reps[share][1])
    stages = [k for k in by[False][0]["seconds"] if k in by[True][0]["seconds"]]
    print(f"\n{name}: {TOGGLE[0]}=0 (before) vs 1 (after), interleaved, median of {repeats}")
    print(f"{'stage':<26} {'before s':>9} {'after s':>9} {'before/after':>12}")
    for k in sorted(stages, key=lambda k: -statistics.median(t["seconds"][k] for t in by[False])):
        b = statistics.median(t["seconds"][k] for t in by[False])
        a = statistics.median(t["seconds"][k] for t in by[True])
        print(f"{k:<26} {b:>9.2f} {a:>9.2f} {b / a if a > 0 else float('inf'):>12.2f}")
    b, a = statistics.median(walls[False]), statistics.median(walls[True])
    print(f"{'whole report (wall)':<26} {b:>9.2f} {a:>9.2f} {b / a:>12.2f}")
    nb, na = numbers(reps[False][0]), numbers(reps[True][0])
    worst = max((abs(nb[k] - na[k]) / max(abs(nb[k]), 1e-12), k) for k in nb if k in na)
    print(f"largest relative difference in report.csv's numbers: {worst[0]:.2e} ({worst[1]})", flush=True)
    return reps[True]


# the measures of issue 28 §3 that may join the report's default set: name -> the flags that switch each on
CANDIDATES: dict[str, list[str]] = {
    "relative_flatness": ["--relative-flatness"],
    "fisher_rao": ["--fisher-rao"],
    "ggn": ["--curvature", "ggn"],
    "ef": ["--curvature", "ef"],
    "per_layer": ["--per-layer"],
}


def candidate_configs(extra: dict[str, list[str]]) -> dict[str, list[str]]:
    """Configuration name -> report flags: ``base`` (every default-set measure off), ``base + NAME`` per candidate,
    ``default set`` (no flags)."""
    from flatfl.runs.measures import REGISTRY, off_flag

    defaults = [n for n, s in REGISTRY.items() if s.report and s.report_default]
    base = [off_flag(REGISTRY[n]) for n in defaults]
    configs = {"base": base}
    for name, flags in {**CANDIDATES, **extra}.items():
        on = [f for f in base if f != off_flag(REGISTRY[name])] if name in defaults else [*base, *flags]
        configs[f"base + {name}"] = on
    configs["default set"] = []
    return configs


def own_stages(config: str) -> list[str]:
    """The time-table stages of what ``config`` adds to the base set (a measure's stage is its name)."""
    from flatfl.runs.measures import REGISTRY

    if config == "default set":
        return [n for n, s in REGISTRY.items() if s.report and s.report_default]
    return [config.removeprefix("base + ")] if config.startswith("base + ") else []


def candidates(name: str, runs: list[str], tmp: Path, samples: int, repeats: int, at: list[str],
               extra: dict[str, list[str]], only: list[str] | None = None) -> None:  # fmt: skip
    """Every configuration of :func:`candidate_configs` (``only``: these) ``repeats`` times, rotated, after one
    warm-up; medians."""
    configs = candidate_configs(extra)
    if only:
        configs = {c: f for c, f in configs.items() if c in only or c == "base"}
    walls: dict[str, list[float]] = {c: [] for c in configs}
    cpus: dict[str, list[float]] = {c: [] for c in configs}
    stage_s: dict[str, list[float]] = {c: [] for c in configs}
    report(runs, tmp / f"{name}-cand-warm-up", min(samples, 100), True, at)  # first calls (kernels) are slow
    names = list(configs)
    for i in range(repeats):
        k = i % len(names)
        for c in names[k:] + names[:k]:  # rotated: a trend in the machine's load hits every configuration
            where = tmp / f"{name}-cand-{i}-{c.replace(' ', '_')}"
            rep, wall, _ = report(runs, where, samples, True, [*at, *configs[c]])
            walls[c].append(wall)
            cpus[c].append(rep["bench_cpu_seconds"])
            secs = rep["timing"]["seconds"]
            stage_s[c].append(sum(secs.get(n, 0.0) for n in own_stages(c)))
            print(f"  {c}: {wall:.1f} s wall, {cpus[c][-1]:.1f} s CPU, own stage {stage_s[c][-1]:.1f} s", flush=True)
    b, bc = statistics.median(walls["base"]), statistics.median(cpus["base"])
    print(f"\n{name}: flatfl report {' '.join(at)} --samples {samples}, median of {repeats}")
    print(f"{'configuration':<26} {'wall s':>8} {'/ base':>7} {'CPU s':>8} {'/ base':>7} {'own stage s':>12} "
          f"{'own/rest':>9}  flags")  # fmt: skip
    for c in names:
        w, cp = statistics.median(walls[c]), statistics.median(cpus[c])
        own = statistics.median(stage_s[c])
        # the candidate's own stage over the rest of the same report: its growth, whatever the machine's load
        # (both are wall seconds of one report; on a shared machine the whole-report ratios carry its noise)
        share = statistics.median(s / (x - s) for s, x in zip(stage_s[c], walls[c])) if c != "base" else 0.0
        print(f"{c:<26} {w:>8.1f} {w / b:>7.2f} {cp:>8.1f} {cp / bc:>7.2f} {own:>12.1f} {share:>+9.1%}  "
              f"{' '.join(configs[c]) or '(none)'}", flush=True)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", default="digits,cifar", help="comma-separated: digits, cifar (default: both)")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds per group (default: 0)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per run (default: 3)")
    ap.add_argument("--samples", type=int, default=300, help="analysis samples (default: 300; issue 28: 1000)")
    ap.add_argument("--cifar-per-batch", type=int, default=200, help="images per CIFAR train batch file (x5)")
    ap.add_argument("--cifar-test", type=int, default=200, help="images in the CIFAR test batch")
    ap.add_argument("--compare", action="store_true", help="also time shared work off vs on, interleaved")
    ap.add_argument("--toggle", default=TOGGLE[0], help="--compare: the switch (default: FLATFL_SHARE_WORK)")
    ap.add_argument("--repeats", type=int, default=2, help="--compare: report pairs per setting (default: 2)")
    ap.add_argument("--report-flags", default="", help="extra flatfl report flags, space-separated")
    ap.add_argument("--candidates", action="store_true",
                    help="time the report's default set with each candidate measure added (see above), not the "
                    "breakdown")  # fmt: skip
    ap.add_argument(
        "--candidate",
        action="append",
        default=[],
        metavar="NAME=FLAGS",
        help="--candidates: one more candidate, its report flags space-separated (repeatable)",
    )
    ap.add_argument("--only", default="", metavar="LIST",
                    help="--candidates: only these configurations (comma-separated names as printed; the base set is "
                    "always run, for the ratios)")  # fmt: skip
    args = ap.parse_args()
    extra_candidates = {n: f.split() for n, _, f in (c.partition("=") for c in args.candidate)}
    only = [c.strip() for c in args.only.split(",")] if args.only else None
    seeds = [int(s) for s in args.seeds.split(",")]
    TOGGLE[0] = args.toggle
    extra = args.report_flags.split()
    cols, md5 = {}, {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        write_fake_cifar10(tmp / "data", args.cifar_per_batch, args.cifar_test)
        kinds = [k.strip() for k in args.settings.split(",") if k.strip()]
        runs = {}
        for kind in kinds:
            t0 = time.perf_counter()
            runs[kind] = train_runs(kind, tmp / "runs", seeds, args.rounds, tmp / "data")
            took = time.perf_counter() - t0
            print(f"{kind}: trained {len(runs[kind])} runs x {args.rounds} rounds in {took:.0f} s", flush=True)
        for kind in kinds:  # with --compare: pairs (before, after) interleaved; the breakdown is the last "after"
            at = ["--at-rounds", str(args.rounds), *extra]
            if args.candidates:
                candidates(kind, runs[kind], tmp, args.samples, args.repeats, at, extra_candidates, only)
                continue
            if args.compare:
                rep, wall, err = compare(kind, runs[kind], tmp, args.samples, args.repeats, at)
            else:
                rep, wall, err = report(runs[kind], tmp / f"{kind}-report", args.samples, True, at)
            cols[kind] = rep["timing"]
            md5[kind] = err.count("differs from the official archive")
            print(f"{kind}: flatfl report {wall:.1f} s wall, {rep['timing']['counts'].get('data', 0)} data loads")
            if kind == "cifar":
                print(f"cifar: {md5[kind]} md5 warnings in the report (6 per load of the data set: one per batch file)")
        if cols:
            print()
            print(side_by_side(cols), flush=True)


if __name__ == "__main__":
    main()
