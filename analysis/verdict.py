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
  the plain difference is used and the result says so). Each checkpoint's own estimation error
  e (a Monte Carlo standard error, the Lanczos residual, the spread over random directions)
  enters as the per-pair noise sqrt(e_a^2 + e_b^2) (relative errors e/|v| for log-ratios);
* :func:`verdict` turns the paired interval into one of three outcomes against an equivalence
  margin (:data:`VERDICT_RULE`; two one-sided tests, Schuirmann 1987, read off the 95% interval):
  ``no clear difference`` when the whole interval lies within the margin (x1/1.25 .. x1.25 for a
  ratio; +-0.02 for accuracy, +-0.05 for loss; +-25% of the measure's mean magnitude for a
  scale measure with values <= 0), ``flatter: X`` when it excludes no difference and does not lie
  within the margin, ``inconclusive`` otherwise -- and :func:`resolution` says what would decide it
  (about N seeds, or M samples/HVPs/directions per checkpoint), from the measured variances;
* :func:`disagreement` names the flatness measures that point in opposite directions;
* :func:`headline` is the answer in one sentence; :func:`scale_caveat` the caution when every
  measure favouring a group changes under a function-preserving rescaling that other compared
  measures are invariant to (``Measure.invariant_to``: from :mod:`analysis.invariance`, Dinh et al.
  2017; Kwon et al. 2021).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

LEVEL = 0.95
EQUIVALENCE_RATIO = 1.25  # a ratio inside x1/1.25 .. x1.25 is "no clear difference"
RELATIVE_MARGIN = EQUIVALENCE_RATIO - 1.0  # a scale measure compared as a difference: 25% of its mean magnitude
ACCURACY_MARGIN = 0.02  # test accuracy: 2 percentage points
LOSS_MARGIN = 0.05  # train loss (nats)
MAX_SEEDS = 200  # beyond this the seed estimate says "more than"

# the verdict's rule in words, the same in `flatfl report --help`, on the report page and in docs/landscapes.md
VERDICT_RULE = (
    "each measure is compared seed by seed (the 95% Student t interval of the mean log ratio for curvature, sharpness "
    f"and widths; of the mean difference for accuracy and loss). No clear difference: the whole interval lies "
    f"within the equivalence margin (ratio ×1/{EQUIVALENCE_RATIO:g} to ×{EQUIVALENCE_RATIO:g}; accuracy "
    f"±{ACCURACY_MARGIN:g}; train loss ±{LOSS_MARGIN:g}; a sharpness that can be ≤ 0 is compared as a "
    f"difference, margin ±{RELATIVE_MARGIN:.0%} of its mean magnitude). Flatter (better): the interval excludes "
    "no difference and is not within the margin. Inconclusive: the interval holds no difference but is wider "
    "than the margin -- the seeds or the noise of each checkpoint's estimate could not resolve the margin; the "
    "answer then estimates how many seeds, or how many samples, HVPs or directions per checkpoint, would. "
    "Resolves: the interval's half width (as a ratio for scale measures), the smallest difference this n can tell apart"
)


