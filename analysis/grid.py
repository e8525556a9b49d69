"""A computed loss surface (:class:`Surface`: grid axes, loss, accuracy, markers; saved as .npz + .json) and
its grid helpers (:func:`axis`, :func:`near_plane`)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Surface:
    """A computed surface: grid axes, loss and accuracy per point, and how it was made."""

    alphas: np.ndarray
    betas: np.ndarray | None  # None for 1D
    loss: np.ndarray  # (len(alphas),) or (len(alphas), len(betas))
    accuracy: np.ndarray
    description: dict[str, Any] = field(default_factory=dict)
    points: dict[str, list[float]] = field(default_factory=dict)  # named models' coordinates
    # models drawn on the surface: name, group, coords, off_plane distance, in_plane distance
    # ||a d1 + b d2|| from the checkpoint, loss/accuracy at the model itself (not at its projection)
    markers: list[dict[str, Any]] = field(default_factory=list)

    def at_origin(self, metric: str = "loss") -> float | None:
        """The value at the grid point a = 0 (and b = 0) -- the model the surface is centred on -- or None when
        the grid does not hold that point (flatfl's grids always do)."""
        z = self.loss if metric == "loss" else self.accuracy
        idx = []
        for ax in [self.alphas] + ([self.betas] if self.betas is not None else []):
            hit = np.flatnonzero(np.abs(np.asarray(ax)) < 1e-12)
            if not len(hit):
                return None
            idx.append(int(hit[0]))
        return float(z[tuple(idx)])

    def marker_groups(self) -> dict[str, list[dict[str, Any]]]:
        """The markers by group (mutants, clients, models, trajectory), in order of first appearance."""
        out: dict[str, list[dict[str, Any]]] = {}
        for m in self.markers:
            out.setdefault(m["group"], []).append(m)
        return out

    def drawn_marker_groups(self) -> tuple[dict[str, list[dict[str, Any]]], int]:
        """(the markers to draw, by group; how many were left out): a model farther off the plane than its
        projection lies from the checkpoint (:func:`near_plane`) would only pile up under the checkpoint
        star at a position that says nothing about it, so it is not drawn."""
        groups = self.marker_groups()
        kept = {g: [m for m in ms if near_plane(m)] for g, ms in groups.items()}
        hidden = sum(len(ms) for ms in groups.values()) - sum(len(ms) for ms in kept.values())
        return {g: ms for g, ms in kept.items() if ms}, hidden

    def origin_loss(self) -> float:
        """The loss at the checkpoint, against which Δloss is drawn (the lowest loss for an old grid without it)."""
        v = self.at_origin()
        return v if v is not None else float(np.nanmin(self.loss))

    def npz_bytes(self) -> bytes:
        """The arrays (alphas, betas, loss, accuracy) as the bytes of an ``.npz`` file -- no pickle."""
        import io

        arrays = {"alphas": self.alphas, "loss": self.loss, "accuracy": self.accuracy}
        if self.betas is not None:
            arrays["betas"] = self.betas
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    def meta(self) -> dict[str, Any]:
        """The JSON half of a saved surface: description, points, markers."""
        return {"description": self.description, "points": self.points, "markers": self.markers}

    @classmethod
    def load(cls, path: Path) -> Surface:
        """Reads a saved surface: ``path`` with the suffix ``.npz`` (the arrays of :meth:`npz_bytes`, read
        without pickle) and ``.json`` (:meth:`meta`: description, points, markers)."""
        path = Path(path)
        with np.load(path.with_suffix(".npz"), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(path.with_suffix(".json").read_text())
        return cls(
            arrays["alphas"],
            arrays.get("betas"),
            arrays["loss"],
            arrays["accuracy"],
            meta["description"],
            meta["points"],
            meta.get("markers", []),
        )


def axis(lo: float, hi: float, n: int, must: tuple[float, ...] = (0.0,)) -> np.ndarray:
    """n points from lo to hi that hold each of ``must`` inside [lo, hi] exactly.

    A grid point within half a step of such a value is moved onto it; otherwise the value is
    inserted (the grid is then one point longer and not quite even). So the checkpoint (0) and,
    for interpolation, the other end (1) are always points of the surface.
    """
    ax = np.linspace(lo, hi, n)
    half = 0.5 * (hi - lo) / max(n - 1, 1)
    for v in must:
        if not lo <= v <= hi:
            continue
        i = int(np.argmin(np.abs(ax - v)))
        if abs(ax[i] - v) <= half * 1e-6:
            ax[i] = v  # float rounding of linspace
        elif ax[i] != v:
            ax = np.sort(np.append(ax, v))
    return ax


def near_plane(marker: Mapping[str, Any]) -> bool:
    """Whether a marker is drawn: its distance off the plane is at most its in-plane distance from the
    checkpoint, ‖a·d1 + b·d2‖ (``in_plane``), or it lies in the plane (off_plane < 1e-3·‖θ‖).

    Markers saved before ``in_plane`` existed estimate it as ‖(a, b)‖·‖θ‖ (filter-normalised
    directions have about the norm of θ; ‖θ‖ = off_plane / off_plane_relative)."""
    rel = float(marker.get("off_plane_relative", 0.0))
    if rel < 1e-3:
        return True
    inside = marker.get("in_plane")
    if inside is None:
        inside = math.hypot(*marker["coords"]) * float(marker["off_plane"]) / rel
    return float(marker["off_plane"]) <= float(inside)
