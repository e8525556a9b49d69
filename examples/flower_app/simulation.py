"""flatfl's Flower apps on Flower's simulation runtime (``flwr.simulation.run_simulation``, Ray backend).

One virtual SuperNode per client (node i holds ``partition-id`` i); the run config is ``flatfl
train``'s flags without dashes, given as ``key=value`` (values read as JSON where they parse: 0.5,
3, true; else as strings). Needs ``pip install 'flatfl[flower-simulation]'`` (flwr with Ray).

    python examples/flower_app/simulation.py --out checkpoints/flower-sim algo=fedmut clients=10 frac=0.5 rounds=3

Every node's ClientApp runs in a Ray actor with ``--cpus-per-node`` CPUs (Ray sets its
``OMP_NUM_THREADS`` from them); with 1, ``flatfl train ... --threads 1`` gives the same files byte
for byte (tests/test_flower.py).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def parse_config(pairs: list[str], parser: argparse.ArgumentParser) -> dict:
    """``["algo=fedmut", "frac=0.5"]`` -> ``{"algo": "fedmut", "frac": 0.5}``."""
    config: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            parser.error(f"config: {pair!r} is not key=value (e.g. algo=fedmut)")
        try:
            config[key] = json.loads(value)
        except json.JSONDecodeError:
            config[key] = value
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="the run directory the recorder writes")
    parser.add_argument("--cpus-per-node", type=int, default=1, help="Ray CPUs (and threads) per ClientApp")
    parser.add_argument("config", nargs="*", help="run config as key=value (flatfl train's flags without dashes)")
    args = parser.parse_args()
    config = parse_config(args.config, parser) | {"out": args.out}
    os.environ.setdefault("OMP_NUM_THREADS", str(args.cpus_per_node))  # this process and the Ray actors

    from flwr.simulation import run_simulation

    from flatfl.errors import UserError
    from flatfl.flower.client_app import make_client_app
    from flatfl.flower.config import switch
    from flatfl.flower.resume import check_resumable
    from flatfl.flower.server_app import make_server_app, recorder_for
    from flatfl.trainer import prepare_out

    try:  # bad flags, an algorithm Flower cannot run, an occupied or foreign --out end here, before Ray starts
        rec = recorder_for(config)
        nodes = rec.cfg.data.num_clients  # one virtual SuperNode per client
        resume = switch(config, "resume")
        prepare_out(Path(args.out), resume=resume, overwrite=rec.overwrite)
        if resume:
            check_resumable(rec, rec.cfg.rounds)
    except UserError as exc:  # flatfl train's flags are key=value here
        text = str(exc).replace(f"--resume {args.out}", "resume=true").replace("--overwrite", "overwrite=true")
        parser.error(text.replace("--resume:", "resume:").replace("--resume", "resume=true").replace("--out:", "--out"))
    resources = {"num_cpus": args.cpus_per_node, "num_gpus": 0.0}
    run_simulation(
        make_server_app(config),
        make_client_app(config),
        num_supernodes=nodes,
        backend_config={"client_resources": resources, "init_args": {"num_cpus": os.cpu_count() or 1}},
    )


if __name__ == "__main__":
    main()
