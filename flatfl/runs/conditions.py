"""Where each run of ``flatfl report`` is measured: at equal rounds, at equal training loss (:mod:`flatfl.runs.
matching`) and, when asked, at equal test accuracy -- one :class:`Condition` each."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from flatfl.analysis import distributed
from flatfl.runs.checkpoints import (
    AnalysisData,
    _slug,
)
from flatfl.runs.groups import (
    Group,
    reference_group,
)
from flatfl.runs.matching import (
    MIN_DROP,
    LossCurve,
    Match,
    level_refusal,
    match_accuracy,
    match_loss,
    round_warnings,
)
from flatfl.runs.settings import ReportSettings


@dataclass
class Condition:
    """One way of choosing each run's round: equal round, equal train loss or equal accuracy."""

    name: str  # round | loss | acc
    title: str
    rounds: dict[str, dict[int, Match]]  # group label -> seed -> where it is measured
    level: float | None = None
    values: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)  # label -> seed -> row
    # matched convergence (flatfl.runs.matching): why the level gets no verdict at all, sentences per compared
    # group (matched rounds far apart or early), whether the user gave the level, the curves the rule used
    refused: str | None = None
    warnings: dict[str, list[str]] = field(default_factory=dict)  # other group label -> sentences
    user_level: bool = False
    curves: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)  # label -> seed -> Trace as a dict
    window: int | None = None  # the moving median's window (saved rounds)
    # sentences per compared group that leave the verdict standing (e.g. models not yet off their untrained loss)
    cautions: dict[str, list[str]] = field(default_factory=dict)

    def no_verdict(self, other: str) -> tuple[str, str] | None:
        """(short, long) reason why the comparison of ``other`` with the reference gets no verdict here:
        a refused level, or warned matched rounds at a level the user did not give."""
        if self.refused:
            return "level not reached by training", self.refused
        if self.warnings.get(other) and not self.user_level:
            why = "; ".join(self.warnings[other])
            return "matched rounds not comparable", f"{why} (give the level with --match-loss to compare anyway)"
        return None

    def matching_json(self) -> dict[str, Any]:
        return {
            "refused": self.refused,
            "warnings": self.warnings,
            "user_level": self.user_level,
            "window": self.window,
            "curves": {lab: {str(s): t for s, t in v.items()} for lab, v in self.curves.items()},
        }


def _name(label: str, seed: int) -> str:
    return f"{label} seed {seed}"


