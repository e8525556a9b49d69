"""The federated simulation: K clients, m sampled per round, a checkpoint per saved round.

``train(cfg, out)`` is the whole job behind ``flatfl train``:

1. load the dataset, split it over clients (seeded), build the model (seeded);
2. for each round t: sample m clients, let the algorithm run its round (dispatch, local
   SGD on each client, aggregate, update state), evaluate the new global model on the test
   split, and write a metrics line, optional ``clients_t`` and, at saved rounds (every round
   unless ``--save-every``/``--save-rounds``, ``flatfl.storage``), ``round_t`` and ``state``
   (``flatfl.saver``);
3. stop with :class:`DivergenceError` on the first non-finite loss or weight, leaving the
   last saved (finite) round as the newest checkpoint.

With ``resume=True`` it continues a run directory from its last committed round and gives
bitwise the same tensors as an uninterrupted run on CPU (all randomness is derived from
(seed, round, client); see ``flatfl.seeding``).
"""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import torch

import flatfl
from flatfl import checkpoint as ckpt
from flatfl import diagnostics, distributed, rundir, seeding
from flatfl.algorithms import get_algorithm
from flatfl.algorithms.base import ClientJob, ClientUpdate, FederatedAlgorithm, LocalTerm, SequentialTraining
from flatfl.algorithms.step import LocalStep
from flatfl.config import DataConfig, RunConfig
from flatfl.data import Dataset, load_dataset
from flatfl.errors import DivergenceError, UserError
from flatfl.local import evaluate, local_sgd
from flatfl.models import build_model, check_fits, num_parameters
from flatfl.partition import label_counts, partition_dirichlet, partition_iid, partition_shards
from flatfl.saver import RoundSaver
from flatfl.startup import start_header
from flatfl.statedict import StateDict, clone, first_nonfinite
from flatfl.storage import StorageConfig
from flatfl.tracking import Tracker
from flatfl.validate import check_dtypes


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else must be a valid torch device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise UserError(f"--device: {device!r} is not a device; use auto, cpu, cuda or cuda:N") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device: CUDA was asked for but no CUDA device is available; use --device cpu")
    return dev


def server_holdout(cfg: RunConfig, n: int) -> np.ndarray:
    """Training-set indices the algorithm keeps on the server (FedDF's unlabelled proxy data).

    A seeded slice of ``frac * n`` samples (``algorithm.server_fraction``), never given to a
    client; empty for algorithms that need none, so their partitions are unaffected.
    """
    frac = get_algorithm(cfg.algo).server_fraction(cfg.algo_config)
    if frac <= 0:
        return np.zeros(0, dtype=np.int64)
    rng = seeding.derive_rng(cfg.seed, seeding.PARTITION, 1)
    return np.sort(rng.permutation(n)[: int(frac * n)]).astype(np.int64)


def proxy_dataset_inputs(cfg: RunConfig, input_shape: tuple[int, ...]) -> torch.Tensor:
    """A seeded ``proxy_frac`` share of the training inputs of the dataset named by ``proxy_data``
    (FedDF/FedAUX's unlabelled proxy data from another source), checked against the run's input."""
    ac = cfg.algo_config
    if ac.proxy_data == cfg.data.dataset:
        raise UserError(
            f"--proxy-data: {ac.proxy_data} is the training set itself; "
            "use holdout to keep a slice of it off the clients"
        )
    other = load_dataset(DataConfig(dataset=ac.proxy_data, data_root=cfg.data.data_root))
    if tuple(other.input_shape) != tuple(input_shape) or other.train.x.dtype != torch.float32:
        raise UserError(
            f"--proxy-data: {ac.proxy_data} inputs {tuple(other.input_shape)} do not fit the model's "
            f"{tuple(input_shape)}; choose a dataset shaped like --dataset {cfg.data.dataset} or holdout"
        )
    n = len(other.train)
    rng = seeding.derive_rng(cfg.seed, seeding.PARTITION, 2)
    idx = np.sort(rng.permutation(n)[: max(2, int(ac.proxy_frac * n))])
    return other.train.x[torch.as_tensor(idx, dtype=torch.long)]


