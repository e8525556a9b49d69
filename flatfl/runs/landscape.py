"""``flatfl landscape``: curvature and sharpness of one checkpoint, written as JSON.

Reads a ``round_NNNN.safetensors`` and the ``run.json`` beside it, rebuilds the model and
the chosen data (train union, test, or one client's training data), and computes what was
asked: top-k Hessian eigenpairs and the most negative eigenvalue (Lanczos), the trace
(adaptive Hutchinson/Hutch++ with a standard error), the spectral density (SLQ) and sharpness measures. Every
number is stored with the settings that produced it.
"""

from __future__ import annotations

import hashlib
import time
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flatfl.analysis.density import SpectralDensity, slq
from flatfl.analysis.distributed import ShardedOperator, shard, sharded_loss_and_gradient
from flatfl.analysis.distributed import is_main as dist_is_main
from flatfl.analysis.distributed import world as dist_world
from flatfl.analysis.lanczos import lanczos
from flatfl.analysis.operators import HessianOperator, ModelLoss
from flatfl.analysis.sharpness import adaptive_sharpness, average_sharpness, epsilon_sharpness, sam_sharpness
from flatfl.analysis.trace import TRACE_ESTIMATORS
from flatfl.errors import UserError
from flatfl.runs.files import save_surface
from flatfl.runs.run import Run

SHARPNESS_MEASURES = ("epsilon", "sam", "adaptive_l2", "adaptive_linf", "average_adaptive", "average_isotropic")


@dataclass(frozen=True)
class LandscapeSettings:
    """What to compute and on which data (filled by the CLI)."""

    data: str = "train"  # train | test | client:K
    samples: int | None = None
    samples_auto: bool = False  # --samples auto: grow a random subset until the data error is below data_tol
    data_tol: float = 0.01
    batch_size: int = 250
    dtype: str = "float32"
    device: str = "cpu"
    seed: int = 0
    hessian: bool = False
    topk: int = 5
    tol: float = 1e-5
    max_vectors: int = 128
    trace: bool = False
    trace_matvecs: int = 99
    trace_method: str = "adaptive"  # adaptive | hutch++ | hutchinson
    density: bool = False
    slq_runs: int = 10
    slq_steps: int = 80
    sharpness: tuple[str, ...] = ()
    rho: float = 0.05
    eps: float = 1e-3
    sigma: float = 0.01
    sharpness_steps: int = 10
    sharpness_samples: int = 50
    m: int | None = None
    memory_budget_gb: float = 2.0
    surface: str | None = None  # 1d | 2d
    surface_dirs: str = "random"  # random | eigen | interp | models | pca
    grid: int = 21
    span: float = 1.0
    range: tuple[float, float] | None = None  # axis range (overrides span; interp/models/pca pick one)
    to: str | None = None  # interp: the other end (checkpoint file, mutant:SLOT, returned:SLOT)
    models: tuple[str, ...] | None = None  # models: the two other models of the plane
    bn_reestimate: int = 0  # batches of training data to re-estimate BatchNorm statistics per point
    markers: bool = True  # draw this round's mutants / returned models (and trajectory) on the surface
    include_1d: bool = False
    federated: bool = False
    clients: str = "auto"  # auto | all | sampled | comma-separated ids


