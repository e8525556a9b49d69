"""Shared pieces of the command line: a one-line-error parser and checked flag types."""

from __future__ import annotations

import argparse
import contextlib
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


REPEAT_RULE = (
    "A single-valued option given more than once: the last one counts (a note on stderr names it when the "
    "values differ)."
)
# actions that collect or count every use, and those that end the parse: given twice is their normal use
_REPEATABLE = (
    argparse._AppendAction,
    argparse._AppendConstAction,
    argparse._CountAction,
    argparse._HelpAction,
    argparse._VersionAction,
    argparse._SubParsersAction,
)


class Parser(argparse.ArgumentParser):
    """argparse that reports errors as one line and exit code 2 (no usage dump), and records single-valued
    options given more than once (:meth:`repeat_notes`): the last one counts, as in argparse, and is said."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"flatfl: error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(2)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:  # type: ignore[override]
        reset_repeat_notes(self)  # a subcommand an earlier parse chose and this one does not keeps no uses
        self._uses: list[tuple[argparse.Action, list[str], Any]] = []
        return super().parse_known_args(args, namespace)

    def _get_values(self, action: argparse.Action, arg_strings: list[str]) -> Any:
        raw = list(arg_strings)
        value = super()._get_values(action, arg_strings)
        if action.option_strings and not isinstance(action, _REPEATABLE):
            got = action.const if action.nargs == 0 else value  # store_true/const: the value is the constant
            self.__dict__.setdefault("_uses", []).append((action, raw, got))
        return value

    def repeat_notes(self) -> list[str]:
        """One ``flatfl: note:`` line per option (its dest: a flag and its aliases are one option) given more
        than once in the last parse with different values; the same value repeated is silent."""
        by_dest: dict[str, list[tuple[argparse.Action, list[str], Any]]] = {}
        for use in getattr(self, "_uses", []):
            by_dest.setdefault(use[0].dest, []).append(use)
        notes = []
        for uses in by_dest.values():
            if len(uses) < 2 or all(_same(u[2], uses[0][2]) and u[0] is uses[0][0] for u in uses[1:]):
                continue
            name = getattr(uses[-1][0], "new_flag", "") or flag_name(uses[-1][0])  # an old alias: its new flag
            one_flag = all(u[0] is uses[-1][0] for u in uses)
            shown = [(" ".join(u[1]) if one_flag else " ".join([flag_name(u[0]), *u[1]])) or flag_name(u[0])
                     for u in uses]  # fmt: skip
            times = "twice" if len(uses) == 2 else f"{len(uses)} times"
            listed = ", ".join(shown[:-1]) + f", then {shown[-1]}"
            notes.append(f"flatfl: note: {name} given {times} ({listed}): {shown[-1]} counts")
        return notes


def flag_name(action: argparse.Action) -> str:
    """The spelling of ``action``'s flag a message names: its longest ``--`` option string."""
    long = [s for s in action.option_strings if s.startswith("--")] or list(action.option_strings)
    return max(long, key=len)


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # values without a plain equality (arrays): compare their text
        return repr(a) == repr(b)


def repeat_notes(parser: argparse.ArgumentParser) -> list[str]:
    """The notes of :meth:`Parser.repeat_notes` of ``parser`` and of each subcommand parser the last parse
    went through (the chosen ``COMMAND``, and ``data KIND``)."""
    notes = parser.repeat_notes() if isinstance(parser, Parser) else []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                if getattr(sub, "_uses", None) is not None:
                    notes += repeat_notes(sub)
    return notes


class _LinesFirst:
    """A stream that writes ``pending`` (to ``to``) before its first text; everything else is the stream's."""

    def __init__(self, stream: Any, pending: list[str], to: Any) -> None:
        self._stream, self._pending, self._to = stream, pending, to

    def write(self, text: str) -> int:
        if self._pending and text:
            lines, self._pending[:] = list(self._pending), []
            self._to.write("".join(lines))
            self._to.flush()
        return self._stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def said_before_output(lines: list[str]) -> Any:
    """Write ``lines`` on stderr just before the first text the block writes (stdout or stderr), or at its end
    when it wrote none; never when it raises without having written (a refused command line: its one-line
    error stays alone)."""
    if not lines:
        yield
        return
    pending, err, out = list(lines), sys.stderr, sys.stdout
    sys.stderr, sys.stdout = _LinesFirst(err, pending, err), _LinesFirst(out, pending, err)  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stderr, sys.stdout = err, out
    if pending:  # ended without an exception and without output
        err.write("".join(pending))


def reset_repeat_notes(parser: argparse.ArgumentParser) -> None:
    """Forget every parser's recorded uses (a subcommand not chosen by the next parse keeps none)."""
    parser.__dict__.pop("_uses", None)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                reset_repeat_notes(sub)


def state_repeat_rule(parser: argparse.ArgumentParser) -> None:
    """Add :data:`REPEAT_RULE` to the ``--help`` epilog of ``parser`` and of every subcommand under it."""
    import textwrap

    rule = textwrap.fill(REPEAT_RULE, 80)  # wrapped here too for the raw-text formatters (train, partition)
    parser.epilog = f"{parser.epilog}\n\n{rule}" if parser.epilog else rule
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                state_repeat_rule(sub)


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
