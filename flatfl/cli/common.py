"""Shared pieces of the command line: a one-line-error parser and checked flag types."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from flatfl.flagtypes import (  # noqa: F401  (the checked flag types, shared with RunConfig.from_flags and measure specs)
    MAX_SEED,
    SAMPLES_HELP,
    SEED_RANGE,
    frac_0_1,
    momentum_t,
    name_list,
    nonneg_float,
    nonneg_int,
    open_frac,
    pos_float,
    pos_int,
    samples_setting,
    samples_t,
    seed_t,
    unit,
)

NAME_MAX = 255  # bytes in one file name (Linux, macOS); PATH_MAX: bytes in a whole path
PATH_MAX = 4096
PATH_DESTS = ("weights", "to")  # path flags that stay strings (a file or a spec) but get the same checks


def checked_path(kind: Any = Path) -> Any:
    """A flag type for file and folder names: an empty name, a name longer than ``NAME_MAX`` bytes or a path
    longer than ``PATH_MAX`` bytes is one argparse line naming the flag (the OS would refuse it later with a
    traceback, after minutes of work); any other name -- unicode, spaces, tabs, newlines -- passes unchanged."""

    def parse(text: str) -> Any:
        if not text:
            raise argparse.ArgumentTypeError("empty path; give a file or folder name")
        raw = os.fsencode(text)
        if len(raw) >= PATH_MAX:
            raise argparse.ArgumentTypeError(f"path of {len(raw)} bytes; the system allows {PATH_MAX - 1}")
        longest = max(raw.split(b"/"), key=len)
        if len(longest) > NAME_MAX:
            raise argparse.ArgumentTypeError(
                f"a name of {len(longest)} bytes ({os.fsdecode(longest[:24])}...); the system allows {NAME_MAX}"
            )
        if text.endswith("/") and os.path.isfile(text.rstrip("/")):
            raise argparse.ArgumentTypeError(f"{text.rstrip('/')} is a file, but the path ends in '/'")
        return kind(text)

    parse.__name__ = getattr(kind, "__name__", "path")
    return parse


def check_path_flags(parser: argparse.ArgumentParser) -> None:
    """Give every path flag of ``parser`` (``type=Path``, or a dest in ``PATH_DESTS``) the :func:`checked_path`
    checks."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                check_path_flags(sub)
        elif action.type is Path:
            action.type = checked_path(Path)
        elif action.dest in PATH_DESTS and action.type is None:
            action.type = checked_path(str)


class Parser(argparse.ArgumentParser):
    """argparse that reports errors as one line and exit code 2 (no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"flatfl: error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(2)


MAX_THREADS_PER_CORE = 4  # --threads beyond this many per available core is refused (OpenMP crashes far above)


def default(obj: Any, name: str) -> str:
    """``(default: <value>)`` for help texts, read from a config dataclass."""
    return f"(default: {getattr(obj, name)})"


def add_analysis_arguments(g: Any, d: Any, data_help: str = "") -> None:
    """Flags ``flatfl landscape`` and ``flatfl report`` share, with defaults from a
    ``LandscapeSettings`` ``d``: data selection, batch size, device, seed, memory budget."""
    g.add_argument(
        "--data",
        default=d.data,
        metavar="SEL",
        help=f"train (union of all clients' data), test, or client:K (client K's training data) (default: {d.data})"
        + data_help,
    )
    g.add_argument(
        "--batch-size",
        type=pos_int,
        default=d.batch_size,
        metavar="B",
        help="samples per forward/backward pass; results do not depend on it, and a B above the data's size is one "
        f"pass over all of it (default: {d.batch_size})",
    )
    g.add_argument("--device", default="auto", metavar="DEV", help="auto, cpu, cuda or cuda:N (default: auto)")
    g.add_argument(
        "--seed",
        type=seed_t,
        default=d.seed,
        help=f"seed of random subsets, probe vectors and directions, {SEED_RANGE} (default: {d.seed})",
    )
    g.add_argument(
        "--memory-budget",
        type=pos_float,
        default=d.memory_budget_gb,
        metavar="GB",
        help="keep the first-order graphs of all data in memory (about 2x faster HVPs) when their estimated "
        f"size fits this many GiB, else recompute them per HVP; also bounds surface chunks (default: "
        f"{d.memory_budget_gb})",
    )


def analysis_device(name: str) -> Any:
    """The device of an analysis command; under torchrun with CUDA, this rank's GPU (LOCAL_RANK)."""
    import torch

    from flatfl.device import resolve_device
    from flatfl.distributed import launched_by_torchrun, local_rank

    device = resolve_device(name)
    if launched_by_torchrun() and device.type == "cuda":
        device = torch.device("cuda", local_rank())
    return device


