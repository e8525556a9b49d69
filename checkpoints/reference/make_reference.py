"""Regenerate the reference runs and their expected flatness numbers.

    python checkpoints/reference/make_reference.py          # retrain both runs, remeasure, rewrite
    python checkpoints/reference/make_reference.py --check  # remeasure and compare only (what the tests do)

Two tiny runs on the embedded digits (FedAvg and FedMut, same seed: 6 clients, 3 per round,
Dirichlet(0.5), 5 rounds, SGD momentum 0.9 pinned -- flatfl's default when they were made, now
0.5 -- so the stored files stay valid; client models of rounds 1 and 5 saved) live in ``digits-fedavg`` and
``digits-fedmut``; ``expected.json`` holds, for the last round of each, lambda_max and the
most negative eigenvalue, the Hutch++ trace, SAM and average-case sharpness, the mean
distance of the sent (mutant) and returned models to the dispatched global model, and a 5x5
filter-normalised random surface, all on a fixed 300-sample subset of the training data,
with the tolerance each is compared at. ``tests/test_reference.py`` retrains the runs
(trainer regression) and remeasures the stored checkpoints (analysis regression): a change
that moves any number beyond its tolerance fails, and if the change is intended, rerun this
script and commit the new files together with the change.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

RUNS = {"digits-fedavg": "fedavg", "digits-fedmut": "fedmut"}
TRAIN = [
    "--dataset", "digits", "--clients", "6", "--frac", "0.5", "--dirichlet", "0.5", "--local-epochs", "1",
    "--lr", "0.05", "--momentum", "0.9", "--rounds", "5", "--seed", "0", "--save-clients", "5", "--no-progress",
]  # fmt: skip
ROUND = 5
# relative tolerances: the computations are deterministic given the seeds; these absorb float
# reordering across CPUs / BLAS builds, not algorithmic change
TOL = {
    "lambda_max": 1e-4,
    "lambda_min": 1e-3,
    "trace": 1e-4,
    "sam": 1e-3,
    "average_isotropic": 1e-3,
    "surface": 1e-4,
    "sent_l2_mean": 1e-6,
    "returned_l2_mean": 1e-6,
}


def settings():
    from flatfl.runs.landscape import LandscapeSettings

    return LandscapeSettings(
        data="train",
        samples=300,
        seed=0,
        hessian=True,
        topk=1,
        tol=1e-6,
        trace=True,
        trace_matvecs=30,
        trace_method="hutch++",  # pinned: the expected trace is Hutch++'s, whatever the default
        sharpness=("sam", "average_isotropic"),
        sharpness_samples=20,
        surface="2d",
        surface_dirs="random",
        grid=5,
        span=0.5,
        markers=False,
    )


def train(out: Path, algo: str) -> None:
    from flatfl.cli import main

    code = main(["train", *TRAIN, "--algo", algo, "--out", str(out), "--overwrite"])
    if code != 0:
        raise SystemExit(code)


def measure(run_dir: Path, work: Path) -> dict:
    """The expected numbers of one reference run (see the module docstring)."""
    from flatfl.runs.landscape import compute, compute_surface
    from flatfl.runs.run import Run
    from flatfl.runs.spread import round_spread

    ck = run_dir / f"round_{ROUND:04d}.safetensors"
    s = settings()
    res, _ = compute(ck, s)
    surf = compute_surface(ck, s, work)
    spread = round_spread(Run.open(run_dir), ROUND).summary()
    return {
        "sent_l2_mean": spread["sent_l2_mean"],
        "returned_l2_mean": spread["returned_l2_mean"],
        "round": ROUND,
        "lambda_max": res["hessian"]["eigenvalues"][0],
        "lambda_min": res["hessian"]["smallest"],
        "trace": res["trace"]["estimate"],
        "sam": res["sharpness"]["sam"]["value"],
        "average_isotropic": res["sharpness"]["average_isotropic"]["value"],
        "surface": surf.loss.tolist(),
    }


def main() -> None:
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with expected.json instead of rewriting")
    args = ap.parse_args()
    expected = json.loads((HERE / "expected.json").read_text()) if args.check else None
    out = {"settings": None, "tolerances": TOL, "train": TRAIN, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, algo in RUNS.items():
            if not args.check:
                train(HERE / name, algo)
                for extra in ("landscape",):
                    shutil.rmtree(HERE / name / extra, ignore_errors=True)
            out["runs"][name] = measure(HERE / name, Path(tmp) / name)
    out["settings"] = asdict(settings())
    if args.check:
        bad = []
        for name, want in expected["runs"].items():
            got = out["runs"][name]
            for key, tol in TOL.items():
                a, b = (want[key], got[key])
                import numpy as np

                if not np.allclose(np.asarray(b), np.asarray(a), rtol=tol, atol=1e-7):
                    bad.append(f"{name} {key}: expected {a}, got {b}")
        print("\n".join(bad) or "all reference numbers within tolerance")
        raise SystemExit(1 if bad else 0)
    (HERE / "expected.json").write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"wrote {HERE / 'expected.json'}")


if __name__ == "__main__":
    main()