def make_partition(cfg: RunConfig, data: Dataset) -> list[np.ndarray]:
    rng = seeding.derive_rng(cfg.seed, seeding.PARTITION)
    d = cfg.data
    n = len(data.train)
    held = server_holdout(cfg, n)
    rest = np.setdiff1d(np.arange(n), held) if len(held) else np.arange(n)
    labels = data.train.y.numpy()[rest]
    if d.partition == "iid":
        return [rest[p] for p in partition_iid(len(rest), d.num_clients, rng)]
    if d.partition == "dirichlet":
        return [rest[p] for p in partition_dirichlet(labels, d.num_clients, d.dirichlet_alpha, d.min_size, rng)]
    if d.partition == "shards":
        return [rest[p] for p in partition_shards(labels, d.num_clients, d.shards_per_client, rng)]
    if d.partition == "file":
        from flatfl.partition_file import load_for_run

        parts = load_for_run(str(d.partition_file), d.partition_sha256, dataset=d.dataset, num_train=n)
        return [np.setdiff1d(p, held) if len(held) else p for p in parts]
    if d.partition == "natural":
        parts = data.natural_parts
        if parts is None:
            raise UserError(f"--partition natural: {d.dataset} has no natural clients (shakespeare has: its roles)")
        return [np.setdiff1d(np.asarray(p, dtype=np.int64), held) for p in parts]
    raise UserError(f"--partition: unknown scheme {d.partition!r}; choose from iid, dirichlet, shards, natural")


def sample_clients(cfg: RunConfig, round: int) -> np.ndarray:
    """m distinct clients for ``round``, from the generator derived from (seed, round)."""
    return draw_clients(cfg.seed, round, cfg.data.num_clients, cfg.clients_per_round)


def draw_clients(seed: int, round: int, num_clients: int, m: int) -> np.ndarray:
    """m distinct client ids of 0..num_clients-1 for ``round``, from the (seed, SAMPLE, round) generator
    (also flatfl.flower's FedMut strategy, so a Flower run samples the clients a flatfl run does)."""
    rng = seeding.derive_rng(seed, seeding.SAMPLE, round)
    return rng.choice(num_clients, m, replace=False)


@dataclass
class RoundLog:
    round: int
    test_loss: float
    test_acc: float
    train_loss: float | None
    wall_time: float


