"""From numbers per seed to an answer: group summaries, paired comparisons and verdicts.

Pure statistics on plain floats; nothing here reads a run or a checkpoint.

A *group* is a set of runs that differ only in their seed (e.g. FedAvg seeds 0, 1, 2). For one
measure (lambda_max, trace, a sharpness, a 1D width, test accuracy, ...):

* :func:`summarize` gives the mean over seeds and a 95% Student-t interval,
  ``mean +- t_{0.975, n-1} * s / sqrt(n)`` (no interval with one seed);
* :func:`paired` compares two groups seed by seed (same seed = same partition, initial model
  and client sample, so the pairs share every source of randomness but the algorithm): the
  mean of the differences d_s = a_s - b_s, its t-interval, and how many seeds agree in sign
  with the mean (a paired t-test, e.g. Wasserman, *All of Statistics*, sec. 10.1). For scale
  quantities (curvature, sharpness, widths: ``Measure.ratio``) the differences are taken of
  logarithms, d_s = log a_s - log b_s, so the interval is one for the ratio a/b: a seed with
  ten times the curvature of the others does not swamp the comparison (if any value is <= 0
  the plain difference is used and the result says so);
* :func:`verdict` turns the paired interval into one phrase: ``flatter: A`` / ``flatter: B``
  when the interval excludes 0, ``no clear difference`` when it contains 0, and says so when
  one seed gives no interval at all;
* :func:`disagreement` names the flatness measures that point in opposite directions;
* :func:`scale_caveat` says when only scale-dependent measures favour a group: lambda_max, the
  trace, SAM sharpness and the 1D widths change when a ReLU network is reparametrised
  (w_1 -> a w_1, w_2 -> w_2 / a leaves the function unchanged but scales the curvature; Dinh et al.
  2017), the adaptive sharpness measures do not (Kwon et al. 2021, ASAM). A gap the scale-invariant
  measures do not see may be partly a difference in parametrisation scale, not in flatness.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

LEVEL = 0.95
# the verdict's rule in words, the same on the report page and in `flatfl report --help`
VERDICT_RULE = (
    "the 95% interval of the ratio contains 1 (curvature, sharpness, widths) or the interval of the "
    "difference contains 0 (accuracy, loss)"
)


@dataclass(frozen=True)
class Measure:
    """A row of the verdict table: how to read it and which direction is better.

    ``lower_is_flatter``: True for curvature/sharpness (lower = flatter), False for widths
    (wider = flatter). ``kind``: "flatness" rows vote on flatness; "performance" rows
    (accuracy, train loss) say which group is further in training, not which is flatter.
    """

    key: str
    label: str
    lower_is_better: bool = True
    kind: str = "flatness"
    ratio: bool = True  # compare as log-ratios when every value is positive (scale quantities)
    scale_invariant: bool = False  # unchanged by a function-preserving rescaling of the weights (adaptive sharpness)
    bounds: tuple[float | None, float | None] = (None, None)  # what the quantity can be (displayed intervals clip)


@dataclass(frozen=True)
class Summary:
    """Mean over seeds with a 95% t-interval (``lo``/``hi`` None with fewer than 2 values)."""

    n: int
    mean: float
    lo: float | None
    hi: float | None
    values: tuple[float, ...]


@dataclass(frozen=True)
class Paired:
    """Paired differences over the seeds both groups have (finite values only).

    ``log``: the differences are log a_s - log b_s (mean/lo/hi are then log-ratios; exp() gives a/b).
    """

    n: int
    mean: float
    lo: float | None
    hi: float | None
    agree: int  # seeds whose difference has the sign of the mean difference
    seeds: tuple[int, ...]
    log: bool = False


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float | None, float | None]:
    """(mean, lo, hi) of a Student-t interval for the mean; lo = hi = None for n < 2."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = math.fsum(values) / n
    if n < 2:
        return mean, None, None
    from scipy import stats

    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * math.sqrt(var / n)
    return mean, mean - half, mean + half


def summarize(values: Sequence[float]) -> Summary | None:
    """Mean and 95% interval of the finite values, or None if there are none."""
    vals = tuple(float(v) for v in values if v is not None and math.isfinite(v))
    if not vals:
        return None
    mean, lo, hi = t_interval(vals)
    return Summary(len(vals), mean, lo, hi, vals)


def paired(a: Mapping[int, float | None], b: Mapping[int, float | None], *, ratio: bool = False) -> Paired | None:
    """Paired comparison of two groups' per-seed values; None when no seed has both.

    ``ratio``: compare log a_s - log b_s when every value is positive (see module doc).
    """
    seeds = tuple(
        s
        for s in sorted(set(a) & set(b))
        if a[s] is not None and b[s] is not None and math.isfinite(a[s]) and math.isfinite(b[s])
    )
    if not seeds:
        return None
    log = ratio and all(float(a[s]) > 0 and float(b[s]) > 0 for s in seeds)
    if log:
        diffs = [math.log(float(a[s])) - math.log(float(b[s])) for s in seeds]
    else:
        diffs = [float(a[s]) - float(b[s]) for s in seeds]
    mean, lo, hi = t_interval(diffs)
    sign = (mean > 0) - (mean < 0)
    agree = sum(1 for d in diffs if ((d > 0) - (d < 0)) == sign)
    return Paired(len(seeds), mean, lo, hi, agree, seeds, log)


NO_DIFFERENCE = "no clear difference"
ONE_SEED = "one seed: no interval"
NOT_MEASURED = "not measured"
NOT_COMPARED = "not compared"  # measured, but no pair of seeds to compare; followed by ": why"
CENSORED = "no verdict"  # a 1D width not reached within the slice radius; followed by ": why"


