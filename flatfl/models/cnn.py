"""Small convolutional networks."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from flatfl.models import register_model


def _image_kwargs(ds: dict[str, Any]) -> dict[str, Any]:
    c, h, w = ds["input_shape"]
    if h != w:
        raise ValueError("square images expected")
    return {"in_channels": c, "image_size": h, "num_classes": ds["num_classes"]}


@register_model(
    "smallcnn",
    _image_kwargs,
    "conv3x3(16)-pool-conv3x3(32)-pool-fc64 for small images (13,706 params on 8x8 digits)",
    default_for=("digits",),
)
class SmallCNN(nn.Module):
    """Two padded 3x3 conv layers with ReLU and 2x2 max-pool, then a 64-unit hidden layer.

    Sized for the embedded 8x8 digits so the demo trains in seconds on two CPU cores:
    1x8x8 -> 16x4x4 -> 32x2x2 -> 128 -> 64 -> classes (13,706 parameters for 10 classes).
    """

    def __init__(self, in_channels: int = 1, image_size: int = 8, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        side = image_size // 4
        self.fc1 = nn.Linear(32 * side * side, 64)
        self.fc2 = nn.Linear(64, num_classes)

    latent_dim = 64

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """The input of the classifier head: the 64-unit hidden layer after ReLU."""
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        return torch.relu(self.fc1(x.flatten(1)))

    def head(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc2(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.latent(x))