@dataclass(frozen=True)
class Measure:
    """A row of the verdict table: how to read it and which direction is better.

    ``lower_is_better``: True for curvature/sharpness (lower = flatter), False for widths
    (wider = flatter). ``kind``: "flatness" rows vote on flatness; "performance" rows
    (accuracy, train loss) say which group is further in training, not which is flatter.
    ``invariant_to``: the function-preserving reparametrisations the measure is unchanged by
    (keys of :data:`analysis.invariance.REPARAMETRISATIONS`). ``margin``: the equivalence margin
    of a difference (accuracy, loss); ratio rows use :data:`EQUIVALENCE_RATIO`. ``error``: the
    per-checkpoint column holding the value's own estimation error (e.g. ``trace_stderr``);
    ``budget``: (count, unit) of the per-checkpoint budget that error shrinks with as
    1/sqrt(count), e.g. (30, "HVPs"), for the "what would decide it" estimate.
    """

    key: str
    label: str
    lower_is_better: bool = True
    kind: str = "flatness"
    ratio: bool = True  # compare as log-ratios when every value is positive (scale quantities)
    invariant_to: frozenset[str] = frozenset()
    bounds: tuple[float | None, float | None] = (None, None)  # what the quantity can be (displayed intervals clip)
    margin: float | None = None
    error: str | None = None
    budget: tuple[int, str] | None = None


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
    ``sd``: the differences' standard deviation (None with one seed); ``noise``: the root mean square
    of the per-pair estimation errors on the same scale (None when the values carry none);
    ``scale``: the mean magnitude (|a_s| + |b_s|) / 2 over the seeds (the relative margin's base).
    """

    n: int
    mean: float
    lo: float | None
    hi: float | None
    agree: int  # seeds whose difference has the sign of the mean difference
    seeds: tuple[int, ...]
    log: bool = False
    sd: float | None = None
    noise: float | None = None
    scale: float = 0.0


def _t(n: int, level: float = LEVEL) -> float:
    """The two-sided Student-t quantile t_{(1+level)/2, n-1} of an interval from n values."""
    from scipy import stats

    return float(stats.t.ppf(0.5 + level / 2, n - 1))


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float | None, float | None]:
    """(mean, lo, hi) of a Student-t interval for the mean; lo = hi = None for n < 2."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = math.fsum(values) / n
    if n < 2:
        return mean, None, None
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    half = _t(n, level) * math.sqrt(var / n)
    return mean, mean - half, mean + half


def summarize(values: Sequence[float]) -> Summary | None:
    """Mean and 95% interval of the finite values, or None if there are none."""
    vals = tuple(float(v) for v in values if v is not None and math.isfinite(v))
    if not vals:
        return None
    mean, lo, hi = t_interval(vals)
    return Summary(len(vals), mean, lo, hi, vals)


def _finite(v: float | None) -> bool:
    return v is not None and math.isfinite(v)


def paired(
    a: Mapping[int, float | None],
    b: Mapping[int, float | None],
    *,
    ratio: bool = False,
    errors_a: Mapping[int, float | None] | None = None,
    errors_b: Mapping[int, float | None] | None = None,
) -> Paired | None:
    """Paired comparison of two groups' per-seed values; None when no seed has both.

    ``ratio``: compare log a_s - log b_s when every value is positive (see module doc).
    ``errors_a``/``errors_b``: each checkpoint's own estimation error (a standard error or a residual
    bound); ``Paired.noise`` is their root mean square per pair, sqrt(mean_s(e_a^2 + e_b^2)), with
    relative errors e/v for log-ratios (delta method), or None when a seed lacks one.
    """
    seeds = tuple(s for s in sorted(set(a) & set(b)) if _finite(a[s]) and _finite(b[s]))
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
    sd = None if len(diffs) < 2 else math.sqrt(math.fsum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1))
    noise = None
    if errors_a is not None and errors_b is not None:
        ea, eb = [errors_a.get(s) for s in seeds], [errors_b.get(s) for s in seeds]
        if all(_finite(e) for e in ea + eb):
            if log:
                ea = [e / float(a[s]) for e, s in zip(ea, seeds)]
                eb = [e / float(b[s]) for e, s in zip(eb, seeds)]
            noise = math.sqrt(math.fsum(x * x + y * y for x, y in zip(ea, eb)) / len(seeds))
    scale = math.fsum((abs(float(a[s])) + abs(float(b[s]))) / 2 for s in seeds) / len(seeds)
    return Paired(len(seeds), mean, lo, hi, agree, seeds, log, sd, noise, scale)


NO_DIFFERENCE = "no clear difference"
INCONCLUSIVE = "inconclusive"
ONE_SEED = "one seed: no interval"
NOT_MEASURED = "not measured"
NOT_COMPARED = "not compared"  # measured, but no pair of seeds to compare; followed by ": why"
CENSORED = "no verdict"  # a 1D width not reached within the slice radius; followed by ": why"


def margin(measure: Measure, p: Paired) -> float:
    """The equivalence margin on ``p``'s scale: log 1.25 for a log-ratio, ``measure.margin`` for a
    difference (accuracy, loss), else 25% of the mean magnitude (a scale measure with values <= 0)."""
    if p.log:
        return math.log(EQUIVALENCE_RATIO)
    if measure.margin is not None:
        return measure.margin
    return RELATIVE_MARGIN * p.scale


