"""flatfl's analysis on a tiny transformer fed HuggingFace-style dict batches.

``forward(model, batch)`` and ``targets(batch)`` tell flatfl how to call the model on a batch and where
the labels are; everything else is as for (x, y) data. Attention runs through PyTorch's math kernel
while Hessian-vector products are taken (the fused kernels have no second derivative).

    python examples/library_transformer.py [--sequences 64] [--out OUT]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from flatfl.analysis import hessian_eigenvalues, loss_surface, plot_surface, sharpness


class TinyTransformer(nn.Module):
    def __init__(self, vocab: int = 50, dim: int = 16, classes: int = 2) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.layer = nn.TransformerEncoderLayer(dim, nhead=2, dim_feedforward=32, dropout=0.1, batch_first=True)
        self.head = nn.Linear(dim, classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.layer(self.emb(input_ids), src_key_padding_mask=attention_mask == 0)
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * m).sum(1) / m.sum(1))


def batches(n: int, length: int = 12, size: int = 16) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50, (n, length), generator=g)
    mask = (torch.arange(length) < torch.randint(4, length + 1, (n, 1), generator=g)).long()
    labels = (ids[:, 0] % 2).long()
    return [
        {"input_ids": ids[i : i + size], "attention_mask": mask[i : i + size], "labels": labels[i : i + size]}
        for i in range(0, n, size)
    ]


def forward(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(batch["input_ids"], batch["attention_mask"])


def targets(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return batch["labels"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sequences", type=int, default=64, metavar="N", help="random token sequences (default: 64)")
    ap.add_argument(
        "--out",
        type=Path,
        default=Path("checkpoints/examples/transformer"),
        metavar="DIR",
        help="folder for the plot (default: checkpoints/examples/transformer)",
    )
    args = ap.parse_args()
    torch.manual_seed(0)
    model = TinyTransformer()
    data = batches(args.sequences)
    hooks = dict(forward=forward, targets=targets, loss_fn=nn.CrossEntropyLoss())
    top = hessian_eigenvalues(model, data, k=2, **hooks)
    print(f"top eigenvalues {top.values.round(4).tolist()} ({top.num_matvecs} HVPs; dropout off: eval mode)")
    print(f"SAM sharpness {sharpness(model, data, kind='sam', **hooks).value:.4g}")
    line = loss_surface(model, data, dims=1, directions="eigen", steps=9, span=(-0.5, 0.5), **hooks)
    args.out.mkdir(parents=True, exist_ok=True)
    print("wrote", plot_surface(line, args.out / "eigen_line", title="tiny transformer, top eigenvector"))
    assert model.training, "the model's own mode is left as it was"


if __name__ == "__main__":
    main()
