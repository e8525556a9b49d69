"""``flatfl landscape``: curvature, sharpness and the federated view of one checkpoint."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flatfl.cli.common import (
    SAMPLES_HELP,
    add_analysis_arguments,
    add_deprecated_alias,
    analysis_device,
    nonneg_int,
    pos_float,
    pos_int,
    samples_setting,
    samples_t,
)
from flatfl.errors import UserError

if TYPE_CHECKING:
    from flatfl.runs.settings import LandscapeSettings


def _float_pair(text: str) -> tuple[float, float]:
    import argparse

    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not LO,HI (two numbers)") from None
    if not lo < hi or not all(abs(v) < float("inf") for v in (lo, hi)):
        raise argparse.ArgumentTypeError(f"{text!r}: LO must be below HI (finite numbers)")
    return lo, hi


def add_parser(sub: Any) -> None:
    from flatfl.runs.landscape import LandscapeSettings

    d = LandscapeSettings()
    p = sub.add_parser(
        "landscape",
        help="Hessian eigenvalues, trace, spectral density, sharpness and loss surfaces of one checkpoint",
        description=(
            "Measure the curvature of the loss at one saved global model. Reads --ckpt and the run.json "
            "beside it (model and data are rebuilt from it) -- or any model: --model, --weights, --data -- "
            "and writes DIR/landscape.json with every "
            "number and its settings, plus density.png/.pdf with --density. The model is evaluated in "
            "eval mode (BatchNorm running statistics) on the full chosen data (exact, not one mini-batch). "
            "Under torchrun (torchrun --nproc_per_node=N -m flatfl landscape ...) the Hessian-vector products "
            "are summed over data shards and surface points are split across the ranks; rank 0 writes."
        ),
    )
    p.add_argument("--ckpt", type=Path, metavar="FILE", help="a round_NNNN.safetensors of a flatfl run")
    p.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="output folder (default: RUN/landscape/round_NNNN; with --model checkpoints/landscape/NAME)",
    )
    _foreign_arguments(p, d)
    _data_arguments(p, d)
    from flatfl.runs.measures import registered

    add_measure_flags(p, registered())
    _surface_arguments(p, d)
    _federated_arguments(p, d)


def _foreign_arguments(p: Any, d: Any) -> None:
    """--model/--weights/--data/--forward/--targets: a model flatfl did not train."""
    f = p.add_argument_group(
        "any model (instead of --ckpt)",
        "analyse a model flatfl did not train; --data then names its data (see below)",
    )
    f.add_argument(
        "--model",
        metavar="SPEC",
        help="MODULE:FACTORY (a function returning an nn.Module, imported from the current folder or installed "
        "packages) or a torchvision model name (resnet18, vit_b_16, ...)",
    )
    f.add_argument(
        "--model-kwargs", default="{}", metavar="JSON", help="keyword arguments of the factory (default: {})"
    )
    f.add_argument(
        "--weights",
        metavar="FILE",
        help=".pt/.pth state dict (loaded with weights_only=True, no pickle code runs) or .safetensors; "
        "its SHA-256 goes into landscape.json (default: the factory's own weights)",
    )
    f.add_argument(
        "--forward",
        metavar="MODULE:FUNC",
        help="forward(model, batch) -> output, for batches other than (x, y) (dicts, several inputs)",
    )
    f.add_argument("--targets", metavar="MODULE:FUNC", help="targets(batch) -> the labels the loss compares with")


def _data_arguments(p: Any, d: Any) -> None:
    """Which data, how many samples, in which precision."""
    g = p.add_argument_group("data")
    add_analysis_arguments(
        g,
        d,
        data_help="; with --model: MODULE:FACTORY (returning a DataLoader, Dataset or (x, y) tensors), a "
        "torchvision data set NAME:ROOT[:train|test] (cifar10:/data), imagefolder:DIR or digits[:train|test]",
    )
    g.add_argument(
        "--samples",
        type=samples_t,
        metavar="N",
        help=f"a seeded random subset of N samples ({SAMPLES_HELP}), or auto: subsets of 256, 512, ... samples "
        "until the data-sampling error of lambda_max (--hessian) and the trace (--trace) is below --data-tol, "
        "reported as data_error (default: all)",
    )
    g.add_argument(
        "--data-tol",
        type=pos_float,
        default=d.data_tol,
        metavar="REL",
        help=f"--samples auto: relative data-sampling error to reach (default: {d.data_tol})",
    )
    g.add_argument(
        "--dtype",
        choices=["float32", "float64"],
        default=d.dtype,
        help=f"precision of the analysis; float64 for reference checks (default: {d.dtype})",
    )


GROUP_HELP = {
    "curvature": "an option of a measure switches it on: --topk/--tol/--max-vectors mean --hessian, --trace-matvecs/"
    "--trace-method mean --trace, --slq-runs/--slq-steps mean --density",
    "sharpness": "--eps alone means --sharpness epsilon, --m alone --sharpness sam; the other options need --sharpness",
    "more measures": "landscape.json: literature",
}


def add_measure_flags(p: Any, specs: Any) -> None:
    """The flags of the measures ``specs`` (:mod:`flatfl.runs.measures`), one --help group per spec group, each
    flag once (the sharpness measures share theirs)."""
    groups: dict[str, Any] = {}
    seen: set[str] = set()
    for spec in specs:
        for flag in spec.flags:
            if flag.names[0] in seen:
                continue
            seen.add(flag.names[0])
            if spec.group not in groups:
                groups[spec.group] = p.add_argument_group(spec.group, GROUP_HELP.get(spec.group))
            groups[spec.group].add_argument(*flag.names, **flag.kwargs)


def _surface_arguments(p: Any, d: Any) -> None:
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
        type=_float_pair,
        metavar="LO,HI",
        help="axis range instead of --span, written --range=LO,HI when LO is negative (default: -R,R for "
        "random/eigen, -0.5,1.5 for interp/models, "
        "the trajectory plus 20%% for pca)",
    )
    g.add_argument(
        "--levels",
        type=pos_int,
        metavar="N",
        help="2D pages and figures: N linear Δloss levels (default: a 1-2-5 sequence, 0.01, 0.02, 0.05, 0.1, ... "
        "up to the top of --zrange, so the basin gets levels of its own; the colour bar's ticks are the levels); "
        "give two pages the same --levels and --zrange to compare them",
    )
    g.add_argument(
        "--zrange",
        type=_float_pair,
        metavar="LO,HI",
        help="2D pages and figures: the Δloss range the colours and levels span (Δloss = loss - loss at the "
        "checkpoint; default: 0 to this surface's largest Δloss)",
    )
    g.add_argument(
        "--bn-reestimate",
        type=nonneg_int,
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


def _federated_arguments(p: Any, d: Any) -> None:
    """Global vs local flatness per client."""
    g = p.add_argument_group("federated view")
    g.add_argument(
        "--federated",
        action="store_true",
        help="per client: lambda_max of its own loss at the global model and at the model it returned "
        "(needs --save-clients), and |cos| of its top eigenvector with the --data one",
    )
    g.add_argument(
        "--federated-clients",
        metavar="SEL",
        help="clients of the federated view (switches --federated on): all, sampled (this round's, from "
        "clients_NNNN), or ids like 0,3,5 (default: sampled when saved, else all)",
    )
    add_deprecated_alias(g, "--clients", "--federated-clients", "federated_clients")


def registry_settings(ns: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """The settings of every registered measure that is not a built-in one, from the command line (the
    ``measures`` of :class:`~flatfl.runs.settings.LandscapeSettings`); one-line errors for bad values."""
    from flatfl.runs.measures import registered

    return tuple((spec.name, st) for spec in registered() if not spec.builtin and (st := spec.parse(ns)) is not None)


# The options of each measure: given alone, an option switches its measure on (--topk 3 alone means
# --hessian --topk 3). --max-vectors bounds Lanczos and SLQ: with --density (or an SLQ option) it switches
# nothing else on. Surface and shared sharpness options whose measure is ambiguous are refused in one line.
MEASURE_OPTIONS = {
    "hessian": ("topk", "tol", "max_vectors"),
    "trace": ("trace_matvecs", "trace_method"),
    "density": ("slq_runs", "slq_steps"),
    "federated": ("federated_clients",),
}
# sharpness options that name one measure; --rho, --sigma, --sharpness-steps and --sharpness-samples belong to
# several, so they need --sharpness
SHARPNESS_OPTIONS = {"eps": "epsilon", "m": "sam"}
SHARPNESS_SHARED = ("rho", "sigma", "sharpness_steps", "sharpness_samples")
SURFACE_OPTIONS = (
    "surface_dirs", "to", "models", "grid", "span", "range", "levels", "zrange", "bn_reestimate", "no_markers",
    "include_bias_bn",
)  # fmt: skip
DEFAULTS = {"federated_clients": "clients"}  # flag -> LandscapeSettings field, where they differ


def _given(ns: dict[str, Any], key: str) -> bool:
    """The option was on the command line (its parser default is None, or False for a switch)."""
    return ns.get(key) not in (None, False)


def implied_measures(ns: dict[str, Any]) -> dict[str, Any]:
    """``ns`` with the measures its options imply switched on and every option left out at its default."""
    from flatfl.runs.landscape import LandscapeSettings

    ns = dict(ns)
    density_on = ns.get("density") or any(_given(ns, k) for k in MEASURE_OPTIONS["density"])
    # --tol and --max-vectors also steer the federated view's and eigen surfaces' Lanczos and SLQ's basis:
    # they switch the Hessian on only when no other measure is asked for
    others = density_on or ns.get("trace") or ns.get("federated") or ns.get("surface") or ns.get("sharpness")
    others = others or any(_given(ns, k) for m in ("trace", "federated") for k in MEASURE_OPTIONS[m])
    for measure, keys in MEASURE_OPTIONS.items():
        given = [k for k in keys if _given(ns, k) and not (k in ("tol", "max_vectors") and others)]
        if given:
            ns[measure] = True
    if not ns.get("sharpness"):
        named = sorted({m for k, m in SHARPNESS_OPTIONS.items() if _given(ns, k)})
        shared = [k for k in SHARPNESS_SHARED if _given(ns, k)]
        if shared and not named:
            flag = "--" + shared[0].replace("_", "-")
            raise UserError(f"{flag}: an option of several sharpness measures; pass --sharpness LIST (e.g. sam)")
        ns["sharpness"] = ",".join(named) or None
    if not ns.get("surface"):
        ns["surface"] = _implied_surface(ns)
    _check_surface_flags(ns)
    d = LandscapeSettings()
    keys = [k for ks in MEASURE_OPTIONS.values() for k in ks] + list(SURFACE_OPTIONS) + list(SHARPNESS_SHARED)
    for k in keys + ["eps"]:
        if ns.get(k) is None and k not in ("to", "models", "range", "zrange", "levels"):
            ns[k] = getattr(d, DEFAULTS.get(k) or k)
    return ns


def _implied_surface(ns: dict[str, Any]) -> str | None:
    """1d or 2d when a surface option names the dimension (--to/interp: 1d; --models/models/pca: 2d); a
    one-line error when surface options are given but the dimension is not named."""
    given = [k for k in SURFACE_OPTIONS if _given(ns, k)]
    if not given:
        return None
    if ns.get("to") is not None or ns.get("surface_dirs") == "interp":
        return "1d"
    if ns.get("models") is not None or ns.get("surface_dirs") in ("models", "pca"):
        return "2d"
    flag = "--" + given[0].replace("_", "-")
    raise UserError(f"{flag}: a loss-surface option; pass --surface 1d or --surface 2d as well")


def _check_surface_flags(ns: dict[str, Any]) -> None:
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


def run(ns: dict[str, Any]) -> int:
    import torch

    ns = implied_measures(ns)
    foreign = _check_source(ns)
    settings = _settings(ns, _validated_measures(ns))
    check_something(settings)
    from flatfl.runs.surface import check_surface_settings

    if not foreign:
        ckpt_path = check_ckpt_arg(Path(ns["ckpt"]))
        if settings.surface:
            check_surface_settings(settings, ckpt_path)
        from flatfl.runs.problem import of_checkpoint

        problem_of = lambda log: of_checkpoint(ckpt_path, settings, log)  # noqa: E731
        out = ns.get("out") or ckpt_path.parent / "landscape" / ckpt_path.stem
    else:
        from flatfl.runs.foreign import ForeignSpec, check_foreign, of_foreign

        spec = ForeignSpec(
            model=ns["model"],
            weights=ns.get("weights"),
            data=ns["data"],
            model_kwargs=ns["model_kwargs"],
            forward=ns.get("forward"),
            targets=ns.get("targets"),
        )
        check_foreign(spec, settings)
        if settings.surface:
            check_surface_settings(settings)
        problem_of = lambda log: of_foreign(spec, settings, log)  # noqa: E731
        out = ns.get("out") or Path("checkpoints") / "landscape" / spec.name
    from flatfl.analysis import distributed
    from flatfl.rundir import locked_folder, refuse_run_dir

    refuse_run_dir(out)
    with distributed.process_group(torch.device(settings.device)):
        if not distributed.is_main():
            return _run(ns, settings, problem_of, out)
        with locked_folder(out, "writing a landscape here"):  # made and checked before any measuring
            return _run(ns, settings, problem_of, out)


def _check_source(ns: dict[str, Any]) -> bool:
    """Exactly one of --ckpt and --model, and the flags that go with it; True for --model."""
    foreign = ns.get("model") is not None
    if foreign == (ns.get("ckpt") is not None):
        raise UserError("pass either --ckpt FILE (a flatfl run) or --model SPEC with --data SPEC (any model)")
    if foreign and (ns["data"] in ("train", "test") or ns["data"].startswith("client:")):
        raise UserError(
            "--data: with --model, name the data: MODULE:FACTORY, a torchvision NAME:ROOT[:train|test], "
            "imagefolder:DIR or digits[:train|test]"
        )
    if not foreign and any(ns.get(k) for k in ("weights", "forward", "targets")):
        raise UserError("--weights/--forward/--targets: only with --model (a flatfl --ckpt knows its own)")
    return foreign


def _validated_measures(ns: dict[str, Any]) -> tuple[str, ...]:
    """The --sharpness measures; every combination that cannot run is refused before anything starts."""
    from flatfl.analysis.sharpness import SHARPNESS_MEASURES

    sharp: tuple[str, ...] = ()
    if ns.get("sharpness"):
        names = [s.strip() for s in ns["sharpness"].split(",") if s.strip()]
        sharp = SHARPNESS_MEASURES if names == ["all"] else tuple(names)
        bad = [s for s in sharp if s not in SHARPNESS_MEASURES]
        if bad:
            raise UserError(f"--sharpness: unknown measure(s) {bad}; choose from all, {', '.join(SHARPNESS_MEASURES)}")
    if ns.get("surface"):
        check_grid(ns["grid"], 2 if ns["surface"] == "2d" else 1)
    if ns["max_vectors"] < ns["topk"]:
        raise UserError(f"--max-vectors: must be >= --topk ({ns['topk']})")
    from flatfl.analysis.trace import HUTCHPP_MIN_MATVECS

    if ns["trace"] and ns["trace_method"] != "hutchinson" and ns["trace_matvecs"] < HUTCHPP_MIN_MATVECS:
        raise UserError(
            f"--trace-matvecs: {ns['trace_method']} needs at least {HUTCHPP_MIN_MATVECS} HVPs "
            "(or use --trace-method hutchinson)"
        )
    return sharp


def check_something(settings: LandscapeSettings) -> None:
    """A one-line error when no measure, federated view or surface is switched on."""
    from flatfl.runs.measure import switched_on
    from flatfl.runs.measures import registered

    if switched_on(settings) or settings.federated or settings.surface:
        return
    switches = dict.fromkeys(s.flags[0].names[0] for s in registered() if s.flags)
    raise UserError(f"nothing to compute: pass {', '.join([*switches, '--federated', '--surface'])}")


def _settings(ns: dict[str, Any], sharp: tuple[str, ...]) -> LandscapeSettings:
    """The frozen :class:`LandscapeSettings` of the command line."""
    from flatfl.runs.settings import LandscapeSettings

    device = analysis_device(ns["device"])
    return LandscapeSettings(
        data=ns["data"],
        samples=samples_setting(ns.get("samples"))[0],
        samples_auto=samples_setting(ns.get("samples"))[1],
        data_tol=ns["data_tol"],
        batch_size=ns["batch_size"],
        dtype=ns["dtype"],
        device=str(device),
        seed=ns["seed"],
        hessian=ns["hessian"],
        topk=ns["topk"],
        tol=ns["tol"],
        max_vectors=ns["max_vectors"],
        trace=ns["trace"],
        trace_matvecs=ns["trace_matvecs"],
        trace_method=ns["trace_method"],
        density=ns["density"],
        slq_runs=ns["slq_runs"],
        slq_steps=min(ns["slq_steps"], ns["max_vectors"]),
        sharpness=sharp,
        rho=ns["rho"],
        eps=ns["eps"],
        sigma=ns["sigma"],
        sharpness_steps=ns["sharpness_steps"],
        sharpness_samples=ns["sharpness_samples"],
        m=ns.get("m"),
        federated=ns["federated"],
        clients=ns["federated_clients"],
        memory_budget_gb=ns["memory_budget"],
        surface=ns.get("surface"),
        surface_dirs=ns["surface_dirs"],
        grid=ns["grid"],
        span=ns["span"],
        range=ns.get("range"),
        to=ns.get("to"),
        models=tuple(ns["models"]) if ns.get("models") else None,
        bn_reestimate=ns["bn_reestimate"],
        markers=not ns["no_markers"],
        include_1d=ns["include_bias_bn"],
        measures=registry_settings(ns),
    )


def _run(ns: dict[str, Any], settings: Any, problem_of: Callable[[Callable[[str], None]], Any], out: Path) -> int:
    """Resolve the problem once, measure everything on every rank; rank 0 alone writes and prints."""
    from tqdm.auto import tqdm

    from flatfl import checkpoint as ckpt
    from flatfl.analysis.distributed import is_main
    from flatfl.runs.curvature import no_bars, tqdm_bars
    from flatfl.runs.landscape import json_ready
    from flatfl.runs.measure import measure

    main = is_main()
    log = (lambda s: tqdm.write(s, file=sys.stderr)) if main else (lambda s: None)
    problem = problem_of(log)
    m = measure(problem, settings, log=log, out_dir=out, bars=tqdm_bars if main else no_bars, main=main)
    if not main:
        return 0
    out.mkdir(parents=True, exist_ok=True)
    ckpt.atomic_write_json(out / "landscape.json", json_ready(m.record))
    print(f"wrote {out / 'landscape.json'}")
    if m.surface is not None:
        _write_surface(ns, m, out)
    if m.density is not None:
        from flatfl.analysis.plots import plot_density

        data = m.record["data"]
        title = f"{_title(m.record)}, {data.get('selection', 'data')} ({data['samples']} samples)"
        for p in plot_density(m.density, out / "density", title=title):
            print(f"wrote {p}")
    return 0


def _title(record: dict[str, Any]) -> str:
    if record.get("round") is not None:
        return f"{record['algo']} round {record['round']}"
    if record.get("weights"):
        return Path(record["weights"]).name
    return str(record.get("model") or "model")  # a factory's own weights: the model's name


def _write_surface(ns: dict[str, Any], m: Any, out: Path) -> None:
    from flatfl.analysis.interactive import surface_figures
    from flatfl.analysis.plots import plot_surface
    from flatfl.runs.files import write_page

    surf = m.surface
    title = f"{_title(m.record)}: {surf.description['kind']} surface"
    for p in plot_surface(surf, out / "surface", title=title, levels=ns["levels"], zrange=ns["zrange"]):
        print(f"wrote {p}")
    label = f"round {m.record['round']}" if m.record.get("round") is not None else _title(m.record)
    figs = surface_figures([(label, surf)], title=title, levels=ns["levels"], zrange=ns["zrange"])
    sections = [(surf.description["kind"], f) for f in figs if f is not None]
    print(f"wrote {write_page(out / 'surface.html', title, sections)}")


def check_ckpt_arg(path: Path) -> Path:
    """``--ckpt`` must be a round file: a run directory gets the name of its latest one. An interrupted
    ``--overwrite`` of its run is finished or undone first (:func:`flatfl.rundir.settle`)."""
    from flatfl.rundir import settle

    settle(path if path.is_dir() else path.parent)
    if path.is_dir():
        from flatfl import checkpoint as ckpt

        rounds = ckpt.list_rounds(path)
        hint = f", e.g. {ckpt.round_path(path, rounds[-1])} (its latest)" if rounds else ""
        raise UserError(f"--ckpt: {path} is a directory; pass one round_NNNN.safetensors file{hint}")
    if not path.is_file():
        raise UserError(f"--ckpt: {path} does not exist")
    return path


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