def _outcome(measure: Measure, p: Paired) -> str:
    """'a' / 'b' (the group with the lower value), 'none' (within the margin) or 'inconclusive'."""
    m = margin(measure, p)
    if -m < p.lo and p.hi < m or p.lo == p.hi == 0.0:  # the whole interval within the margin
        return "none"
    if p.lo > 0.0 or p.hi < 0.0:
        return "a" if p.mean < 0 else "b"
    return "inconclusive"


def winner(measure: Measure, p: Paired | None, name_a: str, name_b: str) -> str | None:
    """The group the paired interval favours (flatter or better), or None when there is no clear answer."""
    if p is None or p.lo is None or p.hi is None:
        return None
    lower = _outcome(measure, p)
    if lower not in ("a", "b"):
        return None
    return (name_a if lower == "a" else name_b) if measure.lower_is_better else (name_b if lower == "a" else name_a)


def verdict(measure: Measure, p: Paired | None, name_a: str, name_b: str, why: str | None = None) -> str:
    """One phrase per measure by :data:`VERDICT_RULE`: ``flatter: X`` (``better: X`` for performance rows),
    ``no clear difference`` or ``inconclusive``. Without a pair of seeds: ``not compared: why`` when the
    caller knows why (``why``), else ``not measured``; one paired seed: ``one seed: no interval``."""
    if p is None:
        return f"{NOT_COMPARED}: {why}" if why else NOT_MEASURED
    if p.lo is None or p.hi is None:
        return ONE_SEED
    w = winner(measure, p, name_a, name_b)
    if w is not None:
        return f"{'flatter' if measure.kind == 'flatness' else 'better'}: {w}"
    return NO_DIFFERENCE if _outcome(measure, p) == "none" else INCONCLUSIVE


@dataclass(frozen=True)
class Resolution:
    """What a comparison can tell apart at its n, and what would decide an inconclusive one.

    ``margin`` and ``half_width``: on the compared scale (log-ratio or difference); ``resolves``:
    the half-width as a ratio (exp) for log-ratios, else as a difference -- the smallest difference
    this n can tell from none. ``seeds``: about how many seeds would decide it if the mean stayed
    where it is (the half-width below max(|mean|, margin - |mean|), with the same per-checkpoint noise);
    ``budget``: the per-checkpoint budget (samples, HVPs, directions) that would decide it with the
    same seeds, when the measured noise allows (its error shrinking as 1/sqrt(budget)); ``noise_share``:
    the share of the differences' variance the per-checkpoint errors account for.
    """

    margin: float
    half_width: float
    resolves: float
    seeds: int | None = None
    budget: int | None = None
    noise_share: float | None = None
    text: str = ""


def resolution(measure: Measure, p: Paired | None) -> Resolution | None:
    """The smallest resolvable difference at ``p.n`` and, for an inconclusive verdict, what would decide it:
    about N seeds from the paired sd (t_{0.975,N-1} s / sqrt(N) <= h*), or a per-checkpoint budget k times
    the current one, k = s_noise^2 / (v* - s_seed^2) with v* = (h* sqrt(n) / t_{0.975,n-1})^2 and
    s_seed^2 = max(s^2 - s_noise^2, 0) (the seed-to-seed variance that more samples per checkpoint do not
    remove). None with fewer than two seeds."""
    if p is None or p.sd is None or p.lo is None:
        return None
    m, n = margin(measure, p), p.n
    h = (p.hi - p.lo) / 2
    resolves = math.exp(h) if p.log else h
    share = None
    if p.noise is not None and p.sd > 0:
        share = min(1.0, p.noise**2 / p.sd**2)
    if verdict(measure, p, "a", "b") != INCONCLUSIVE:
        return Resolution(m, h, resolves, noise_share=share)
    target = max(abs(p.mean), m - abs(p.mean))
    seeds = next((k for k in range(n + 1, MAX_SEEDS + 1) if _t(k) * p.sd / math.sqrt(k) <= target), None)
    budget = None
    if p.noise is not None and measure.budget is not None and p.noise > 0:
        v_star = (target * math.sqrt(n) / _t(n)) ** 2
        seed_var = max(p.sd**2 - p.noise**2, 0.0)
        if v_star > seed_var:
            budget = math.ceil(measure.budget[0] * p.noise**2 / (v_star - seed_var))
    need = _amount(p, math.exp(m) if p.log else m)
    text = f"{INCONCLUSIVE} at n = {n}: resolves {_amount(p, resolves)}, needs {need}"
    what = [f"about {seeds} seeds" if seeds is not None else f"more than {MAX_SEEDS} seeds"]
    if budget is not None and measure.budget is not None:
        what.append(f"{budget} {measure.budget[1]} per checkpoint (now {measure.budget[0]}) with {n} seeds")
    text += "; " + " or ".join(what) + " would decide it"
    if share is not None:
        text += f" (per-checkpoint noise: {share:.0%} of the variance)"
    return Resolution(m, h, resolves, seeds, budget, share, text)


