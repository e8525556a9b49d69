"""``flatfl landscape --model ... --weights ... --data ...``: models flatfl did not train.

The user's module is written to a temporary folder as a user would keep it next to their own code;
its numbers must equal the library API's on the same model and data, and landscape.json must say
where model, weights and data came from.
"""

from __future__ import annotations

import hashlib
import json
import textwrap

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from flatfl.analysis import hessian_eigenvalues
from tests.test_cli import _one_line_error

USER_MODULE = """
import torch
from torch import nn


def make_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3))


def make_data():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(40, 1, 4, 4, generator=g), torch.randint(0, 3, (40,), generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)


def make_generator():
    return (b for b in make_data())  # read once: no batch may be lost


def make_images():
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(6, 3, 32, 32, generator=g), torch.randint(0, 10, (6,), generator=g)
    return torch.utils.data.TensorDataset(x, y)


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(9, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, ids, mask):
        m = mask.unsqueeze(-1).float()
        return self.head((self.emb(ids) * m).sum(1) / m.sum(1))


def make_tagger():
    return Tagger()


def make_dict_data():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 9, (12, 5), generator=g)
    mask = torch.ones(12, 5, dtype=torch.long)
    labels = torch.randint(0, 2, (12,), generator=g)
    return [{"ids": ids[i : i + 4], "mask": mask[i : i + 4], "labels": labels[i : i + 4]} for i in range(0, 12, 4)]


def forward(model, batch):
    return model(batch["ids"], batch["mask"])


def targets(batch):
    return batch["labels"]


def forward_raises(model, batch):
    raise ValueError("bad batch")


class NoParams(torch.nn.Module):
    def forward(self, x):
        return x.flatten(1)[:, :10]


def make_no_params():
    return NoParams()


def targets_one_short(batch):  # F10b: one label fewer than the batch's rows
    return batch["labels"][:-1]


def targets_class_2(batch):  # the tagger has 2 outputs: label 2 does not exist
    return torch.full_like(batch["labels"], 2)


def targets_list(batch):
    return batch["labels"].tolist()


def forward_1d(model, batch):
    return model(batch["ids"], batch["mask"])[:, 0]


def forward_torch_error(model, batch):
    raise RuntimeError("user's own RuntimeError")


def make_data_label_3():  # make_net has 3 outputs; the last sample's label is 3
    x, y = torch.randn(40, 1, 4, 4), torch.zeros(40, dtype=torch.long)
    y[-1] = 3
    return torch.utils.data.TensorDataset(x, y)
"""


@pytest.fixture
def user(tmp_path, monkeypatch):
    """A folder with the user's module (a unique name per test) and trained-looking weights, as cwd."""
    name = f"usermod_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    mod = importlib.import_module(name)
    net = mod.make_net()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(5)))
    torch.save(net.state_dict(), tmp_path / "w.pt")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp_path / "w.safetensors")
    return name, mod, net, tmp_path


@pytest.mark.parametrize("weights", ["w.pt", "w.safetensors"])
def test_a_user_model_goes_through_landscape_to_json_and_a_surface_page(cli, user, weights):
    name, mod, net, d = user
    code, out, err = cli(
        "landscape", "--model", f"{name}:make_net", "--weights", weights, "--data", f"{name}:make_data",
        "--hessian", "--topk", "2", "--tol", "1e-7", "--surface", "1d", "--grid", "5", "--out", d / "out",
    )  # fmt: skip
    assert code == 0, err
    rec = json.loads((d / "out" / "landscape.json").read_text())
    assert rec["model"] == f"{name}:make_net" and rec["weights"] == weights
    assert rec["weights_sha256"] == hashlib.sha256((d / weights).read_bytes()).hexdigest()
    assert rec["data"]["selection"] == f"{name}:make_data" and rec["data"]["samples"] == 40
    ref = hessian_eigenvalues(net, mod.make_data(), k=2, tol=1e-7)
    np.testing.assert_allclose(rec["hessian"]["eigenvalues"], ref.values, rtol=1e-5)
    assert (d / "out" / "surface.html").is_file() and (d / "out" / "surface.npz").is_file()
    assert rec["surface"]["loss_at_checkpoint"] == pytest.approx(rec["loss"], rel=1e-5)


