"""#29: the report's static figures fit a paper's column: no legend over plotted data (matplotlib's own
extents), the contour colour bar's ticks are the contour levels, the levels hold the width thresholds."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from flatfl.analysis.interactive import level_edges  # noqa: E402
from flatfl.analysis.plots import plot_slices, plot_spread, plot_surfaces_side_by_side  # noqa: E402
from flatfl.analysis.slices import Slices  # noqa: E402
from flatfl.analysis.surfaces import Surface  # noqa: E402


def _legend_hits(fig) -> int:
    """How many plotted points (lines, markers, scatter) fall inside a legend's box, in display pixels."""
    fig.canvas.draw()
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    boxes = [lg.get_window_extent() for lg in legends]
    hits = 0
    for ax in fig.axes:
        pts = [ln.get_xydata() for ln in ax.get_lines()] + [
            c.get_offsets() for c in ax.collections if hasattr(c, "get_offsets")
        ]
        for xy in pts:
            xy = np.asarray(xy, dtype=float)
            xy = xy[np.isfinite(xy).all(axis=1)] if xy.size else xy
            if not xy.size:
                continue
            disp = ax.transData.transform(xy)
            for b in boxes:
                hits += int(
                    ((disp[:, 0] > b.x0) & (disp[:, 0] < b.x1) & (disp[:, 1] > b.y0) & (disp[:, 1] < b.y1)).sum()
                )
    return hits


def test_spread_legend_never_covers_points():
    rounds = list(range(1, 126))
    series = [
        ("fedavg: global model sent (distance 0)", rounds, [0.0] * len(rounds), "#0072B2", "sent"),
        ("fedavg: returned", rounds, list(np.linspace(0.4, 0.9, len(rounds))), "#0072B2", "returned"),
        ("fedmut: sent (mutants)", rounds, list(np.linspace(0.2, 1.2, len(rounds))), "#D55E00", "sent"),
        ("fedmut: returned", rounds, list(np.linspace(0.5, 1.3, len(rounds))), "#D55E00", "returned"),
    ]
    fig = plot_spread(series, None, ylabel="mean L2 distance to $w_{t-1}$", title="drawn: fedavg seed 0")
    assert _legend_hits(fig) == 0
    # a series with missing rounds is markers only (no short line pieces that look like error bars)
    gapped = [("x: returned", [10, 11, 20, 21], [1.0, 1.1, 1.2, 1.3], "#0072B2", "returned")]
    fig = plot_spread(gapped, None, ylabel="d")
    assert fig.axes[0].get_lines()[0].get_linestyle() == "None"


def _surface(shift: float) -> Surface:
    a = np.linspace(-1, 1, 9)
    A, B = np.meshgrid(a, a, indexing="ij")
    loss = 0.3 + 4 * (A**2 + 0.5 * B**2) + shift
    return Surface(alphas=a, betas=a, loss=loss, accuracy=np.ones_like(loss), points={}, markers=[], description={})


def test_surfaces_colour_bar_ticks_are_the_levels():
    fig = plot_surfaces_side_by_side([_surface(0), _surface(0.1)], ["a seed 0, round 4", "b seed 0, round 4"], None,
                                     zrange=(0.0, 6.0), marks=(0.1, 1.0))  # fmt: skip
    want = level_edges((0.0, 6.0), None, (0.1, 1.0))
    assert 0.1 in want and 1.0 in want  # the width thresholds are levels
    bar = fig.axes[-1]
    ticks = [t for t in bar.get_yticks() if want[0] - 1e-9 <= t <= want[-1] + 1e-9]
    np.testing.assert_allclose(ticks, want)
    assert fig.axes[0].get_title().startswith("a seed 0")
    assert _legend_hits(fig) == 0


@pytest.mark.parametrize(
    "zrange, levels, marks, want",
    [
        ((0.0, 0.5), 8, (), [0.5 * k / 8 for k in range(9)]),  # linear when a count is given
        ((0.0, 3.0), None, (0.1, 1.0), [0.0, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 3.0]),
        ((-0.02, 0.3), None, (), [-0.02, 0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3]),
    ],
)
def test_level_edges(zrange, levels, marks, want):
    np.testing.assert_allclose(level_edges(zrange, levels, marks), want)


def test_slices_thresholds_drawn_and_legend_clear():
    ts = np.linspace(-1, 1, 21)
    sl = [Slices(ts, np.vstack([8 * ts**2, 9 * ts**2]), 0.3, 0, 2)]
    fig = plot_slices({"equal round (4)": {"fedavg": sl, "fedmut": sl}}, {"fedavg": "#0072B2", "fedmut": "#D55E00"},
                      None, thresholds=(0.1, 1.0))  # fmt: skip
    ys = sorted(ln.get_ydata()[0] for ln in fig.axes[0].get_lines() if len(set(ln.get_ydata())) == 1)
    assert ys == [0.1, 1.0]
    assert _legend_hits(fig) == 0


def test_the_legend_check_can_fail():
    """The check above finds a legend drawn over the data (so its zero means something)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot(np.linspace(0, 1, 200), np.full(200, 0.5), label="a line through the middle")
    ax.legend(loc="center")
    assert _legend_hits(fig) > 0
    plt.close(fig)
