"""argparse types of flatfl's flags (one-line errors naming what was expected), shared by the CLI and the
measure specs (:mod:`flatfl.runs.measures`), which declare their own flags."""

from __future__ import annotations

import argparse
import math


def _typed(kind: type, check, what: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not check(value) or (kind is float and not math.isfinite(value)):
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
MAX_SEED = 2**32 - 1  # every seed flag: numpy, torch and the derived per-round seeds all take it
SEED_RANGE = f"0 to {MAX_SEED} = 2^32 - 1"
seed_t = _typed(int, lambda v: 0 <= v <= MAX_SEED, f"a seed from {SEED_RANGE}")
SAMPLES_HELP = "0 = all the selected data"  # one meaning of --samples 0 for every command


def samples_t(text: str) -> int | str:
    """``--samples`` of every analysis command: ``auto``, or a number of samples, 0 meaning all of them."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of samples (0 = all) or auto, got {text!r}")
    return value


def samples_setting(value: int | str | None) -> tuple[int | None, bool]:
    """(samples, samples_auto) of a parsed ``--samples``: None samples means all the data."""
    return (None, True) if value == "auto" else (value or None, False)