def test_wrapped_pth_and_ddp_prefix_are_unwrapped(cli, user):
    name, mod, net, d = user
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, d / "ddp.pth")
    code, _, err = cli(
        "landscape",
        "--model",
        f"{name}:make_net",
        "--weights",
        "ddp.pth",
        "--data",
        f"{name}:make_data",
        "--trace",
        "--trace-matvecs",
        "9",
    )
    assert code == 0, err
    rec = json.loads((d / "checkpoints" / "landscape" / "ddp" / "landscape.json").read_text())
    assert rec["trace"]["num_hvps"] == 9


def test_torchvision_resnet18_by_name(cli, user):
    import torchvision

    name, _, _, d = user
    net = torchvision.models.resnet18(num_classes=10)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, d / "r18.safetensors")
    code, _, err = cli(
        "landscape", "--model", "resnet18", "--model-kwargs", '{"num_classes": 10}', "--weights", "r18.safetensors",
        "--data", f"{name}:make_images", "--surface", "1d", "--grid", "3", "--out", d / "r18",
    )  # fmt: skip
    assert code == 0, err
    rec = json.loads((d / "r18" / "landscape.json").read_text())
    assert rec["num_parameters"] == sum(p.numel() for p in net.parameters())
    import importlib

    ds = importlib.import_module(name).make_images()
    x, y = ds.tensors
    with torch.no_grad():
        direct = float(torch.nn.functional.cross_entropy(net.eval()(x), y))
    assert rec["loss"] == pytest.approx(direct, rel=1e-4)  # eval mode: BatchNorm running statistics
    assert rec["surface"]["loss_at_checkpoint"] == pytest.approx(direct, rel=1e-4)


def test_dict_batches_through_forward_and_targets_hooks(cli, user):
    name, mod, _, d = user
    code, _, err = cli(
        "landscape", "--model", f"{name}:make_tagger", "--data", f"{name}:make_dict_data", "--forward",
        f"{name}:forward", "--targets", f"{name}:targets", "--hessian", "--topk", "1", "--tol", "1e-7",
        "--out", d / "t",
    )  # fmt: skip
    assert code == 0, err
    rec = json.loads((d / "t" / "landscape.json").read_text())
    ref = hessian_eigenvalues(
        mod.make_tagger(), mod.make_dict_data(), forward=mod.forward, targets=mod.targets, tol=1e-7
    )
    assert rec["hessian"]["eigenvalues"][0] == pytest.approx(ref.values[0], rel=1e-5)
    assert rec["weights"] is None and rec["data"]["samples"] == 12


def test_a_forward_hook_that_raises_and_a_model_without_parameters_are_one_line(cli, user):
    name, _, _, d = user
    hooks = ["--forward", f"{name}:forward_raises", "--targets", f"{name}:targets"]
    code, _, err = cli("landscape", "--model", f"{name}:make_tagger", "--data", f"{name}:make_dict_data", *hooks,
                       "--hessian", "--out", d / "f")  # fmt: skip
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"--forward {name}:forward_raises raised ValueError('bad batch')" in err, err
    code, _, err = cli("landscape", "--model", f"{name}:make_no_params", "--data", "digits", "--hessian",
                       "--samples", "10", "--out", d / "n")  # fmt: skip
    assert code == 2 and err.count("\n") == 1 and "no trainable parameters" in err, err


