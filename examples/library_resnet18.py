"""flatfl's analysis on your own model: a torchvision ResNet-18 on a batch of images.

No flatfl run involved -- any ``nn.Module`` and any DataLoader. Random images stand in for your data
(replace ``images()`` with your own loader); the model is left exactly as it was.

    python examples/library_resnet18.py [--images 16] [--vectors 12] [--probes 9] [--out OUT]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torchvision
from torch import nn

from flatfl.analysis import hessian_eigenvalues, hessian_trace, loss_surface, objective, plot_surface


def images(n: int) -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--images", type=int, default=16, metavar="N", help="random 3x32x32 images to analyse on (default: 16)"
    )
    ap.add_argument(
        "--vectors", type=int, default=12, metavar="N", help="most Lanczos vectors for lambda_max (default: 12)"
    )
    ap.add_argument("--probes", type=int, default=9, metavar="N", help="Hutchinson probes for the trace (default: 9)")
    ap.add_argument(
        "--out",
        type=Path,
        default=Path("checkpoints/examples/resnet18"),
        metavar="DIR",
        help="folder for the plot (default: checkpoints/examples/resnet18)",
    )
    args = ap.parse_args()
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    # build the objective once (model copy + data + loss) and reuse it for every question
    obj = objective(model, images(args.images), loss_fn=nn.CrossEntropyLoss())
    top = hessian_eigenvalues(obj, k=1, tol=1e-2, max_vectors=args.vectors)
    print(f"lambda_max = {top.values[0]:.4g} (residual {top.residuals[0]:.2g}, {top.num_matvecs} HVPs)")
    tr = hessian_trace(obj, num_matvecs=args.probes, estimator="hutchinson")
    print(f"trace = {tr.estimate:.4g} +- {tr.stderr:.2g}")
    line = loss_surface(obj, dims=1, steps=5, span=(-0.5, 0.5))
    print("loss along a filter-normalised random direction:", [round(v, 4) for v in line.loss.tolist()])
    args.out.mkdir(parents=True, exist_ok=True)
    for path in plot_surface(line, args.out / "line", title="ResNet-18, random direction"):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
