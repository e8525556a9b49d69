"""``flatfl data``: build datasets in their standard on-disk format (``flatfl data shakespeare``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flatfl.cli.common import open_frac
from flatfl.errors import UserError


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "data",
        help="build a dataset's files (shakespeare: LEAF JSON from raw play texts)",
        description="Build a dataset in the on-disk format its loader reads.",
    )
    kinds = p.add_subparsers(dest="kind", metavar="KIND")
    kinds.required = True
    s = kinds.add_parser(
        "shakespeare",
        help="LEAF train/test JSON from Project Gutenberg play texts",
        description=(
            "Parse every PLAYS/*.txt (Project Gutenberg layout: a speaker's abbreviated name alone on a line "
            "ending in a period, then the speech; stage directions in [brackets]) into one client per speaking "
            "role, cut each role's text into 80-character windows with the next character as target, split each "
            "role 90/10 (contiguous) and write OUT/train/*.json and OUT/test/*.json in LEAF's format. Then train "
            "with: flatfl train --dataset shakespeare --data-root PARENT_OF_OUT (OUT must be PARENT/shakespeare)."
        ),
    )
    s.add_argument("--plays", type=Path, required=True, metavar="DIR", help="folder of play .txt files")
    s.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder, e.g. data/shakespeare")
    s.add_argument(
        "--train-frac", type=open_frac, default=0.9, metavar="F", help="training share of each role (default: 0.9)"
    )


def run(ns: dict[str, Any]) -> int:
    from flatfl.data.shakespeare import build_leaf_json

    if ns["kind"] == "shakespeare":
        if not Path(ns["plays"]).is_dir():
            raise UserError(f"--plays: {ns['plays']} is not a folder")
        from flatfl.rundir import refuse_run_dir

        refuse_run_dir(ns["out"])  # train/ and test/ written into a run directory would mix data with a run
        info = build_leaf_json(ns["plays"], ns["out"], ns["train_frac"])
        print(
            f"wrote {ns['out']}/train and {ns['out']}/test: {info['roles']} roles from {info['plays']} plays, "
            f"{info['train_samples']} training samples"
        )
        return 0
    raise UserError(f"unknown dataset kind {ns['kind']!r}")
