import numpy as np
import torch

from flatfl.config import DataConfig
from flatfl.data import load_dataset
from flatfl.data.digits import read_digits_csv
from flatfl.models import build_model, num_parameters


def test_embedded_digits_is_the_real_uci_set():
    images, labels = read_digits_csv()
    assert images.shape == (1797, 8, 8) and labels.shape == (1797,)
    assert images.min() == 0 and images.max() == 16
    # class counts of sklearn's load_digits
    assert np.bincount(labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    # first image of load_digits is a '0' with this first row
    assert labels[0] == 0 and images[0, 0].tolist() == [0, 0, 5, 13, 9, 1, 0, 0]


def test_split_fixed_by_split_seed():
    a, b = load_dataset(DataConfig()), load_dataset(DataConfig())
    c = load_dataset(DataConfig(split_seed=1))
    assert torch.equal(a.test.x, b.test.x) and torch.equal(a.train.y, b.train.y)
    assert not torch.equal(a.test.x, c.test.x)
    assert len(a.train) + len(a.test) == 1797 and len(a.test) == 359
    assert a.train.x.shape[1:] == (1, 8, 8) and float(a.train.x.max()) == 1.0


def test_smallcnn_parameter_count_and_output():
    model = build_model("smallcnn", in_channels=1, image_size=8, num_classes=10)
    assert num_parameters(model) == 16 * 9 + 16 + 32 * 16 * 9 + 32 + 128 * 64 + 64 + 64 * 10 + 10 == 13706
    assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 10)


def test_paper_models_parameter_counts_and_outputs():
    # the counts of the FedMut reference code's models (and of the usual CIFAR variants)
    cnn = build_model("cnn", in_channels=3, num_classes=10)
    assert num_parameters(cnn) == 3 * 6 * 25 + 6 + 6 * 16 * 25 + 16 + 400 * 120 + 120 + 120 * 84 + 84 + 84 * 10 + 10
    assert num_parameters(cnn) == 62006
    assert cnn(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    resnet = build_model("resnet18", in_channels=3, num_classes=10)
    assert num_parameters(resnet) == 11173962
    assert resnet(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    gn = build_model("resnet18", in_channels=3, num_classes=10, norm="group")
    assert num_parameters(gn) == 11173962 and not any(isinstance(m, torch.nn.BatchNorm2d) for m in gn.modules())
    assert len(list(gn.buffers())) == 0  # no running statistics to average or mutate
    vgg = build_model("vgg16", in_channels=3, num_classes=10)
    assert num_parameters(vgg) == 33646666
    assert sum(isinstance(m, torch.nn.Conv2d) for m in vgg.modules()) == 13
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in vgg.modules()) == 13
    lstm = build_model("lstm", vocab_size=80)
    assert num_parameters(lstm) == 80 * 8 + (4 * 256 * (8 + 256) + 8 * 256) + (4 * 256 * 512 + 8 * 256) + 256 * 80 + 80
    assert num_parameters(lstm) == 819920
    assert lstm(torch.zeros(2, 80, dtype=torch.long)).shape == (2, 80)
    assert num_parameters(build_model("cnn", in_channels=3, num_classes=100)) == 62006 + 84 * 90 + 90
