"""Global vs local flatness per client of a flatfl run (the FedSAM line's question)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from flatfl import checkpoint as ckpt
from flatfl.analysis.lanczos import EigenResult, lanczos
from flatfl.analysis.operators import HessianOperator, ModelLoss
from flatfl.errors import UserError
from flatfl.runs.curvature import Bars, generator, no_bars
from flatfl.runs.problem import Problem
from flatfl.runs.run import Run
from flatfl.runs.settings import DTYPES, LandscapeSettings


def _client_ids(run: Run, rnd: int, spec: str) -> tuple[list[int], dict | None]:
    """Which clients the federated view covers, and the round's client models if saved."""
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
                f"--federated-clients sampled: {ckpt.clients_path(run.path, rnd)} is missing "
                "(train with --save-clients)"
            )
        return list(saved["clients"]), saved
    items = [c.strip() for c in spec.split(",")]
    if len(items) > 1 and "" in items:  # '1,,2' or '1,': an id left out by mistake
        raise UserError(f"--federated-clients {spec}: an empty id between commas; give comma-separated ids")
    try:
        ids = [int(c) for c in items if c]
    except ValueError:
        raise UserError(f"--federated-clients: {spec!r} is not all, sampled or a comma-separated list of ids") from None
    twice = sorted({c for c in ids if ids.count(c) > 1})
    if twice:
        raise UserError(f"--federated-clients {spec}: client {twice[0]} given twice; name each client once")
    bad = [c for c in ids if not 0 <= c < k_all]
    if bad or not ids:
        raise UserError(f"--federated-clients: {bad or spec!r} not among clients 0..{k_all - 1}")
    return ids, saved


def federated_view(
    problem: Problem,
    settings: LandscapeSettings,
    global_vec: torch.Tensor | None,
    log: Callable[[str], None],
    bars: Bars = no_bars,
) -> dict[str, Any]:
    """Global vs local flatness per client (the FedSAM line's question).

    For each client k: lambda_max of client k's own loss at the global model w_t, and -- when
    the round was saved with ``--save-clients`` and k was sampled -- at the model k returned in
    round t (whose average is w_t); the |cosine| between client k's top eigenvector at w_t and
    the top eigenvector of the loss on ``--data`` at w_t (alignment of sharp directions).
    ``bars``: a progress bar per Lanczos run (:func:`flatfl.runs.curvature.tqdm_bars`).
    """
    run, rnd, model = problem.run, problem.round, problem.model
    if run is None:
        raise UserError("--federated: needs a flatfl run (its partition and clients); this model has none")
    ids, saved = _client_ids(run, rnd, settings.clients)
    ds = run.dataset()
    parts = run.partition()
    dtype = DTYPES[settings.dtype]

    def top(net: torch.nn.Module, x: Any, y: torch.Tensor | None, seed: int, what: str) -> EigenResult:
        """Lanczos top-1 of ``net``'s loss on (x, y) (None: the problem's own objective), with a bar."""
        objective = problem.objective if y is None else ModelLoss(
            net, x, y, batch_size=settings.batch_size, dtype=dtype, device=settings.device
        )  # fmt: skip
        with bars(f"federated: {what} (HVPs)") as progress:
            return lanczos(
                HessianOperator(objective), k=1, tol=settings.tol, max_vectors=settings.max_vectors,
                generator=generator(settings, seed), progress=progress,
            )  # fmt: skip

    if global_vec is None:
        global_vec = top(model, None, None, 8, "global top eigenvector").vectors[0]
    rows = []
    for c in ids:
        idx = torch.as_tensor(parts[c])
        xc, yc = ds.train.x[idx], ds.train.y[idx]
        r = top(model, xc, yc, 100 + c, f"client {c} at the global model")
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
            lr = top(local, xc, yc, 200 + c, f"client {c} at its returned model")
            row["lambda_max_at_returned"] = float(lr.values[0])
            row["num_hvps"] += lr.num_matvecs
        rows.append(row)
        at_returned = row.get("lambda_max_at_returned")
        log(
            f"federated: client {c}: lambda_max at global {row['lambda_max_at_global']:.4g}"
            + (f", at its returned model {at_returned:.4g}" if at_returned is not None else "")
            + f", |cos| with global top eigenvector {cos:.3f}"
        )
    return {"clients": rows, "global_data": settings.data, "selection": settings.clients}
