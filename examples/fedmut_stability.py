"""Where FedMut is stable: a grid over radius x momentum x lr (x Dirichlet alpha), several seeds.

Every cell trains FedMut (20 clients, 25 % per round, every other flag at flatfl's default) for
each seed, with and without the mutation cap (``--mutation-cap``, a safeguard NOT in the paper);
radius 0 is FedMut without mutation, i.e. FedAvg with the plain mean, the flatness baseline. A run
is *diverged* when ``flatfl train`` stops on a non-finite value (its divergence round is the one
after the last finite checkpoint), else *finite*. For each finite run, on the last global model and
the same 500 seeded training samples: lambda_max by Lanczos (``flatfl.runs.landscape.compute``,
relative residual 1e-3) and the verdict's 1D basin widths at Δloss 0.1 and 1.0 (Li et al.,
NeurIPS 2018: the mean loss rise along 10 filter-normalised random directions, t in [-1, 1],
``flatfl.analysis.slices``, as ``flatfl report`` measures them; wider is flatter); also the final test
accuracy (mean of the last 5 rounds) and the largest mutation_rel = radius*||d||/||w|| met.
Writes ``stability.csv`` (one line per run) and ``stability.png``: top, one heat map per cap
setting (accuracy over seeds; each cell annotated with how many seeds diverged, the mean
lambda_max and widths of the others); bottom, FedMut (radius > 0, cap off / on) against the
radius-0 baseline of the same column: lambda_max ratio (< 1: flatter) and the width ratios at
Δloss 0.1 and 1.0 (> 1: flatter; "*": some width censored at the grid's end, t = +-1).

    python examples/fedmut_stability.py [--dataset digits] [--radii 0,2,4] [--momenta 0.5,0.9]
        [--lrs 0.01,0.05] [--dirichlet 0.1] [--seeds 0,1] [--rounds 30] [--caps none,0.05]
        [--root checkpoints/stability] [--data-root DIR] [--threads 1] [--plot-only]
"""

from __future__ import annotations

import argparse
import csv
import itertools
from pathlib import Path

import numpy as np
import torch
from quiet_runs import lambda_max_direct, train_quiet, widths_direct
from tqdm.auto import tqdm

from flatfl.checkpoint import read_metrics

WIDTHS = ["width_0.1", "width_1"]  # report.csv's keys: width_{tau:g} at Δloss tau = 0.1, 1.0
FIELDS = ["dirichlet", "radius", "momentum", "lr", "cap", "seed", "status", "diverged_round", "final_acc",
          "lambda_max", *WIDTHS, *(f"{w}_censored" for w in WIDTHS), "max_mutation_rel", "last_round"]  # fmt: skip
SAMPLES = 500  # training samples for lambda_max and the widths


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def run_cell(args: argparse.Namespace, alpha: float, radius: float, mom: float, lr: float, cap: str, seed: int) -> dict:
    name = f"a{alpha}-r{radius}-m{mom}-lr{lr}-cap{cap}-s{seed}"
    out = args.root / name
    flags = ["--dataset", args.dataset, "--clients", "20", "--frac", "0.25", "--dirichlet", str(alpha),
             "--algo", "fedmut", "--radius", str(radius), "--momentum", str(mom), "--lr", str(lr),
             "--rounds", str(args.rounds), "--seed", str(seed)]  # fmt: skip
    flags += [] if cap == "none" else ["--mutation-cap", cap]
    flags += ["--data-root", str(args.data_root)] if args.data_root else []
    code = train_quiet(flags, out)
    m = read_metrics(out)
    last = m[-1]["round"]
    rels = [r.get("mutation_rel") or 0.0 for r in m[1:]]
    nan = {w: float("nan") for w in WIDTHS} | {f"{w}_censored": "" for w in WIDTHS}
    return {
        "dirichlet": alpha, "radius": radius, "momentum": mom, "lr": lr, "cap": cap, "seed": seed,
        "status": "diverged" if code == 1 else "finite", "diverged_round": last + 1 if code == 1 else "",
        "final_acc": float(np.mean([r["test_acc"] for r in m[-5:]])) if last else float("nan"),
        "lambda_max": lambda_max_direct(out, last, SAMPLES) if code == 0 else float("nan"),
        **(widths_direct(out, last, SAMPLES) if code == 0 else nan),
        "max_mutation_rel": max(rels) if rels else 0.0, "last_round": last,
    }  # fmt: skip


