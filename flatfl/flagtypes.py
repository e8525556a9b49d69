"""Checked value types of flags and run-config keys: text -> value, or ``argparse.ArgumentTypeError``
with ``expected <what>, got '<text>'``. The command line (``flatfl.cli``) and ``RunConfig.from_flags``
(the CLI's ``flatfl train`` and the Flower app) and the measure specs (:mod:`flatfl.runs.measures`, which
declare their own flags) share them, so a bad value reads the same everywhere."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

from flatfl.errors import UserError

# Every float flag ends in a float32 tensor or optimizer (torch's default dtype): a value beyond float32's
# largest finite number cannot be converted there ("value cannot be converted to type float without overflow").
FLOAT32_MAX = 3.4028234663852886e38  # float(torch.finfo(torch.float32).max), kept torch-free here
FLOAT_BOUND = "at most 3.4e38 (float32's largest)"


def _typed(kind: type, check: Callable[[Any], bool], what: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not check(value) or (kind is float and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        if kind is float and abs(value) > FLOAT32_MAX:
            raise argparse.ArgumentTypeError(f"expected {what} {FLOAT_BOUND}, got {text!r}")
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
MAX_DIRECTIONS = 10_000  # --slices: each direction is --slice-points full passes over the analysis data
MAX_GRID = 1_000  # --grid: N^2 points on a surface, each a full pass over the analysis data
slices_t = _typed(int, lambda v: 0 <= v <= MAX_DIRECTIONS, f"a number of directions from 0 to {MAX_DIRECTIONS}")
grid_t = _typed(int, lambda v: 0 < v <= MAX_GRID, f"points per axis from 1 to {MAX_GRID}")
# Work budgets counted in full passes over the analysis data (HVPs, Lanczos/SLQ steps and vectors, ascent steps,
# Monte Carlo draws, SGD steps on a bend, BatchNorm batches): far more than any study uses, and a bound, so a
# slip such as 2**70 is refused in one line instead of overflowing a tensor size or running for ever.
MAX_PASSES = 100_000
passes_t = _typed(int, lambda v: 0 < v <= MAX_PASSES, f"a positive integer at most {MAX_PASSES:,}")
passes0_t = _typed(int, lambda v: 0 <= v <= MAX_PASSES, f"an integer from 0 to {MAX_PASSES:,}")
# flatfl train's loop counts: rounds (and flags counted in rounds: --mut-bound, --swa-start/--swa-cycle,
# --save-every, --save-clients K) at most a million; work inside a round (--local-epochs, --distill-steps,
# --gen-epochs, --gen-iters, --aux-pretrain-steps) at most MAX_PASSES, as landscape's budgets. FedMut and the
# papers it compares with run 100 to 2,000 rounds of 1 to 10 epochs; a slip such as 2**70 is refused in one line
# instead of running for ever.
MAX_ROUNDS = 1_000_000
ROUNDS_BOUND = f"at most {MAX_ROUNDS:,}"
STEPS_BOUND = f"at most {MAX_PASSES:,}"
rounds_t = _typed(int, lambda v: 0 < v <= MAX_ROUNDS, f"a number of rounds from 1 to {MAX_ROUNDS:,}")
rounds0_t = _typed(int, lambda v: 0 <= v <= MAX_ROUNDS, f"a number of rounds from 0 to {MAX_ROUNDS:,}")
MAX_CLIENTS = 1_000_000  # --clients: each gets at least one sample; no data set here has a million
clients_t = _typed(int, lambda v: 0 < v <= MAX_CLIENTS, f"a number of clients from 1 to {MAX_CLIENTS:,}")
# FedGen's generator sizes (--gen-batch latents per step, --gen-hidden width, --gen-noise size) are tensor
# dimensions: torch refuses one beyond int64 ("Overflow when unpacking long long") with a traceback. FedGen (Zhu et
# al. 2021) uses 32 to 512; a million is far beyond any study, and any size up to it either runs or ends in the
# out-of-memory line (a million x a million float32 weights is 4 TB, an allocation torch refuses cleanly).
MAX_GEN_SIZE = 1_000_000
gen_size_t = _typed(int, lambda v: 0 < v <= MAX_GEN_SIZE, f"a positive integer at most {MAX_GEN_SIZE:,}")
# --temperature (FedDF/FedAUX): softmax(z / T) of float32 logits z is uniform to within float32's resolution once
# T is far above |z|; measured on a 4-class linear teacher (logits ~3): the distillation KL still falls at T = 1,000
# and comes out negative (rounding noise) at T = 10,000. Hinton et al. and FedDF use T of 1 to 20.
MAX_TEMPERATURE = 1_000.0
temperature_t = _typed(float, lambda v: 0 < v <= MAX_TEMPERATURE, f"a temperature in (0, {MAX_TEMPERATURE:,.0f}]")
# --dirichlet: numpy < 1.25's Generator.dirichlet never returns for a concentration of about 1e-7 or less
# (measured with numpy 1.24.4, the lowest supported: 1e-6 returns, 1e-7 and 1e-300 loop forever); far below any
# non-IID setting in use (0.01-1), and the same bound on every numpy
MIN_DIRICHLET = 1e-6
dirichlet_t = _typed(float, lambda v: v >= MIN_DIRICHLET, f"a concentration of at least {MIN_DIRICHLET:g}")
MAX_LEVELS = 1_000  # --levels: contour levels of a 2D page (matplotlib draws each one)
levels_t = _typed(int, lambda v: 0 < v <= MAX_LEVELS, f"a number of levels from 1 to {MAX_LEVELS}")
SAMPLES_HELP = (  # one meaning of --samples 0 (and of an N above the data) for every command
    "0 = all the selected data; an N above its size also takes all of it, with a note on stderr (none at flatfl "
    "report's default, an 'up to') and N recorded as the data's requested"
)


def batch_size_t(text: str) -> int | str:
    """A positive integer or ``full`` (one batch of all the client's data)."""
    return "full" if text == "full" else pos_int(text)


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


def name_list(
    text: str, flag: str, choices: tuple[str, ...], alone: dict[str, tuple[str, ...]], what: str = "measure"
) -> tuple[str, ...]:
    """``--flag A,B`` as a tuple of ``choices``, or a word of ``alone`` given by itself (``all``, ``none``) as the
    names it stands for; an unknown or repeated name, or none at all (an empty text), is refused in one line."""
    items = [s.strip() for s in text.split(",")]
    if len(items) > 1 and "" in items:  # 'a,,b' or 'a,': a name left out by mistake
        raise UserError(f"{flag} {text}: an empty name between commas; give comma-separated names")
    names = [s for s in items if s]
    if len(names) == 1 and names[0] in alone:
        return alone[names[0]]
    words = ", ".join([*alone, *choices])
    if not names:  # '--flag ""' (an unset shell variable): not a silent 'none'
        off = f"{flag} none" if "none" in alone else "leave the flag out"
        raise UserError(f"{flag} {text!r}: an empty list; name one or more of {words} (to measure none: {off})")
    bad = [n for n in names if n not in choices]
    if bad or not names:
        raise UserError(f"{flag}: unknown {what}(s) {bad or [text]}; choose from {words}")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"{flag} {text}: {', '.join(twice)} given twice; name each once")
    return tuple(names)