def _amount(p: Paired, v: float) -> str:
    return f"×{v:.3g}" if p.log else f"±{v:.3g}"


def disagreement(measures: Sequence[Measure], verdicts: Mapping[str, str]) -> str | None:
    """A sentence naming the flatness measures that favour different groups, or None if they agree
    (an inconclusive or no-clear-difference measure neither agrees nor disagrees)."""
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


# short names of analysis.invariance.REPARAMETRISATIONS' keys, for sentences
REPARAMETRISATION_NAMES = {
    "layer": "layer-wise",
    "filter": "filter-wise",
    "bn_filter": "pre-BatchNorm filter",
    "penultimate_layer": "output-layer",
    "penultimate_neuron": "output-neuron",
}


def invariance_text(inv: frozenset[str]) -> str:
    """'invariant to layer-wise and pre-BatchNorm filter rescaling', or 'not invariant to any tested rescaling'."""
    if not inv:
        return "not invariant to any tested rescaling"
    names = [REPARAMETRISATION_NAMES.get(k, k) for k in REPARAMETRISATION_NAMES if k in inv]
    names += sorted(k for k in inv if k not in REPARAMETRISATION_NAMES)
    return f"invariant to {_join(names)} rescaling"


def _by_invariance(ms: Sequence[Measure]) -> str:
    """Measures named in groups of equal invariance: 'lambda_max and trace (not invariant ...), 1D width (...)'."""
    groups: dict[frozenset[str], list[str]] = {}
    for m in ms:
        groups.setdefault(m.invariant_to, []).append(m.label)
    return ", ".join(f"{_join(labels)} ({invariance_text(inv)})" for inv, labels in groups.items())


def headline(
    measures: Sequence[Measure],
    verdicts: Mapping[str, str],
    name_a: str,
    name_b: str,
    why: str | None = None,
    pairs: Mapping[str, Paired | None] | None = None,
) -> str:
    """The answer in one sentence: how many flatness measures were compared, which group they favour (on how
    many seeds, the measures grouped by what they are invariant to), which are inconclusive at this n, which
    see no clear difference, and the performance rows' verdicts.

    ``why``: the reason no seed pair could be compared (no shared seed, a matched level never reached, only
    diverged runs), said instead of a bare "no measure"; ``pairs``: each measure's :class:`Paired` (for
    "on k/n seeds" and "at n = ...").
    """
    pairs = pairs or {}
    flat = [m for m in measures if m.kind == "flatness" and _compared(verdicts.get(m.key))]
    if not flat:
        return f"No flatness comparison: {why}." if why else "No flatness measure was computed."
    if all(verdicts[m.key] == ONE_SEED for m in flat):
        return "One seed per group: no interval, so no verdict (train more seeds)."
    total = len(flat)
    votes = {x: [m for m in flat if verdicts[m.key] == f"flatter: {x}"] for x in (name_a, name_b)}
    ns = sorted({p.n for p in pairs.values() if p is not None})
    at_n = f" at n = {_join([str(n) for n in ns])}" if ns else ""
    parts = []
    winners = [x for x in (name_a, name_b) if votes[x]]
    for i, x in enumerate(winners):
        agree = [pairs[m.key].agree for m in votes[x] if pairs.get(m.key) is not None]
        n_of = [pairs[m.key].n for m in votes[x] if pairs.get(m.key) is not None]
        seeds = ""
        if agree:
            seeds = f" on {'' if min(agree) == max(n_of) else '≥'}{min(agree)}/{max(n_of)} seeds"
        lead = f"{x} by {len(votes[x])}" if i else f"{x} is flatter by {len(votes[x])} of {total} flatness measures"
        parts.append(f"{lead}{seeds}: {_by_invariance(votes[x])}")
    if len(winners) == 2:
        parts[0] = "Split answer: " + parts[0]
    none = [m.label for m in flat if verdicts[m.key] == NO_DIFFERENCE]
    unsure = [m.label for m in flat if verdicts[m.key] in (INCONCLUSIVE, ONE_SEED)]
    if not winners:
        if none and not unsure:
            parts.append(f"No clear difference between {name_a} and {name_b} by any of the {total} flatness measures")
        elif unsure and not none:
            parts.append(f"Inconclusive by all {total} flatness measures{at_n}")
        else:
            parts.append(f"No clear difference by {len(none)} of {total} flatness measures ({_join(none)})")
            none = []
    elif none:
        parts.append(f"no clear difference by {_join(none)}")
    if unsure and (winners or none):
        parts.append(f"{_join(unsure)} inconclusive{at_n}")
    censored = [m.label for m in measures if m.kind == "flatness" and verdicts.get(m.key, "").startswith(CENSORED)]
    if censored:
        parts.append(f"no verdict by {_join(censored)} (not reached within the slice radius)")
    for m in measures:
        v = verdicts.get(m.key)
        if m.kind != "flatness" and _compared(v):
            parts.append(f"{m.label} {v.replace('better: ', 'better for ')}{at_n if v == INCONCLUSIVE else ''}")
    return "; ".join(parts) + "."


