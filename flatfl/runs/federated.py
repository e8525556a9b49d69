"""Global vs local flatness per client of a flatfl run (the FedSAM line's question)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from flatfl.analysis.lanczos import lanczos
from flatfl.analysis.operators import HessianOperator, ModelLoss
from flatfl.errors import UserError
from flatfl.runs.curvature import generator
from flatfl.runs.problem import DTYPES, Problem
from flatfl.runs.run import Run


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
                f"--federated-clients sampled: {ckpt.clients_path(run.path, rnd)} is missing "
                "(train with --save-clients)"
            )
        return list(saved["clients"]), saved
    try:
        ids = [int(c) for c in spec.split(",") if c.strip()]
    except ValueError:
        raise UserError(f"--federated-clients: {spec!r} is not all, sampled or a comma-separated list of ids") from None
    bad = [c for c in ids if not 0 <= c < k_all]
    if bad or not ids:
        raise UserError(f"--federated-clients: {bad or spec!r} not among clients 0..{k_all - 1}")
    return ids, saved


def federated_view(
    problem: Problem, settings: Any, global_vec: torch.Tensor | None, log: Callable[[str], None]
) -> dict[str, Any]:
    """Global vs local flatness per client (the FedSAM line's question).

    For each client k: lambda_max of client k's own loss at the global model w_t, and -- when
    the round was saved with ``--save-clients`` and k was sampled -- at the model k returned in
    round t (whose average is w_t); the |cosine| between client k's top eigenvector at w_t and
    the top eigenvector of the loss on ``--data`` at w_t (alignment of sharp directions).
    """
    run, rnd, model = problem.run, problem.round, problem.model
    if run is None:
        raise UserError("--federated: needs a flatfl run (its partition and clients); this model has none")
    ids, saved = _client_ids(run, rnd, settings.clients)
    ds = run.dataset()
    parts = run.partition()
    dtype = DTYPES[settings.dtype]
    gen = lambda k: generator(settings, k)  # noqa: E731
    if global_vec is None:
        gop = HessianOperator(problem.objective)
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