class Simulation(SequentialTraining):
    """Holds the data, the working model and the algorithm; implements ``Federation``."""

    def __init__(
        self,
        cfg: RunConfig,
        device: torch.device,
        data: Dataset,
        parts: list[np.ndarray],
        dist: distributed.DistContext | None = None,
        parallel_clients: int = 1,
    ) -> None:
        self.cfg = cfg
        self.dist = dist
        self.parallel_clients = parallel_clients
        self.device = device
        self.data = data
        self.train_data = data.train.to(device)
        self.test_data = data.test.to(device)
        self.client_idx = [torch.as_tensor(p, dtype=torch.long, device=device) for p in parts]
        self.client_x = [self.train_data.x[i] for i in self.client_idx]
        self.client_y = [self.train_data.y[i] for i in self.client_idx]
        torch.manual_seed(seeding.derive_seed(cfg.seed, seeding.INIT))
        model = build_model(cfg.model, **cfg.model_kwargs)
        check_fits(model, cfg.model, cfg.data.dataset, data.input_shape, dtype=data.train.x.dtype)
        self.model = model.to(device)
        self.algorithm: FederatedAlgorithm = get_algorithm(cfg.algo)(
            cfg.algo_config,
            param_names=[n for n, _ in model.named_parameters()],
            num_clients=cfg.data.num_clients,
            client_sizes=[len(p) for p in parts],
            client_label_counts=label_counts(parts, data.train.y.numpy(), data.num_classes),
            local=cfg.local,
        )
        self.on_client_done: Callable[[int, int], None] | None = None
        self._server_x: torch.Tensor | None = None
        self.augment = None
        if cfg.data.augment:
            from flatfl.data.cifar import augment_batch

            self.augment = augment_batch

    def initial_state(self) -> StateDict:
        return clone(self.model.state_dict())

    # Federation ------------------------------------------------------------------------
    def train_clients(self, round: int, jobs: list[ClientJob]) -> list[ClientUpdate]:
        """Every job's update in job order: this process alone, or this rank's share (slots r, r+W,
        ...) gathered from every rank (``flatfl.distributed``)."""
        if self.dist is None:
            return self._train_here(round, jobs)
        ctx, n = self.dist, len(jobs)
        idx = ctx.my_slots(n)
        mine: list[ClientUpdate] = []
        error = None
        try:
            mine = self._train_here(round, [jobs[j] for j in idx])
        except DivergenceError as exc:  # every rank must learn of it, or the others wait forever
            # the failing job: this rank's first job of that client (a client met twice in a round
            # trains identically, so it fails at its first slot)
            at = next((j for j in idx if jobs[j].client == exc.client), idx[0] if idx else n)
            error = (at, str(exc), exc.round, exc.client)
        metas = distributed.gather_objects(
            ctx,
            (
                error,
                [(u.client, u.num_samples, u.train_loss, u.num_steps, u.lr, u.momentum, u.sent_loss) for u in mine],
            ),
        )
        errors = sorted(e for e, _ in metas if e is not None)
        if errors:  # the first failing slot, as a single process would have met it
            _, msg, r, c = errors[0]
            raise DivergenceError(msg, r, c)
        states = distributed.gather_states(ctx, n, {j: u.state for j, u in zip(idx, mine)}, self.model.state_dict())
        fields = distributed.merge_in_job_order(ctx, n, [m for _, m in metas])
        return [ClientUpdate(f[0], f[1], st, *f[2:]) for f, st in zip(fields, states)]

    def _train_here(self, round: int, jobs: list[ClientJob]) -> list[ClientUpdate]:
        jobs = [j if j.step is not None else replace(j, step=self.algorithm.local_step(round, j.client, j.state))
                for j in jobs]  # fmt: skip
        if self.parallel_clients > 1:
            from flatfl.parallel import parallel_eligible, train_parallel

            if parallel_eligible(self, jobs):
                out: list[ClientUpdate] = []
                for i in range(0, len(jobs), self.parallel_clients):
                    out += train_parallel(self, round, jobs[i : i + self.parallel_clients])
                return out
        return super().train_clients(round, jobs)  # one client after another

    def train_client(
        self,
        round: int,
        slot: int,
        client: int,
        state: StateDict,
        local_term: LocalTerm | None = None,
        step: LocalStep | None = None,
    ) -> ClientUpdate:
        """Client ``client``'s local training of ``round`` from ``state`` (``step``: the rule of its
        minibatch steps, default the algorithm's ``local_step``)."""
        step = step if step is not None else self.algorithm.local_step(round, client, state)
        self.model.load_state_dict(state)
        seed = seeding.derive_seed(self.cfg.seed, seeding.CLIENT, round, client)
        # dropout and other in-model randomness; torch.manual_seed would also queue a CUDA
        # seeding call (with a captured stack trace) on every client, ~1 ms each on CPU
        torch.random.default_generator.manual_seed(seed)
        if self.device.type == "cuda":
            torch.cuda.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        first: list[torch.Tensor] = []
        loss_t, steps = local_sgd(
            self.model,
            self.client_x[client],
            self.client_y[client],
            self.cfg.local,
            gen,
            local_term,
            self.augment,
            first,
            step,
        )
        loss = float(loss_t)
        if not np.isfinite(loss):
            raise DivergenceError(
                f"round {round}, client {client}: local training produced a non-finite loss ({loss})", round, client
            )
        # Non-finite weights with a finite loss are caught after aggregation (any NaN/inf
        # reaches the mean), which then names the client; one check per round, not per client.
        new_state = clone(self.model.state_dict())
        if self.on_client_done is not None:
            self.on_client_done(slot, client)
        sent_loss = float(first[0]) if first else float("nan")
        return ClientUpdate(
            client, len(self.client_y[client]), new_state, loss, steps, step.lr, step.momentum, sent_loss
        )

    def server_data(self) -> torch.Tensor:
        """The server's unlabelled proxy inputs, on the device; built once per run: the held-out
        slice of the training set, or a seeded share of another dataset (``proxy_data``)."""
        if self._server_x is None:
            name = getattr(self.cfg.algo_config, "proxy_data", "holdout")
            if name == "holdout":
                idx = server_holdout(self.cfg, len(self.train_data))
                self._server_x = self.train_data.x[torch.as_tensor(idx, dtype=torch.long, device=self.device)]
            else:
                self._server_x = proxy_dataset_inputs(self.cfg, self.data.input_shape).to(self.device)
        return self._server_x

    def client_inputs(self, client: int) -> torch.Tensor:
        return self.client_x[client]

    def new_model(self, state: StateDict) -> torch.nn.Module:
        """A model of the run's architecture with ``state`` loaded, on the device (for server-side work)."""
        m = build_model(self.cfg.model, **self.cfg.model_kwargs).to(self.device)
        m.load_state_dict(state)
        return m

    def evaluate(self, state: StateDict) -> tuple[float, float]:
        self.model.load_state_dict(state)
        return evaluate(self.model, self.test_data.x, self.test_data.y, self.cfg.eval_batch_size)


def _run_info(cfg: RunConfig, sim: Simulation, parts: list[np.ndarray], device: torch.device) -> dict[str, Any]:
    labels = sim.data.train.y.numpy()
    return {
        "config": cfg.to_dict(),
        "identity": cfg.identity(),
        "clients_per_round": cfg.clients_per_round,
        "versions": {
            "flatfl": flatfl.__version__,
            "torch": torch.__version__.split("+")[0],
            "numpy": np.__version__,
            "safetensors": safetensors.__version__,
            "python": platform.python_version(),
        },
        "model": {
            "name": cfg.model,
            "kwargs": cfg.model_kwargs,
            "num_parameters": num_parameters(sim.model),
            "parameters": [n for n, _ in sim.model.named_parameters()],
            "state_keys": list(sim.model.state_dict().keys()),
        },
        "dataset": sim.data.summary(),
        "partition": {
            "scheme": cfg.data.partition,
            "dirichlet_alpha": cfg.data.dirichlet_alpha if cfg.data.partition == "dirichlet" else None,
            "min_size": cfg.data.min_size,
            "num_clients": cfg.data.num_clients,
            **(
                {"file": cfg.data.partition_file, "sha256": cfg.data.partition_sha256}
                if cfg.data.partition_file
                else {}
            ),
            "sizes": [len(p) for p in parts],
            "label_counts": label_counts(parts, labels, sim.data.num_classes).tolist(),
        },
        "seeding": "numpy SeedSequence([seed, purpose, round, client]); see flatfl/seeding.py",
    } | (_preset_info(cfg) if cfg.preset else {})


