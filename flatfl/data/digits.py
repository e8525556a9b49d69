"""UCI optical handwritten digits, embedded: 1,797 8x8 images, 10 classes, offline.

``digits.csv.gz`` beside this module is the file scikit-learn ships for
``sklearn.datasets.load_digits`` (BSD-3 licensed package; the data are the test set of
the UCI "Optical Recognition of Handwritten Digits" data set by E. Alpaydin and
C. Kaynak, 1998, CC BY 4.0): one row per image, 64 pixel counts in 0..16, then the label.

Pixels are scaled to [0, 1] (x / 16). The train/test split is a seeded permutation
(``split_seed``, default 0, independent of the run seed so that runs with different seeds
share one test set); ``test_frac`` of the images go to test.
"""

from __future__ import annotations

import gzip
from importlib import resources

import numpy as np
import torch

from flatfl.config import DataConfig
from flatfl.data import Dataset, TensorData, register_dataset
from flatfl.errors import UserError

N_IMAGES = 1797


def read_digits_csv() -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 (1797, 8, 8), labels int64 (1797,)) from the embedded file."""
    with resources.files("flatfl.data").joinpath("digits.csv.gz").open("rb") as fh:
        raw = np.loadtxt(gzip.open(fh, "rt"), delimiter=",", dtype=np.int64)
    images = raw[:, :64].astype(np.uint8).reshape(-1, 8, 8)
    labels = raw[:, 64]
    return images, labels


@register_dataset(
    "digits",
    info=lambda cfg: {"num_classes": 10, "input_shape": [1, 8, 8]},
    description="embedded UCI handwritten digits, 1,797 8x8 images, 10 classes (no download)",
)
def load_digits(cfg: DataConfig, download: bool = False) -> Dataset:
    images, labels = read_digits_csv()
    n = len(labels)
    perm = np.random.default_rng(cfg.split_seed).permutation(n)
    n_test = int(round(cfg.test_frac * n))
    if not 0 < n_test < n:  # an empty test split evaluated every round to loss 0.0, accuracy 0.0 without a word
        raise UserError(
            f"--test-frac {cfg.test_frac:g}: gives {n_test} test images of the {n} digits; a run needs both splits"
        )
    test_idx, train_idx = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    x = torch.from_numpy(images.astype(np.float32) / 16.0).unsqueeze(1)
    y = torch.from_numpy(labels)
    return Dataset(
        name="digits",
        train=TensorData(x[train_idx], y[train_idx]),
        test=TensorData(x[test_idx], y[test_idx]),
        num_classes=10,
        input_shape=(1, 8, 8),
        source="embedded UCI digits (scikit-learn digits.csv.gz)",
    )
