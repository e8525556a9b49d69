"""Does ``state.safetensors`` belong with the files beside it? The checks ``--resume`` makes before it continues.

``state.safetensors`` is a round's commit point: the round's writes go, in order, ``clients_t`` (every round with
``--save-clients``), ``round_t`` (saved rounds), the ``metrics.jsonl`` line (every round), the changed clients'
``client_state/`` files, and last the state file (saved rounds, ``flatfl.saver``). One background writer runs the
rounds' writes in order, so a kill (SIGKILL, power cut) leaves the state's round s and, past it, only what the rounds
up to the *next saved round* n(s) had begun to write:

* ``round_t`` / ``clients_t`` files with s < t only for t <= n(s);
* metrics lines of rounds s < t <= n(s) (the unsaved rounds in between append theirs without a commit);
* ``client_state/`` index entries (client -> round of its file) of rounds <= s.

n(s) is the smallest t > s that run.json's ``storage`` and ``config.rounds`` save (``StorageConfig.keeps``); a
resume trims the lines and removes the files past s before it changes either (:func:`drop_uncommitted`), so the
rule holds across a resume that changes ``--save-every`` or ``--rounds``. A state file whose round was edited back
(round 2 in a finished 4-round run) breaks it: the later rounds' files and lines are there, and ``--resume`` would
silently train them again. The algorithm's own state must also be the one of round s, where the run's files tell
(:func:`check_algorithm_state`): FedMut's and FedLESAM's previous global model is round s-1's model; FedSWA's
count of averaged models is the number of collection rounds up to s; SCAFFOLD holds a control variate for exactly
the clients that took part in rounds 1..s (metrics.jsonl records them).

Each refusal is one line naming the state file and the field, and nothing is written. Both resumes run them,
through :func:`check_resume_state`: ``flatfl train --resume`` (:mod:`flatfl.run_start`) and the Flower recorder's
``start(..., resume=True)`` (:mod:`flatfl.flower.resume`), whose writes go in the same order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from flatfl import checkpoint as ckpt
from flatfl import client_state
from flatfl.algorithms.fedswa import cycle_position
from flatfl.errors import UserError
from flatfl.run_checks import check_finite
from flatfl.statedict import StateDict
from flatfl.storage import StorageConfig

EDITED = "the state file was edited or replaced (restore the run from a copy)"


def next_saved(s: int, info: dict[str, Any]) -> int:
    """n(s): the first round after ``s`` that run.json's storage choice and planned rounds save."""
    storage = StorageConfig.from_dict(info.get("storage"))
    last = info["config"]["rounds"]
    if s + 1 >= last:
        return s + 1
    n = storage.save_every
    candidates = [last] + ([(s // n + 1) * n] if n > 0 else []) + [r for r in storage.save_rounds if r > s]
    return min(candidates)


def _later(out: Path, pattern: str, s: int) -> list[int]:
    rounds = []
    for p in out.glob(pattern):
        stem = p.stem.split("_", 1)[1]
        if stem.isdigit() and int(stem) > s:
            rounds.append(int(stem))
    return sorted(rounds)


def check_resume_state(
    out: Path, info: dict[str, Any], s: int, algo: tuple[str, str, Any], tensors: StateDict, meta: dict[str, Any]
) -> None:
    """What a resume checks of ``state.safetensors`` (round ``s``, its ``tensors`` and JSON ``meta``) before it
    continues: the commit point against the files beside it, the algorithm's state against the run's files when
    ``algo`` = (the state's algorithm, the run's, the run's algorithm config) agree (else the caller names both;
    the run's ``None``: a state holding no algorithm state, as the Flower recorder's for a strategy other than
    FedMut), and every state tensor finite (first: a NaN would otherwise be named as another round's tensor)."""
    check_finite(out / ckpt.STATE_FILE, tensors)
    check_commit_point(out, info, s)
    saved, want, algo_config = algo
    if saved == want:
        check_algorithm_state(out, s, saved, algo_config, tensors, meta)


def check_commit_point(out: Path, info: dict[str, Any], s: int) -> None:
    """The state's round ``s`` is the last committed round: no file, line or client-state entry of a round a kill
    cannot leave past it (module docstring)."""
    path = out / ckpt.STATE_FILE
    n = next_saved(s, info)
    why = f"a kill leaves nothing past the next saved round ({n}); {EDITED}"
    for pattern in ("round_*.safetensors", "clients_*.safetensors"):
        later = [t for t in _later(out, pattern, s) if t > n]
        if later:
            name = pattern.replace("*", f"{later[-1]:04d}")
            raise UserError(f"{path}: metadata 'round' is {s}, but {name} of a later round is there; {why}")
    try:
        records = ckpt.read_metrics(out)
    except UserError:
        records = []  # an unreadable or doubled line: the resume's own metrics check names it
    later = [r["round"] for r in records if r["round"] > n]
    if later:
        raise UserError(f"{path}: metadata 'round' is {s}, but {ckpt.METRICS_FILE} records round {later[-1]}; {why}")
    index = client_state.read_index(out) or {}
    ahead = sorted((r, c) for c, r in index.items() if r > s)
    if ahead:
        r, c = ahead[-1]
        raise UserError(f"{path}: metadata 'client_state' names client {c}'s file of round {r}, after its round {s}; "
                        f"{EDITED}")  # fmt: skip


def drop_uncommitted(out: Path, s: int) -> None:
    """Remove the round and clients files of rounds after the commit point ``s``: a round the kill cut short, which
    the resume writes again (bit for bit the same) if it saves it."""
    for pattern in ("round_*.safetensors", "clients_*.safetensors"):
        for t in _later(out, pattern, s):
            (out / pattern.replace("*", f"{t:04d}")).unlink(missing_ok=True)


def _differs(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype and shape, other values (another dtype or shape is named by the resume's own check)."""
    return a.dtype == b.dtype and a.shape == b.shape and not torch.equal(a, b)


def check_algorithm_state(
    out: Path, s: int, name: str, algo_config: Any, tensors: StateDict, meta: dict[str, Any]
) -> None:
    """The state of algorithm ``name`` (with its ``algo_config``) is the one of round ``s``, as far as the run's
    files tell (module docstring). Tensors of another shape or dtype than the model's are left to the resume's
    check of the state's tensors, which names them."""
    path = out / ckpt.STATE_FILE
    if name in ("fedmut", "fedlesam"):
        prev = {k.removeprefix("prev_global/"): v for k, v in tensors.items() if k.startswith("prev_global/")}
        if bool(meta.get("has_prev_global")) != (s >= 1):
            have = "holds" if meta.get("has_prev_global") else "lacks"
            raise UserError(f"{path}: algo_state {have} the previous global model at round {s}; {EDITED}")
        before = ckpt.round_path(out, s - 1)
        if s >= 1 and before.is_file():
            model, _ = ckpt.load_round(before)
            bad = sorted(k for k, v in prev.items() if k in model and _differs(v, model[k]))
            if bad:
                raise UserError(f"{path}: prev_global/{bad[0]} is not round {s - 1}'s model ({before.name}), which it "
                                f"is after round {s}; {EDITED}")  # fmt: skip
    elif name == "fedswa":
        start, cycle = int(algo_config.swa_start), int(algo_config.swa_cycle)
        want = sum(1 for t in range(start + 1, s + 1) if cycle_position(t, start, cycle) == 1.0)
        if meta.get("swa_n") != want or bool(meta.get("has_server")) != (want > 0):
            raise UserError(f"{path}: algo_state swa_n is {meta.get('swa_n')!r}, but rounds 1..{s} collect {want} "
                            f"models; {EDITED}")  # fmt: skip
    elif name == "scaffold":
        _check_control_variates(path, s, tensors, _records(out, s))


def _records(out: Path, s: int) -> list[dict[str, Any]]:
    """metrics.jsonl's lines of rounds 1..s ([] when it cannot be read: the resume's own check names why)."""
    try:
        return [r for r in ckpt.read_metrics(out) if 1 <= r["round"] <= s]
    except UserError:
        return []


def _check_control_variates(path: Path, s: int, tensors: StateDict, records: list[dict[str, Any]]) -> None:
    """SCAFFOLD: a c_k for every client that took part in rounds 1..s and for no other (when every line of those
    rounds records its clients: a line rebuilt from a round file does not)."""
    if len(records) == s and all(isinstance(r.get("clients"), list) for r in records):
        took_part = {c for r in records for c in r["clients"]}
        held = {int(c) for k in tensors if k.startswith("c_client/") and (c := k.split("/", 2)[1]).isdigit()}
        if held != took_part:
            odd = sorted(held ^ took_part)[0]
            raise UserError(f"{path}: the control variates are those of other clients than took part in rounds "
                            f"1..{s} (client {odd}); {EDITED}")  # fmt: skip
