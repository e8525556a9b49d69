"""Record any Flower strategy's run as a flatfl run directory (docs/checkpoint-format.md).

``RunRecorder(strategy, out, cfg)`` is itself a Flower ``Strategy``: it passes every call to the
wrapped one (FedAvg, FedProx, :class:`FedMutStrategy`, a user's own) and writes, with flatfl's
atomic writes under the run directory's lock (:mod:`flatfl.checkpoint`, :mod:`flatfl.rundir`):

* ``run.json`` -- flatfl's record of the model (registry name and kwargs, or a user's ``MODULE:FACTORY``
  with :class:`flatfl.flower.subjects.UserModel`), data set and partition (or the user's data names),
  the strategy's settings as ``config.algo_config`` (``algo``: ``fedmut``, ``fedavg``/``fedprox`` for
  Flower's FedAvg/FedProx, else the strategy's class name) and ``flower: {version, strategy}``;
* ``partition.json`` (registry data sets), ``round_NNNN.safetensors`` every round (round 0: the initial model),
  ``clients_NNNN.safetensors`` (sent and returned arrays per slot) with ``cfg.save_clients``,
  ``metrics.jsonl`` (test loss/accuracy of the global model on the test split, client losses and
  flatfl's divergence diagnostics) and ``state.safetensors`` (the commit point of each round).

So ``flatfl landscape --ckpt OUT/round_NNNN.safetensors`` and ``flatfl report OUT ...`` read a Flower
run as they read ``flatfl train``'s. A FedMut strategy's run has the config, identity and (same
seed, partition, clients) round files of ``flatfl train --algo fedmut``. ``start(..., resume=True)``
continues the directory from its last committed round (:mod:`flatfl.flower.resume`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedProx, Result, Strategy

from flatfl import checkpoint as ckpt
from flatfl import diagnostics, rundir
from flatfl.config import RunConfig, identity_of, saves_clients
from flatfl.errors import UserError
from flatfl.flower.arrays import from_record, to_record
from flatfl.flower.resume import restore
from flatfl.flower.sampling import SeededFedAvg, SeededFedProx
from flatfl.flower.strategy import FedMutStrategy
from flatfl.flower.subjects import RegistryModel, UserModel
from flatfl.run_checks import prepare_out
from flatfl.statedict import StateDict
from flatfl.storage import StorageConfig

JSONABLE = (bool, int, float, str, type(None))


def strategy_name(strategy: Strategy) -> str:
    """run.json's ``algo``: fedmut, fedavg (Flower's FedAvg itself or seeded), fedprox (Flower's FedProx
    itself or seeded), else the class name in lower case."""
    if isinstance(strategy, FedMutStrategy):
        return "fedmut"
    if type(strategy) in (FedAvg, SeededFedAvg):
        return "fedavg"
    return "fedprox" if type(strategy) in (FedProx, SeededFedProx) else type(strategy).__name__.lower()


def strategy_settings(strategy: Strategy) -> dict[str, Any]:
    """The strategy's settings: FedMut's FedMutConfig, else its public JSON-valued attributes but ``seed``
    (a seeded strategy's seed is the run's, ``config.seed``: kept in ``algo_config`` it would make every seed
    a group of its own in ``flatfl report``)."""
    if isinstance(strategy, FedMutStrategy):
        return strategy.settings()
    return {
        k: v
        for k, v in sorted(vars(strategy).items())
        if not k.startswith("_") and k != "seed" and isinstance(v, JSONABLE)
    }


class RunRecorder(Strategy):
    """Wraps ``strategy``; writes the run into ``out`` (see the module doc). ``cfg`` names the
    registry model, data set, partition, seed and rounds (:func:`flatfl.flower.config.run_config`);
    for a user's own model and data give ``model=UserModel("task:Net", test_data="task:test_xy")``
    instead (:mod:`flatfl.flower.subjects`)."""

    def __init__(
        self,
        strategy: Strategy,
        out: str | Path,
        cfg: RunConfig | None = None,
        *,
        model: UserModel | None = None,
        overwrite: bool = False,
    ) -> None:
        import flwr

        if (cfg is None) == (model is None):
            raise TypeError("RunRecorder: give cfg (a registry model and data set) or model (a UserModel), not both")
        self.strategy, self.out, self.cfg, self.overwrite = strategy, Path(out), cfg, overwrite
        self.subject: RegistryModel | UserModel = RegistryModel(cfg) if cfg is not None else model  # type: ignore[assignment]
        self.config = self.subject.config() | {
            "algo": strategy_name(strategy),
            "algo_config": strategy_settings(strategy),
        }
        self.flower = {
            "version": flwr.__version__,
            "strategy": f"{type(strategy).__module__}.{type(strategy).__name__}",
        }
        self._sent: list[tuple[int, int, StateDict]] = []  # (node, client, model sent), in slot order
        self._global: StateDict = {}
        self._t0 = 0.0
        self._offset = 0  # rounds done before this start (a resumed run's rounds are numbered on)
        self.identity = ""

    def initial_arrays(self) -> ArrayRecord:
        """The initial model: flatfl's of ``cfg`` (seeded as ``flatfl train``'s), or the user factory's
        (torch seeded with the UserModel's ``seed``)."""
        return to_record(self.subject.initial_state())

    # -- the run -----------------------------------------------------------------------------
    def start(
        self, grid: Grid, initial_arrays: ArrayRecord | None = None, num_rounds: int = 3, *, resume: bool = False,
        **kw: Any,
    ) -> Result:  # fmt: skip
        """Lock ``out``, write run.json, partition.json and round 0, then run the strategy's rounds.

        ``resume=True`` continues ``out`` from its last committed round instead (as ``flatfl train
        --resume``: the saved global model and strategy state, the rounds numbered on, so that the
        seeded sample and FedMut's mutants are those of an uninterrupted run); ``initial_arrays`` is
        then not used and ``num_rounds`` is the total."""
        out = self.out
        rd = rundir.RunDir(out)
        rundir.settle(out)  # an interrupted --overwrite finished or undone before the checks
        prepare_out(out, resume=resume, overwrite=self.overwrite and not resume)
        rd.open(create=not resume)
        ok = False
        try:
            if resume:
                self._offset, self._global = restore(self, num_rounds)
                initial_arrays = to_record(self._global)
            else:
                prepare_out(out, resume=False, overwrite=self.overwrite)
                if initial_arrays is None:
                    raise TypeError("RunRecorder.start: initial_arrays are needed unless resume=True")
                self._global = from_record(initial_arrays)
                self._write_start(rd, num_rounds)
            result = super().start(grid, initial_arrays, num_rounds - self._offset, **kw)
            ok = True
            return result
        finally:
            rd.close(failed=not ok and not resume)

    def plan_rounds(self, num_rounds: int) -> None:
        """The run's planned rounds (run.json's ``config.rounds``) and its identity (which leaves them out)."""
        self.config["rounds"] = num_rounds
        self.identity = identity_of(self.config)

    def _write_start(self, rd: rundir.RunDir, num_rounds: int) -> None:
        self.plan_rounds(num_rounds)
        info = self.subject.run_info()
        # every round is saved, client models in float32 (flatfl.storage's defaults)
        info |= {"config": self.config, "identity": self.identity, "flower": self.flower}
        info["storage"] = StorageConfig().to_dict()
        parts = self.subject.partition()
        self._check_keys(self._global, "the initial arrays", self.subject.initial_state())
        loss, acc = self._evaluate(self._global, "round 0")  # before anything is written or moved aside
        rd.clear_for_new_run()
        if parts is None:
            ckpt.write_run_json(self.out, info)
        else:
            partition = ckpt.partition_json_bytes({"clients": parts, "split": self.subject.split()})
            ckpt.write_run_json(self.out, info | {"partition_sha256": ckpt.sha256_hex(partition)})
            ckpt.atomic_write_bytes(self.out / ckpt.PARTITION_JSON, partition)
        ckpt.save_round(self.out, 0, self._global, self.config, self.identity)
        ckpt.append_metrics(
            self.out, {"round": 0, "test_loss": loss, "test_acc": acc, "train_loss": None, "device": "cpu"}
        )
        self._save_state(0)
        rd.round0_committed()

    def _save_state(self, t: int) -> None:
        fm = self.strategy.fedmut if isinstance(self.strategy, FedMutStrategy) else None
        tensors, meta = (fm.state_tensors(), fm.state_json()) if fm is not None else ({}, {})
        ckpt.save_state(self.out, t, self.config["algo"], tensors, meta, self.identity)

    # -- the Strategy interface: the wrapped strategy's, recorded --------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._t0 = time.perf_counter()
        server_round += self._offset
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        self._sent = []
        for rank, m in enumerate(messages):
            conf = next(iter(m.content.config_records.values()), {})
            arr = next(iter(m.content.array_records.values()))
            self._sent.append((m.metadata.dst_node_id, int(conf.get("client", rank)), from_record(arr)))
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies, server_round = list(replies), server_round + self._offset
        arrays, metrics = self.strategy.aggregate_train(server_round, replies)
        if arrays is None:  # nothing to record: the run would have a gap; stop with the reason
            failed = [r for r in replies if r.has_error()]
            first = f"; first error: {failed[0].error.reason}" if failed else ""
            raise UserError(
                f"round {server_round}: the strategy aggregated no model ({len(failed)} of {len(replies)} clients "
                f"failed{first}); rounds 0..{server_round - 1} are recorded, continue with resume"
            )
        self._commit(server_round, replies, from_record(arrays))
        return arrays, metrics

    def _commit(self, t: int, replies: list[Message], new_global: StateDict) -> None:
        """Round t's files in flatfl's commit order: clients, round, metrics line, state -- everything
        checked and computed first, so a model that does not fit writes nothing of the round."""
        by_node = {r.metadata.src_node_id: r for r in replies if not r.has_error()}
        slots = [(node, c, s) for node, c, s in self._sent if node in by_node]
        metric = [next(iter(by_node[n].content.metric_records.values()), MetricRecord()) for n, _, _ in slots]
        losses = [float(m.get("train_loss", float("nan"))) for m in metric]
        clients = [c for _, c, _ in slots]
        self._check_keys(new_global, f"round {t}: the aggregated model")
        new_global = self._model_dtypes(new_global)
        returned = None
        if saves_clients(self.subject.save_clients, t):
            returned = [from_record(next(iter(by_node[n].content.array_records.values()))) for n, _, _ in slots]
            for (_, c, _), state in zip(slots, returned):
                self._check_keys(state, f"round {t}: the model client {c} returned")
        loss, acc = self._evaluate(new_global, f"round {t}")
        record = {
            "round": t,
            "test_loss": loss,
            "test_acc": acc,
            "train_loss": sum(losses) / len(losses) if losses else None,
            "clients": clients,
            "client_train_loss": losses,
            "wall_time": time.perf_counter() - self._t0,
            "device": "cpu",
        }
        sent_loss = [float(m.get("sent_loss", float("nan"))) for m in metric]
        record |= diagnostics.round_metrics(self._global, new_global, sent_loss) | self._round_metrics()
        if returned is not None:
            info = {"clients": clients, "num_samples": [int(m.get("num-examples", 0)) for m in metric]}
            info |= {"train_loss": losses} | self._dispatch_info()
            ckpt.save_clients(self.out, t, [s for _, _, s in slots], returned, info, self.identity)
        ckpt.save_round(self.out, t, new_global, self.config, self.identity)
        ckpt.append_metrics(self.out, record)
        self._save_state(t)
        self._global = new_global

    def _model_dtypes(self, state: StateDict) -> StateDict:
        """``state`` in the recorded model's dtypes where a strategy averaged an integer buffer in floating point
        (Flower's FedAvg gives BatchNorm's ``num_batches_tracked`` as float64): truncated and cast back, as
        :func:`flatfl.statedict.weighted_average` does -- a round file must hold the model's own dtypes, which
        every reader checks."""
        fix = {k for k, v in state.items() if v.is_floating_point() and not self._global[k].is_floating_point()}
        return {k: v.trunc().to(self._global[k].dtype) if k in fix else v for k, v in state.items()}

    def _check_keys(self, state: StateDict, what: str, want: StateDict | None = None) -> None:
        """One line when ``state`` is not a state dict of the recorded model (``want``, default the
        current global model): the same tensor names and shapes."""
        want = self._global if want is None else want
        if set(state) != set(want):
            odd = sorted(set(state) ^ set(want))[:3]
            raise UserError(
                f"{what} holds tensors {sorted(state)[:3]}... that are not the recorded model's "
                f"(differing: {odd}); the ClientApp must return the model's state dict under its own names"
            )
        bad = [k for k in want if tuple(state[k].shape) != tuple(want[k].shape)][:3]
        if bad:
            raise UserError(f"{what}: tensors {bad} have other shapes than the recorded model's")

    def _evaluate(self, state: StateDict, what: str) -> tuple[float | None, float | None]:
        """Test loss and accuracy of ``state``; one line when the model cannot take the test data."""
        try:
            return self.subject.evaluate(state)
        except (RuntimeError, TypeError, ValueError, IndexError, KeyError) as exc:
            first = (str(exc).strip().splitlines() or [""])[0]
            raise UserError(
                f"{what}: the model cannot be evaluated on its test data ({type(exc).__name__}: {first}); "
                "the test data must be (x, y) batches of the model's input shape with integer class labels"
            ) from None

    def _dispatch_info(self) -> dict[str, Any]:
        return self.strategy.fedmut.dispatch_info() if isinstance(self.strategy, FedMutStrategy) else {}

    def _round_metrics(self) -> dict[str, Any]:
        return self.strategy.fedmut.round_metrics() if isinstance(self.strategy, FedMutStrategy) else {}

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round + self._offset, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round + self._offset, replies)

    def summary(self) -> None:
        self.strategy.summary()
