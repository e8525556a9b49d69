"""The start-up header ``flatfl train`` prints before its first round: what runs where, on what."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def start_header(
    cfg: Any,
    info: dict[str, Any],
    device: Any,
    out: Path,
    *,
    round0: tuple[float, float] | None = None,
    resumed_from: int | None = None,
) -> str:
    """Lines naming the device, the model and its parameter count, the data set and its split sizes, the
    clients per round, and round 0's test accuracy (``round0`` = (loss, accuracy); on a resumed run the
    round it continues from instead). ``info`` is run.json's content (see ``flatfl.simulation.run_info``)."""
    model, data, part = info["model"], info["dataset"], info["partition"]
    sizes = part["sizes"]
    scheme = part["scheme"] + (f"({part['dirichlet_alpha']:g})" if part.get("dirichlet_alpha") is not None else "")
    lines = [
        f"flatfl train: {cfg.algo} on {device}, seed {cfg.seed} -> {out}",
        f"  model    {model['name']}, {model['num_parameters']:,} parameters",
        f"  data     {data['name']}: {data['n_train']:,} train / {data['n_test']:,} test samples; {scheme} over "
        f"{part['num_clients']} clients ({min(sizes):,}..{max(sizes):,} samples each)",
        f"  rounds   {cfg.rounds}, {cfg.clients_per_round} clients per round (frac {cfg.frac:g})",
    ]
    if round0 is not None:
        lines.append(f"  round 0  test_acc {round0[1]:.4f}  test_loss {round0[0]:.4f}")
    if resumed_from is not None:
        lines.append(f"  resuming from round {resumed_from}")
    return "\n".join(lines)