@pytest.mark.parametrize(
    ("forward", "targets", "needles"),
    [
        ("forward", "targets_one_short", ["--targets MOD:targets_one_short: returned 3 labels", "gives 4 outputs"]),
        ("forward", "targets_class_2", ["--targets MOD:targets_class_2: label 2 in batch 0 is outside 0..1"]),
        ("forward", "targets_list", ["--targets MOD:targets_list: returned what flatfl cannot count as labels"]),
        ("forward_1d", "targets", ["--forward MOD:forward_1d: returned a tensor of shape (4,)", "(batch, classes)"]),
        ("forward_torch_error", "targets", ["--forward MOD:forward_torch_error: raised RuntimeError"]),
    ],
)
def test_hooks_returning_what_the_loss_cannot_take_are_one_line_naming_the_flag(cli, user, forward, targets, needles):
    # F10b (#27): the wrong number of labels gave a ValueError traceback from inside the cross-entropy
    name, _, _, d = user
    hooks = ["--forward", f"{name}:{forward}", "--targets", f"{name}:{targets}"]
    code, _, err = cli("landscape", "--model", f"{name}:make_tagger", "--data", f"{name}:make_dict_data", *hooks,
                       "--hessian", "--out", d / "h")  # fmt: skip
    _one_line_error(code, err, *[n.replace("MOD", name) for n in needles])
    assert not (d / "h").exists() or not any((d / "h").iterdir())


def test_a_label_the_model_has_no_output_for_is_one_line_naming_data(cli, user):
    name, _, _, d = user  # the bad label is the 40th sample's: checking the first two would miss it
    code, _, err = cli("landscape", "--model", f"{name}:make_net", "--data", f"{name}:make_data_label_3", "--hessian",
                       "--out", d / "h")  # fmt: skip
    _one_line_error(code, err, f"--data {name}:make_data_label_3", "label 3 is outside 0..2")


def test_digits_by_name_and_interp_towards_another_weights_file(cli, user, tmp_path):
    from flatfl.models import build_model

    net = build_model("smallcnn", in_channels=1, num_classes=10)
    torch.save(net.state_dict(), tmp_path / "a.pt")
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(0.5)
    torch.save(net.state_dict(), tmp_path / "b.pt")
    (tmp_path / "zoo.py").write_text(
        "from flatfl.models import build_model\n\n\ndef small():\n"
        "    return build_model('smallcnn', in_channels=1, num_classes=10)\n"
    )
    code, _, err = cli(
        "landscape", "--model", "zoo:small", "--weights", "a.pt", "--data", "digits:test", "--samples", "100",
        "--surface", "1d", "--surface-dirs", "interp", "--to", "b.pt", "--grid", "5", "--out", tmp_path / "i",
    )  # fmt: skip
    assert code == 0, err
    rec = json.loads((tmp_path / "i" / "landscape.json").read_text())
    marker = rec["surface"]["markers"][0]
    assert marker["coords"] == pytest.approx([1.0]) and rec["data"]["samples"] == 100


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--ckpt", "x.safetensors", "--model", "resnet18", "--data", "digits"], ["either --ckpt"]),
        (["--hessian"], ["either --ckpt"]),
        (["--model", "resnet18", "--hessian"], ["--data"]),
        (["--model", "nosuchmod:make", "--data", "digits", "--hessian"], ["--model", "cannot import nosuchmod"]),
        (["--model", "MOD:nothing", "--data", "digits", "--hessian"], ["--model", "has no nothing"]),
        (["--model", "not_a_torchvision_model", "--data", "digits", "--hessian"], ["--model", "torchvision"]),
        (
            ["--model", "MOD:make_net", "--weights", "missing.pt", "--data", "MOD:make_data", "--hessian"],
            ["--weights", "does not exist"],
        ),
        (
            ["--model", "MOD:make_tagger", "--weights", "w.pt", "--data", "MOD:make_data", "--hessian"],
            ["--weights", "does not fit"],
        ),
        (
            ["--model", "MOD:make_net", "--weights", "evil.pt", "--data", "MOD:make_data", "--hessian"],
            ["--weights", "evil.pt"],
        ),
        (["--model", "MOD:make_net", "--data", "MOD:make_data", "--federated"], ["--federated"]),
        (["--model", "MOD:make_net", "--data", "MOD:make_data", "--surface", "2d", "--surface-dirs", "pca"], ["pca"]),
        (
            ["--model", "MOD:make_net", "--data", "MOD:make_data", "--hessian", "--forward", "MOD:forward"],
            ["--targets"],
        ),
        (
            ["--model", "MOD:make_net", "--model-kwargs", "{bad", "--data", "MOD:make_data", "--hessian"],
            ["--model-kwargs"],
        ),
        (["--model", "MOD:make_net", "--data", "imagefolder:/nonexistent", "--hessian"], ["imagefolder"]),
        # a model that does not fit the data (16 inputs vs digits' 64; 3 classes vs digits' 10 labels)
        (["--model", "MOD:make_net", "--data", "digits:test", "--hessian"], ["--data digits:test", "cannot take"]),
        (["--model", "MOD:make_net", "--data", "MOD:make_images", "--surface", "1d"], ["mat1 and mat2 shapes"]),
    ],
)
def test_bad_foreign_input_is_one_line(cli, user, args, needles):
    name, _, _, d = user

    class Evil:  # a pickled object: weights_only=True must refuse it, no code runs
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"w": Evil()}, d / "evil.pt")
    code, _, err = cli("landscape", *[a.replace("MOD", name) for a in args])
    _one_line_error(code, err, *needles)


