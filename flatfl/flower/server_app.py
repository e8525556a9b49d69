"""A Flower ServerApp training flatfl's registry models: FedMut (:class:`FedMutStrategy`) or Flower's
FedAvg / FedProx (FedAvg also for FedSAM and FedASAM, whose server is FedAvg's) on flatfl's seeded
sample (:mod:`flatfl.flower.sampling`), recorded into a flatfl run directory (:class:`RunRecorder`).

Run config (``[tool.flwr.app.config]``): ``flatfl train``'s flags without dashes (``algo``,
``dataset``, ``clients``, ``frac``, ``rounds``, ``seed``, ``radius``, ...), plus ``out`` (the run
directory, default ``checkpoints/flower-<dataset>-<algo>-s<seed>``), ``overwrite`` and ``resume`` (continue
``out`` from its last committed round, e.g. after a SuperLink restart; ``rounds`` is the total).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from flatfl.algorithms.fedmut import FedMutConfig
from flatfl.config import RunConfig
from flatfl.errors import UserError
from flatfl.flower.config import run_config, switch
from flatfl.flower.recorder import RunRecorder
from flatfl.flower.sampling import SeededFedAvg, SeededFedProx
from flatfl.flower.strategy import FedMutStrategy
from flatfl.models import build_model


def strategy_for(cfg: RunConfig, param_names: list[str]) -> Strategy:
    """FedMut with ``cfg``'s FedMutConfig, or Flower's FedAvg / FedProx, each on flatfl's seeded sample
    of ``frac`` of the ``clients`` (so the run trains the clients ``flatfl train`` trains)."""
    common = {"num_clients": cfg.data.num_clients, "seed": cfg.seed}
    if cfg.algo == "fedmut":
        assert isinstance(cfg.algo_config, FedMutConfig)
        return FedMutStrategy(cfg.algo_config, param_names=param_names, frac=cfg.frac, **common)
    if cfg.algo in ("fedavg", "fedprox", "fedsam", "fedasam"):  # FedSAM/FedASAM: FedAvg's server, SAM clients
        if not getattr(cfg.algo_config, "weighted", True):
            raise UserError(
                "Flower run config: unweighted: Flower's FedAvg and FedProx weight by num-examples; leave it out"
            )
        flower = {"fraction_train": cfg.frac, "fraction_evaluate": 0.0, "min_train_nodes": 1, "min_available_nodes": 1}
        if cfg.algo != "fedprox":
            return SeededFedAvg(**flower, **common)
        return SeededFedProx(proximal_mu=cfg.algo_config.mu, **flower, **common)  # type: ignore[attr-defined]
    raise UserError(
        f"Flower run config: algo = {cfg.algo!r}; the Flower app runs fedmut, fedavg, fedprox, fedsam or fedasam "
        "(and any of them with local-opt sam/asam)"
    )


def recorder_for(user_config: dict, out: str | None = None) -> RunRecorder:
    """The strategy of ``user_config`` wrapped in its recorder."""
    cfg = run_config(user_config)
    params = [n for n, _ in build_model(cfg.model, **cfg.model_kwargs).named_parameters()]
    out = out or str(user_config.get("out", f"checkpoints/flower-{cfg.data.dataset}-{cfg.algo}-s{cfg.seed}"))
    return RunRecorder(strategy_for(cfg, params), Path(out), cfg, overwrite=switch(user_config, "overwrite"))


def make_server_app(defaults: Mapping[str, Any] | None = None) -> ServerApp:
    """A ServerApp whose run config is ``defaults`` overridden by the run's own (``context.run_config``);
    see :func:`flatfl.flower.client_app.make_client_app`."""
    base = dict(defaults or {})
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        config = base | dict(context.run_config)
        recorder = recorder_for(config)
        if switch(config, "resume"):  # continue `out` from its last committed round
            recorder.start(grid, None, num_rounds=recorder.cfg.rounds, resume=True)
        else:
            recorder.start(grid, recorder.initial_arrays(), num_rounds=recorder.cfg.rounds)

    return server_app


app = make_server_app()  # the run config is the app's (``flwr run``)