def equal_rounds(groups: Sequence[Group], wanted: Sequence[int] | None) -> list[int]:
    """The equal rounds to measure: ``wanted``, or the middle and the last round every run has saved."""
    runs = [g.runs[s] for g in groups for s in g.seeds]
    if not runs:
        raise ValueError("every run diverged: nothing to compare (see the list of diverged runs)")
    saved = {str(r.path): set(r.rounds()) for r in runs}
    if wanted is not None:
        missing = {p: sorted(set(wanted) - have) for p, have in saved.items() if set(wanted) - have}
        if missing:
            p, m = next(iter(missing.items()))
            raise ValueError(
                f"--at-rounds: {p} has no checkpoint for round(s) {m} (saved: {min(saved[p])}..{max(saved[p])}); "
                "choose rounds every run has saved"
            )
        return sorted(wanted)
    common = sorted(set.intersection(*saved.values()))
    if not common:
        raise ValueError("the runs share no saved round; pass --at-rounds with rounds every run has")
    last = common[-1]
    middle = max((r for r in common if r <= last // 2), default=last)
    return sorted({middle, last})


def plan_conditions(
    groups: Sequence[Group], settings: ReportSettings, rounds: list[int], out: Path, data: AnalysisData
) -> list[Condition]:
    """Equal round (the last of ``rounds``), equal train loss and, if asked, equal test accuracy."""
    last = rounds[-1]
    conds = [
        Condition(
            "round",
            f"equal round ({last})",
            {g.label: {s: Match(last, None) for s in g.seeds} for g in groups},
        )
    ]
    ls = settings.landscape
    if settings.match:
        curves = {}
        for g in groups:
            for s in g.seeds:
                run = g.runs[s]
                key = {"data": ls.data, "samples": ls.samples, "seed": ls.seed, "dtype": ls.dtype}
                curve = LossCurve(
                    run, *data(run), out / "runs" / f"{_slug(g.label)}-s{s}" / "train_loss.json", key,
                    batch_size=ls.batch_size, device=ls.device,
                )  # fmt: skip
                curves[_name(g.label, s)] = (curve, run.rounds())
        conds.append(_loss_condition(groups, curves, settings.match_loss, last))
        _caution_untrained(conds[0], conds[-1], groups, last)
    if settings.match_acc is not None:
        accs = {}
        for g in groups:
            for s in g.seeds:
                m = {int(r["round"]): r["test_acc"] for r in g.runs[s].metrics() if r.get("test_acc") is not None}
                accs[_name(g.label, s)] = (m, g.runs[s].rounds())
        found = match_accuracy(accs, settings.match_acc)
        conds.append(
            Condition(
                "acc",
                f"equal test accuracy (≥ {settings.match_acc:g})",
                {g.label: {s: found[_name(g.label, s)] for s in g.seeds} for g in groups},
                settings.match_acc,
                user_level=True,
            )
        )
        _warn_rounds(conds[-1], groups, last)
    return conds


def _loss_condition(groups: Sequence[Group], curves: dict, level: float | None, last: int) -> Condition:
    """Equal train loss: each run where its smoothed loss settles at the level (:mod:`flatfl.runs.matching`),
    the level refused when training did not reach it, warnings when the matched rounds are far apart or early."""
    given = level is not None
    lm = match_loss(curves, level, None if given else last)
    if distributed.is_main():
        for curve, _ in curves.values():
            curve.save()
    chances = {c.chance() for c, _ in curves.values()} - {None}
    c = Condition(
        "loss",
        f"equal train loss (settled ≤ {lm.level:.4g})",
        {g.label: {s: lm.found[_name(g.label, s)] for s in g.seeds} for g in groups},
        lm.level,
        refused=level_refusal(lm.level, lm.traces, min(chances) if chances else None),
        user_level=given,
        curves={g.label: {s: asdict(lm.traces[_name(g.label, s)]) for s in g.seeds} for g in groups},
        window=lm.window,
    )
    total = last if not given else max(max(rs) for _, rs in curves.values())
    _warn_rounds(c, groups, total)
    return c


def _warn_rounds(c: Condition, groups: Sequence[Group], total: int) -> None:
    """Sentences for every comparison whose matched rounds are far apart or early (``total``: rounds considered)."""
    ref = reference_group(groups)
    for g in groups:
        if g is not ref:
            rounds = {x.label: {s: m.round for s, m in c.rounds[x.label].items()} for x in (ref, g)}
            said = round_warnings(ref.label, g.label, rounds[ref.label], rounds[g.label], total)
            if said:
                c.warnings[g.label] = said


def _caution_untrained(rnd: Condition, loss: Condition, groups: Sequence[Group], last: int) -> None:
    """At the equal round ``last``: a caution for every comparison in which a run's loss on the analysis data is
    not ``MIN_DROP`` below its own untrained (round 0) loss -- the rule that refuses such a level at equal train
    loss (:func:`flatfl.runs.matching.level_refusal`). The verdict stands (on non-IID data the pooled loss can stay
    high while a model learns), but the flatness compared may be that of models near their initialisation."""
    ref = reference_group(groups)
    near: dict[str, dict[int, tuple[float, float]]] = {}  # label -> seed -> (loss at last, untrained loss)
    for g in groups:
        for s in g.seeds:
            t = loss.curves.get(g.label, {}).get(s)
            if not t or t["untrained"] is None or last not in t["rounds"]:
                continue
            now = t["loss"][t["rounds"].index(last)]
            if now > (1 - MIN_DROP) * t["untrained"]:
                near.setdefault(g.label, {})[s] = (now, t["untrained"])
    for g in groups:
        who = [(x.label, near[x.label]) for x in (ref, g) if x.label in near]
        if g is ref or not who:
            continue
        runs = " and ".join(f"{lab} seed{'s' if len(v) > 1 else ''} {', '.join(map(str, sorted(v)))}" for lab, v in who)
        nums = "; ".join(f"{lab} seed {s}: {now:.4g} vs {l0:.4g}" for lab, v in who for s, (now, l0) in v.items())
        rnd.cautions[g.label] = [
            f"at round {last}, {runs} have not lowered their loss on the analysis data {MIN_DROP:.0%} below the "
            f"untrained (round 0) loss ({nums}): the flatness compared may be that of models near their "
            "initialisation -- train longer, or compare at equal test accuracy with --match-acc"
        ]
