"""``flatfl prune``: thin an existing run's round files (``flatfl.prune``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from flatfl.prune import Selection, prune
from flatfl.storage import parse_round_spec


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "prune",
        help="delete round files of an existing run that --keep does not select (safe under a kill)",
        description=(
            "Delete round_NNNN.safetensors files of RUN that --keep does not select, to save disk. Round 0, the "
            "last round, the round state.safetensors was committed at (--resume continues from it) and a diverged "
            "run's last finite round always stay. Holds the run's lock (never beside a trainer of the same run) and "
            "deletes one file at a time: a kill leaves a consistent run, and the same command finishes the job. "
            "metrics.jsonl keeps every round."
        ),
    )
    p.add_argument("run", type=Path, metavar="RUN", help="the run directory to thin")
    p.add_argument(
        "--keep",
        required=True,
        metavar="LIST",
        help="rounds to keep: comma-separated rounds, ranges A-B and every:N, e.g. every:10 or 1,2,5,every:50",
    )
    p.add_argument(
        "--keep-clients",
        metavar="LIST",
        help="also thin clients_NNNN.safetensors (--save-clients) to these rounds, same syntax "
        "(default: leave them all)",
    )
    p.add_argument("--dry-run", action="store_true", help="list what would be deleted; delete nothing")


def _selection(text: str, flag: str, found: set[int]) -> Selection:
    rounds, every = parse_round_spec(text, flag, among=found)  # ranges select files that exist: none is expanded
    return Selection(rounds, every)


def _file_rounds(run: Path) -> set[int]:
    """The rounds of every round or clients file in ``run`` (none for an empty or missing folder)."""
    import re

    names = [p.name for p in run.iterdir()] if run.is_dir() else []
    return {int(m.group(1)) for n in names if (m := re.fullmatch(r"(?:round|clients)_(\d+)\.safetensors", n))}


def run(ns: dict[str, Any]) -> int:
    from flatfl.prune import check_run_folder

    check_run_folder(Path(ns["run"]))  # before the round lists: RUN/run.json names the folder it is in
    found = _file_rounds(Path(ns["run"]))
    keep = _selection(ns["keep"], "--keep", found)
    clients = _selection(ns["keep_clients"], "--keep-clients", found) if ns.get("keep_clients") is not None else None
    if clients is not None and not any(Path(ns["run"]).glob("clients_*.safetensors")):
        print(f"flatfl: note: {ns['run']} holds no clients files (trained without --save-clients): "
              "--keep-clients has nothing to thin", file=sys.stderr)  # fmt: skip
    plan = prune(ns["run"], keep, clients, dry_run=ns["dry_run"])
    size = sum(p.stat().st_size for p in plan.delete if p.exists()) if ns["dry_run"] else None
    names = ", ".join(p.name for p in plan.delete[:6]) + (" ..." if len(plan.delete) > 6 else "")
    kept = ", ".join(f"{r} ({why})" for r, why in sorted(plan.protected.items()))
    if ns["dry_run"]:
        print(f"would delete {len(plan.delete)} files ({size / 1e6:.1f} MB): {names or 'none'}")
    else:
        print(f"{ns['run']}: deleted {len(plan.delete)} files{': ' + names if names else ''}")
    print(f"always kept: {kept}")
    return 0
