"""What a run keeps on disk: which rounds get a file, and in which precision client models are stored.

Storage choices never change the experiment: a run's checkpoints hold the same tensors whatever
is chosen here, its identity hash leaves them out, and ``run.json`` records them under
``storage`` so ``--resume`` keeps them (flags given on resume replace them).

* ``save_every`` N: ``round_t`` and the commit point ``state.safetensors`` are written for rounds
  t with t % N == 0, plus round 0 and the run's last round; ``save_rounds`` adds listed rounds.
  Every round still appends its ``metrics.jsonl`` line. A run killed between saved rounds
  restarts, with ``--resume``, from the last saved round and redoes the rounds after it: every
  random draw is derived from (seed, round, client), so the redone rounds are bit for bit the
  ones lost (lines of uncommitted rounds are dropped and written again).
* ``clients_dtype`` bfloat16: floating-point tensors of ``clients_NNNN.safetensors`` stored in
  bfloat16 (half the bytes); read back as float32. Global rounds and the state stay float32.
* ``incremental_state``: per-client algorithm state (SCAFFOLD's c_k, CluSamp's G_i) is written
  to ``client_state/``, one file per client, only for the clients that changed since the last
  save (:mod:`flatfl.client_state`); off, it goes into ``state.safetensors`` whole (the layout
  of flatfl 0.1, kept for ``bench/storage.py``'s comparison).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import asdict, dataclass
from typing import Any

from flatfl.errors import UserError

CLIENT_DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class StorageConfig:
    """Which rounds are saved and how (filled by the CLI; recorded in run.json's ``storage``)."""

    save_every: int = 1  # 0: only round 0, the last round and save_rounds
    save_rounds: tuple[int, ...] = ()
    clients_dtype: str = "float32"
    incremental_state: bool = True

    def keeps(self, t: int, last: int) -> bool:
        """Whether round ``t`` of a run planned for ``last`` rounds gets a round file and a state commit."""
        n = self.save_every
        return t == 0 or t >= last or (n > 0 and t % n == 0) or t in self.save_rounds

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["save_rounds"] = list(self.save_rounds)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> StorageConfig:
        """run.json's ``storage`` (absent in runs made before it existed: the defaults)."""
        if d is None or d == {}:
            return cls()
        whole = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0  # noqa: E731
        if not isinstance(d, dict):
            bad = f"is a JSON {type(d).__name__}, not an object"
        elif not whole(d.get("save_every", 1)):
            bad = f"save_every is {d.get('save_every')!r}, not a whole number of rounds"
        elif not (isinstance(d.get("save_rounds", []), list) and all(whole(r) for r in d.get("save_rounds", []))):
            bad = f"save_rounds is {d.get('save_rounds')!r}, not a list of rounds"
        elif d.get("clients_dtype", "float32") not in CLIENT_DTYPES:
            bad = f"clients_dtype is {d.get('clients_dtype')!r}, not one of {', '.join(CLIENT_DTYPES)}"
        elif not isinstance(d.get("incremental_state", True), bool):
            bad = f"incremental_state is {d.get('incremental_state')!r}, not true or false"
        else:
            return cls(
                save_every=d.get("save_every", 1),
                save_rounds=tuple(d.get("save_rounds", ())),
                clients_dtype=d.get("clients_dtype", "float32"),
                incremental_state=d.get("incremental_state", True),
            )
        raise UserError(f"run.json: 'storage' {bad}; the file was edited (restore run.json from a copy)")


_ITEM = re.compile(r"^(?:(\d+)|(\d+)-(\d+)|every:(\d+))$")


MAX_RANGE = 10_000_000  # rounds a range may list (never expanded past that)


def parse_round_spec(
    text: str, flag: str, last: int | None = None, among: Collection[int] | None = None
) -> tuple[tuple[int, ...], int]:
    """``"5,10,20-25,every:50"`` -> (listed rounds, the every:N step or 0).

    Items, comma-separated: a round ``R``, a range ``A-B`` (both included) or ``every:N`` (rounds
    that are multiples of N). Anything else is a :class:`UserError` naming ``flag``. A range is never
    expanded past what can matter: with ``among`` (the rounds that have a file, ``flatfl prune``) it selects
    those of them inside it, whatever its bounds -- a stray ``round_99999999999.safetensors`` does not make
    ``0-99999999999`` a list of 10^11 rounds; otherwise it is cut at ``last`` (the run's last round), and
    a range of more than ``MAX_RANGE`` rounds even so (``--rounds 10^11 --save-rounds 1-10^11``) is refused.
    """
    rounds: set[int] = set()
    every = 0
    for item in (s.strip() for s in text.split(",")):
        m = _ITEM.match(item)
        if m is None:
            raise UserError(f"{flag}: {item!r} is not a round, a range A-B or every:N (e.g. {flag} 1,5,10-20,every:50)")
        if m.group(1) is not None:
            rounds.add(int(m.group(1)))
        elif m.group(2) is not None:
            a, b = int(m.group(2)), int(m.group(3))
            if a > b:
                raise UserError(f"{flag}: range {item} runs backwards; write it as {b}-{a}")
            if among is not None:
                rounds.update(r for r in among if a <= r <= b)
                continue
            if last is not None:
                b = min(b, last)
            if b - a >= MAX_RANGE:
                raise UserError(f"{flag}: range {item} lists more than {MAX_RANGE:,} rounds")
            rounds.update(range(a, b + 1))
        else:
            if int(m.group(4)) == 0:
                raise UserError(f"{flag}: every:0 keeps nothing; use every:N with N >= 1")
            if every and every != int(m.group(4)):
                raise UserError(f"{flag}: give every:N once")
            every = int(m.group(4))
    return tuple(sorted(rounds)), every