def scale_caveat(
    measures: Sequence[Measure],
    verdicts: Mapping[str, str],
    norm_ratio: float | None = None,
    names: tuple[str, str] | None = None,
) -> str | None:
    """The caution, derived from the invariance table: when no measure that favours a group is invariant to a
    function-preserving rescaling that other compared measures are invariant to, the gap may partly be
    parametrisation scale rather than flatness (Dinh et al. 2017; Kwon et al. 2021). It names the measures
    grouped by what they are invariant to and what the invariant ones say (an inconclusive one neither
    confirms nor contradicts), and quotes ``norm_ratio`` (the global models' ||theta||_2 ratio,
    ``names[0]``/``names[1]``, the paired comparison's a/b) when given. None when nothing needs caution.
    """
    flat = [m for m in measures if m.kind == "flatness" and _compared(verdicts.get(m.key))]
    every = frozenset().union(*(m.invariant_to for m in flat)) if flat else frozenset()
    sentences = []
    for name in dict.fromkeys(verdicts[m.key].removeprefix("flatter: ") for m in flat):
        favour = [m for m in flat if verdicts[m.key] == f"flatter: {name}"]
        if not favour:
            continue
        covered = frozenset().union(*(m.invariant_to for m in favour))
        missing = every - covered
        if not missing:
            continue
        witnesses = [m for m in flat if m not in favour and m.invariant_to & missing]
        said = "; ".join(
            f"{_join([m.label for m in witnesses if verdicts[m.key] == v])}: {v}"
            for v in dict.fromkeys(verdicts[m.key] for m in witnesses)
        )
        decisive = [m for m in witnesses if verdicts[m.key] not in (INCONCLUSIVE, ONE_SEED)]
        rescalings = [REPARAMETRISATION_NAMES.get(k, k) for k in REPARAMETRISATION_NAMES if k in missing]
        rescalings += sorted(k for k in missing if k not in REPARAMETRISATION_NAMES)
        one = len(favour) == 1
        text = (
            f"Caution: {_by_invariance(favour)} {'says' if one else 'say'} {name} is flatter, and "
            f"{'it is not' if one else 'none of them is'} invariant to {_join(rescalings)} rescaling (which "
            f"leave{'s' if len(rescalings) == 1 else ''} the function unchanged); the measures that are ({said}) "
        )
        if decisive:
            text += "do not confirm it, so part of the gap may be parametrisation scale rather than flatness"
        else:
            text += "neither confirm nor rule out that part of the gap is parametrisation scale rather than flatness"
        if norm_ratio is not None and math.isfinite(norm_ratio):
            a, b = names or ("the reference", "the other group")
            text += f" (the global models' ‖θ‖₂ ratio {a}/{b} is ×{norm_ratio:.3g})"
        sentences.append(text + " (Dinh et al. 2017; Kwon et al. 2021).")
    return " ".join(sentences) or None


def _join(items: Sequence[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
