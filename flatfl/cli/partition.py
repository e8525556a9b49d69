"""``flatfl partition``: show how a run's data would be split over clients, before training."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import numpy as np

from flatfl.cli.common import SEED_RANGE, add_deprecated_alias, checked_path, seed_t


def add_parser(sub: Any) -> None:
    from flatfl.cli.train_flags import add_data_arguments

    p = sub.add_parser(
        "partition",
        help="print per-client sizes and write a label-count heatmap for a partition",
        description=(
            "Build the partition flatfl train would build with the same data flags and --seed (the same "
            "generator), print each client's size and label counts, and write a heatmap PNG (clients x labels)."
        ),
        argument_default=argparse.SUPPRESS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_data_arguments(p, training=False)
    p.add_argument("--seed", type=seed_t, help=f"run seed (the partition depends on it), {SEED_RANGE} (default: 0)")
    p.add_argument(
        "--plot",
        type=checked_path(plot_arg),  # empty, over-long names: one argparse line, as every path flag
        metavar="PNG",
        help="heatmap file (default: partition.png); an existing folder, or a name ending in '/' (made if "
        "missing), gets partition.png inside; a name without a type gets .png",
    )
    add_deprecated_alias(p, "--out", "--plot", "plot", type=checked_path(plot_arg))


def heatmap(counts: np.ndarray, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k, c = counts.shape
    fig, ax = plt.subplots(figsize=(min(2 + 0.25 * c, 14), min(1.5 + 0.22 * k, 16)), dpi=150)
    im = ax.imshow(counts, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_xlabel("label")
    ax.set_ylabel("client")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="samples")
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:  # staged, then renamed: a refused write leaves neither a partial figure nor an earlier one lost
        fig.savefig(tmp, format=path.suffix.lstrip(".").lower())
        os.replace(tmp, path)
    except OSError as exc:  # a refused write (full disk, ulimit -f): one line naming the file
        from flatfl.checkpoint import os_error

        tmp.unlink(missing_ok=True)
        raise os_error(path, exc) from exc
    finally:
        plt.close(fig)
    return path


PLOT_TYPES = (".png", ".pdf", ".svg")


def plot_arg(text: str) -> Path:
    """``--plot`` as typed: a trailing separator names a folder (``newdir/`` -> ``newdir/partition.png``, the folder
    made if missing), which :class:`Path` alone would drop and turn into ``newdir.png``."""
    if text.endswith(("/", os.sep)):
        return Path(text) / "partition.png"
    return Path(text)


def plot_path(path: Path) -> Path:
    """The heatmap file of ``--plot``: a folder gets ``partition.png`` inside, a name without a type gets
    ``.png``; another type, or a folder that cannot be made, is one line naming the flag."""
    from flatfl.errors import UserError
    from flatfl.rundir import make_out_dir

    path = Path(path)
    if path.is_dir():
        path = path / "partition.png"
    elif not path.suffix:
        path = path.with_suffix(".png")
    if path.suffix.lower() not in PLOT_TYPES:
        raise UserError(f"--plot: {path}: '{path.suffix}' is not an image type; give a {', '.join(PLOT_TYPES)} file")
    make_out_dir(path.parent, "--plot")
    if path.is_dir():
        raise UserError(f"--plot: {path} is a folder; give a file name")
    return path


def run(ns: dict[str, Any]) -> int:
    from flatfl.cli.train import config_flags
    from flatfl.cli.train_flags import check_data_root, check_download
    from flatfl.config import RunConfig
    from flatfl.data import load_dataset
    from flatfl.errors import UserError
    from flatfl.partition import label_counts
    from flatfl.sampling import make_partition

    ns = {k: v for k, v in ns.items() if k not in ("plot", "download")} | {
        "plot": ns.get("plot", Path("partition.png")),
        "download": ns.get("download", False),
    }
    plot = plot_path(ns["plot"])  # before loading any data
    cfg = RunConfig.from_flags(config_flags(ns))
    check_download(ns["download"], cfg)
    check_data_root("data_root" in ns, cfg)
    if cfg.data.partition_file and "seed" in ns:  # the file fixes the partition; the heading said "seed N"
        raise UserError("--seed: has no effect with --partition-file (the file fixes the partition); drop --seed")
    data = load_dataset(cfg.data, download=ns["download"])
    parts = make_partition(cfg, data)
    counts = label_counts(parts, data.train.y.numpy(), data.num_classes)
    names = data.client_names or [str(i) for i in range(len(parts))]
    print(f"{cfg.data.dataset}, {cfg.data.partition}, {len(parts)} clients, seed {cfg.seed}: {len(data.train)} samples")
    print(f"{'client':>24} {'samples':>8} {'labels':>7}  top labels (count)")
    for name, p, row in zip(names, parts, counts):
        top = np.argsort(row)[::-1][:3]
        print(f"{name[-24:]:>24} {len(p):>8} {int((row > 0).sum()):>7}  " + ", ".join(f"{t} ({row[t]})" for t in top))
    sizes = np.array([len(p) for p in parts])
    print(f"sizes: min {sizes.min()}, median {int(np.median(sizes))}, max {sizes.max()}")
    title = f"{cfg.data.dataset} {cfg.data.partition}" + (
        f" alpha={cfg.data.dirichlet_alpha}" if cfg.data.partition == "dirichlet" else ""
    )
    print(f"wrote {heatmap(counts, plot, title)}")
    return 0