def parse_row(r: dict[str, str]) -> dict:
    """A stability.csv line with its numbers as numbers (widths nan in a CSV written before they were)."""
    out: dict = dict(r)
    for k in ("dirichlet", "radius", "momentum", "lr", "final_acc", "lambda_max", *WIDTHS):
        out[k] = float(r.get(k) or "nan")
    return out


Column = tuple[float, float, float]  # (dirichlet, momentum, lr)


def select(rows: list[dict], col: Column, radius: float, cap: str) -> list[dict]:
    """The runs (all seeds) of one cell of the map."""
    return [r for r in rows if (r["dirichlet"], r["momentum"], r["lr"], r["radius"], r["cap"]) == (*col, radius, cap)]


def mean_of(runs: list[dict], key: str) -> float:
    """Mean of ``key`` over the finite runs (nan when none)."""
    vals = [r[key] for r in runs if r["status"] == "finite"]
    return float(np.mean(vals)) if vals else float("nan")


def cell_text(cell: list[dict]) -> str:
    """accuracy, diverged seeds (their rounds), mean lambda_max and widths ("≥": some width censored)."""
    ok = [r for r in cell if r["status"] == "finite"]
    div = [str(r["diverged_round"]) for r in cell if r["status"] == "diverged"]
    text = (f"acc {mean_of(cell, 'final_acc'):.2f}\n" if ok else "") + f"{len(div)}/{len(cell)} div"
    text += f" (r{','.join(div)})" if div else ""
    if not ok:
        return text + "\n—"
    cens = {w: any(str(r.get(f"{w}_censored")) == "True" for r in ok) for w in WIDTHS}
    ws = "/".join(f"{'≥' if cens[w] else ''}{mean_of(cell, w):.2f}" for w in WIDTHS)
    return text + f"\nλ {mean_of(cell, 'lambda_max'):.1f}\nw {ws}"


def ratios(rows: list[dict], cols: list[Column], radii: list[float], caps: list[str]) -> list[dict]:
    """FedMut (radius > 0, each cap) against the radius-0 baseline of its column: ratios of the seed means.

    ``lambda_max`` = mean lambda_max(FedMut) / mean lambda_max(radius 0) (< 1: flatter), each
    width key the same for that width (> 1: flatter), over the finite seeds (``finite`` = how many);
    ``<width>_censored``: some width of either side is a lower bound (the grid's end)."""
    out = []
    for col in cols:
        base = select(rows, col, 0.0, "none")
        for rad, cap in itertools.product([r for r in radii if r > 0], caps):
            cell = select(rows, col, rad, cap)
            if not cell:
                continue
            ratio = {k: np.float64(mean_of(cell, k)) / mean_of(base, k) for k in ("lambda_max", *WIDTHS)}
            ok = [r for r in cell + base if r["status"] == "finite"]
            cens = {f"{w}_censored": any(str(r.get(f"{w}_censored")) == "True" for r in ok) for w in WIDTHS}
            fin = sum(r["status"] == "finite" for r in cell)
            out.append({"col": col, "radius": rad, "cap": cap, "finite": fin, "runs": len(cell), **ratio, **cens})
    return out


