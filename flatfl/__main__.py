"""``python -m flatfl`` is the ``flatfl`` command (needed under ``torchrun -m flatfl``)."""

from flatfl.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
