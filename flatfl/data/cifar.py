"""CIFAR-10 and CIFAR-100 from the official "python version" archives, read into tensors.

Layout under ``--data-root DIR`` (what the official tarballs and torchvision's
``download=True`` extract):

* ``DIR/cifar-10-batches-py/``: ``data_batch_1`` .. ``data_batch_5``, ``test_batch``,
  ``batches.meta``; each batch a pickled dict with ``data`` (N x 3072 uint8, channel-major
  32x32 planes) and ``labels``;
* ``DIR/cifar-100-python/``: ``train``, ``test``, ``meta``; ``fine_labels`` (100 classes) and
  ``coarse_labels`` (20 superclasses).

The batches are Python pickles -- the official format -- and are read with a restricted
unpickler that only rebuilds NumPy arrays, lists, dicts and strings (no arbitrary code). MD5
sums are compared with the official archive's (torchvision's list); a mismatch *warns*
rather than refuses, since researchers keep subsets and re-packed copies. ``--download``
fetches the archive through torchvision (the only network access flatfl makes).

As in the FedMut reference code (``utils/get_dataset.py``): official train/test splits, no
augmentation by default (``--augment``: random 32x32 crop of the 4-padded image and a
horizontal flip, applied per local minibatch), CIFAR-10 normalised with mean = std = 0.5 per
channel, CIFAR-100 with mean (0.4914, 0.4822, 0.4465) and std (0.2023, 0.1994, 0.2010), and
CIFAR-100 trained on its 20 coarse labels by default (``--cifar100-labels fine`` for 100).
"""

from __future__ import annotations

import hashlib
import io
import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flatfl.config import DataConfig
from flatfl.data import Dataset, TensorData, register_dataset
from flatfl.errors import UserError

CIFAR10_DIR, CIFAR100_DIR = "cifar-10-batches-py", "cifar-100-python"
# (file, md5) of the official archives, as torchvision lists them
CIFAR10_FILES = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
CIFAR100_FILES = {"train": "16019d7e3df5f24257cddd939b257f8d", "test": "f0ef6b0ae62326f3e7ffdfab6717acfc"}
NORMALISE = {
    "cifar10": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "cifar100": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
}


class _ArraysOnly(pickle.Unpickler):
    """Unpickle the CIFAR batches' dicts of NumPy arrays / lists / strings, and nothing else."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of a CIFAR batch")


def read_batch(path: Path) -> dict[str, Any]:
    """One pickled CIFAR batch as a dict with ``str`` keys (the files hold Python 2 pickles)."""
    try:
        raw = path.read_bytes()
        d = _ArraysOnly(io.BytesIO(raw), encoding="latin1").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise UserError(f"{path}: not a readable CIFAR batch ({exc})") from None
    if not isinstance(d, dict):
        raise UserError(f"{path}: not a CIFAR batch (holds a {type(d).__name__}, not a dict); replace the file")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}


def batch_arrays(path: Path, batch: dict[str, Any], label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(N x 3072 uint8 images, N labels in [0, num_classes)) of one batch, or one line saying what
    is wrong with it: a missing key, rows that are not 3x32x32 images, labels out of range, or a
    different number of images and labels (which would pair images with the wrong labels)."""
    fix = "replace it with the file from the official python-version archive"
    for key in ("data", label_key):
        if key not in batch:
            raise UserError(f"{path}: CIFAR batch without '{key}'; {fix}")
    try:
        data = np.asarray(batch["data"])
        labels = np.asarray(batch[label_key])
    except (ValueError, TypeError) as exc:
        raise UserError(f"{path}: 'data' or '{label_key}' is not an array ({exc}); {fix}") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.dtype != np.uint8:
        raise UserError(f"{path}: 'data' is {data.dtype} {data.shape}, not N x 3072 uint8 images; {fix}")
    if (
        labels.ndim != 1
        or labels.dtype.kind not in "iu"
        or (len(labels) and not 0 <= labels.min() <= labels.max() < num_classes)
    ):
        raise UserError(f"{path}: '{label_key}' are not integer labels in 0..{num_classes - 1}; {fix}")
    if len(labels) != len(data):
        raise UserError(f"{path}: {len(data)} images but {len(labels)} labels; {fix}")
    return data, labels.astype(np.int64)