def _write_idx(path, array: np.ndarray, magic: int) -> None:
    """An MNIST idx file (big-endian header: magic, dimensions), the format torchvision reads."""
    import struct

    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_a_torchvision_dataset_by_name_and_an_imagefolder(cli, user, tmp_path):
    from PIL import Image

    name, _, _, d = user
    raw = tmp_path / "tv" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("t10k", 8)):
        _write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), 2051)
        _write_idx(raw / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, (n,)), 2049)
    (tmp_path / "lenet.py").write_text(
        "from torch import nn\n\n\ndef net():\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))\n\n\n"
        "def rgb():\n    return nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, 2))\n"
    )
    code, _, err = cli("landscape", "--model", "lenet:net", "--data", f"mnist:{tmp_path / 'tv'}:test",
                       "--hessian", "--topk", "1", "--out", tmp_path / "m")  # fmt: skip
    assert code == 0, err
    assert json.loads((tmp_path / "m" / "landscape.json").read_text())["data"]["samples"] == 8  # the test split
    for c in ("cat", "dog"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(tmp_path / "imgs" / c / f"{i}.png")
    code, _, err = cli("landscape", "--model", "lenet:rgb", "--data", f"imagefolder:{tmp_path / 'imgs'}",
                       "--hessian", "--topk", "1", "--out", tmp_path / "f")  # fmt: skip
    assert code == 0, err
    rec = json.loads((tmp_path / "f" / "landscape.json").read_text())
    assert rec["data"]["samples"] == 6 and rec["hessian"]["eigenvalues"][0] > 0


def test_a_one_shot_generator_of_batches_loses_no_batch(cli, user):
    name, mod, net, d = user
    code, _, err = cli(
        "landscape", "--model", f"{name}:make_net", "--weights", "w.pt", "--data", f"{name}:make_generator",
        "--hessian", "--topk", "1", "--tol", "1e-7", "--out", d / "g",
    )  # fmt: skip
    assert code == 0, err
    rec = json.loads((d / "g" / "landscape.json").read_text())
    assert rec["data"]["samples"] == 40  # all of make_data's examples, the first batch included
    ref = hessian_eigenvalues(net, mod.make_data(), k=1, tol=1e-7)
    assert rec["hessian"]["eigenvalues"][0] == pytest.approx(ref.values[0], rel=1e-5)