def heat_row(axes, rows: list[dict], cols: list[Column], radii: list[float], caps: list[str]):
    """One accuracy heat map per cap setting, each cell annotated by :func:`cell_text`; the last image."""
    im = None
    for ax, cap in zip(axes, caps):
        acc = np.full((len(radii), len(cols)), np.nan)
        for (i, rad), (j, col) in itertools.product(enumerate(radii), enumerate(cols)):
            cell = select(rows, col, rad, cap)
            if not cell:
                continue
            acc[i, j] = np.nan_to_num(mean_of(cell, "final_acc"), nan=0.0)
            ax.text(j, i, cell_text(cell), ha="center", va="center", fontsize=6, color="k" if acc[i, j] > 0.5 else "w")
        im = ax.imshow(acc, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(cols)), [f"α{a}\nm{mo} lr{lr}" for a, mo, lr in cols], fontsize=7)
        ax.set_yticks(range(len(radii)), [f"radius {r:g}" for r in radii], fontsize=8)
        note = " (off: the paper's FedMut)" if cap == "none" else " (safeguard, not in the paper)"
        ax.set_title(f"cap {cap}{note}", fontsize=8)
    return im


def ratio_panel(ax, table: list[dict], cols: list[Column], key: str, ylabel: str) -> None:
    """Grouped bars: ``key``'s ratio FedMut / radius 0 per column, one bar per (radius, cap).

    "div": every seed of that FedMut cell diverged; "n/a": no finite value (e.g. no width measured);
    "*": a width on either side is censored at the grid's end, so the ratio is only indicative."""
    series = list(dict.fromkeys((t["radius"], t["cap"]) for t in table))
    width = 0.8 / max(len(series), 1)
    for k, (rad, cap) in enumerate(series):
        xs = np.arange(len(cols)) + (k - (len(series) - 1) / 2) * width
        by_col = {t["col"]: t for t in table if (t["radius"], t["cap"]) == (rad, cap)}
        vals = np.array([by_col[c][key] if c in by_col else np.nan for c in cols])
        bars = ax.bar(xs, np.nan_to_num(vals, nan=0.0), width, label=f"radius {rad:g}, cap {cap}")
        for x, v, c, bar in zip(xs, vals, cols, bars):
            gone = c in by_col and by_col[c]["finite"] == 0
            star = "*" if c in by_col and by_col[c].get(f"{key}_censored") else ""
            text = f"{v:.2f}{star}" if np.isfinite(v) else ("div" if gone else "n/a")
            ax.text(x, v if np.isfinite(v) else 0.02, text, ha="center", va="bottom", fontsize=6,
                    color="k" if np.isfinite(v) else bar.get_facecolor())  # fmt: skip
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xticks(range(len(cols)), [f"α{a} m{mo} lr{lr}" for a, mo, lr in cols], fontsize=7)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_ylim(0, 1.3 * max(1.0, np.nanmax([t[key] for t in table] + [1.0])))
    ax.legend(fontsize=6, loc="upper left", ncols=len(series))


