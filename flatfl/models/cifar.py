"""The FedMut paper's CIFAR models, as in the authors' reference code (``models/``).

* ``cnn``: LeNet-5 style, conv(3->6, 5x5)-ReLU-maxpool2, conv(6->16, 5x5)-ReLU-maxpool2, fc
  400->120->84->classes (62,006 parameters for 10 classes). Its 84-unit fc2 output is the
  latent feature FedGen's generator targets.
* ``resnet18``: BasicBlock [2, 2, 2, 2] with a 3x3 stride-1 stem and no max-pool (the usual
  CIFAR variant), BatchNorm, kaiming-normal conv init (11,173,962 parameters for 10 classes).
  ``norm="group"`` swaps every BatchNorm for GroupNorm(2 groups) -- same parameter count, no
  running statistics, which matters in FL (statistics are averaged and, by FedMut with
  ``--mutate all``, mutated) and for Hessian analysis (eval mode uses running statistics).
* ``vgg16``: 13 3x3 conv layers, each with BatchNorm and ReLU (64, 64, M, 128, 128, M, 256x3, M,
  512x3, M, 512x3, M), then 512->4096->4096 (ReLU, dropout 0.5)->classes (33,646,666
  parameters for 10 classes).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from flatfl.models import register_model


def _image_kwargs(ds: dict[str, Any]) -> dict[str, Any]:
    c, h, w = ds["input_shape"]
    return {"in_channels": c, "num_classes": ds["num_classes"]}


def _norm_kwargs(ds: dict[str, Any]) -> dict[str, Any]:
    return {**_image_kwargs(ds), "norm": "batch"}


@register_model(
    "cnn",
    _image_kwargs,
    "LeNet-5 style CNN for 32x32 images (62,006 params for 10 classes)",
    default_for=("cifar10", "cifar100"),
)
class LeNet(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    latent_dim = 84

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """The input of the classifier head: fc2's 84 units after ReLU (FedGen's latent)."""
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.relu(self.fc1(x.flatten(1)))
        return torch.relu(self.fc2(x))

    def head(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc3(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.latent(x))


def make_norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(2, channels)
    raise ValueError(f"norm must be batch or group, not {kind!r}")


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = make_norm(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = make_norm(norm, cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), make_norm(norm, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


@register_model(
    "resnet18", _norm_kwargs, "ResNet-18 for CIFAR: 3x3 stem, no max-pool, BatchNorm (11,173,962 params for 10 classes)"
)
class ResNet18(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 10, norm: str = "batch") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = make_norm(norm, 64)
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers.append(nn.Sequential(BasicBlock(cin, cout, stride, norm), BasicBlock(cout, cout, 1, norm)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    latent_dim = 512

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """The input of the classifier head: the globally pooled 512 features."""
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.pool(x).flatten(1)

    def head(self, z: torch.Tensor) -> torch.Tensor:
        return self.linear(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.latent(x))


VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


@register_model("vgg16", _image_kwargs, "VGG-16 with BatchNorm for 32x32 images (33,646,666 params for 10 classes)")
class VGG16(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for v in VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, int(v), 3, padding=1), nn.BatchNorm2d(int(v)), nn.ReLU(inplace=True)]
                cin = int(v)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(512, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(4096, num_classes),
        )

    latent_dim = 512

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """The input of the classifier head: the 512 features left after the last max-pool."""
        return self.features(x).flatten(1)

    def head(self, z: torch.Tensor) -> torch.Tensor:
        return self.classifier(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.latent(x))
