"""``flatfl landscape``'s loss-surface flags: parsing, the dimension they imply, the checks between them, and
writing the surface's figures and page."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flatfl.cli.common import pos_float, pos_int
from flatfl.errors import UserError
from flatfl.flagtypes import FLOAT32_MAX, FLOAT_BOUND, levels_t, passes0_t


def flag_given(ns: dict[str, Any], key: str) -> bool:
    """The option was on the command line (its parser default is None, or False for a switch)."""
    return ns.get(key) not in (None, False)


def float_pair(text: str) -> tuple[float, float]:
    import argparse

    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not LO,HI (two numbers)") from None
    if not lo < hi or not all(abs(v) < float("inf") for v in (lo, hi)):
        raise argparse.ArgumentTypeError(f"{text!r}: LO must be below HI (finite numbers)")
    if max(abs(lo), abs(hi)) > FLOAT32_MAX:
        raise argparse.ArgumentTypeError(f"{text!r}: LO and HI must be {FLOAT_BOUND} in size")
    return lo, hi


def surface_arguments(p: Any, d: Any) -> None:
    """1D/2D loss surfaces: directions, grid, markers, BatchNorm."""
    g = p.add_argument_group(
        "loss surface",
        "--to or --surface-dirs interp mean --surface 1d; --models or --surface-dirs models/pca mean --surface 2d",
    )
    g.add_argument("--surface", choices=["1d", "2d"], help="loss/accuracy on a line or plane around the checkpoint")
    g.add_argument(
        "--surface-dirs",
        choices=["random", "eigen", "interp", "models", "pca"],
        help="random: Gaussian, filter-normalised, orthogonalised (Li et al. 2018); eigen: top Hessian "
        "eigenvectors scaled to ||w||; interp (1d): the line to --to; models (2d): the plane through the "
        "checkpoint and the two --models; pca (2d): the PCA plane of the run's global models up to this "
        f"round, trajectory drawn (Li et al. sec. 7) (default: {d.surface_dirs})",
    )
    g.add_argument(
        "--to",
        metavar="MODEL",
        help="interp: the other end -- a round_NNNN.safetensors of any run with the same model (e.g. FedAvg vs "
        "FedMut), mutant:SLOT (a model sent in the next round) or returned:SLOT (returned in this round)",
    )
    g.add_argument(
        "--models",
        nargs=2,
        metavar="MODEL",
        help="models: the two other models of the plane (same forms as --to), e.g. mutant:0 mutant:1",
    )
    g.add_argument("--grid", type=pos_int, metavar="N", help=f"points per axis (default: {d.grid})")
    g.add_argument(
        "--span",
        type=pos_float,
        metavar="R",
        help=f"random/eigen: coordinates run from -R to R (default: {d.span})",
    )
    g.add_argument(
        "--range",
        type=float_pair,
        metavar="LO,HI",
        help="axis range instead of --span, written --range=LO,HI when LO is negative (default: -R,R for "
        "random/eigen, -0.5,1.5 for interp/models, "
        "the trajectory plus 20%% for pca)",
    )
    g.add_argument(
        "--levels",
        type=levels_t,
        metavar="N",
        help="2D pages and figures: N linear Δloss levels (default: a 1-2-5 sequence, 0.01, 0.02, 0.05, 0.1, ... "
        "up to the top of --zrange, so the basin gets levels of its own; the colour bar's ticks are the levels); "
        "give two pages the same --levels and --zrange to compare them",
    )
    g.add_argument(
        "--zrange",
        type=float_pair,
        metavar="LO,HI",
        help="2D pages and figures: the Δloss range the colours and levels span (Δloss = loss - loss at the "
        "checkpoint; default: 0 to this surface's largest Δloss)",
    )
    g.add_argument(
        "--bn-reestimate",
        type=passes0_t,
        metavar="N",
        help="BatchNorm models: recompute the running statistics at every grid point on N batches of training "
        "data (default 0: keep the checkpoint's statistics, as Li et al.); the output says which was used",
    )
    g.add_argument(
        "--no-markers",
        action="store_true",
        help="do not draw this round's mutants / returned client models (from clients files) on the surface",
    )
    g.add_argument(
        "--include-bias-bn",
        action="store_true",
        help="also perturb biases and BatchNorm parameters (Li et al. zero them in random directions)",
    )


SURFACE_OPTIONS = (
    "surface_dirs", "to", "models", "grid", "span", "range", "levels", "zrange", "bn_reestimate", "no_markers",
    "include_bias_bn",
)  # fmt: skip


def implied_surface(ns: dict[str, Any]) -> str | None:
    """1d or 2d when a surface option names the dimension (--to/interp: 1d; --models/models/pca: 2d); a
    one-line error when surface options are given but the dimension is not named."""
    given = [k for k in SURFACE_OPTIONS if flag_given(ns, k)]
    if not given:
        return None
    if ns.get("to") is not None or ns.get("surface_dirs") == "interp":
        return "1d"
    if ns.get("models") is not None or ns.get("surface_dirs") in ("models", "pca"):
        return "2d"
    flag = "--" + given[0].replace("_", "-")
    raise UserError(f"{flag}: a loss-surface option; pass --surface 1d or --surface 2d as well")


def check_surface_flags(ns: dict[str, Any]) -> None:
    """--to means the interpolation line and --models the model plane (so given alone they set
    --surface-dirs); flags that contradict each other are refused instead of one being ignored."""
    dirs, dims = ns.get("surface_dirs"), ns.get("surface")
    for flag, key, kind, want in (("--to", "to", "interp", "1d"), ("--models", "models", "models", "2d")):
        if ns.get(key) is None:
            continue
        if dims != want:
            raise UserError(f"{flag}: the {kind} surface is {want}; drop --surface {dims} or {flag}")
        if dirs not in (None, kind):
            raise UserError(f"{flag}: only with --surface-dirs {kind} (given: {dirs})")
        ns["surface_dirs"] = kind
    if ns.get("span") is not None and ns.get("range") is not None:
        raise UserError("--span and --range: give one (--range=LO,HI sets the axis range itself)")


def record_title(record: dict[str, Any]) -> str:
    if record.get("round") is not None:
        return f"{record['algo']} round {record['round']}"
    if record.get("weights"):
        return Path(record["weights"]).name
    return str(record.get("model") or "model")  # a factory's own weights: the model's name


def write_surface(ns: dict[str, Any], m: Any, out: Path) -> None:
    from flatfl.analysis.interactive import surface_figures
    from flatfl.analysis.plots import plot_surface
    from flatfl.runs.files import write_page

    surf = m.surface
    title = f"{record_title(m.record)}: {surf.description['kind']} surface"
    plot_surface(surf, out / "surface", title=title, levels=ns["levels"], zrange=ns["zrange"])
    label = f"round {m.record['round']}" if m.record.get("round") is not None else record_title(m.record)
    figs = surface_figures([(label, surf)], title=title, levels=ns["levels"], zrange=ns["zrange"])
    sections = [(surf.description["kind"], f) for f in figs if f is not None]
    write_page(out / "surface.html", title, sections)


def check_grid(grid: int, dims: int) -> None:
    """At least 2 points per axis, and a grid whose result arrays fit in memory (estimated
    before anything is allocated: loss and accuracy, float64, a few copies)."""
    if grid < 2:
        raise UserError(f"--grid {grid}: a surface needs at least 2 points per axis")
    need = 4 * 16 * grid**dims
    try:
        have = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return
    if need > have:
        raise UserError(
            f"--grid {grid}: {grid}^{dims} points need about {need / 2**30:.0f} GiB, more than this machine's "
            f"{have / 2**30:.0f} GiB; use a smaller --grid"
        )