def figure(rows: list[dict], args: argparse.Namespace, path: Path) -> None:
    """Top: :func:`heat_row`; bottom: lambda_max and width ratios against radius 0 (:func:`ratios`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    caps = list(dict.fromkeys(r["cap"] for r in rows))
    cols = list(itertools.product(floats(args.dirichlet), floats(args.momenta), floats(args.lrs)))
    radii = floats(args.radii)
    fig = plt.figure(figsize=(2.2 + 1.6 * len(cols) * len(caps), 4.5 + 0.8 * len(radii)), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[0.6 + 0.8 * len(radii), 3.2])
    axes = np.atleast_1d(top.subplots(1, len(caps)))
    im = heat_row(axes, rows, cols, radii, caps)
    top.colorbar(im, ax=axes, label="final test accuracy\n(finite seeds; 0 = all diverged)")
    top.suptitle(f"FedMut stability on {args.dataset}, {args.rounds} rounds, seeds {args.seeds}; "
                 "λ = λmax, w = 1D width at Δloss 0.1 / 1.0 (≥: censored at the grid's end)", fontsize=8)  # fmt: skip
    table = ratios(rows, cols, radii, caps)
    panels = [("lambda_max", "λmax FedMut / radius 0\n(< 1: flatter)")]
    panels += [(w, f"1D width at Δloss {w[6:]}, FedMut / radius 0\n(> 1: flatter; *: censored)") for w in WIDTHS]
    for ax, (key, label) in zip(np.atleast_1d(bottom.subplots(1, len(panels))), panels):
        if any(r == 0 for r in radii) and table:
            ratio_panel(ax, table, cols, key, label)
    bottom.suptitle("FedMut against the radius-0 baseline (FedAvg with the plain mean), seed means", fontsize=8)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def print_ratios(rows: list[dict], args: argparse.Namespace) -> None:
    """The bottom panels as text ("*": censored width)."""
    cols = list(itertools.product(floats(args.dirichlet), floats(args.momenta), floats(args.lrs)))
    caps = list(dict.fromkeys(r["cap"] for r in rows))
    for t in ratios(rows, cols, floats(args.radii), caps):
        a, mo, lr = t["col"]
        ws = ", ".join(f"{w} x{t[w]:.2f}{'*' if t[f'{w}_censored'] else ''}" for w in WIDTHS)
        print(f"alpha {a} momentum {mo} lr {lr} radius {t['radius']:g} cap {t['cap']}: finite {t['finite']}/"
              f"{t['runs']}, vs radius 0: lambda_max x{t['lambda_max']:.2f}, {ws}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", metavar="NAME", default="digits", help="any flatfl dataset (default: digits)")
    ap.add_argument(
        "--data-root", type=Path, metavar="DIR", help="where on-disk datasets live, for CIFAR (default: data)"
    )
    ap.add_argument("--radii", metavar="LIST", default="0,2,4", help="FedMut radii; 0 = no mutation (default: 0,2,4)")
    ap.add_argument("--momenta", metavar="LIST", default="0.5,0.9", help="local SGD momenta (default: 0.5,0.9)")
    ap.add_argument("--lrs", metavar="LIST", default="0.01,0.05", help="local learning rates (default: 0.01,0.05)")
    ap.add_argument(
        "--dirichlet", metavar="LIST", default="0.1", help="Dirichlet alphas of the label skew (default: 0.1)"
    )
    ap.add_argument("--seeds", metavar="LIST", default="0,1", help="run seeds (default: 0,1)")
    ap.add_argument("--rounds", metavar="N", type=int, default=30, help="rounds per run (default: 30)")
    ap.add_argument(
        "--caps", metavar="LIST", default="none,0.05", help="mutation caps rho; none = off (default: none,0.05)"
    )
    ap.add_argument(
        "--root",
        type=Path,
        default=Path("checkpoints/stability"),
        metavar="DIR",
        help="runs (overwritten), stability.csv and stability.png go here (default: checkpoints/stability)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        metavar="N",
        help="torch CPU threads; 1 avoids thrashing on a busy CPU (default: 1)",
    )
    ap.add_argument("--plot-only", action="store_true", help="redraw stability.png from --root's stability.csv")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.plot_only:
        with open(args.root / "stability.csv") as f:
            rows = [parse_row(r) for r in csv.DictReader(f)]
        figure(rows, args, args.root / "stability.png")
        print_ratios(rows, args)
        print(f"wrote {args.root / 'stability.png'}")
        return
    grid = [
        (a, rad, mo, lr, cap, s)
        for a in floats(args.dirichlet)
        for rad in floats(args.radii)
        for mo in floats(args.momenta)
        for lr in floats(args.lrs)
        for cap in args.caps.split(",")
        for s in (int(v) for v in args.seeds.split(","))
        if not (rad == 0 and cap != "none")  # the cap changes nothing without mutation
    ]
    args.root.mkdir(parents=True, exist_ok=True)
    rows = []
    with open(args.root / "stability.csv", "w", newline="") as f:
        w = csv.DictWriter(f, FIELDS)
        w.writeheader()
        for cell in tqdm(grid, desc="runs", unit="run"):
            rows.append(run_cell(args, *cell))
            w.writerow(rows[-1])
            f.flush()
    figure(rows, args, args.root / "stability.png")
    print_ratios(rows, args)
    print(f"wrote {args.root / 'stability.csv'} and {args.root / 'stability.png'}")


if __name__ == "__main__":
    main()