def _preset_info(cfg: RunConfig) -> dict[str, Any]:
    """run.json's ``preset``: its name and the values it sets for this run (flags given override them;
    ``config`` holds every resolved value)."""
    from flatfl.presets import preset_values

    return {"preset": {"name": cfg.preset, "values": preset_values(cfg.preset, cfg.algo, cfg.model)}}


def prepare_out(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to clobber an existing run unless asked (checks only: ``flatfl.rundir`` moves an
    overwritten run aside once the new one is validated). A run killed before its round 0 was
    committed is no run yet."""
    run_json = out / ckpt.RUN_JSON
    if resume:
        if not out.is_dir():
            raise UserError(f"--resume: {out} does not exist; start the run without --resume")
        if not run_json.is_file():
            raise UserError(f"--resume: {run_json} is missing; {out} holds no flatfl run to resume")
        return
    if out.exists() and not out.is_dir():
        raise UserError(f"--out: {out} exists and is not a directory")
    holds = (out / rundir.REPLACED).is_dir() or run_json.exists() or bool(list(out.glob("round_*.safetensors")))
    if holds and not overwrite and not rundir.uncommitted_start(out):
        raise UserError(
            f"--out: {out} already holds a run; continue it with --resume {out} or replace it with --overwrite"
        )


def _on_main(ctx: distributed.DistContext | None, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 only and give its result -- or its ``UserError`` -- to every rank."""
    if ctx is None:
        return fn()
    result, error = None, None
    if ctx.is_main:
        try:
            result = fn()
        except UserError as exc:
            error = str(exc)
    result, error = distributed.broadcast_object(ctx, (result, error))
    if error is not None:
        raise UserError(error)
    return result


def train(
    cfg: RunConfig,
    out: Path,
    *,
    device: str = "auto",
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
    download: bool = False,
    parallel_clients: int | str = 1,
    storage: StorageConfig | None = None,
    tensorboard: Path | None = None,
) -> list[RoundLog]:
    """Run (or continue) the federated simulation described by ``cfg`` into ``out``.

    ``download``: fetch an on-disk dataset missing under ``cfg.data.data_root``.
    ``parallel_clients``: train up to this many clients at once on the device by stacking their
    parameters (``flatfl.parallel``; models without BatchNorm/dropout/LSTM, rounds without local terms);
    ``"auto"``: :func:`flatfl.parallel.auto_parallel_clients`.

    Under ``torchrun`` (WORLD_SIZE > 1) each rank trains a share of every round's clients and rank
    0 alone writes (``flatfl.distributed``); the files are those of a single-process run.

    Returns the log of the rounds run by this call. Raises :class:`UserError` for bad
    input and :class:`DivergenceError` when training produces non-finite values.
    """
    out = Path(out)
    dev = resolve_device(device)
    if distributed.launched_by_torchrun() and dev.type == "cuda":
        dev = torch.device("cuda", distributed.local_rank())
    ctx = distributed.init(dev)
    ok = False
    rd = rundir.RunDir(out) if ctx is None or ctx.is_main else None  # rank 0 holds the lock
    try:
        check = lambda: prepare_out(out, resume=resume, overwrite=overwrite)  # noqa: E731
        settled = _on_main(ctx, lambda: rundir.settle(out))  # an interrupted --overwrite finished or undone
        for note in settled or []:
            (log or print)(f"{out}: {note}")
        _on_main(ctx, check)  # before the folder is made or locked
        notes = _on_main(ctx, lambda: rd.open(create=not resume))  # type: ignore[union-attr]
        _on_main(ctx, check)  # again under the lock, after recovery
        for note in notes if rd is not None else []:
            (log or print)(f"{out}: {note}")
        logs = _train(cfg, out, dev, ctx, rd, resume, progress, log, download, parallel_clients, storage, tensorboard)
        ok = True
        return logs
    finally:
        if rd is not None:
            rd.close(failed=not ok)
        distributed.shutdown(ctx, ok)


def _show_round(bar: Any, last_eval: dict[str, str], log: Callable[[str], None], cfg: RunConfig, t: int,
                rec: RoundLog) -> None:  # fmt: skip
    """Round t on the progress bar (its test accuracy and loss as the postfix), or as a log line."""
    if bar is not None:
        bar.update(1)
        last_eval["text"] = f" | test acc {rec.test_acc:.3f} loss {rec.test_loss:.3f}"
        bar.set_postfix_str(last_eval["text"].lstrip(" |"))
    else:
        log(
            f"[{cfg.algo}] round {t}/{cfg.rounds}  test_acc {rec.test_acc:.4f}  test_loss {rec.test_loss:.4f}  "
            f"train_loss {rec.train_loss:.4f}  {rec.wall_time:.2f}s"
        )


def _train(
    cfg: RunConfig,
    out: Path,
    dev: torch.device,
    ctx: distributed.DistContext | None,
    rd: rundir.RunDir | None,
    resume: bool,
    progress: bool | None,
    log: Callable[[str], None] | None,
    download: bool,
    parallel_clients: int | str,
    storage: StorageConfig | None = None,
    tensorboard: Path | None = None,
) -> list[RoundLog]:
    main = ctx is None or ctx.is_main
    log = log or (lambda s: print(s, flush=True))
    if not main:
        log = lambda s: None  # noqa: E731
    identity = cfg.identity()
    if resume and not _on_main(ctx, lambda: rundir.committed(out) or not rundir.uncommitted_start(out)):
        log(f"{out}: stopped before its round 0 was saved; starting it from round 0")
        resume = False
    data = load_dataset(cfg.data, download=download and main)

    parts, resume_data = _partition(out, cfg, data, ctx, resume, identity)
    sim, info = _simulation(cfg, dev, data, parts, ctx, parallel_clients, log)
    algo = sim.algorithm

    if resume:
        start, global_state, storage = _restore(out, cfg, sim, dev, identity, storage, main, log, resume_data, info)
        if start >= cfg.rounds:
            return []
    else:
        start = 0
        global_state, saver = _start_fresh(out, cfg, sim, dev, ctx, rd, info, parts, data, storage, tensorboard, log)
    if main and resume:
        tracker = Tracker(Path(tensorboard) / out.name, start + 1, warn=log) if tensorboard is not None else None
        saver = RoundSaver(out, cfg, identity, storage or StorageConfig(), algo, tracker)
        saver.resumed()

    last_eval = {"text": ""}
    bar = (
        _progress_bar(cfg, sim, ctx, start, last_eval)
        if main and (sys.stderr.isatty() if progress is None else progress)
        else None
    )

    logs: list[RoundLog] = []
    writer = ckpt.BackgroundWriter()
    try:
        for t in range(start + 1, cfg.rounds + 1):
            rec, result, round_time = _one_round(t, cfg, sim, global_state, dev, ctx)
            new_global = result.new_global
            logs.append(rec)
            old_global, global_state = global_state, new_global
            if not main:
                continue
            clients_info, record = _round_record(rec, result, algo, old_global, round_time, dev, ctx)
            saver.took_part(clients_info["clients"])
            writer.submit(
                saver.job(
                    t,
                    new_global,
                    record,
                    result.sent if cfg.saves_clients(t) else None,
                    [u.state for u in result.updates] if cfg.saves_clients(t) else None,
                    clients_info,
                )
            )
            _show_round(bar, last_eval, log, cfg, t, rec)
    except KeyboardInterrupt:
        writer.cancel_pending()  # queued rounds are dropped; the one being written completes
        raise
    except DivergenceError as exc:
        writer.close()
        raise _diverged(exc, out, algo, main) from None
    finally:
        writer.close()
        if bar is not None:
            bar.close()
        if main and saver.tracker is not None:
            saver.tracker.close()
    return logs


def _partition(
    out: Path, cfg: RunConfig, data: Any, ctx: distributed.DistContext | None, resume: bool, identity: str
) -> tuple[list[np.ndarray], list[Any] | None]:
    """The clients' indices -- drawn anew, or read back with the saved state on a resume (main rank reads)."""

    def read_resume() -> tuple[list[list[int]], int, str, dict[str, Any], dict[str, Any], StateDict]:
        parts = ckpt.read_partition(out, resume_info(out, identity))
        start, algo_name, st_tensors, st_json = ckpt.load_state(out, identity)
        global_cpu, _ = ckpt.load_round(ckpt.round_path(out, start), identity)
        check_finite(ckpt.round_path(out, start), global_cpu)
        check_finite(out / ckpt.STATE_FILE, st_tensors)
        return parts, start, algo_name, st_tensors, st_json, global_cpu

    if not resume:
        return make_partition(cfg, data), None
    raw_parts, *resume_data = _on_main(ctx, read_resume)
    parts = [np.asarray(p, dtype=np.int64) for p in raw_parts]
    n = len(data.train)
    if len(parts) != cfg.data.num_clients or any(len(p) and (p.min() < 0 or p.max() >= n) for p in parts):
        raise UserError(
            f"{out / ckpt.PARTITION_JSON}: does not match the run's data "
            f"({cfg.data.num_clients} clients over {n} samples)"
        )
    return parts, resume_data


def _simulation(
    cfg: RunConfig,
    dev: torch.device,
    data: Any,
    parts: list[np.ndarray],
    ctx: distributed.DistContext | None,
    parallel_clients: int | str,
    log: Callable[[str], None],
) -> tuple[Simulation, dict[str, Any]]:
    """The simulation (data, model, algorithm) and run.json's description of it."""
    if parallel_clients == "auto":
        from flatfl.parallel import auto_parallel_clients

        parallel_clients = auto_parallel_clients(dev, cfg.clients_per_round)
    sim = Simulation(cfg, dev, data, parts, dist=ctx, parallel_clients=parallel_clients)
    if parallel_clients > 1:
        from flatfl.parallel import model_qualifies

        if not model_qualifies(sim.model):
            log(
                f"note: --parallel-clients: {cfg.model} has BatchNorm statistics, dropout or an LSTM, which cannot "
                "be stacked; its clients train one after another"
            )
    info = _run_info(cfg, sim, parts, dev) | (
        {"launch": {"world_size": ctx.world_size, "backend": ctx.backend}} if ctx is not None else {}
    )
    source = getattr(cfg.algo_config, "proxy_data", None)
    if source is not None:  # FedDF/FedAUX: where the unlabelled proxy data come from (checked now)
        info["server_data"] = {"source": source, "samples": int(len(sim.server_data()))}

    return sim, info


def _one_round(
    t: int,
    cfg: RunConfig,
    sim: Simulation,
    global_state: StateDict,
    dev: torch.device,
    ctx: distributed.DistContext | None,
) -> tuple[RoundLog, Any, float]:
    """Round t: sample, train, aggregate, check, evaluate. (its log, the algorithm's result, seconds to aggregate)."""
    t0 = time.perf_counter()
    algo = sim.algorithm
    chosen = algo.select_clients(t, cfg.clients_per_round, seeding.derive_rng(cfg.seed, seeding.SAMPLE, t))
    clients = sample_clients(cfg, t).tolist() if chosen is None else list(chosen)
    rng = seeding.derive_rng(cfg.seed, seeding.ALGORITHM, t)
    result = algo.run_round(t, global_state, clients, rng, sim)
    if ctx is not None and dev.type == "cuda":  # ranks must not drift apart through GPU non-determinism
        distributed.broadcast_state(ctx, result.new_global)
    _check_round_finite(t, result)
    t1 = time.perf_counter()
    test_loss, test_acc = sim.evaluate(result.new_global)
    if not np.isfinite(test_loss):
        raise DivergenceError(f"round {t}: the global model's test loss is {test_loss}", t, None)
    train_losses = [u.train_loss for u in result.updates]
    rec = RoundLog(t, test_loss, test_acc, float(np.mean(train_losses)), time.perf_counter() - t0)
    return rec, result, t1 - t0


def _restore(
    out: Path,
    cfg: RunConfig,
    sim: Simulation,
    dev: torch.device,
    identity: str,
    storage: StorageConfig | None,
    main: bool,
    log: Callable[[str], None],
    resume_data: list[Any],
    info: dict[str, Any],
) -> tuple[int, StateDict, StorageConfig | None]:
    """The saved global model and algorithm state, checked against the model; (start round, global, storage)."""
    start, algo_name, st_tensors, st_json, global_cpu = resume_data
    algo = sim.algorithm
    if algo_name != cfg.algo:
        raise UserError(f"{out / ckpt.STATE_FILE}: holds {algo_name} state but run.json says {cfg.algo}")
    # files store tensors sorted by name; keep the model's state_dict order, which fixes
    # the order in which FedMut draws per-tensor coefficients (resume == straight run)
    model_sd = sim.model.state_dict()
    _check_keys(global_cpu, model_sd, ckpt.round_path(out, start))
    global_cpu = check_dtypes(ckpt.round_path(out, start), global_cpu, {k: v.dtype for k, v in model_sd.items()})
    _check_state_groups(st_tensors, model_sd, {n for n, _ in sim.model.named_parameters()}, out / ckpt.STATE_FILE)
    global_state = {k: global_cpu[k].to(dev) for k in model_sd}
    algo.load_state({k: v.to(dev) for k, v in st_tensors.items()}, st_json)
    if main:
        complete_metrics(out, start, sim, identity, str(dev))
    if start >= cfg.rounds:
        log(f"{out}: already at round {start} of {cfg.rounds}; nothing to do (raise --rounds to continue)")
        return start, global_state, storage
    if main:
        ckpt.set_run_rounds(out, cfg.rounds)
        storage = _resumed_storage(out, storage)
        (out / ckpt.DIVERGED_JSON).unlink(missing_ok=True)  # training goes on: written again if it diverges
    log(start_header(cfg, info, dev, out, resumed_from=start))
    return start, global_state, storage


def _start_fresh(
    out: Path,
    cfg: RunConfig,
    sim: Simulation,
    dev: torch.device,
    ctx: distributed.DistContext | None,
    rd: rundir.RunDir | None,
    info: dict[str, Any],
    parts: list[np.ndarray],
    data: Any,
    storage: StorageConfig | None,
    tensorboard: Path | None,
    log: Callable[[str], None],
) -> tuple[StateDict, RoundSaver | None]:
    """Round 0: the initial global model, evaluated; on the main rank run.json, partition.json and round 0
    written and committed (an overwritten run is moved aside only now, after every check)."""
    global_state = distributed.broadcast_state(ctx, sim.initial_state())
    loss0, acc0 = sim.evaluate(global_state)
    log(start_header(cfg, info, dev, out, round0=(loss0, acc0)))
    if not (ctx is None or ctx.is_main):
        return global_state, None
    assert rd is not None
    tracker = Tracker(Path(tensorboard) / out.name, warn=log) if tensorboard is not None else None
    rd.clear_for_new_run()
    partition = ckpt.partition_json_bytes(
        {"clients": [p.tolist() for p in parts]}
        | ({"server": held.tolist()} if len(held := server_holdout(cfg, len(data.train))) else {})
    )
    storage = storage or StorageConfig()
    run_json = info | {"partition_sha256": ckpt.sha256_hex(partition), "storage": storage.to_dict()}
    ckpt.write_run_json(out, run_json)
    ckpt.atomic_write_bytes(out / ckpt.PARTITION_JSON, partition)
    saver = RoundSaver(out, cfg, cfg.identity(), storage, sim.algorithm, tracker)
    record0 = {"round": 0, "test_loss": loss0, "test_acc": acc0, "train_loss": None, "device": str(dev)}
    saver.job(0, global_state, record0)()
    rd.round0_committed()
    return global_state, saver


def _check_round_finite(t: int, result: Any) -> None:
    """A non-finite aggregate stops the run, naming the first client whose local training produced one."""
    key = first_nonfinite(result.new_global)
    if key is None:
        return
    for u in result.updates:
        ukey = first_nonfinite(u.state)
        if ukey is not None:
            raise DivergenceError(
                f"round {t}, client {u.client}: local training produced a non-finite weight in {ukey}", t, u.client
            )
    raise DivergenceError(f"round {t}: the aggregated global model has non-finite values in {key}", t, None)


def _round_record(
    rec: RoundLog,
    result: Any,
    algo: FederatedAlgorithm,
    old_global: StateDict,
    round_time: float,
    dev: torch.device,
    ctx: distributed.DistContext | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the clients file's info, the metrics.jsonl line) of a finished round."""
    train_losses = [u.train_loss for u in result.updates]
    clients_info = {
        "clients": [u.client for u in result.updates],
        "num_samples": [u.num_samples for u in result.updates],
        "train_loss": train_losses,
        **algo.dispatch_info(),
    }
    record = {
        "round": rec.round,
        "test_loss": rec.test_loss,
        "test_acc": rec.test_acc,
        "train_loss": rec.train_loss,
        "clients": clients_info["clients"],
        "client_train_loss": train_losses,
        "wall_time": rec.wall_time,
        "round_time": round_time,
        "device": str(dev),
    } | ({"world_size": ctx.world_size} if ctx is not None else {})
    record |= diagnostics.round_metrics(old_global, result.new_global, [u.sent_loss for u in result.updates])
    record |= algo.round_metrics()
    return clients_info, record


def _diverged(exc: DivergenceError, out: Path, algo: FederatedAlgorithm, main: bool) -> DivergenceError:
    """The one-line error of a diverged run; ``diverged.json`` so the analysis lists it instead of averaging it."""
    rounds = ckpt.list_rounds(out) if main else []
    last = rounds[-1] if rounds else 0
    reason = f"{exc}{_mutation_note(algo)}"
    message = (
        f"{reason}; {ckpt.round_path(out, last)} is the last finite checkpoint. "
        "Lower --lr, --momentum, (FedMut) --radius or (SAM family) --rho."
    )
    if main:
        ckpt.atomic_write_json(
            out / ckpt.DIVERGED_JSON,
            {"round": exc.round, "client": exc.client, "last_finite_round": last, "message": reason},
        )
    return DivergenceError(message, exc.round, exc.client)


def _progress_bar(
    cfg: RunConfig, sim: Simulation, ctx: distributed.DistContext | None, start: int, last_eval: dict[str, str]
) -> Any:
    """The rounds bar; the clients of the running round (or ranks) and the last test numbers as its postfix."""
    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.rounds, initial=start, desc=f"{cfg.algo} rounds", unit="round", dynamic_ncols=True)
    mine = cfg.clients_per_round if ctx is None else len(ctx.my_slots(cfg.clients_per_round))
    sim.on_client_done = lambda slot, client: bar.set_postfix_str(
        f"client {slot + 1}/{cfg.clients_per_round}{last_eval['text']}"
        if ctx is None
        else f"{mine} clients on each of {ctx.world_size} ranks{last_eval['text']}",
        refresh=True,
    )
    return bar


def _mutation_note(algo: FederatedAlgorithm) -> str:
    """The diverging round's mutation norm for the one-line message (FedMut), else nothing."""
    m = algo.round_metrics()
    if "mutation_norm" not in m:
        return ""
    rel = m.get("mutation_rel")
    return f" (mutation norm radius*||d|| = {m['mutation_norm']:.4g}" + (
        f", {rel:.3g} x ||w||)" if rel is not None else ")"
    )


def _check_keys(saved: StateDict, expected: StateDict, path: Path) -> None:
    if set(saved) != set(expected):
        missing = sorted(set(expected) - set(saved))[:3]
        extra = sorted(set(saved) - set(expected))[:3]
        raise UserError(f"{path}: tensors do not match the model (missing {missing}, unexpected {extra})")
    for k, v in expected.items():
        if tuple(saved[k].shape) != tuple(v.shape):
            raise UserError(f"{path}: tensor {k} has shape {tuple(saved[k].shape)}, the model expects {tuple(v.shape)}")


def resume_info(out: Path, identity: str) -> dict[str, Any]:
    """run.json of the run being resumed, which must still be the run the CLI read (an
    interrupted ``--overwrite`` undone on opening brings back another one)."""
    info = ckpt.read_run_json(out)
    if info["identity"] != identity:
        raise UserError(
            f"{out / ckpt.RUN_JSON}: changed while this command was opening the run (another flatfl process "
            "replaced it?); check the run, then run the command again"
        )
    return info


def _resumed_storage(out: Path, given: StorageConfig | None) -> StorageConfig:
    """The storage choice a resumed run goes on with: the flags given (recorded in run.json,
    replacing the earlier choice), else the one run.json records."""
    info = ckpt.read_run_json(out)
    if given is None:
        return StorageConfig.from_dict(info.get("storage"))
    if info.get("storage") != given.to_dict():
        ckpt.atomic_write_json(out / ckpt.RUN_JSON, info | {"storage": given.to_dict()})
    return given


def check_finite(path: Path, tensors: StateDict) -> None:
    key = first_nonfinite(tensors)
    if key is not None:
        raise UserError(f"{path}: tensor {key} holds NaN or Inf; this run cannot continue from it (start a new run)")


def complete_metrics(out: Path, start: int, sim: Simulation, identity: str, device: str) -> None:
    """metrics.jsonl with exactly one record per committed round 0..start: lines of uncommitted
    rounds and a torn last line go; a committed round without a line (lost by a kill under
    earlier versions) gets its test metrics back from its round file, marked ``rebuilt``."""
    keep, missing, rewrite = ckpt.metrics_for_resume(out, start)
    if not rewrite:
        return
    for r in missing:
        path = ckpt.round_path(out, r)
        if not path.is_file():
            raise UserError(f"{out / ckpt.METRICS_FILE}: round {r} has no line and no {path.name} to rebuild it from")
        state, _ = ckpt.load_round(path, identity)
        loss, acc = sim.evaluate({k: v.to(sim.device) for k, v in state.items()})
        keep.append(
            {"round": r, "test_loss": loss, "test_acc": acc, "train_loss": None, "device": device, "rebuilt": True}
        )
    ckpt.write_metrics(out, sorted(keep, key=lambda rec: rec["round"]))


def _check_state_groups(tensors: StateDict, model_sd: StateDict, params: set[str], path: Path) -> None:
    """Algorithm state saved per model tensor (``prefix/<key>``: FedMut's previous global model,
    SCAFFOLD's control variates) must cover all parameters or all state keys, in the model's shapes."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for name, v in tensors.items():
        prefix, _, key = name.rpartition("/")
        if prefix and key in model_sd:
            groups.setdefault(prefix, {})[key] = v
    for prefix, group in groups.items():
        if set(group) not in (params, set(model_sd)):
            missing = sorted((params if set(group) <= params else set(model_sd)) - set(group))[:3]
            raise UserError(f"{path}: {prefix}/ lacks tensors {missing}; the state file is damaged")
        for key, v in group.items():
            if tuple(v.shape) != tuple(model_sd[key].shape):
                raise UserError(
                    f"{path}: {prefix}/{key} has shape {tuple(v.shape)}, the model expects "
                    f"{tuple(model_sd[key].shape)}; the state file is damaged"
                )
