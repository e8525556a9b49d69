"""``flatfl report``'s verdict: per condition and measure, each group's summary over seeds and the paired
comparison of every other group with the reference group (:mod:`flatfl.analysis.verdict`), with the headline,
the disagreement and scale cautions, the settings the groups differ in, and why a comparison gets no verdict."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from flatfl.analysis.verdict import (
    CENSORED,
    NOT_MEASURED,
    ONE_SEED,
    Measure,
    Paired,
    disagreement,
    headline,
    paired,
    resolution,
    scale_caveat,
    summarize,
    verdict,
    winner,
)
from flatfl.runs.conditions import Condition
from flatfl.runs.groups import (
    Group,
    confound_sentence,
    differences,
    differences_text,
    reference_group,
)
from flatfl.runs.scale import norm_ratio, per_seed_norms


def not_compared(c: Condition, rows: list[dict[str, Any]], comp: dict[str, dict[str, Any]]) -> None:
    """Matched convergence that means what it says: a comparison whose level is refused, or whose matched rounds
    are far apart or early at a level the user did not give, gets "not compared: <reason>" instead of a verdict
    and its headline says why; warnings at a given level are added to the headline in words."""
    for other, words in comp.items():
        why = c.no_verdict(other)
        if why is None:
            if c.warnings.get(other):
                words["headline"] += " Caution: " + "; ".join(c.warnings[other]) + "."
            words["caution"] = ("Caution: " + "; ".join(c.cautions[other]) + ".") if c.cautions.get(other) else None
            continue
        for r in rows:
            r["comparisons"][other].update(verdict=f"not compared: {why[0]}", winner=None)
        # more seeds would not decide a comparison that is not made: no "about k seeds would decide it"
        words.update(headline=f"Not compared at this level: {why[1]}.", disagreement=None, scale_caveat=None,
                     caution=None, inconclusive={})  # fmt: skip


def _summary_json(values: list[float | None], errors: dict[int, float | None] | None = None) -> dict[str, Any] | None:
    """The group's summary; with ``errors`` (seed -> the checkpoint's own estimation error) also ``errors`` and
    ``error``, their root mean square (the typical per-checkpoint error, shown beside the mean)."""
    s = summarize([v for v in values if v is not None])
    if s is None:
        return None
    out = asdict(s)
    if errors:
        errs = [float(e) for e in errors.values() if e is not None]
        out["errors"] = {str(k): v for k, v in errors.items()}
        out["error"] = float(np.sqrt(np.mean(np.square(errs)))) if errs else None
    return out


def _paired_json(p: Paired | None) -> dict[str, Any] | None:
    return None if p is None else asdict(p)


def _paired_of(d: dict[str, Any] | None) -> Paired | None:
    return None if d is None else Paired(**{**d, "seeds": tuple(d["seeds"])})


def why_not_compared(ref: Group, g: Group, c: Condition, short: bool = False) -> str | None:
    """Why no seed of ``g`` pairs with one of ``ref`` under condition ``c`` (None when some seed does).

    Only diverged runs in a group, no seed in common, or the condition's level (matched loss or
    accuracy) never reached by one side of every shared seed.
    """
    for x in (ref, g):
        if not x.seeds:
            return "only diverged runs" if short else f"every {x.label} run diverged ({_seeds(x.diverged)})"
    shared = sorted(set(ref.seeds) & set(g.seeds))
    if not shared:
        if short:
            return "no shared seed"
        return f"{ref.label} ({_seeds(ref.seeds)}) and {g.label} ({_seeds(g.seeds)}) share no seed to pair"
    if any(all(c.rounds[x.label][s].round is not None for x in (ref, g)) for s in shared):
        return None
    if short:
        return f"{'accuracy' if c.name == 'acc' else 'loss'} level not reached"
    return unplaced(ref, g, c)


def unplaced(ref: Group, g: Group, c: Condition) -> str:
    """The runs of the seeds ``ref`` and ``g`` share that condition ``c`` places at no round (a matched level never
    reached), in words -- e.g. 'fedmut seed 1 never reaches accuracy 0.2'; '' when every one is placed."""
    shared = sorted(set(ref.seeds) & set(g.seeds))
    by_note: dict[str, dict[str, list[int]]] = {}  # note -> group -> seeds that never get there
    for x in (ref, g):
        for s in shared:
            m = c.rounds[x.label][s]
            if m.round is None:
                by_note.setdefault(m.note or "is not measured here", {}).setdefault(x.label, []).append(s)
    parts = []
    for note, who in by_note.items():
        runs = sum(len(v) for v in who.values())
        verb = note.replace("never reaches", "never reach", 1) if runs > 1 else note
        parts.append(" and ".join(f"{lab} {_seeds(seeds)}" for lab, seeds in who.items()) + f" {verb}")
    return "; ".join(parts)


def _seeds(seeds: Sequence[int]) -> str:
    """'seed 2' or 'seeds 0, 1'."""
    return f"seed{'s' if len(seeds) > 1 else ''} " + ", ".join(map(str, seeds))


def _measure_row(m: Measure, c: Condition, groups: Sequence[Group], ref: Group, radius: float) -> dict[str, Any]:
    """One verdict row: each group's summary and the paired comparison of every other group with ``ref``.

    A 1D width whose curve never reaches its threshold within ±``radius`` is censored (only a lower
    bound, 2·radius): it is left out of the group's mean and interval, and a comparison whose seeds
    hold one gets no verdict ("raise --slice-radius") instead of one computed from bounds.
    """
    cens = {g.label: {s: bool(r.get(m.key + "_censored")) for s, r in c.values[g.label].items()} for g in groups}
    per = {g.label: {s: r.get(m.key) for s, r in c.values[g.label].items()} for g in groups}
    err = {g.label: {s: r.get(m.error) for s, r in c.values[g.label].items()} for g in groups} if m.error else {}
    row: dict[str, Any] = {
        "measure": m.key,
        "label": m.label,
        "kind": m.kind,
        "lower_is_better": m.lower_is_better,
        "bounds": list(m.bounds),
        "invariant_to": sorted(m.invariant_to),
        "error_kind": m.error and ("residual" if m.error.endswith("_residual") else "stderr"),
        "budget": list(m.budget) if m.budget else None,
        "groups": {
            lab: _summary_json([x for s, x in v.items() if not cens[lab][s]], err.get(lab, {}))
            for lab, v in per.items()
        },
        "censored": {lab: sum(v.values()) for lab, v in cens.items()},
        "censor_radius": radius if any(any(v.values()) for v in cens.values()) else None,
        "comparisons": {},
    }
    for g in groups:
        if g is ref:
            continue
        p = paired(per[ref.label], per[g.label], ratio=m.ratio, errors_a=err.get(ref.label),
                   errors_b=err.get(g.label))  # fmt: skip
        n_cens = 0 if p is None else sum(cens[lab][s] for s in p.seeds for lab in (ref.label, g.label))
        if n_cens:
            text = f"{CENSORED}: {n_cens} of {2 * p.n} widths not reached within ±{radius:g} (raise --slice-radius)"
            p = None
        else:
            text = verdict(m, p, ref.label, g.label, why_not_compared(ref, g, c, short=True))
            if text == NOT_MEASURED and (why := _not_measured_why(c, m.key, (ref.label, g.label))):
                text = f"{NOT_MEASURED}: {why}"
        res = resolution(m, p)
        row["comparisons"][g.label] = {
            "against": ref.label,
            "paired": _paired_json(p),
            "verdict": text,
            "winner": winner(m, p, ref.label, g.label),
            "resolution": None if res is None else asdict(res),
        }
    return row


def _not_measured_why(c: Condition, key: str, labels: Sequence[str], limit: int = 200) -> str:
    """The reason the measure's spec recorded for leaving ``key`` empty (``KEY_not_measured``) in the runs of
    ``labels`` at condition ``c``, cut to ``limit`` characters ("" when none recorded one)."""
    reasons = sorted({str(r[key + "_not_measured"]) for lab in labels for r in c.values.get(lab, {}).values()
                      if r.get(key + "_not_measured")})  # fmt: skip
    if not reasons:
        return ""
    text = reasons[0] if len(reasons) == 1 else f"{reasons[0]} (and {len(reasons) - 1} other reason(s))"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def verdicts(
    groups: Sequence[Group], conds: Sequence[Condition], ms: list[Measure], radius: float = 1.0
) -> list[dict[str, Any]]:
    """Per condition: per measure each group's summary and the paired comparison with the reference group
    (``radius``: the 1D slices' --slice-radius, named where a width is not reached within it)."""
    ref = reference_group(groups)
    others = [g for g in groups if g is not ref]
    out = []
    for c in conds:
        rows = [_measure_row(m, c, groups, ref, radius) for m in ms]
        comp = {}
        for g in others:
            vs = {r["measure"]: r["comparisons"][g.label]["verdict"] for r in rows}
            pairs = {r["measure"]: _paired_of(r["comparisons"][g.label]["paired"]) for r in rows}
            head = headline(ms, vs, ref.label, g.label, why_not_compared(ref, g, c), pairs)
            left = unplaced(ref, g, c)
            flat = [m.key for m in ms if m.kind == "flatness" and m.key in vs]
            if left and flat and all(vs[k] == ONE_SEED for k in flat):  # not "one seed per group": one *pair*
                head = f"One seed pair at this level ({left}): no interval, so no verdict."
            entry: dict[str, Any] = {
                "headline": head,
                "disagreement": disagreement(ms, vs),
                "measures_compared": sum(1 for m in ms if m.kind == "flatness" and pairs.get(m.key) is not None),
                "inconclusive": {
                    r["label"]: r["comparisons"][g.label]["resolution"]["text"]
                    for r in rows
                    if (r["comparisons"][g.label]["resolution"] or {}).get("text")
                },
            }
            # the caution quotes the global models' norm ratio (other / reference, as scale_context records it)
            entry["norm_ratio"] = norm_ratio(per_seed_norms(c.values, ref.label), per_seed_norms(c.values, g.label))
            entry["scale_caveat"] = scale_caveat(ms, vs, entry["norm_ratio"], (g.label, ref.label))
            comp[g.label] = entry
            add_differences(comp[g.label], ref, g)
        not_compared(c, rows, comp)
        out.append(
            {
                "condition": c.name,
                "title": c.title,
                "level": c.level,
                "reference": ref.label,
                "rounds": {lab: {str(s): asdict(m) for s, m in per_seed.items()} for lab, per_seed in c.rounds.items()},
                "rows": rows,
                "comparisons": comp,
                "matching": c.matching_json(),
            }
        )
    return out


def add_differences(comp: dict[str, Any], ref: Group, g: Group) -> None:
    """What else than the seed tells ``g`` from ``ref`` (:func:`~flatfl.runs.groups.differences`), into a
    comparison's record: ``differs_by`` (a list of {key, value, reference, side, text, algorithm}),
    ``differs_by_text`` (all of them in one line) and ``confounds`` (the sentence naming the settings beyond
    the algorithm, '' if none), which is appended to ``headline`` so the answer never hides a confound."""
    diffs = differences(ref, g)
    comp["differs_by"] = [d.as_json() for d in diffs]
    comp["differs_by_text"] = differences_text(ref, g, diffs)
    comp["confounds"] = confound_sentence(ref, g, diffs)
    if comp["confounds"]:
        comp["headline"] = f"{comp['headline']} {comp['confounds']}"
