"""The FedMut paper's Shakespeare model (the LEAF next-character LSTM).

Embedding(80, 8) -> 2-layer LSTM(hidden 256) -> Linear(256, 80) on the last time step: the
logits of the next character of an 80-character window (819,920 parameters).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from flatfl.models import register_model


def _text_kwargs(ds: dict[str, Any]) -> dict[str, Any]:
    return {"vocab_size": ds["num_classes"]}


@register_model(
    "lstm",
    _text_kwargs,
    "character LSTM: Embedding(80, 8), 2x LSTM(256), Linear(256, 80) (819,920 params)",
    default_for=("shakespeare",),
)
class CharLSTM(nn.Module):
    def __init__(self, vocab_size: int = 80, embed_dim: int = 8, hidden: int = 256, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.lstm = nn.LSTM(embed_dim, hidden, num_layers=layers, batch_first=True)
        self.fc = nn.Linear(hidden, vocab_size)
        self.latent_dim = hidden

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """The input of the classifier head: the last hidden state of the top LSTM layer."""
        out, _ = self.lstm(self.embed(x))
        return out[:, -1]

    def head(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.latent(x))
