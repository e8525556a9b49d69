"""``python -m flatfl`` and the ``flatfl`` command (pyproject's console script points here, needed under
``torchrun -m flatfl`` too).

Ctrl-C while the modules load (torch alone takes seconds) ends with flatfl's one line and exit code 130: a
``KeyboardInterrupt`` raised there gave a traceback (the console script imported ``flatfl.cli`` outside any
handler), or ``terminate called ... KeyboardInterrupt`` and an abort when it passed through torch's C++ code. Until
``flatfl.cli`` is loaded, SIGINT ends the process at once instead of raising; ``flatfl.cli.main`` handles it after.
"""

import os
import signal
import threading


def _interrupted_while_loading(signum: int, frame: object) -> None:
    os.write(2, b"flatfl: interrupted\n")
    os._exit(130)  # nothing to clean up yet; not SystemExit, which the import machinery could swallow or wrap


def main() -> int:
    """The ``flatfl`` command: :func:`flatfl.cli.main`, loaded with Ctrl-C ending it in one line (module doc).
    A SIGINT the caller ignores (``nohup``, a background job) stays ignored."""
    own = threading.current_thread() is threading.main_thread()
    own = own and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if own:
        signal.signal(signal.SIGINT, _interrupted_while_loading)
    try:
        from flatfl.cli import main as cli_main
    finally:
        if own:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    return cli_main()


if __name__ == "__main__":
    raise SystemExit(main())
