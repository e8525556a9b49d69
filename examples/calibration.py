"""Calibration: does flatfl find flatness where the literature already knows the answer?

Five positive controls on the embedded digits data, each over 3 seeds, each trained with ``flatfl train``
and judged with flatfl's own measurements; a markdown table (control, the literature's expected direction
and size, flatfl's ratio with its 95% interval and verdict) is written to ``--out`` and printed.

1. Edge of stability (Cohen et al., ICLR 2021): full-batch gradient descent at three step sizes eta; the
   median lambda_max over every late round must lie within 20% of 2/eta (``calibration_eos.py``; figure
   ``ROOT/eos.png``/``.pdf``).
2. Large vs small batch (Keskar et al., ICLR 2017), centralised, the same number of epochs and step size:
   the large-batch model is sharper.
3. SAM vs SGD (Foret et al., ICLR 2021), centralised: SAM is flatter (needs ``flatfl train --local-opt``).
4. FedSAM vs FedAvg (Caldarola et al., ECCV 2022; Qu et al., ICML 2022) in the demo's federated setting
   (Dirichlet 0.1 over 20 clients, 5 a round): FedSAM is flatter; FedMAN (WACV 2024) measured FedSAM/FedAvg
   = 0.63-0.66 for lambda_max and 0.56-0.57 for the trace on CIFAR-100 (needs ``--algo fedsam``).
5. FedMut vs FedSAM vs FedAvg in that setting: no known answer; the table gives flatfl's.

Controls 2-5 go through ``flatfl report`` (lambda_max, trace, adaptive sharpness; paired over seeds;
verdict at the last round and at equal training loss). A control whose flags this flatfl lacks is listed
as not run. Runs live in ROOT/<control>-<arm>-s<seed>, reports in ROOT/report-<control>.

    python examples/calibration.py [--quick] [--root checkpoints/calibration] [--out FILE] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from calibration_eos import EosResult, EosSetting, fmt_ratio, measure_series, plot, train_args  # noqa: E402

from flatfl.analysis.verdict import NO_DIFFERENCE, Measure, paired, verdict, winner  # noqa: E402
from flatfl.checkpoint import RUN_JSON, read_metrics  # noqa: E402
from flatfl.cli import build_parser  # noqa: E402
from flatfl.cli import main as flatfl  # noqa: E402

MEASURES = {"lambda_max": "λmax", "trace": "trace", "sharpness_adaptive_l2": "adaptive sharpness (ρ 0.05)"}
FEDERATED = ("--dataset", "digits", "--clients", "20", "--frac", "0.25", "--dirichlet", "0.1")


@dataclass(frozen=True)
class Plan:
    """Sizes of one suite: full (the README's) or quick (the test suite's)."""

    seeds: tuple[int, ...]
    eos: tuple[EosSetting, ...]
    epochs: int  # centralised controls: rounds of one local epoch each
    fed_rounds: int
    save_every: int
    report: tuple[str, ...]


FULL = Plan(
    seeds=(0, 1, 2),
    eos=(EosSetting(0.1, 300, 250), EosSetting(0.2, 250, 200), EosSetting(0.4, 200, 150)),
    epochs=100,
    fed_rounds=100,
    save_every=5,
    report=("--samples", "0", "--sharpness", "adaptive_l2", "--trace-matvecs", "30"),
)
QUICK = Plan(
    seeds=(0, 1),
    eos=(EosSetting(0.4, 150, 100),),
    epochs=3,
    fed_rounds=3,
    save_every=1,
    report=("--samples", "200", "--sharpness", "none", "--trace-matvecs", "0", "--no-match"),
)


@dataclass(frozen=True)
class Arm:
    """One group of a control: its report label, folder name and ``flatfl train`` flags (no seed/out)."""

    label: str
    slug: str
    flags: tuple[str, ...]
    needs: str | None = None  # a flatfl train flag or --algo choice this arm cannot run without


@dataclass(frozen=True)
class Expect:
    """A comparison ``b`` against ``a`` and what the literature says about it."""

    a: str
    b: str
    flatter: str | None  # the arm the literature finds flatter; None: no established answer
    literature: str  # the expected direction and size, in words
    sizes: dict[str, str] = field(default_factory=dict)  # measure -> a published b/a ratio


@dataclass(frozen=True)
class Control:
    key: str
    title: str
    arms: tuple[Arm, ...]  # the first is the report's reference
    expects: tuple[Expect, ...]
    rounds: int


def controls(plan: Plan) -> list[Control]:
    """Controls 2-5 with this plan's sizes (control 1 is calibration_eos)."""
    one = ("--centralised",) if available("--centralised") else ("--clients", "1", "--partition", "iid", "--frac", "1")
    central = ("--dataset", "digits", *one, "--momentum", "0", "--lr", "0.1", "--local-epochs", "1",
               "--rounds", str(plan.epochs))  # fmt: skip
    small = Arm("SGD B=32", "central-b32", (*central, "--batch-size", "32"))
    large = Arm("SGD B=512", "central-b512", (*central, "--batch-size", "512"))
    sam = Arm("SAM B=32 ρ=0.05", "central-sam", (*small.flags, "--local-opt", "sam", "--rho", "0.05"), "--local-opt")
    fed = (*FEDERATED, "--rounds", str(plan.fed_rounds))
    fedavg = Arm("FedAvg", "fed-fedavg", (*fed, "--algo", "fedavg"))
    fedsam = Arm("FedSAM ρ=0.05", "fed-fedsam", (*fed, "--algo", "fedsam", "--rho", "0.05"), "fedsam")
    fedmut = Arm("FedMut", "fed-fedmut", (*fed, "--algo", "fedmut"))
    keskar = "large batch sharper (Keskar et al. 2017: sharper minima, worse generalisation)"
    fedman = {"lambda_max": "0.63-0.66", "trace": "0.56-0.57"}
    return [
        Control("batch", f"2. Large vs small batch (centralised, {plan.epochs} epochs, η 0.1)",
                (small, large), (Expect(small.label, large.label, small.label, keskar),), plan.epochs),
        Control("sam", f"3. SAM vs SGD (centralised, {plan.epochs} epochs)", (small, sam),
                (Expect(small.label, sam.label, sam.label, "SAM flatter (Foret et al. 2021)"),), plan.epochs),
        Control("fed", f"4-5. FedSAM, FedMut vs FedAvg (Dirichlet 0.1, 20 clients, 5 a round, {plan.fed_rounds} "
                "rounds)", (fedavg, fedsam, fedmut),
                (Expect(fedavg.label, fedsam.label, fedsam.label,
                        "FedSAM flatter; FedMAN (CIFAR-100): FedSAM/FedAvg λmax 0.63-0.66, trace 0.56-0.57", fedman),
                 Expect(fedavg.label, fedmut.label, None, "no established answer (FedMut's paper: flatter)"),
                 Expect(fedsam.label, fedmut.label, None, "no established answer")),
                plan.fed_rounds),
    ]  # fmt: skip