def _check_md5(folder: Path, files: dict[str, str]) -> None:
    for name, want in files.items():
        got = hashlib.md5((folder / name).read_bytes()).hexdigest()
        if got != want:
            print(
                f"flatfl: warning: {folder / name} differs from the official archive (md5 {got}, expected {want}); "
                "using it as it is",
                file=sys.stderr,
            )


def _locate(cfg: DataConfig, folder_name: str, files: dict[str, str], tv_name: str, download: bool) -> Path:
    root = Path(cfg.data_root).expanduser()
    folder = root / folder_name
    missing = [f for f in files if not (folder / f).is_file()]
    if missing and download:
        import torchvision

        try:
            getattr(torchvision.datasets, tv_name)(str(root), train=True, download=True)
        except Exception as exc:  # network errors come in many types
            raise UserError(f"--download: could not fetch {tv_name} into {root} ({exc})") from None
        missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise UserError(
            f"--data-root: {folder} lacks {', '.join(missing)}; extract the official python-version archive "
            f"there (it holds {folder_name}/), point --data-root at its parent, or pass --download"
        )
    _check_md5(folder, files)
    return folder


def _to_tensor(data: np.ndarray, dataset: str) -> torch.Tensor:
    x = torch.from_numpy(np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32)).float() / 255.0
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in NORMALISE[dataset])
    return ((x - mean) / std).contiguous()


@register_dataset(
    "cifar10",
    info=lambda cfg: {"num_classes": 10, "input_shape": [3, 32, 32]},
    description="CIFAR-10 (official python batches under --data-root; --download fetches them)",
)
def load_cifar10(cfg: DataConfig, download: bool = False) -> Dataset:
    folder = _locate(cfg, CIFAR10_DIR, CIFAR10_FILES, "CIFAR10", download)
    names = [f"data_batch_{i}" for i in range(1, 6)]
    parts = [batch_arrays(folder / f, read_batch(folder / f), "labels", 10) for f in names]
    xte, yte = batch_arrays(folder / "test_batch", read_batch(folder / "test_batch"), "labels", 10)
    xtr = _to_tensor(np.concatenate([x for x, _ in parts]), "cifar10")
    ytr = torch.from_numpy(np.concatenate([y for _, y in parts]))
    return Dataset(
        name="cifar10",
        train=TensorData(xtr, ytr),
        test=TensorData(_to_tensor(xte, "cifar10"), torch.from_numpy(yte)),
        num_classes=10,
        input_shape=(3, 32, 32),
        source=str(folder),
    )


@register_dataset(
    "cifar100",
    info=lambda cfg: {"num_classes": 100 if cfg.cifar100_labels == "fine" else 20, "input_shape": [3, 32, 32]},
    description="CIFAR-100, 20 coarse labels by default (--cifar100-labels fine: 100)",
)
def load_cifar100(cfg: DataConfig, download: bool = False) -> Dataset:
    folder = _locate(cfg, CIFAR100_DIR, CIFAR100_FILES, "CIFAR100", download)
    key = "fine_labels" if cfg.cifar100_labels == "fine" else "coarse_labels"
    k = 100 if cfg.cifar100_labels == "fine" else 20
    xtr, ytr = batch_arrays(folder / "train", read_batch(folder / "train"), key, k)
    xte, yte = batch_arrays(folder / "test", read_batch(folder / "test"), key, k)
    return Dataset(
        name="cifar100",
        train=TensorData(_to_tensor(xtr, "cifar100"), torch.from_numpy(ytr)),
        test=TensorData(_to_tensor(xte, "cifar100"), torch.from_numpy(yte)),
        num_classes=k,
        input_shape=(3, 32, 32),
        source=f"{folder} ({key})",
    )


def augment_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random 32x32 crop of the zero-padded (4 px) image and a random horizontal flip, per image.

    Draws come from ``generator`` (CPU), so augmented runs stay reproducible; works on any device.
    """
    n, c, h, w = x.shape
    pad = torch.nn.functional.pad(x, (4, 4, 4, 4))
    dx = torch.randint(0, 9, (n,), generator=generator)
    dy = torch.randint(0, 9, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h)).to(x.device)  # (n, h)
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w)).to(x.device)  # (n, w)
    cols = torch.where(flip.view(n, 1).to(x.device), cols.flip(1), cols)
    idx_n = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    idx_c = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return pad[idx_n, idx_c, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]