def select_data(
    run: Run, spec: str, samples: int | None, seed: int
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """The (x, y) a measurement uses: ``train``, ``test`` or ``client:K``; optionally a seeded subset."""
    ds = run.dataset()
    if spec == "train":
        x, y = ds.train.x, ds.train.y
    elif spec == "test":
        x, y = ds.test.x, ds.test.y
    elif spec.startswith("client:"):
        try:
            k = int(spec.split(":", 1)[1])
        except ValueError:
            raise UserError(f"--data: {spec!r} is not client:K with an integer K") from None
        parts = run.partition()
        if not 0 <= k < len(parts):
            raise UserError(f"--data: client {k} does not exist (the run has clients 0..{len(parts) - 1})")
        idx = torch.as_tensor(parts[k])
        x, y = ds.train.x[idx], ds.train.y[idx]
    else:
        raise UserError(f"--data: {spec!r} is not one of train, test, client:K")
    n_all = len(y)
    if samples is not None:
        if samples <= 0:
            raise UserError("--samples: must be a positive number of samples")
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(n_all, generator=g)[: min(samples, n_all)].sort().values
        x, y = x[idx], y[idx]
    if len(y) == 0:
        raise UserError(f"--data: the selection {spec!r} holds no samples")
    return x, y, {"selection": spec, "samples": int(len(y)), "of": int(n_all), "subset_seed": seed if samples else None}


def auto_subset(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    settings: LandscapeSettings,
    dtype: torch.dtype,
    log: Callable[[str], None],
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """``--samples auto``: the random subset whose data-sampling error of lambda_max (``--hessian``) and
    the trace (``--trace``) is below ``data_tol`` (see :mod:`analysis.subsample`); (x, y, record)."""
    from flatfl.analysis.subsample import SubsampleSettings, subsample

    if dist_world() is not None:
        raise UserError("--samples auto: not available under torchrun; pass a number of samples")
    quantities = tuple(q for q, on in (("lambda_max", settings.hessian), ("trace", settings.trace)) if on)
    quantities = quantities or ("lambda_max",)

    def make_op(idx: np.ndarray) -> HessianOperator:
        i = torch.as_tensor(idx)
        obj = ModelLoss(model, x[i], y[i], batch_size=settings.batch_size, dtype=dtype, device=settings.device)
        return HessianOperator(obj, memory_budget=settings.memory_budget_gb * 2**30)

    st = SubsampleSettings(data_tol=settings.data_tol, tol=max(settings.tol, 1e-6), seed=settings.seed)
    r = subsample(len(y), make_op, quantities, st, log)
    record = {
        "data_tol": settings.data_tol,
        "converged": r.converged,
        "values": r.values,
        "data_errors": r.data_errors,
        "groups": st.groups,
        "levels": r.levels,
    }
    i = torch.as_tensor(r.indices)
    return x[i], y[i], record


def slq_block(size: int, dtype: torch.dtype, settings: LandscapeSettings) -> int:
    """SLQ runs in lockstep: as many as the memory budget holds bases of ``slq_steps`` vectors for."""
    per_run = settings.slq_steps * size * torch.finfo(dtype).bits // 8
    return int(max(1, min(settings.slq_runs, settings.memory_budget_gb * 2**30 // max(per_run, 1))))


def model_loss_of(run: Run, rnd: int, settings: LandscapeSettings, *, data: tuple | None = None) -> ModelLoss:
    """The mean loss of round ``rnd``'s global model on the selection ``settings`` names (or ``data`` = (x, y))."""
    dtype = {"float32": torch.float32, "float64": torch.float64}[settings.dtype]
    x, y = data if data is not None else select_data(run, settings.data, settings.samples, settings.seed)[:2]
    return ModelLoss(run.model(rnd), x, y, batch_size=settings.batch_size, dtype=dtype, device=settings.device)


def file_digest(path: Path) -> str:
    """SHA-256 of a checkpoint file: cached results are reused only for the very same tensors."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def compute(
    ckpt: Path,
    settings: LandscapeSettings,
    log: Callable[[str], None] = lambda s: None,
    keep: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], SpectralDensity | None]:
    """All requested quantities for one checkpoint, as a JSON-ready dict (+ the SLQ result).

    ``keep``: a dict that receives the top eigenvectors (``"eigenvectors"``) when ``hessian``
    ran, so a surface along them does not run Lanczos again.
    """
    run, rnd = Run.of_checkpoint(ckpt)
    dtype = {"float32": torch.float32, "float64": torch.float64}[settings.dtype]
    model = run.model(rnd)
    x, y, data_info = select_data(run, settings.data, settings.samples, settings.seed)
    auto = None
    if settings.samples_auto:
        x, y, auto = auto_subset(model, x, y, settings, dtype, log)
        data_info.update(samples=int(len(y)), subset_seed=settings.seed, auto=auto)
    obj = ModelLoss(model, x, y, batch_size=settings.batch_size, dtype=dtype, device=settings.device)
    gen = lambda k: torch.Generator().manual_seed(settings.seed * 1000 + k)  # noqa: E731
    ranks = dist_world()
    if ranks is None:
        obj_h = obj
        loss0, g0 = obj.loss_and_gradient()
    else:  # under torchrun: HVPs, loss and gradient over this rank's shard, reduced over ranks
        part = shard(len(y), *ranks)
        obj_h = ModelLoss(model, x[part], y[part], batch_size=settings.batch_size, dtype=dtype, device=settings.device)
        loss0, g0 = sharded_loss_and_gradient(obj_h, len(y))
    out: dict[str, Any] = {
        "checkpoint": str(ckpt),
        "checkpoint_sha256": file_digest(ckpt),
        "run": str(run.path),
        "round": rnd,
        "algo": run.config["algo"],
        "model": run.info["model"]["name"],
        "num_parameters": obj.size,
        "data": data_info,
        "loss": loss0,
        "gradient_norm": float(g0.norm()),
        "settings": asdict(settings),
        "eval_mode": "model.eval(): BatchNorm uses running statistics, dropout off",
    }
    density = None
    op = None
    if settings.hessian or settings.trace or settings.density:
        op = HessianOperator(obj_h, memory_budget=settings.memory_budget_gb * 2**30)
        if ranks is not None:
            op = ShardedOperator(op, obj_h.n, obj.n)
            out["ranks"] = ranks[1]
        out["hvp_method"] = op.method
        out["hvp_graph_bytes_estimate"] = op.graph_bytes_estimate
    r_top = None
    if settings.hessian and settings.topk >= obj.size:
        raise UserError(f"--topk {settings.topk}: the model has only {obj.size} parameters; use --topk < {obj.size}")
    if settings.hessian:
        t = time.perf_counter()
        log(f"hessian: top-{settings.topk} and most negative eigenvalue by Lanczos ...")
        r = r_top = lanczos(
            op, k=settings.topk, smallest=True, tol=settings.tol, max_vectors=settings.max_vectors, generator=gen(1)
        )
        out["hessian"] = {
            "eigenvalues": r.values.tolist(),
            "residuals": r.residuals.tolist(),
            "smallest": r.smallest,
            "smallest_residual": r.smallest_residual,
            "num_hvps": r.num_matvecs,
            "data_error": auto["data_errors"].get("lambda_max") if auto else None,
            "vectors_held": r.num_vectors,
            "converged": r.converged,
            "tol": r.tol,
            "seconds": time.perf_counter() - t,
        }
        log(f"hessian: lambda_max {r.values[0]:.6g}, lambda_min {r.smallest:.6g}, {r.num_matvecs} HVPs")
        if keep is not None:
            keep["eigenvectors"] = r.vectors
    if settings.trace:
        t = time.perf_counter()
        log(f"trace: {settings.trace_method} with {settings.trace_matvecs} HVPs ...")
        tr = TRACE_ESTIMATORS[settings.trace_method](op, num_matvecs=settings.trace_matvecs, generator=gen(2))
        out["trace"] = {
            "estimate": tr.estimate,
            "stderr": tr.stderr,
            "num_hvps": tr.num_matvecs,
            "method": tr.method,
            "data_error": auto["data_errors"].get("trace") if auto else None,
            "deflated": tr.deflated,
            "remainder_share": tr.remainder_share,
            "seconds": time.perf_counter() - t,
        }
        log(f"trace: {tr.estimate:.6g} +- {tr.stderr:.2g}")
    if settings.density:
        t = time.perf_counter()
        log(f"density: SLQ, {settings.slq_runs} runs x {settings.slq_steps} steps ...")
        lockstep = slq_block(op.size, op.dtype, settings)
        density = slq(op, num_runs=settings.slq_runs, num_steps=settings.slq_steps, generator=gen(3), block=lockstep)
        out["density"] = {
            "nodes": [n.tolist() for n in density.nodes],
            "weights": [w.tolist() for w in density.weights],
            "num_hvps": density.num_matvecs,
            "vectors_held": settings.slq_steps * lockstep,
            "runs_in_lockstep": lockstep,
            "moments": {str(p): density.moment(p) for p in (1, 2)},
            "seconds": time.perf_counter() - t,
        }
    if settings.federated:
        global_vec = r_top.vectors[0] if r_top is not None else None
        out["federated"] = federated_view(run, rnd, settings, dtype, global_vec, gen, log)
    sharp: dict[str, Any] = {}
    for name in settings.sharpness:
        t = time.perf_counter()
        log(f"sharpness: {name} ...")
        if name == "epsilon":
            r = epsilon_sharpness(obj, eps=settings.eps, generator=gen(4))
        elif name == "sam":
            r = sam_sharpness(obj, rho=settings.rho, steps=settings.sharpness_steps, m=settings.m, generator=gen(5))
        elif name in ("adaptive_l2", "adaptive_linf"):
            r = adaptive_sharpness(
                obj,
                rho=settings.rho,
                p=2 if name == "adaptive_l2" else float("inf"),
                steps=settings.sharpness_steps,
                generator=gen(6),
            )
        elif name in ("average_adaptive", "average_isotropic"):
            r = average_sharpness(
                obj,
                sigma=settings.sigma,
                adaptive=name == "average_adaptive",
                num_samples=settings.sharpness_samples,
                generator=gen(7),
            )
        else:
            raise UserError(f"--sharpness: unknown measure {name!r}; choose from all, {', '.join(SHARPNESS_MEASURES)}")
        sharp[name] = {**asdict(r), "seconds": time.perf_counter() - t}
        log(f"sharpness: {name} = {r.value:.6g}")
    if sharp:
        out["sharpness"] = sharp
    return out, density


def _client_ids(run: Run, rnd: int, spec: str) -> tuple[list[int], dict | None]:
    """Which clients the federated view covers, and the round's client models if saved."""
    from flatfl import checkpoint as ckpt

    saved = None
    if ckpt.clients_path(run.path, rnd).is_file():
        sent, returned, info = run.clients(rnd)
        saved = {"clients": info["clients"], "returned": returned}
    k_all = len(run.partition())
    if spec == "auto":
        spec = "sampled" if saved else "all"
    if spec == "all":
        return list(range(k_all)), saved
    if spec == "sampled":
        if saved is None:
            raise UserError(
                f"--clients sampled: {ckpt.clients_path(run.path, rnd)} is missing (train with --save-clients)"
            )
        return list(saved["clients"]), saved
    try:
        ids = [int(c) for c in spec.split(",") if c.strip()]
    except ValueError:
        raise UserError(f"--clients: {spec!r} is not all, sampled or a comma-separated list of ids") from None
    bad = [c for c in ids if not 0 <= c < k_all]
    if bad or not ids:
        raise UserError(f"--clients: {bad or spec!r} not among clients 0..{k_all - 1}")
    return ids, saved


def federated_view(
    run: Run,
    rnd: int,
    settings: LandscapeSettings,
    dtype: torch.dtype,
    global_vec: torch.Tensor | None,
    gen: Callable[[int], torch.Generator],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Global vs local flatness per client (the FedSAM line's question).

    For each client k: lambda_max of client k's own loss at the global model w_t, and -- when
    the round was saved with ``--save-clients`` and k was sampled -- at the model k returned in
    round t (whose average is w_t); the |cosine| between client k's top eigenvector at w_t and
    the top eigenvector of the loss on ``--data`` at w_t (alignment of sharp directions).
    """
    ids, saved = _client_ids(run, rnd, settings.clients)
    model = run.model(rnd)
    ds = run.dataset()
    parts = run.partition()
    if global_vec is None:
        x, y, _ = select_data(run, settings.data, settings.samples, settings.seed)
        gop = HessianOperator(
            ModelLoss(model, x, y, batch_size=settings.batch_size, dtype=dtype, device=settings.device)
        )
        global_vec = lanczos(gop, k=1, tol=settings.tol, max_vectors=settings.max_vectors, generator=gen(8)).vectors[0]
    rows = []
    for c in ids:
        idx = torch.as_tensor(parts[c])
        xc, yc = ds.train.x[idx], ds.train.y[idx]
        op = HessianOperator(
            ModelLoss(model, xc, yc, batch_size=settings.batch_size, dtype=dtype, device=settings.device)
        )
        r = lanczos(op, k=1, tol=settings.tol, max_vectors=settings.max_vectors, generator=gen(100 + c))
        cos = float(torch.abs(torch.dot(r.vectors[0], global_vec.to(r.vectors.dtype))))
        row: dict[str, Any] = {
            "client": c,
            "samples": len(yc),
            "lambda_max_at_global": float(r.values[0]),
            "alignment_with_global": cos,
            "num_hvps": r.num_matvecs,
        }
        if saved is not None and c in saved["clients"]:
            local = run.build()
            local.load_state_dict(saved["returned"][saved["clients"].index(c)])
            lop = HessianOperator(
                ModelLoss(local, xc, yc, batch_size=settings.batch_size, dtype=dtype, device=settings.device)
            )
            lr = lanczos(lop, k=1, tol=settings.tol, max_vectors=settings.max_vectors, generator=gen(200 + c))
            row["lambda_max_at_returned"] = float(lr.values[0])
            row["num_hvps"] += lr.num_matvecs
        rows.append(row)
        log(
            f"federated: client {c}: lambda_max at global {row['lambda_max_at_global']:.4g}"
            + (
                f", at its returned model {row['lambda_max_at_returned']:.4g}"
                if "lambda_max_at_returned" in row
                else ""
            )
            + f", |cos| with global top eigenvector {cos:.3f}"
        )
    return {"clients": rows, "global_data": settings.data, "selection": settings.clients}


def _flat_of(run: Run, state: dict[str, torch.Tensor], obj: ModelLoss) -> torch.Tensor:
    return torch.cat([state[n].reshape(-1) for n in obj.names]).to(obj.device, obj.dtype)


def _resolve_model_spec(run: Run, rnd: int, spec: str) -> tuple[str, Run, Callable[[], dict[str, torch.Tensor]]]:
    """A model named on the command line: a checkpoint file, ``mutant:SLOT`` (a model sent in
    round rnd+1, i.e. a mutant of this checkpoint) or ``returned:SLOT`` (a model returned in
    round rnd, whose mean is this checkpoint). Returns (label, its run, a loader of its state);
    every error is found here, before anything is computed."""
    from flatfl import checkpoint as ckpt

    kind, _, slot = spec.partition(":")
    if kind in ("mutant", "returned") and _is_slot(slot):
        r = rnd + 1 if kind == "mutant" else rnd
        path = ckpt.clients_path(run.path, r)
        if not path.is_file():
            raise UserError(f"--models {spec}: {path} is missing (train with --save-clients)")
        sent, returned, info = run.clients(r)
        models = sent if kind == "mutant" else returned
        if int(slot) >= len(models):
            raise UserError(f"--models {spec}: round {r} has slots 0..{len(models) - 1}")
        return f"{kind} {slot} (client {info['clients'][int(slot)]})", run, lambda: models[int(slot)]
    file = Path(spec)
    if not file.is_file():
        raise UserError(f"--models/--to: {spec!r} is neither a checkpoint file nor mutant:SLOT / returned:SLOT")
    other, r = Run.of_checkpoint(file)
    if other.info["model"] != run.info["model"]:
        raise UserError(
            f"{spec}: model {other.info['model']['name']} {other.info['model']['kwargs']} differs from "
            f"the checkpoint's {run.info['model']['name']} {run.info['model']['kwargs']}"
        )
    return f"{other.config['algo']} round {r}", other, lambda: other.global_state(r)


def _model_spec(run: Run, rnd: int, spec: str, obj: ModelLoss) -> tuple[str, torch.Tensor]:
    """(label, flat parameters) of a model named on the command line (see ``_resolve_model_spec``)."""
    label, owner, state = _resolve_model_spec(run, rnd, spec)
    return label, _flat_of(owner, state(), obj)


def _axis(lo: float, hi: float, n: int, must: tuple[float, ...] = (0.0,)) -> np.ndarray:
    """n points from lo to hi that hold each of ``must`` inside [lo, hi] exactly.

    A grid point within half a step of such a value is moved onto it; otherwise the value is
    inserted (the grid is then one point longer and not quite even). So the checkpoint (0) and,
    for interpolation, the other end (1) are always points of the surface.
    """
    axis = np.linspace(lo, hi, n)
    half = 0.5 * (hi - lo) / max(n - 1, 1)
    for v in must:
        if not lo <= v <= hi:
            continue
        i = int(np.argmin(np.abs(axis - v)))
        if abs(axis[i] - v) <= half * 1e-6:
            axis[i] = v  # float rounding of linspace
        elif axis[i] != v:
            axis = np.sort(np.append(axis, v))
    return axis


def _markers(
    run: Run,
    rnd: int,
    obj: ModelLoss,
    origin: torch.Tensor,
    dirs: list[torch.Tensor],
    named: list[tuple[str, str, torch.Tensor]],
    clients: bool = True,
) -> list[dict[str, Any]]:
    """Models drawn on a surface: the given ones plus this round's mutants and returned models.

    Coordinates are least-squares positions in the plane (exact for models in it); loss and
    accuracy are those of the model itself, and ``off_plane`` says how far it lies from the plane.
    """
    from flatfl import checkpoint as ckpt
    from flatfl.analysis.surfaces import model_markers

    named = list(named)
    if clients and ckpt.clients_path(run.path, rnd + 1).is_file():
        sent, _, info = run.clients(rnd + 1)
        for i, sd in enumerate(sent):
            named.append(
                (f"mutant {i} (to client {info['clients'][i]}, round {rnd + 1})", "mutants", _flat_of(run, sd, obj))
            )
    if clients and rnd >= 1 and ckpt.clients_path(run.path, rnd).is_file():
        _, returned, info = run.clients(rnd)
        for i, sd in enumerate(returned):
            named.append((f"client {info['clients'][i]} (returned in round {rnd})", "clients", _flat_of(run, sd, obj)))
    return model_markers(obj, origin, dirs, named)


def _is_slot(text: str) -> bool:
    """A slot number in ASCII digits (``str.isdigit`` accepts '²', which ``int`` refuses)."""
    return text.isascii() and text.isdigit()


def check_surface_settings(settings: LandscapeSettings, ckpt: Path | None = None) -> None:
    """Flag combinations a surface cannot use: one line each, before anything is computed
    (with ``ckpt``, the ``--to``/``--models`` specs are resolved against its run too)."""
    kind, count = settings.surface_dirs, 1 if settings.surface == "1d" else 2
    if kind not in ("random", "eigen", "interp", "models", "pca"):
        raise UserError(f"--surface-dirs: {kind!r} is not random, eigen, interp, models or pca")
    if kind == "interp" and count != 1:
        raise UserError("--surface-dirs interp is a line: use --surface 1d")
    if kind in ("models", "pca") and count != 2:
        raise UserError(f"--surface-dirs {kind} is a plane: use --surface 2d")
    if kind == "interp" and not settings.to:
        raise UserError("--surface-dirs interp needs --to MODEL (the other end of the line)")
    if kind == "models" and (not settings.models or len(settings.models) != 2):
        raise UserError("--surface-dirs models needs --models B C (two more models; the checkpoint is the third)")
    specs = ([settings.to] if kind == "interp" else []) + (list(settings.models or []) if kind == "models" else [])
    run, rnd = Run.of_checkpoint(ckpt) if ckpt is not None and specs else (None, 0)
    for spec in specs:
        kind_, _, slot = spec.partition(":")
        if not (kind_ in ("mutant", "returned") and _is_slot(slot)) and not Path(spec).is_file():
            raise UserError(f"--models/--to: {spec!r} is neither a checkpoint file nor mutant:SLOT / returned:SLOT")
    for spec in specs if run is not None else []:
        _resolve_model_spec(run, rnd, spec)


def compute_surface(
    ckpt: Path,
    settings: LandscapeSettings,
    out_dir: Path,
    eigvecs: torch.Tensor | None = None,
    progress: Callable[[int, int], None] | None = None,
):
    """The 1D/2D surface around a checkpoint; saved (and resumed) as ``out_dir/surface.npz/.json``.

    Directions (``settings.surface_dirs``): ``random`` (filter-normalised Gaussian, Li et al.
    2018), ``eigen`` (top Hessian eigenvectors, scaled to ||w||), ``interp`` (1D, towards
    ``settings.to``), ``models`` (2D, the plane through the checkpoint and ``settings.models``),
    ``pca`` (2D, the PCA plane of the run's trajectory up to this round, trajectory drawn).
    """
    from flatfl.analysis.surfaces import (
        BatchNormReestimator,
        Surface,
        evaluate_grid,
        has_batchnorm,
        pca_directions,
        plane_through,
        random_directions,
    )

    check_surface_settings(settings)
    run, rnd = Run.of_checkpoint(ckpt)
    dtype = {"float32": torch.float32, "float64": torch.float64}[settings.dtype]
    x, y, data_info = select_data(run, settings.data, settings.samples, settings.seed)
    obj = ModelLoss(run.model(rnd), x, y, batch_size=settings.batch_size, dtype=dtype, device=settings.device)
    theta = obj.flat()
    kind = settings.surface_dirs
    count = 1 if settings.surface == "1d" else 2
    lo_hi = settings.range
    named: list[tuple[str, str, torch.Tensor]] = []
    extra: dict[str, Any] = {}
    if kind == "eigen":
        if eigvecs is None or len(eigvecs) < count:
            r = lanczos(
                HessianOperator(obj, memory_budget=settings.memory_budget_gb * 2**30),
                k=count,
                tol=settings.tol,
                max_vectors=settings.max_vectors,
                generator=torch.Generator().manual_seed(settings.seed * 1000 + 1),
            )
            eigvecs = r.vectors
        # unit eigenvectors, scaled to the weights' norm so that the span reads like Li et al.'s
        dirs = [v * theta.norm() for v in eigvecs[:count]]
        labels = ["top Hessian eigenvector 1 (x ||w||)", "top Hessian eigenvector 2 (x ||w||)"]
        alphas = _axis(*(lo_hi or (-settings.span, settings.span)), settings.grid)
    elif kind == "random":
        dirs = random_directions(
            obj, count, torch.Generator().manual_seed(settings.seed), include_1d=settings.include_1d
        )
        labels = ["random filter-normalised direction 1", "random direction 2 (orthogonalised)"]
        alphas = _axis(*(lo_hi or (-settings.span, settings.span)), settings.grid)
    elif kind == "interp":
        name, other = _model_spec(run, rnd, settings.to, obj)
        dirs = [other - theta]
        labels = [f"t: (1 - t) * this checkpoint + t * {name}"]
        named.append((name, "models", other))
        alphas = _axis(*(lo_hi or (-0.5, 1.5)), settings.grid, must=(0.0, 1.0))
    elif kind == "models":
        (nb, b), (nc, c) = (_model_spec(run, rnd, m, obj) for m in settings.models)
        d1, d2, co = plane_through(theta, b, c)
        if float(d2.norm()) <= 1e-4 * max(float(d1.norm()), 1e-30):
            raise UserError(
                f"--models: {nb} and {nc} lie on one line through the checkpoint (e.g. two FedMut mutants "
                "with opposite signs in every tensor); choose models that span a plane"
            )
        dirs = [d1, d2]
        labels = [f"towards {nb}", f"towards {nc} (orthogonalised)"]
        named += [(nb, "models", b), (nc, "models", c)]
        xs = co[:, 0]
        alphas = _axis(*(lo_hi or (min(xs.min(), 0.0) - 0.5, max(xs.max(), 1.0) + 0.5)), settings.grid, must=(0.0, 1.0))
        extra["betas"] = _axis(*(lo_hi or (-0.5, 1.5)), settings.grid, must=(0.0, 1.0))
    elif kind == "pca":
        rounds = [r for r in run.rounds() if r <= rnd]
        if len(rounds) < 3:
            raise UserError(f"--surface-dirs pca: needs >= 3 saved rounds up to round {rnd}, found {len(rounds)}")
        traj = [_flat_of(run, run.global_state(r), obj) for r in rounds]
        d1, d2, co, var = pca_directions(traj)
        dirs = [d1, d2]
        labels = [f"PC1 ({100 * var[0]:.1f}% of variance)", f"PC2 ({100 * var[1]:.1f}% of variance)"]
        pad = lambda v: 0.2 * max(v.max() - v.min(), 1e-12)  # noqa: E731
        alphas = _axis(co[:, 0].min() - pad(co[:, 0]), co[:, 0].max() + pad(co[:, 0]), settings.grid)
        extra["betas"] = _axis(co[:, 1].min() - pad(co[:, 1]), co[:, 1].max() + pad(co[:, 1]), settings.grid)
        for r, v in zip(rounds, traj):  # ends at the checkpoint itself, (0, 0)
            named.append((f"round {r}", "trajectory", v))
        extra["explained_variance"] = var.tolist()
    else:
        raise UserError(f"--surface-dirs: {kind!r} is not random, eigen, interp, models or pca")
    betas = (extra.pop("betas", None) if kind in ("models", "pca") else alphas) if count == 2 else None
    bn = None
    bn_note = "running statistics of the checkpoint (not re-estimated per point)"
    if settings.bn_reestimate:
        if has_batchnorm(obj.model):
            ds = run.dataset()
            g = torch.Generator().manual_seed(settings.seed + 17)
            idx = torch.randperm(len(ds.train.y), generator=g)[: settings.bn_reestimate * settings.batch_size]
            xb = ds.train.x[idx]
            bn = BatchNormReestimator(
                obj.model, [xb[i : i + settings.batch_size] for i in range(0, len(xb), settings.batch_size)]
            )
            bn_note = (
                f"re-estimated at every point on {len(idx)} training samples ({settings.bn_reestimate} batches), "
                "exact cumulative average (momentum=None)"
            )
        else:
            bn_note = "the model has no BatchNorm layers (--bn-reestimate had nothing to do)"
    desc = {
        "checkpoint_sha256": file_digest(ckpt),  # a retrained run must not resume an old surface
        "kind": f"{settings.surface} {kind}",
        "checkpoint": str(ckpt),
        "round": rnd,
        "algo": run.config["algo"],
        "data": data_info,
        "x_label": labels[0],
        "y_label": labels[1] if count == 2 else None,
        "grid": settings.grid,
        "span": settings.span,
        "range": [float(alphas[0]), float(alphas[-1])],
        "include_1d": settings.include_1d,
        "batchnorm": bn_note,
        "filter_normalised": kind == "random",
        "seed": settings.seed,
        "to": settings.to,
        "models": list(settings.models) if settings.models else None,
        **extra,
    }
    markers = _markers(run, rnd, obj, theta, dirs, named, clients=settings.markers)
    if kind == "models" and lo_hi is None:
        # widen the axes to every model that lies in the plane (e.g. the mirrored FedMut mutants)
        inplane = np.array([m["coords"] for m in markers if m["off_plane_relative"] < 1e-3] or [[0.0, 0.0]])
        a_lo, a_hi = min(alphas[0], inplane[:, 0].min() - 0.25), max(alphas[-1], inplane[:, 0].max() + 0.25)
        b_lo, b_hi = min(betas[0], inplane[:, 1].min() - 0.25), max(betas[-1], inplane[:, 1].max() + 0.25)
        alphas, betas = (
            _axis(a_lo, a_hi, settings.grid, must=(0.0, 1.0)),
            _axis(b_lo, b_hi, settings.grid, must=(0.0, 1.0)),
        )
        desc["range"] = [float(alphas[0]), float(alphas[-1])]
    if betas is not None:
        desc["range_b"] = [float(betas[0]), float(betas[-1])]
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    path = Path(out_dir) / "surface"
    previous = None
    if path.with_suffix(".npz").is_file() and path.with_suffix(".json").is_file():
        try:
            old = Surface.load(path)
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile):  # a cut cache: recompute
            old = None
        if old is not None and old.description == desc:
            previous = old

    def finish(s: Surface) -> None:
        s.description, s.points, s.markers = desc, {"checkpoint": [0.0] * count}, markers

    def on_chunk(s: Surface, done: int, total: int) -> None:
        finish(s)
        if dist_is_main():
            save_surface(s, path)
        if progress is not None:
            progress(done, total)

    surf = evaluate_grid(
        obj,
        dirs,
        alphas,
        betas,
        memory_budget=settings.memory_budget_gb * 2**30,
        resume_from=previous,
        on_chunk=on_chunk,
        bn=bn,
        split=dist_world(),
    )
    finish(surf)
    if dist_is_main():
        save_surface(surf, path)
    return surf


def json_ready(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj
