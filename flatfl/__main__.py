"""``python -m flatfl`` is the ``flatfl`` command (needed under ``torchrun -m flatfl``)."""

import sys

try:
    from flatfl.cli import main
except KeyboardInterrupt:  # Ctrl-C while the modules load: the same line as later on
    sys.stderr.write("flatfl: interrupted\n")
    raise SystemExit(130) from None

if __name__ == "__main__":
    raise SystemExit(main())
