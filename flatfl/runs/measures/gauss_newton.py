"""lambda_max and trace of the generalised Gauss-Newton matrix and of the empirical Fisher (``--curvature ggn,ef``).

GGN = J^T H_out J and EF = mean g_i g_i^T, the PSD parts of the Hessian (Papyan 2020), on curvlinops-style
operators (:mod:`flatfl.analysis.curvatures`). Lower is flatter. Invariant to none of the tested function-preserving
rescalings: under w -> T w, J -> J T^-1, so both matrices become T^-1 M T^-1 as the Hessian does; their dense
float64 matrices change under all five (tests/test_invariance.py, :mod:`flatfl.analysis.invariance`).

On a model without forward-mode autodiff (PyTorch's LSTM kernels: the Shakespeare model) J v is formed by reverse
over reverse instead (``jv: "reverse"`` and the forward-mode error in the record); where that cannot differentiate
the backward pass either, the record says ``not_measured`` with the reason and the columns stay empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from flatfl.analysis.curvatures import curvature_operator
from flatfl.analysis.invariance import invariant_to
from flatfl.analysis.lanczos import lanczos
from flatfl.analysis.trace import TRACE_ESTIMATORS
from flatfl.analysis.verdict import Measure
from flatfl.flagtypes import name_list
from flatfl.runs.measures.spec import Context, Flag, Meaning, MeasureSpec, register
from flatfl.runs.problem import Problem
from flatfl.runs.settings import LandscapeSettings, ReportSettings

CURVATURE_KINDS = ("ggn", "ef")
LABELS = {"ggn": "GGN", "ef": "empirical Fisher"}
REFERENCES = {
    "Schraudolph 2002": "N. N. Schraudolph. Fast curvature matrix-vector products for second-order gradient "
    "descent. Neural Computation 14, 2002.",
    "Kunstner et al. 2019": "F. Kunstner, L. Balles, P. Hennig. Limitations of the empirical Fisher approximation "
    "for natural gradient descent. NeurIPS 2019.",
    "Papyan 2020": "V. Papyan. Traces of class/cross-class structure pervade deep learning spectra. JMLR 21, 2020.",
}


@dataclass(frozen=True)
class CurvatureSettings:
    """Which matrix (``ggn`` or ``ef``); Lanczos ``--tol`` and the trace budget are the landscape's."""

    kind: str = "ggn"


def parse_curvature(text: str | None) -> tuple[str, ...]:
    """``--curvature ggn,ef`` as a tuple; a one-line error for an unknown or repeated kind."""
    return name_list(text, "--curvature", CURVATURE_KINDS, {}, what="kind") if text is not None else ()


def _spec(kind: str) -> MeasureSpec:
    def compute(problem: Problem, s: CurvatureSettings, ctx: Context) -> dict[str, Any]:
        ls = ctx.landscape
        op = curvature_operator(problem.objective, kind, None)
        try:
            eig = lanczos(op, k=1, tol=ls.tol, generator=ctx.generator(901 + CURVATURE_KINDS.index(kind)),
                          return_vectors=False)  # fmt: skip
            lam_products = op.num_matvecs
            tr = TRACE_ESTIMATORS[ls.trace_method](op, num_matvecs=ls.trace_matvecs, generator=ctx.generator(903))
        except torch.cuda.OutOfMemoryError:
            raise  # the device's limit, not the model's: --batch-size / --samples are the user's to change
        except (RuntimeError, NotImplementedError) as e:  # neither forward mode nor reverse over reverse
            why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            ctx.log(f"{kind}: not measured (its products failed: {why})")
            return {"lambda_max": None, "residual": None, "trace": None, "trace_stderr": None, "not_measured": why}
        ctx.log(
            f"{kind}: lambda_max {eig.values[0]:.6g}, trace {tr.estimate:.6g} +- {tr.stderr:.2g}"
            + ("" if op.jv_method == "forward" else f" (J v by reverse over reverse: {op.forward_error})")
        )
        return {"lambda_max": float(eig.values[0]), "residual": float(eig.residuals[0]),
                "lambda_max_products": lam_products, "trace": tr.estimate, "trace_stderr": tr.stderr,
                "trace_products": tr.num_matvecs, "trace_method": ls.trace_method, "jv": op.jv_method,
                "forward_mode_error": op.forward_error}  # fmt: skip

    def columns(res: dict[str, Any], s: CurvatureSettings) -> dict[str, Any]:
        return {f"{kind}_lambda_max": res["lambda_max"], f"{kind}_lambda_max_residual": res["residual"],
                f"{kind}_trace": res["trace"], f"{kind}_trace_stderr": res["trace_stderr"]}  # fmt: skip

    def verdict(s: CurvatureSettings, ls: LandscapeSettings) -> list[Measure]:
        k = f"{kind}_lambda_max"
        t = f"{kind}_trace"
        return [Measure(k, f"{LABELS[kind]} λmax", invariant_to=invariant_to(k), error=f"{k}_residual"),
                Measure(t, f"{LABELS[kind]} trace", invariant_to=invariant_to(t), error=f"{t}_stderr",
                        budget=(ls.trace_matvecs, "products"))]  # fmt: skip

    def from_flags(ns: dict[str, Any]) -> CurvatureSettings | None:
        return CurvatureSettings(kind) if kind in parse_curvature(ns.get("curvature")) else None

    def meaning(s: CurvatureSettings, report: ReportSettings) -> dict[str, Meaning]:
        what = ("G = (1/N) Σ<sub>i</sub> J<sub>i</sub>ᵀ H<sub>out,i</sub> J<sub>i</sub>, the generalised Gauss-Newton "
                "matrix (J the Jacobian of the model's output, H<sub>out</sub> the loss's Hessian in the output)"
                if kind == "ggn" else "F = (1/N) Σ<sub>i</sub> g<sub>i</sub> g<sub>i</sub>ᵀ, the empirical Fisher "
                "(g<sub>i</sub> example i's loss gradient)")  # fmt: skip
        cite = ("Schraudolph 2002", "Papyan 2020") if kind == "ggn" else ("Kunstner et al. 2019", "Papyan 2020")
        psd = "; a positive semi-definite part of the Hessian (Papyan 2020)"
        return {
            f"{kind}_lambda_max": Meaning(f"λ<sub>max</sub> of {what}{psd}, by Lanczos.", "lower",
                                          "the Lanczos residual of the returned eigenpair", cite),
            f"{kind}_trace": Meaning(f"tr of {what}, from random probes.", "lower",
                                     "the estimator's standard error over its probes", cite),
        }  # fmt: skip

    return MeasureSpec(
        name=kind,
        label=f"{LABELS[kind]} curvature",
        direction="lower",
        invariances=invariant_to(f"{kind}_lambda_max") & invariant_to(f"{kind}_trace"),
        settings=CurvatureSettings,
        compute=compute,
        flags=(
            Flag(
                ("--curvature",),
                {
                    "metavar": "LIST",
                    "help": "lambda_max and trace of other curvature matrices: ggn (generalised "
                    "Gauss-Newton J^T H_out J), ef (empirical Fisher, mean g_i g_i^T); "
                    "comma-separated (uses --tol, --trace-matvecs, --trace-method)",
                },
            ),
        ),  # fmt: skip
        from_flags=from_flags,
        path=("literature", kind),
        columns=columns,
        verdict=verdict,
        describe=lambda s: f"{kind} lambda_max and trace",
        meaning=meaning,
        references=REFERENCES,
    )


SPECS = tuple(register(_spec(k)) for k in CURVATURE_KINDS)
