"""
Your own model with the library
===============================

``flatfl.analysis`` measures any ``nn.Module`` on any data: no flatfl run is needed. This tutorial trains a
small network of its own on the digits that ship with flatfl (1,797 8x8 images), then asks the library
the questions flatfl asks of a federated model: the top Hessian eigenvalues, the trace, a sharpness
measure and the loss along a filter-normalised random line and plane. Every result is a frozen
dataclass that carries its cost (``num_matvecs``, Hessian-vector products) and its ``settings``.

The settings are small so that the documentation builds in seconds; the same calls take the full data.
"""

# %%
# A model and data of our own
# ---------------------------
# Any model and any iterable of ``(x, y)`` batches (a DataLoader, a list of tensors) will do. Here: a
# two-layer network on flatfl's embedded digits, trained for a few hundred Adam steps.
import torch
from torch import nn

from flatfl.config import DataConfig
from flatfl.data import load_dataset

torch.manual_seed(0)
digits = load_dataset(DataConfig(dataset="digits"))
x, y = digits.train.x[:400].flatten(1), digits.train.y[:400]
model = nn.Sequential(nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10))
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
for _ in range(300):
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
print(f"{sum(p.numel() for p in model.parameters())} parameters, training loss {loss.item():.4f}")
loader = [(x[i : i + 100], y[i : i + 100]) for i in range(0, 400, 100)]

# %%
# The top of the Hessian spectrum
# -------------------------------
# Lanczos with full reorthogonalisation on exact Hessian-vector products of the mean loss over all
# 400 samples; each eigenvalue comes with its residual ‖Hv − λv‖.
from flatfl.analysis import hessian_eigenvalues, hessian_trace, loss_surface, sharpness

top = hessian_eigenvalues(model, loader, k=3, dtype=torch.float64)
print("top-3 eigenvalues", top.values.tolist(), "residuals", top.residuals.tolist(), top.num_matvecs, "HVPs")

# %%
# The model is small enough to check this against the dense Hessian (float64, ``torch.func.hessian``):
params = {k: v.detach().double() for k, v in model.named_parameters()}
names = list(params)
flat = torch.cat([params[k].flatten() for k in names])


def mean_loss(w: torch.Tensor) -> torch.Tensor:
    chunks, i = {}, 0
    for k in names:
        chunks[k] = w[i : i + params[k].numel()].view_as(params[k])
        i += params[k].numel()
    out = torch.func.functional_call(model, chunks, (x.double(),))
    return nn.functional.cross_entropy(out, y)


dense = torch.linalg.eigvalsh(torch.func.hessian(mean_loss)(flat))
print("dense top-3        ", dense[-3:].flip(0).tolist())
assert torch.allclose(torch.as_tensor(top.values, dtype=torch.float64), dense[-3:].flip(0), rtol=1e-4)

# %%
# Trace, sharpness
# ----------------
# The trace by the adaptive Hutchinson / Hutch++ estimator (a standard error with it) and SAM sharpness,
# the largest loss increase within an L2 ball of radius ρ = 0.05 (Foret et al. 2021).
tr = hessian_trace(model, loader, num_matvecs=30, dtype=torch.float64)
print(f"trace {tr.estimate:.3f} ± {tr.stderr:.3f} (exact {dense.sum().item():.3f})")
sam = sharpness(model, loader, kind="sam", rho=0.05)
print(f"SAM sharpness at rho 0.05: {sam.value:.5f}")

# %%
# Loss along a line and over a plane
# ----------------------------------
# Random Gaussian directions, filter-normalised (Li et al. 2018): L(w + α d1 + β d2) on a small grid. The
# model's own weights are never changed (the library evaluates copies of the parameters).
import matplotlib.pyplot as plt

line = loss_surface(model, loader, dims=1, steps=21, span=(-1.0, 1.0))
plane = loss_surface(model, loader, dims=2, steps=11, span=(-1.0, 1.0))
fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6), layout="constrained")
a.plot(line.alphas, line.loss)
a.set(xlabel="α", ylabel="loss", title="a random filter-normalised line")
cs = b.contourf(plane.alphas, plane.betas, (plane.loss - plane.origin_loss()).T, levels=12)
fig.colorbar(cs, ax=b, label="Δloss")
b.set(xlabel="α", ylabel="β", title="the plane through the model")
print("loss at the model:", plane.origin_loss())
