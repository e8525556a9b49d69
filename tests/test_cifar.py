"""CIFAR loaders on small files written in the official python-version layout, and augmentation."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from flatfl.config import DataConfig
from flatfl.data import load_dataset
from flatfl.data.cifar import augment_batch, read_batch
from tests.test_cli import _one_line_error


def _batch(n: int, seed: int, **labels) -> dict:
    rng = np.random.default_rng(seed)
    d = {b"batch_label": b"training batch", b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}
    d[b"filenames"] = [f"img_{i}.png".encode() for i in range(n)]
    d.update({k.encode(): v for k, v in labels.items()})
    return d


def write_cifar10(root, n=6):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for i in range(1, 6):
        batches[f"data_batch_{i}"] = _batch(n, i, labels=[int(v) for v in np.arange(n) % 10])
    batches["test_batch"] = _batch(4, 9, labels=[3, 1, 4, 1])
    for name, d in batches.items():
        (folder / name).write_bytes(pickle.dumps(d, protocol=2))
    meta = {b"label_names": [b"airplane", b"automobile"], b"num_cases_per_batch": n, b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return batches


def test_cifar10_reads_the_official_layout(tmp_path, capsys):
    batches = write_cifar10(tmp_path)
    ds = load_dataset(DataConfig(dataset="cifar10", data_root=str(tmp_path)))
    assert ds.train.x.shape == (30, 3, 32, 32) and ds.test.x.shape == (4, 3, 32, 32) and ds.num_classes == 10
    assert ds.test.y.tolist() == [3, 1, 4, 1]
    # pixel (c, i, j) of image k is byte c*1024 + i*32 + j of its row, then (v/255 - 0.5)/0.5
    raw = batches["data_batch_2"][b"data"][1]
    want = (raw.reshape(3, 32, 32).astype(np.float32) / 255 - 0.5) / 0.5
    np.testing.assert_allclose(ds.train.x[6 + 1].numpy(), want, rtol=1e-6)
    # files that are not the official archive: a warning, not a refusal
    assert "differs from the official archive" in capsys.readouterr().err


def test_cifar100_coarse_by_default_and_fine_on_request(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    fine, coarse = [5, 99, 0, 42], [1, 19, 0, 7]
    for name in ("train", "test"):
        (folder / name).write_bytes(pickle.dumps(_batch(4, 1, fine_labels=fine, coarse_labels=coarse), protocol=2))
    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": [], b"coarse_label_names": []}, protocol=2))
    ds = load_dataset(DataConfig(dataset="cifar100", data_root=str(tmp_path)))
    assert ds.num_classes == 20 and ds.train.y.tolist() == coarse
    ds = load_dataset(DataConfig(dataset="cifar100", data_root=str(tmp_path), cifar100_labels="fine"))
    assert ds.num_classes == 100 and ds.test.y.tolist() == fine
    x = ds.train.x[0, 0].numpy()
    raw = _batch(4, 1)[b"data"][0][:1024].reshape(32, 32).astype(np.float32) / 255
    np.testing.assert_allclose(x, (raw - 0.4914) / 0.2023, rtol=1e-5)


def test_batches_are_unpickled_without_running_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "b").write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    from flatfl.errors import UserError

    with pytest.raises(UserError, match="not a readable CIFAR batch"):
        read_batch(tmp_path / "b")


BAD_BATCHES = {
    "a list": (lambda d: [d], "holds a list, not a dict"),
    "no data": (lambda d: {k: v for k, v in d.items() if k != b"data"}, "without 'data'"),
    "no labels": (lambda d: {k: v for k, v in d.items() if k != b"labels"}, "without 'labels'"),
    "short rows": (lambda d: d | {b"data": d[b"data"][:, :3000]}, "not N x 3072 uint8"),
    "float data": (lambda d: d | {b"data": d[b"data"].astype(np.float64)}, "not N x 3072 uint8"),
    "label -1": (lambda d: d | {b"labels": [-1] + d[b"labels"][1:]}, "labels in 0..9"),
    "label 10": (lambda d: d | {b"labels": [10] + d[b"labels"][1:]}, "labels in 0..9"),
    "text labels": (lambda d: d | {b"labels": ["cat"] * len(d[b"labels"])}, "labels in 0..9"),
    "more images than labels": (lambda d: d | {b"labels": d[b"labels"][:-1]}, "6 images but 5 labels"),
    "more labels than images": (lambda d: d | {b"labels": d[b"labels"] + [0]}, "6 images but 7 labels"),
}


@pytest.mark.parametrize("case", list(BAD_BATCHES))
def test_wrongly_shaped_cifar_batch_is_refused_in_one_line(cli, tmp_path, case):
    batches = write_cifar10(tmp_path)
    edit, needle = BAD_BATCHES[case]
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(pickle.dumps(edit(batches["data_batch_3"]), protocol=2))
    code, _, err = cli("train", "--dataset", "cifar10", "--data-root", tmp_path, "--rounds", "1",
                       "--clients", "2", "--out", tmp_path / "o")  # fmt: skip
    err = "".join(line for line in err.splitlines(keepends=True) if "differs from the official archive" not in line)
    _one_line_error(code, err, "data_batch_3", needle)
    assert not (tmp_path / "o").exists()


def test_missing_cifar_is_one_clear_line(cli, tmp_path):
    code, _, err = cli("train", "--dataset", "cifar10", "--data-root", tmp_path, "--rounds", "1",
                       "--clients", "2", "--out", tmp_path / "o")  # fmt: skip
    _one_line_error(code, err, "cifar-10-batches-py", "--download")


def test_cifar_run_trains_with_augmentation(cli, tmp_path):
    write_cifar10(tmp_path / "data", n=20)
    code, _, err = cli(
        "train", "--dataset", "cifar10", "--data-root", tmp_path / "data", "--model", "cnn", "--augment",
        "--clients", "4", "--frac", "0.5", "--partition", "iid", "--rounds", "2", "--local-epochs", "1",
        "--no-progress", "--out", tmp_path / "run",
    )  # fmt: skip
    assert code == 0, err
    from flatfl.runs.run import Run

    run = Run.open(tmp_path / "run")
    assert run.config["data"]["augment"] is True and run.info["model"]["name"] == "cnn"
    assert run.model(2)(run.dataset().test.x).shape == (4, 10)
    # moving the data keeps the run's identity: resume with another --data-root
    (tmp_path / "data").rename(tmp_path / "moved")
    code, _, err = cli("train", "--resume", tmp_path / "run", "--rounds", "3", "--data-root", tmp_path / "moved",
                       "--no-progress")  # fmt: skip
    assert code == 0, err
    code, _, err = cli("train", "--dataset", "digits", "--augment", "--out", tmp_path / "d")
    _one_line_error(code, err, "--augment")


def test_augment_batch_is_a_padded_crop_or_its_mirror():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(16, 3, 32, 32)
    out = augment_batch(x, torch.Generator().manual_seed(3))
    dx, dy = torch.randint(0, 9, (16,), generator=g), torch.randint(0, 9, (16,), generator=g)
    flip = torch.rand(16, generator=g) < 0.5
    pad = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for k in range(16):
        crop = pad[k, :, dy[k] : dy[k] + 32, dx[k] : dx[k] + 32]
        want = crop.flip(-1) if flip[k] else crop
        assert torch.equal(out[k], want), k
    assert flip.any() and (~flip).any()


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_resnet18_fedmut_round_on_cifar_files(cli, tmp_path, norm):
    write_cifar10(tmp_path / "data", n=4)
    code, _, err = cli(
        "train", "--dataset", "cifar10", "--data-root", tmp_path / "data", "--model", "resnet18", "--norm", norm,
        "--algo", "fedmut", "--clients", "2", "--frac", "1", "--partition", "iid", "--rounds", "2",
        "--local-epochs", "1", "--batch-size", "10", "--no-progress", "--out", tmp_path / "run",
    )  # fmt: skip
    assert code == 0, err
    from flatfl.runs.run import Run

    run = Run.open(tmp_path / "run")
    assert run.info["model"]["kwargs"]["norm"] == norm
    has_bn = any("running_var" in k for k in run.global_state(2))
    assert has_bn == (norm == "batch")
