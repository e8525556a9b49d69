import pytest
import torch

from flatfl.algorithms import FedAvg, FedAvgConfig
from flatfl.algorithms.base import ClientUpdate
from flatfl.statedict import weighted_average


def test_weighted_mean_matches_hand_computation():
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(4)}
    b = {"w": torch.tensor([3.0, -2.0]), "n": torch.tensor(7)}
    c = {"w": torch.tensor([0.5, 10.0]), "n": torch.tensor(9)}
    out = weighted_average([a, b, c], [10, 30, 60])
    # (10*1 + 30*3 + 60*0.5)/100 = 1.3 ; (10*2 - 30*2 + 60*10)/100 = 5.6
    assert torch.allclose(out["w"], torch.tensor([1.3, 5.6]), atol=1e-6)
    # integer buffer: (40 + 210 + 540)/100 = 7.9 -> truncated like load_state_dict of a float mean
    assert out["n"].dtype == torch.int64 and int(out["n"]) == 7


def test_fedavg_weighted_and_unweighted():
    ups = [
        ClientUpdate(0, 1, {"w": torch.tensor([0.0])}, 0.0),
        ClientUpdate(1, 3, {"w": torch.tensor([4.0])}, 0.0),
    ]
    g = {"w": torch.tensor([100.0])}
    weighted = FedAvg(FedAvgConfig(weighted=True), param_names=["w"]).aggregate(1, g, ups)
    plain = FedAvg(FedAvgConfig(weighted=False), param_names=["w"]).aggregate(1, g, ups)
    assert float(weighted["w"]) == pytest.approx(3.0)
    assert float(plain["w"]) == pytest.approx(2.0)


def test_average_rejects_bad_weights():
    with pytest.raises(ValueError):
        weighted_average([{"w": torch.zeros(1)}], [0.0])
    with pytest.raises(ValueError):
        weighted_average([{"w": torch.zeros(1)}], [1.0, 2.0])