def available(needs: str | None) -> bool:
    """Whether this flatfl's ``train`` has the flag (``--local-opt``) or algorithm (``fedsam``) ``needs``."""
    if needs is None:
        return True
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    train = sub.choices["train"]
    if needs.startswith("--"):
        return needs in train._option_string_actions
    algo = train._option_string_actions["--algo"]
    return needs in (algo.choices or ()) or needs in (algo.help or "")


_TRAINED: set[Path] = set()  # runs this call trained (control 3 shares control 2's SGD runs)


def train(argv: list[str], out: Path, rounds: int, reuse: bool, log) -> None:
    """``flatfl train argv --out out``, replacing a previous run there (kept with ``reuse`` when finished)."""
    if out.resolve() in _TRAINED:
        return
    _TRAINED.add(out.resolve())
    if reuse and (out / RUN_JSON).is_file():
        done = read_metrics(out)
        if done and done[-1]["round"] >= rounds:
            return
    args = [*argv, "--out", str(out), "--no-progress", *(["--overwrite"] if (out / RUN_JSON).is_file() else [])]
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        code = flatfl(args)
    if code not in (0, 1):  # 1: diverged (kept; the report lists it)
        raise SystemExit(f"flatfl {' '.join(args)} failed ({code}): {err.getvalue().strip()[-500:]}")
    log(f"  trained {out.name} ({time.perf_counter() - t0:.0f} s)")


def run_eos(plan: Plan, root: Path, reuse: bool, centralised: bool, log) -> Iterator[EosResult]:
    """Train and measure each step size in turn (one seed in quick mode), yielding its result."""
    for st in plan.eos:
        series = []
        for seed in plan.seeds[: 1 if plan is QUICK else None]:
            out = root / f"eos-lr{st.lr:g}-s{seed}"
            train(train_args(st, seed, out, centralised), out, st.rounds, reuse, log)
            series.append(measure_series(out, st.late_from, log))
        yield EosResult(st, tuple(series))


