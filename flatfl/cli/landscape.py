"""``flatfl landscape``: curvature, sharpness and the federated view of one checkpoint."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flatfl.cli.common import (
    SAMPLES_HELP,
    add_analysis_arguments,
    add_deprecated_alias,
    analysis_device,
    name_list,
    pos_float,
    samples_setting,
    samples_t,
)
from flatfl.cli.landscape_surface import (
    SURFACE_OPTIONS,
    check_grid,
    check_surface_flags,
    flag_given,
    implied_surface,
    record_title,
    surface_arguments,
    write_surface,
)
from flatfl.errors import UserError

if TYPE_CHECKING:
    from flatfl.runs.settings import LandscapeSettings


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
    surface_arguments(p, d)
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
        metavar="REL",
        help=f"--samples auto: relative data-sampling error to reach; only with --samples auto (default: {d.data_tol})",
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
    "more measures": "the literature's measures beyond the Hessian (landscape.json: literature; in flatfl report: rows "
    "of the verdict)",
}


def add_measure_flags(p: Any, specs: Any) -> None:
    """The flags of the measures ``specs`` (:mod:`flatfl.runs.measures`), one --help group per spec group, each
    flag once (the sharpness measures share theirs). A help's ``(uses --a, --b)`` names only the flags ``p``
    has (flatfl report fixes the Lanczos tolerance and the trace method: no --tol, no --trace-method)."""
    groups: dict[str, Any] = {}
    seen: set[str] = set()
    for spec in specs:
        for flag in spec.flags:
            if flag.names[0] in seen:
                continue
            seen.add(flag.names[0])
            if spec.group not in groups:
                groups[spec.group] = p.add_argument_group(spec.group, GROUP_HELP.get(spec.group))
            kwargs = dict(flag.kwargs)
            if isinstance(kwargs.get("help"), str):
                kwargs["help"] = _uses_own_flags(kwargs["help"], p)
            groups[spec.group].add_argument(*flag.names, **kwargs)


def _uses_own_flags(text: str, p: Any) -> str:
    """``text`` with its ``(uses --a, --b)`` cut to the flags of parser ``p`` (the clause gone when none is)."""
    import re

    def keep(m: Any) -> str:
        own = [f.strip() for f in m.group(1).split(",") if f.strip() in p._option_string_actions]
        return f" (uses {', '.join(own)})" if own else ""

    return re.sub(r" \(uses (--[^)]*)\)", keep, text)


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
# option -> (what must be on for it to have an effect, the test on the command line and the --sharpness measures):
# given without it the option would be ignored, so it is refused in one line naming both (flatfl report, whose
# cache key includes every option, only warns: docs/landscapes.md)
_ASCENT = ("sam", "adaptive_l2", "adaptive_linf")
_AVERAGE = ("average_adaptive", "average_isotropic")
REQUIRES: dict[str, tuple[str, Callable[[dict[str, Any], tuple[str, ...]], bool]]] = {
    "rho": ("--sharpness sam, adaptive_l2 or adaptive_linf", lambda ns, sharp: bool(set(sharp) & set(_ASCENT))),
    "sharpness_steps": (
        "--sharpness sam, adaptive_l2 or adaptive_linf (ascent steps)",
        lambda ns, sharp: bool(set(sharp) & set(_ASCENT)),
    ),
    "m": ("--sharpness sam", lambda ns, sharp: "sam" in sharp),
    "eps": ("--sharpness epsilon", lambda ns, sharp: "epsilon" in sharp),
    "sigma": ("--sharpness average_adaptive or average_isotropic", lambda ns, sharp: bool(set(sharp) & set(_AVERAGE))),
    "sharpness_samples": (
        "--sharpness average_adaptive or average_isotropic (Monte Carlo draws)",
        lambda ns, sharp: bool(set(sharp) & set(_AVERAGE)),
    ),
    "data_tol": ("--samples auto", lambda ns, sharp: ns.get("samples") == "auto"),
    "levels": ("--surface 2d (2D pages and figures)", lambda ns, sharp: ns.get("surface") == "2d"),
    "zrange": ("--surface 2d (2D pages and figures)", lambda ns, sharp: ns.get("surface") == "2d"),
    "model_kwargs": ("--model (a flatfl --ckpt's run fixes its model)", lambda ns, sharp: ns.get("model") is not None),
}
DEFAULTS = {"federated_clients": "clients"}  # flag -> LandscapeSettings field, where they differ


def implied_measures(ns: dict[str, Any]) -> dict[str, Any]:
    """``ns`` with the measures its options imply switched on and every option left out at its default."""
    from flatfl.runs.landscape import LandscapeSettings

    ns = dict(ns)
    density_on = ns.get("density") or any(flag_given(ns, k) for k in MEASURE_OPTIONS["density"])
    # --tol and --max-vectors also steer the federated view's and eigen surfaces' Lanczos and SLQ's basis:
    # they switch the Hessian on only when no other measure is asked for
    others = density_on or ns.get("trace") or ns.get("federated") or ns.get("surface") or ns.get("sharpness")
    others = others or any(flag_given(ns, k) for m in ("trace", "federated") for k in MEASURE_OPTIONS[m])
    for measure, keys in MEASURE_OPTIONS.items():
        given = [k for k in keys if flag_given(ns, k) and not (k in ("tol", "max_vectors") and others)]
        if given:
            ns[measure] = True
    if ns.get("sharpness") is None:  # '' is refused by _validated_measures, not read as left out
        named = sorted({m for k, m in SHARPNESS_OPTIONS.items() if flag_given(ns, k)})
        shared = [k for k in SHARPNESS_SHARED if flag_given(ns, k)]
        if shared and not named:
            flag = "--" + shared[0].replace("_", "-")
            raise UserError(f"{flag}: an option of several sharpness measures; pass --sharpness LIST (e.g. sam)")
        ns["sharpness"] = ",".join(named) or None
    if not ns.get("surface"):
        ns["surface"] = implied_surface(ns)
    check_surface_flags(ns)
    d = LandscapeSettings()
    keys = [k for ks in MEASURE_OPTIONS.values() for k in ks] + list(SURFACE_OPTIONS) + list(SHARPNESS_SHARED)
    for k in keys + ["eps"]:
        if ns.get(k) is None and k not in ("to", "models", "range", "zrange", "levels"):
            ns[k] = getattr(d, DEFAULTS.get(k) or k)
    return ns


def run(ns: dict[str, Any]) -> int:
    import torch

    given = {k for k in REQUIRES if flag_given(ns, k) and not (k == "model_kwargs" and ns[k] == "{}")}
    ns = implied_measures(ns)
    foreign = _check_source(ns)
    sharp = _validated_measures(ns)
    check_requires(ns, given, sharp)
    settings = _settings(ns, sharp)
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


def check_requires(ns: dict[str, Any], given: set[str], sharp: tuple[str, ...]) -> None:
    """Every option given has what it needs switched on (:data:`REQUIRES`); otherwise one line naming both."""
    for key, (needs, on) in REQUIRES.items():
        if key in given and not on(ns, sharp):
            raise UserError(f"--{key.replace('_', '-')}: has an effect only with {needs}; add it or drop the option")


def check_batchnorm(settings: Any, model: Any) -> None:
    """--bn-reestimate on a model without BatchNorm would be ignored (REQUIRES' rule, known once the model is):
    refused before anything is measured (flatfl report notes it on the surface instead)."""
    from flatfl.analysis.batchnorm import has_batchnorm

    if settings.surface and settings.bn_reestimate and not has_batchnorm(model):
        raise UserError(
            f"--bn-reestimate {settings.bn_reestimate}: has an effect only on a model with BatchNorm layers, and "
            f"{type(model).__name__} has none; drop --bn-reestimate"
        )


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
    if ns.get("sharpness") is not None:
        sharp = name_list(ns["sharpness"], "--sharpness", SHARPNESS_MEASURES, {"all": SHARPNESS_MEASURES})
    if ns.get("surface"):
        check_grid(ns["grid"], 2 if ns["surface"] == "2d" else 1)
    if ns["max_vectors"] < ns["topk"]:
        raise UserError(f"--max-vectors: must be >= --topk ({ns['topk']})")
    if ns.get("density") and ns["slq_steps"] > ns["max_vectors"]:  # was cut to --max-vectors without a word
        raise UserError(
            f"--slq-steps {ns['slq_steps']}: above --max-vectors {ns['max_vectors']} (each SLQ step holds one "
            "vector); raise --max-vectors or lower --slq-steps"
        )
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
        data_tol=ns.get("data_tol") or LandscapeSettings().data_tol,
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
    from flatfl.runs.files import save_surface
    from flatfl.runs.landscape import json_ready
    from flatfl.runs.measure import measure
    from flatfl.runs.outset import CACHE_DIR, OutputSet, check_own_folders, seed_cache

    check_own_folders(out)  # before measuring: a link there would move files outside --out (outset.py)
    main = is_main()
    log = (lambda s: tqdm.write(s, file=sys.stderr)) if main else (lambda s: None)
    problem = problem_of(log)
    check_batchnorm(settings, problem.model)
    cache = seed_cache(out) if settings.surface else out / CACHE_DIR  # the surface's resume cache
    m = measure(problem, settings, log=log, out_dir=cache, bars=tqdm_bars if main else no_bars, main=main)
    if not main:
        return 0
    if m.surface is not None:
        m.record["surface"]["file"] = str(out / "surface.npz")
    with OutputSet(out) as files:  # staged, then moved into OUT together (outset.py)
        if m.surface is not None:
            save_surface(m.surface, files.stage / "surface")
            write_surface(ns, m, files.stage)
        if m.density is not None:
            from flatfl.analysis.plots import plot_density

            data = m.record["data"]
            title = f"{record_title(m.record)}, {data.get('selection', 'data')} ({data['samples']} samples)"
            plot_density(m.density, files.stage / "density", title=title)
        m.record["files"] = sorted([*files.staged(), "landscape.json"])  # the set this invocation wrote
        ckpt.atomic_write_json(files.stage / "landscape.json", json_ready(m.record))
        for name in files.commit(print):
            print(f"wrote {out / name}")
    if m.surface is not None:
        shutil.rmtree(out / CACHE_DIR, ignore_errors=True)  # its surface is now OUT/surface.npz/.json
    return 0


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
    if path.exists() and not path.is_file():  # a FIFO or a device (/dev/null)
        from flatfl.atomic import file_kind

        kind = file_kind(path)
        raise UserError(f"--ckpt: {path} is not a regular file ({kind}); pass one round_NNNN.safetensors file")
    if not path.is_file():
        raise UserError(f"--ckpt: {path} does not exist")
    return path
