import numpy as np
import pytest

from flatfl.errors import UserError
from flatfl.partition import label_counts, partition_dirichlet, partition_iid


@pytest.mark.parametrize("alpha", [0.05, 0.1, 1.0, 100.0])
def test_dirichlet_covers_every_index_once_with_min_size(alpha):
    labels = np.random.default_rng(1).integers(0, 10, size=1437)
    parts = partition_dirichlet(labels, 20, alpha, 10, np.random.default_rng(0))
    allidx = np.concatenate(parts)
    assert len(parts) == 20
    assert sorted(allidx.tolist()) == list(range(1437))
    assert min(len(p) for p in parts) >= 10
    assert all((np.diff(p) > 0).all() for p in parts)  # sorted, no repeats


def test_dirichlet_small_alpha_is_skewed_large_alpha_is_not():
    labels = np.repeat(np.arange(10), 150)
    rng = np.random.default_rng(0)
    skew = label_counts(partition_dirichlet(labels, 10, 0.1, 5, rng), labels, 10)
    flat = label_counts(partition_dirichlet(labels, 10, 1000.0, 5, rng), labels, 10)
    top_share = lambda c: (c.max(1) / c.sum(1)).mean()  # noqa: E731
    assert top_share(skew) > 0.5
    assert top_share(flat) < 0.2


def test_dirichlet_is_seeded():
    labels = np.arange(500) % 10
    a = partition_dirichlet(labels, 8, 0.3, 5, np.random.default_rng(3))
    b = partition_dirichlet(labels, 8, 0.3, 5, np.random.default_rng(3))
    assert all((x == y).all() for x, y in zip(a, b))


def test_impossible_min_size_is_a_user_error():
    labels = np.arange(100) % 10
    with pytest.raises(UserError, match="--clients"):
        partition_dirichlet(labels, 20, 0.1, 10, np.random.default_rng(0))


def test_iid_sizes_differ_by_at_most_one():
    parts = partition_iid(103, 10, np.random.default_rng(0))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert sorted(np.concatenate(parts).tolist()) == list(range(103))


def test_shards_give_each_client_k_label_sorted_shards():
    from flatfl.partition import partition_shards

    labels = np.repeat(np.arange(10), 30)
    parts = partition_shards(labels, 15, 2, np.random.default_rng(0))
    allidx = np.sort(np.concatenate(parts))
    assert np.array_equal(allidx, np.arange(300))  # disjoint, covering
    assert all(len(p) == 20 for p in parts)  # 30 shards of 10
    assert all(len(np.unique(labels[p])) <= 2 for p in parts)  # a shard of 10 lies within one label here


def test_partition_command_matches_the_trainer(cli, tiny, tmp_path):
    import json

    run = tiny("run", rounds=1, algo="fedavg")  # TINY: digits, 6 clients, Dirichlet(0.5), seed 0
    data_flags = ["--dataset", "digits", "--clients", "6", "--dirichlet", "0.5"]
    code, out, err = cli("partition", *data_flags, "--plot", tmp_path / "p.png")
    assert code == 0, err
    sizes = json.loads((run / "run.json").read_text())["partition"]["sizes"]
    printed = [int(line.split()[1]) for line in out.splitlines()[2 : 2 + len(sizes)]]
    assert printed == sizes
    assert (tmp_path / "p.png").stat().st_size > 5000
