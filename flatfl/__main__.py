"""``python -m flatfl`` is the ``flatfl`` command (needed under ``torchrun -m flatfl``)."""

import os
import sys

try:
    from flatfl.cli import main
except KeyboardInterrupt:  # Ctrl-C while the modules load: the same line as later on, and nothing to clean up
    sys.stderr.write("flatfl: interrupted\n")
    sys.stderr.flush()
    os._exit(130)  # not SystemExit: an interrupted import can leave the interpreter reporting SIGINT itself

if __name__ == "__main__":
    raise SystemExit(main())