def available_cores() -> int:
    """CPU cores this process may run on (``os.sched_getaffinity``; ``os.cpu_count`` where it is missing)."""
    import os

    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def threads_per_process(requested: int | None, cores: int, processes: int) -> tuple[int, str | None]:
    """Intra-op threads of each of ``processes`` processes (torchrun ranks on this machine) sharing ``cores``.

    ``requested`` (``--threads N``) is the command's total, divided among the processes (at least one
    each); without it the available cores are divided. Returns (threads, a one-line warning when
    the total exceeds the cores, else None): oversubscribed torch processes slow each other
    down many times over (each op's threads wait at a barrier for threads that are not running).
    """
    if requested is not None and requested > MAX_THREADS_PER_CORE * cores:
        from flatfl.errors import UserError

        raise UserError(
            f"--threads {requested}: more than {MAX_THREADS_PER_CORE} threads per core available to this process "
            f"({cores} cores); give at most {MAX_THREADS_PER_CORE * cores}"
        )
    total = requested if requested is not None else cores
    per = max(1, total // processes)
    warning = None
    if per * processes > cores:
        warning = (
            f"flatfl: warning: --threads {total} over {processes} process(es) uses {per * processes} threads but only "
            f"{cores} cores are available to this process (os.sched_getaffinity); expect a slowdown, lower --threads"
        )
    return per, warning


def add_threads_argument(p: Any) -> None:
    p.add_argument(
        "--threads",
        type=pos_int,
        metavar="N",
        help="CPU threads of this command, divided among torchrun's ranks on this machine; a warning when they "
        f"exceed the cores available to the process, refused above {MAX_THREADS_PER_CORE} per core (default: those "
        "cores, divided among the ranks)",
    )


def apply_threads(requested: int | None, say: Any) -> int:
    """Set torch's intra-op threads for this process from ``--threads`` (see :func:`threads_per_process`);
    without the flag only torchrun's ranks are changed (the cores divided among them)."""
    import os

    import torch

    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if requested is None and processes == 1:
        return torch.get_num_threads()  # one process, no flag: torch's own choice (or the caller's) stands
    per, warning = threads_per_process(requested, available_cores(), processes)
    if warning:
        say(warning + "\n")
    torch.set_num_threads(per)
    return per


class _DeprecatedAlias(argparse.Action):
    """An old spelling kept for one release: stores like its new flag and warns once on stderr."""

    new_flag = ""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        sys.stderr.write(
            f"flatfl: warning: {option_string} is deprecated and will be removed in the next release; "
            f"use {self.new_flag}\n"
        )
        setattr(namespace, self.dest, values)


def add_deprecated_alias(g: Any, old: str, new: str, dest: str, **kwargs: Any) -> None:
    """``old`` as a hidden alias of ``new`` (same ``dest``, ``type``, ``nargs``): absent from ``--help``,
    a one-line warning when used. ``kwargs`` are those of the new flag's ``add_argument``."""
    action = type("Deprecated", (_DeprecatedAlias,), {"new_flag": new})
    keep = {k: v for k, v in kwargs.items() if k in ("type", "nargs", "choices", "metavar")}
    g.add_argument(old, dest=dest, action=action, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **keep)
