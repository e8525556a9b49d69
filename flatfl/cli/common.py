"""Shared pieces of the command line: a one-line-error parser and checked flag types."""

from __future__ import annotations

import argparse
import sys
from typing import Any


class Parser(argparse.ArgumentParser):
    """argparse that reports errors as one line and exit code 2 (no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"flatfl: error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(2)


def _typed(kind: type, check, what: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = what
    return parse


pos_int = _typed(int, lambda v: v > 0, "a positive integer")
nonneg_int = _typed(int, lambda v: v >= 0, "a non-negative integer")
pos_float = _typed(float, lambda v: v > 0, "a positive number")
nonneg_float = _typed(float, lambda v: v >= 0, "a non-negative number")
frac_0_1 = _typed(float, lambda v: 0 < v <= 1, "a fraction in (0, 1]")
open_frac = _typed(float, lambda v: 0 < v < 1, "a fraction in (0, 1)")
unit = _typed(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")
momentum_t = _typed(float, lambda v: 0 <= v < 1, "a momentum in [0, 1)")


def default(obj: Any, name: str) -> str:
    """``(default: <value>)`` for help texts, read from a config dataclass."""
    return f"(default: {getattr(obj, name)})"