def run_control(c: Control, plan: Plan, root: Path, reuse: bool, log) -> dict | None:
    """Train every arm (skipping those this flatfl cannot run) and report; the report's per-seed values."""
    arms = [a for a in c.arms if available(a.needs)]
    if len(arms) < 2:
        return None
    runs: dict[str, list[Path]] = {}
    for a in arms:
        for seed in plan.seeds:
            out = root / f"{a.slug}-s{seed}"
            flags = [*a.flags, "--seed", str(seed), "--save-every", str(plan.save_every)]
            train(["train", *flags], out, c.rounds, reuse, log)
            runs.setdefault(a.label, []).append(out)
    rep = root / f"report-{c.key}"
    args = ["report", *(str(p) for ps in runs.values() for p in ps), "--out", str(rep), "--at-rounds", str(c.rounds),
            "--no-surface", "--no-spread", "--slices", "0", "--no-progress", "--allow-mixed-optimizers", *plan.report,
            *(f"--label={p}={lab}" for lab, ps in runs.items() for p in ps)]  # fmt: skip
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()) as text, contextlib.redirect_stderr(io.StringIO()) as err:
        code = flatfl(args)
    if code != 0:
        raise SystemExit(f"flatfl report for {c.key} failed ({code}): {err.getvalue().strip()[-800:]}")
    log(f"  report {rep} ({time.perf_counter() - t0:.0f} s)")
    values = per_seed_values(rep)
    return {"report": str(rep), "text": text.getvalue(), "values": values, "arms": [a.label for a in arms]}


def per_seed_values(rep: Path) -> dict[str, dict[str, dict[str, dict[int, float]]]]:
    """condition -> measure -> group -> seed -> value, from report.json's conditions and report.csv's rows."""
    doc = json.loads((rep / "report.json").read_text())
    rows = list(csv.DictReader(open(rep / "report.csv")))
    out: dict = {}
    for cond in doc["verdict"]:
        for m in MEASURES:
            per: dict[str, dict[int, float]] = {}
            for label, seeds in cond["rounds"].items():
                for seed, match in seeds.items():
                    rnd = match["round"]
                    row = next((r for r in rows if r["run"] == label and r["seed"] == seed
                                and rnd is not None and int(r["round"]) == rnd), None)  # fmt: skip
                    if row is not None and row.get(m) not in (None, ""):
                        per.setdefault(label, {})[int(seed)] = float(row[m])
            out.setdefault(cond["condition"], {})[m] = per
    return out


def compare(values: dict[str, dict[int, float]], e: Expect, key: str) -> dict:
    """flatfl's paired comparison of b against a (ratio b/a, its 95% interval, the verdict) and agreement."""
    a, b = values.get(e.a, {}), values.get(e.b, {})
    measure = Measure(key, MEASURES[key])
    p = paired(a, b, ratio=True)
    out = {"measure": key, "a": e.a, "b": e.b, "verdict": verdict(measure, p, e.a, e.b), "ratio": None, "lo": None,
           "hi": None, "n": 0 if p is None else p.n}  # fmt: skip
    if p is not None and p.log:
        out["ratio"] = math.exp(-p.mean)
        if p.lo is not None:
            out["lo"], out["hi"] = math.exp(-p.hi), math.exp(-p.lo)
    w = winner(measure, p, e.a, e.b)
    out["agrees"] = ("—" if e.flatter is None else "yes" if w == e.flatter else "no: the opposite" if w is not None
                     else "no: no clear difference" if out["verdict"] == NO_DIFFERENCE
                     else "undecided")  # fmt: skip
    return out


def _ratio_text(c: dict) -> str:
    if c["ratio"] is None:
        return "—"
    ci = f" [{c['lo']:.2f}, {c['hi']:.2f}]" if c["lo"] is not None else ""
    return f"{c['ratio']:.2f}{ci}"