def winner(measure: Measure, p: Paired | None, name_a: str, name_b: str) -> str | None:
    """The group the paired interval favours (flatter or better), or None when there is no clear answer."""
    if p is None or p.lo is None or p.hi is None or p.lo <= 0.0 <= p.hi:
        return None
    a_lower = p.mean < 0
    return name_a if a_lower == measure.lower_is_better else name_b


def verdict(measure: Measure, p: Paired | None, name_a: str, name_b: str, why: str | None = None) -> str:
    """One phrase per measure: ``flatter: X`` (or ``better: X`` for performance rows),
    ``no clear difference`` when the 95% interval of the paired difference (of the log-ratio for
    scale measures: the ratio's interval contains 1) contains 0. Without a pair of seeds:
    ``not compared: why`` when the caller knows why (``why``), else ``not measured``."""
    if p is None:
        return f"{NOT_COMPARED}: {why}" if why else NOT_MEASURED
    if p.lo is None:
        return ONE_SEED
    w = winner(measure, p, name_a, name_b)
    if w is None:
        return NO_DIFFERENCE
    return f"{'flatter' if measure.kind == 'flatness' else 'better'}: {w}"


def disagreement(measures: Sequence[Measure], verdicts: Mapping[str, str]) -> str | None:
    """A sentence naming the flatness measures that favour different groups, or None if they agree."""
    by_winner: dict[str, list[str]] = {}
    for m in measures:
        v = verdicts.get(m.key, "")
        if m.kind == "flatness" and v.startswith("flatter: "):
            by_winner.setdefault(v.removeprefix("flatter: "), []).append(m.label)
    if len(by_winner) < 2:
        return None
    parts = [f"{_join(labels)} say {name} is flatter" for name, labels in by_winner.items()]
    return "The measures disagree: " + "; ".join(parts) + "."


def _compared(verdict_text: str | None) -> bool:
    return verdict_text is not None and not verdict_text.startswith((NOT_MEASURED, NOT_COMPARED, CENSORED))


def headline(
    measures: Sequence[Measure], verdicts: Mapping[str, str], name_a: str, name_b: str, why: str | None = None
) -> str:
    """One sentence: which group the flatness measures favour, or that there is no clear answer.

    ``why``: the reason no seed pair could be compared (no shared seed, a matched level never
    reached, only diverged runs), said instead of a bare "no measure"; :func:`scale_caveat` is
    appended when it applies.
    """
    flat = [m for m in measures if m.kind == "flatness" and _compared(verdicts.get(m.key))]
    if not flat:
        if why:
            return f"No flatness comparison: {why}."
        return "No flatness measure was computed."
    if all(verdicts[m.key] == ONE_SEED for m in flat):
        return "One seed per group: no interval, so no verdict (train more seeds)."
    votes = {name: [m.label for m in flat if verdicts[m.key] == f"flatter: {name}"] for name in (name_a, name_b)}
    none = [m.label for m in flat if verdicts[m.key] in (NO_DIFFERENCE, ONE_SEED)]
    caveat = scale_caveat(measures, verdicts, short=True)
    censored = [m.label for m in measures if m.kind == "flatness" and verdicts.get(m.key, "").startswith(CENSORED)]
    tail = (f" No verdict by {_join(censored)} (not reached within the slice radius)." if censored else "") + (
        f" {caveat}" if caveat else ""
    )
    if votes[name_a] and votes[name_b]:
        return f"Split answer: {name_a} is flatter by {_join(votes[name_a])}, {name_b} by {_join(votes[name_b])}.{tail}"
    for name in (name_a, name_b):
        if votes[name]:
            rest = f"; no clear difference by {_join(none)}" if none else ""
            return f"{name} is flatter by {_join(votes[name])}{rest}.{tail}"
    return f"No clear difference between {name_a} and {name_b} by any flatness measure.{tail}"


def scale_caveat(measures: Sequence[Measure], verdicts: Mapping[str, str], short: bool = False) -> str | None:
    """A sentence when scale-dependent flatness measures favour a group and no scale-invariant one does.

    None when there is no scale-invariant measure with a verdict, or when one of them agrees.
    ``short``: without the lists of measures (the headline it follows has named them).
    """
    flat = [m for m in measures if m.kind == "flatness" and _compared(verdicts.get(m.key))]
    invariant = [m for m in flat if m.scale_invariant]
    if not invariant:
        return None
    sentences = []
    for name in dict.fromkeys(v.removeprefix("flatter: ") for v in verdicts.values() if v.startswith("flatter: ")):
        dependent = [m.label for m in flat if not m.scale_invariant and verdicts[m.key] == f"flatter: {name}"]
        if not dependent or any(verdicts[m.key] == f"flatter: {name}" for m in invariant):
            continue
        against = [m.label for m in invariant if verdicts[m.key].startswith("flatter: ")]
        see = "see no clear difference" if not against else "do not agree"
        if against and len(against) == len(invariant):
            see = "favour the other group"
        if short:
            sentences.append(
                f"Caution: only scale-dependent measures favour {name}; the scale-invariant ones {see}, so part "
                "of the gap may be parametrisation scale rather than flatness (Kwon et al. 2021)."
            )
            continue
        sentences.append(
            f"Caution: only scale-dependent measures ({_join(dependent)}) say {name} is flatter; the "
            f"scale-invariant ones ({_join([m.label for m in invariant])}) {see}, so part of the gap may be "
            "parametrisation scale rather than flatness (Kwon et al. 2021)."
        )
    return " ".join(sentences) or None


def _join(items: Sequence[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
