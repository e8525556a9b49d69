"""flatfl's analysis on a regression MLP with mean-squared error: every question in one call each.

``nn.MSELoss()`` (mean reduction) is passed as it is; flatfl weighs each batch by its size, so the
numbers are those of the mean loss over all examples.

    python examples/library_regression.py [--samples 512] [--out OUT]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from flatfl.analysis import (
    hessian_density,
    hessian_eigenvalues,
    hessian_trace,
    loss_surface,
    objective,
    plot_density,
    plot_surface,
    sharpness,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--samples", type=int, default=512, metavar="N", help="synthetic regression examples (default: 512)"
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=Path("checkpoints/examples/regression"),
        metavar="DIR",
        help="folder for the plots (default: checkpoints/examples/regression)",
    )
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.samples, 8, generator=g)
    y = torch.sin(x[:, :2]) + 0.1 * torch.randn(args.samples, 2, generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(300):  # a short full-batch fit, so there is a minimum to look at
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    obj = objective(model, (x, y), loss_fn=nn.MSELoss(), batch_size=128)
    eig = hessian_eigenvalues(obj, k=3, smallest=True)
    print(f"top eigenvalues {eig.values.round(4).tolist()}, lambda_min {eig.smallest:.3g}")
    tr = hessian_trace(obj)
    print(f"trace {tr.estimate:.4g} +- {tr.stderr:.2g} ({tr.num_matvecs} HVPs, {tr.settings['estimator']})")
    for kind in ("sam", "adaptive", "average"):
        print(f"{kind} sharpness {sharpness(obj, kind=kind).value:.4g}")
    args.out.mkdir(parents=True, exist_ok=True)
    dens = hessian_density(obj, num_runs=4, num_steps=40)
    print("wrote", plot_density(dens, args.out / "density"))
    plane = loss_surface(obj, dims=2, steps=11)
    print("wrote", plot_surface(plane, args.out / "plane", title="MLP regression, random plane"))


if __name__ == "__main__":
    main()