def table(eos: list[EosResult], fed: list[tuple[Control, dict | None]], condition: str = "round") -> str:
    """The markdown table: one row per EoS step size, then per comparison and measure of controls 2-5."""
    lines = ["| control | literature: expected | measure | flatfl: ratio [95% CI] | flatfl verdict | agrees |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in eos:
        st = r.setting
        verdict_text = "holds" if r.holds else "does not hold"
        lines.append(f"| 1. Edge of stability, η {st.lr:g} (2/η = {st.threshold:g}), {len(r.series)} seed(s) | "
                     f"λmax settles at 2/η (within ±20%) in rounds {st.late_from}-{st.rounds} | "
                     f"late-round median λmax / (2/η) | {fmt_ratio(r)} | {verdict_text} | "
                     f"{'yes' if r.holds else 'no'} |")  # fmt: skip
        lines.append(f"| ↳ diagnostic | curvature along the GD step = 2/η in a period-2 orbit | median secant "
                     f"curvature / (2/η) | {r.secant_ratio:.2f} | — | — |")  # fmt: skip
    for c, res in fed:
        if res is None:
            lines.append(f"| {c.title} | {c.expects[0].literature} | — | not run: this flatfl lacks "
                         f"{', '.join(a.needs for a in c.arms if a.needs)} | — | — |")  # fmt: skip
            continue
        for e in c.expects:
            if e.a not in res["arms"] or e.b not in res["arms"]:
                continue
            for m in MEASURES:
                cmp = compare(res["values"].get(condition, {}).get(m, {}), e, m)
                if cmp["n"] == 0:
                    continue
                size = f"; published {e.b}/{e.a} {e.sizes[m]}" if m in e.sizes else ""
                lines.append(f"| {c.title}: {e.b} / {e.a} | {e.literature}{size} | {MEASURES[m]} | "
                             f"{_ratio_text(cmp)} | {cmp['verdict']} | {cmp['agrees']} |")  # fmt: skip
    return "\n".join(lines)


def _seeds(text: str) -> tuple[int, ...]:
    try:
        return tuple(sorted({int(s) for s in text.split(",") if s.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of seeds") from None


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick",
        action="store_true",
        help="the test suite's sizes: EoS at eta 0.4 on one seed, "
        "controls 2-5 with 2 seeds and 3 rounds (checks that everything runs; numbers not meaningful)",
    )
    ap.add_argument(
        "--root", type=Path, default=Path("checkpoints/calibration"), metavar="DIR",
        help="the suite's own folder: runs, reports and the table (default checkpoints/calibration)",
    )  # fmt: skip
    ap.add_argument("--out", type=Path, default=None, metavar="FILE", help="the table (default ROOT/calibration.md)")
    ap.add_argument("--seeds", type=_seeds, default=None, metavar="LIST", help="default 0,1,2 (quick: 0,1)")
    ap.add_argument(
        "--only",
        default="eos,fed,batch,sam",
        metavar="LIST",
        help="controls to run, in this order (default: eos,fed,batch,sam)",
    )
    ap.add_argument("--reuse", action="store_true", help="keep finished runs already in ROOT (same flags assumed)")
    args = ap.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.seeds:
        plan = Plan(args.seeds, plan.eos, plan.epochs, plan.fed_rounds, plan.save_every, plan.report)
    only = [k for k in args.only.split(",") if k]
    unknown = set(only) - {"eos", "batch", "sam", "fed"}
    if unknown:
        ap.error(f"--only: unknown control(s) {sorted(unknown)}; choose from eos, batch, sam, fed")
    root, t0 = args.root, time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    log = lambda s: print(s, flush=True)  # noqa: E731
    out = args.out or root / "calibration.md"
    eos: list[EosResult] = []
    done: dict[str, tuple[Control, dict | None]] = {}
    by_key = {c.key: c for c in controls(plan)}
    for key in only:  # in the order given; the table keeps the controls' order; written after each control
        if key == "eos":
            log("1. edge of stability")
            for r in run_eos(plan, root, args.reuse, available("--centralised"), log):
                eos.append(r)
                write(eos, [done[c.key] for c in controls(plan) if c.key in done], plan, args.quick, out, root, t0)
            log(f"  figure: {', '.join(map(str, plot(eos, root / 'eos')))}")
        else:
            log(by_key[key].title)
            done[key] = (by_key[key], run_control(by_key[key], plan, root, args.reuse, log))
        result = write(eos, [done[c.key] for c in controls(plan) if c.key in done], plan, args.quick, out, root, t0)
    print("\n" + out.read_text())
    return result


def write(eos: list[EosResult], done: list, plan: Plan, quick: bool, out: Path, root: Path, t0: float) -> dict:
    """The markdown table to ``out`` and every number to ROOT/calibration.json (so far: rewritten per control)."""
    wall = time.perf_counter() - t0
    parts = ["At the last round:", table(eos, done, "round")]
    at_loss = table([], done, "loss")
    if at_loss.count("\n") > 1:  # rows beyond the header (quick mode: no matching)
        parts += ["At equal training loss (each run at its first saved round at or below the common level):", at_loss]
    parts.append(f"{'quick' if quick else 'full'} suite, seeds {','.join(map(str, plan.seeds))}, {wall:.0f} s wall")
    text = "\n\n".join(parts)
    out.write_text(text + "\n")
    result = {"eos": [{**asdict(r.setting), "ratio": r.ratio, "interval": r.interval(), "holds": r.holds,
                       "secant_ratio": r.secant_ratio, "within_share": r.within,
                       "series": [asdict(s) for s in r.series]} for r in eos],
              "controls": {c.key: res for c, res in done}, "wall_s": wall, "table": str(out)}  # fmt: skip
    (root / "calibration.json").write_text(json.dumps(result, indent=1, default=str))
    return result


if __name__ == "__main__":
    main()
