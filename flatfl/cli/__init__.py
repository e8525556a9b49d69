"""``flatfl`` command line. The only place where configs are filled from flags.

Bad input exits with code 2 and one line ``flatfl: error: ...`` naming the flag or file and
the fix; a diverging run exits 1 after keeping its last finite checkpoint. Each subcommand
lives in its own module with ``add_parser(sub)`` and ``run(ns)``.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import warnings
from collections.abc import Sequence

from flatfl.cli import data, landscape, partition, prune, report, train
from flatfl.cli.common import (
    Parser,
    add_threads_argument,
    apply_threads,
    check_path_flags,
    repeat_notes,
    said_before_output,
    state_repeat_rule,
)
from flatfl.errors import DivergenceError, Interrupted, UserError

# the errors of a write the OS refused: full disk, file-size limit (ulimit -f), quota, read-only, permissions
WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
COMMANDS = {
    "train": train,
    "partition": partition,
    "data": data,
    "landscape": landscape,
    "report": report,
    "prune": prune,
}


def build_parser() -> argparse.ArgumentParser:
    import flatfl

    top = Parser(prog="flatfl", description="Train federated learning algorithms, save every round, measure flatness.")
    top.add_argument("--version", action="version", version=f"flatfl {flatfl.__version__}")
    top.add_argument(
        "--debug", action="store_true", help="show the Python traceback of an error instead of its one-line message"
    )
    sub = top.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for module in COMMANDS.values():
        module.add_parser(sub)
    for p in sub.choices.values():
        add_threads_argument(p)
        check_path_flags(p)
    state_repeat_rule(top)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """The ``flatfl`` command; Ctrl-C at any point -- while torch is still loading too -- ends with one line
    and exit code 130 (``flatfl train`` names the command that continues the run)."""
    try:
        return _main(argv)
    except KeyboardInterrupt as exc:
        sys.stderr.write(f"flatfl: {exc if isinstance(exc, Interrupted) else 'interrupted'}\n")
        return 130


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        ns = vars(parser.parse_args(argv))
    except SystemExit as exc:  # argparse: --help (0) or a one-line usage error (2)
        return int(exc.code or 0)
    debug = ns.pop("debug", False)
    if (sources := sys.modules.get("flatfl.runs.sources")) is not None:  # its once-per-command notes said again
        sources.reset_notes()
    ns["_argv"] = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    # under torchrun every rank meets the same error: rank 0 alone reports it
    say = sys.stderr.write if os.environ.get("RANK", "0") == "0" else (lambda s: None)
    # a flag given twice: the last one counts, said once -- before the command's first output, not before
    # the one-line error of a command line it refuses
    notes = [one_line(n) for n in repeat_notes(parser)] if os.environ.get("RANK", "0") == "0" else []
    # torch's forward-mode AD loads its decompositions through torch.jit.script, which warns on every
    # command that takes a jvp; it says nothing about the user's work
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    try:
        apply_threads(ns.get("threads"), say)
        with said_before_output(notes):
            return COMMANDS[ns["command"]].run(ns)
    except UserError as exc:
        if debug:
            raise
        say(one_line(f"flatfl: error: {exc}"))
        return exc.exit_code
    except OSError as exc:  # a write the OS refused (full disk, file-size limit, read-only): one line
        if not debug and exc.errno == errno.ENAMETOOLONG:  # a name made from a checked flag (+ a suffix)
            name = str(exc.filename or "")
            name = name[:30] + "..." + name[-30:] if len(name) > 64 else name
            say(one_line(f"flatfl: error: {name}: {exc.strerror}; choose a shorter file or folder name"))
            return 2
        if debug or exc.errno not in WRITE_ERRNOS:
            raise
        from flatfl.atomic import access_error_text

        say(one_line(f"flatfl: error: {access_error_text(exc)}"))  # a read refused is said as a read
        return 2
    except (MemoryError, RuntimeError) as exc:  # an allocation the machine cannot hold (a size flag far too large)
        text = str(exc)
        if debug or not (isinstance(exc, MemoryError) or "can't allocate memory" in text or "out of memory" in text):
            raise
        import re

        m = re.search(r"allocate (\d+) bytes", text)
        asked = f" (tried to allocate {int(m.group(1)) / 2**30:,.0f} GiB)" if m else ""
        say(f"flatfl: error: out of memory{asked}; lower the size flags "
            "(--batch-size, --samples, model or generator sizes) or use a machine with more memory\n")  # fmt: skip
        return 2
    except ValueError as exc:  # the analysis' one known message (NaN/inf reached an estimator): one line
        from flatfl.analysis.operators import NOT_FINITE

        if debug or str(exc) != NOT_FINITE:
            raise
        say(f"flatfl: error: {exc}\n")
        return 2
    except DivergenceError as exc:
        say(f"flatfl: diverged: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt as exc:
        sys.stderr.write(f"flatfl: {exc if isinstance(exc, Interrupted) else 'interrupted'}\n")
        return 130
    return 0


def one_line(message: str) -> str:
    """``message`` as one line of stderr: newlines and carriage returns inside it (a file name may hold them)
    are written as ``\\n`` and ``\\r``."""
    return message.replace("\r", "\\r").replace("\n", "\\n") + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
