"""One spec per measure: what ``flatfl landscape``, ``flatfl report`` and ``--help`` need to know of it.

A :class:`MeasureSpec` names a measure, says which way is flatter and which function-preserving rescalings
it is invariant to (only those :mod:`flatfl.analysis.invariance` records as tested), declares its settings
dataclass and CLI flags, computes its record on a :class:`~flatfl.runs.problem.Problem` and turns that record
into the flat columns of report.csv / verdict.csv. :func:`register` adds one to :data:`REGISTRY`; the commands
iterate it, so a new measure is one module (plus its numerics in :mod:`flatfl.analysis` and its tests).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from flatfl.analysis.verdict import Measure
from flatfl.errors import UserError
from flatfl.runs.curvature import Bars, Log, hessian_operator, no_bars
from flatfl.runs.problem import Problem
from flatfl.runs.settings import LandscapeSettings, ReportSettings

__all__ = [
    "REGISTRY", "Context", "Flag", "Meaning", "MeasureSpec", "describe_measures", "off_flag", "register",
    "registered", "report_defaults", "unregister",
]  # fmt: skip


@dataclass(frozen=True)
class Meaning:
    """A measure's entry in the report's "What the measures mean": ``formula`` (HTML) says what is computed,
    ``flatter`` which way is flatter, ``error`` how its own estimation error is measured, ``cite`` the works it
    follows (keys of the report's bibliography, or of the spec's own ``references``)."""

    formula: str
    flatter: str = "lower"
    error: str = "none (computed exactly)"
    cite: tuple[str, ...] = ()


@dataclass(frozen=True)
class Flag:
    """One CLI flag of a measure: its name(s), argparse keyword arguments and the settings field it fills
    (None: a switch, or a flag whose meaning the spec's ``from_flags`` reads itself)."""

    names: tuple[str, ...]
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    field: str | None = None

    @property
    def dest(self) -> str:
        return self.kwargs.get("dest") or self.names[0].lstrip("-").replace("-", "_")


@dataclass
class Context:
    """What a measure's ``compute`` gets beside the problem and its settings: the landscape settings (data,
    dtype, seed, shared solver options), a log, progress bars, seeded generators and work shared between
    measures (the Hessian operator, the top eigenpairs)."""

    landscape: LandscapeSettings
    log: Log = lambda s: None  # noqa: E731
    bars: Bars = no_bars
    shared: dict[str, Any] = field(default_factory=dict)

    def generator(self, k: int) -> torch.Generator:
        """The seeded generator of stream ``k``: ``seed * 1000 + k`` (1 Lanczos, 2 trace, 3 SLQ, 4-7 sharpness,
        8+ federated, 900+ the literature's measures)."""
        return torch.Generator().manual_seed(self.landscape.seed * 1000 + k)

    def hessian_operator(self, problem: Problem) -> Any:
        """The Hessian operator of ``problem``, built once for every measure that multiplies with it."""
        if "hessian_operator" not in self.shared:
            self.shared["hessian_operator"] = hessian_operator(problem)
        return self.shared["hessian_operator"]


def _default_columns(spec: MeasureSpec) -> Callable[[dict[str, Any], Any], dict[str, Any]]:
    def columns(record: dict[str, Any], s: Any) -> dict[str, Any]:
        out = {spec.name: record.get("value")}
        if record.get("stderr") is not None:
            out[spec.name + "_stderr"] = record["stderr"]
        return out

    return columns


@dataclass(frozen=True)
class MeasureSpec:
    """A flatness measure as the commands see it.

    ``name``: its key (landscape.json, the settings' ``measures``, the default column); ``label``: how the
    report names it; ``direction``: ``"lower"`` or ``"higher"`` is flatter; ``invariances``: the tested
    function-preserving rescalings it is unchanged by (keys of
    :data:`flatfl.analysis.invariance.REPARAMETRISATIONS`); ``settings``: its frozen settings dataclass;
    ``compute(problem, settings, context) -> record``: a JSON-ready dict (``seconds`` is added when missing);
    ``flags`` in ``--help`` group ``group`` (``from_flags(ns)`` -> its settings, or None when not asked for;
    the default switches it on with the first flag or any flag naming a settings field and copies those
    fields); ``path``: where the record goes in landscape.json (default ``(name,)``); ``columns(record,
    settings)``: its report.csv / verdict columns (default: ``name`` = ``record["value"]`` and ``name_stderr``);
    ``verdict(settings, landscape)``: its verdict rows (default: one row ``name`` with ``label``, direction and
    invariances); ``collective``: computed on every torchrun rank (Hessian products reduced over the shards),
    else on rank 0 only; ``report``: ``flatfl report`` offers its flags too; ``report_default``: ``flatfl report``
    measures it unless ``--no-NAME`` (:func:`off_flag`; the default set is decided by measured cost,
    ``bench/report_cost.py --candidates``); ``describe(settings)``: a phrase
    for the report's settings line (``listed_as``: named in one phrase with its kin, e.g. ``sharpness: sam,
    adaptive_l2``); ``meaning``: its text on the report's page, a :class:`Meaning` for every verdict row or
    ``meaning(settings, report_settings)`` -> a Meaning or {row key: Meaning}; ``references``: bibliography
    entries (citation key -> the full reference) its ``cite`` keys need beyond the report's own. Built-in measures
    read their settings from :class:`LandscapeSettings`' own fields (``settings_of``); every other one from
    ``LandscapeSettings.measures``.
    """

    name: str
    label: str
    direction: str
    invariances: frozenset[str]
    settings: type
    compute: Callable[[Problem, Any, Context], dict[str, Any]]
    flags: tuple[Flag, ...] = ()
    group: str = "more measures"
    from_flags: Callable[[dict[str, Any]], Any] | None = None
    settings_of: Callable[[LandscapeSettings, ReportSettings | None], Any] | None = None
    path: tuple[str, ...] = ()
    columns: Callable[[dict[str, Any], Any], dict[str, Any]] | None = None
    verdict: Callable[[Any, LandscapeSettings], list[Measure]] | None = None
    collective: bool = False
    report: bool = True
    describe: Callable[[Any], str] | None = None
    builtin: bool = False
    listed_as: str | None = None  # the settings line names it in one phrase with the others of this name
    report_default: bool = False
    meaning: Meaning | Callable[[Any, ReportSettings], Meaning | Mapping[str, Meaning]] | None = None
    references: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.direction not in ("lower", "higher"):
            raise ValueError(f"measure {self.name}: direction must be 'lower' or 'higher', got {self.direction!r}")

    @property
    def where(self) -> tuple[str, ...]:
        return self.path or (self.name,)

    def on(self, landscape: LandscapeSettings, report: ReportSettings | None = None) -> Any:
        """This measure's settings when ``landscape`` (and ``report``) switch it on, else None."""
        if self.settings_of is not None:
            return self.settings_of(landscape, report)
        return landscape.measure_settings(self.name)

    def parse(self, ns: dict[str, Any]) -> Any:
        """Its settings from the parsed command line, or None when none of its flags asks for it."""
        if self.from_flags is not None:
            return self.from_flags(ns)
        return settings_from_flags(self, ns)

    def run(self, problem: Problem, s: Any, ctx: Context) -> dict[str, Any]:
        """``compute`` with its wall-clock seconds."""
        t = time.perf_counter()
        record = dict(self.compute(problem, s, ctx))
        record.setdefault("seconds", time.perf_counter() - t)
        return record

    def row(self, record: dict[str, Any], s: Any) -> dict[str, Any]:
        """Its report.csv / verdict columns; a record that says ``not_measured`` adds the reason as
        ``KEY_not_measured`` beside each empty value column, so the verdict can say why."""
        out = (self.columns or _default_columns(self))(record, s)
        why = record.get("not_measured")
        if why:
            out.update({f"{k}_not_measured": str(why) for k, v in list(out.items())
                        if v is None and not k.endswith(("_stderr", "_residual"))})  # fmt: skip
        return out

    def rows(self, s: Any, landscape: LandscapeSettings) -> list[Measure]:
        if self.verdict is not None:
            return self.verdict(s, landscape)
        lower = self.direction == "lower"
        return [Measure(self.name, self.label, lower_is_better=lower, invariant_to=self.invariances)]

    def meanings(self, s: Any, report: ReportSettings) -> dict[str, Meaning]:
        """Its verdict rows' page texts by row key ({} without a ``meaning``)."""
        if self.meaning is None:
            return {}
        m = self.meaning if isinstance(self.meaning, Meaning) else self.meaning(s, report)
        if isinstance(m, Meaning):
            return {row.key: m for row in self.rows(s, report.landscape)}
        return dict(m)


def settings_from_flags(spec: MeasureSpec, ns: dict[str, Any]) -> Any:
    """The keyword copy every measure shares: switched on by its first flag, or by any flag that fills a settings
    field (an option given alone implies its measure); the given fields copied, the rest at their defaults."""
    switch, *options = spec.flags or (None,)
    given = {f.field: ns[f.dest] for f in spec.flags if f.field and ns.get(f.dest) is not None}
    if not (switch is not None and ns.get(switch.dest)) and not given:
        return None
    names = {f.name for f in fields(spec.settings)}
    bad = sorted(set(given) - names)
    if bad:
        raise ValueError(f"measure {spec.name}: flags fill unknown settings fields {bad}")
    try:
        return spec.settings(**given)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{switch.names[0] if switch else spec.name}: {exc}") from None


REGISTRY: dict[str, MeasureSpec] = {}


def register(spec: MeasureSpec) -> MeasureSpec:
    """Add ``spec`` to the registry (after the measures already there); a second spec of the same name is
    refused."""
    if spec.name in REGISTRY:
        raise ValueError(f"a measure named {spec.name!r} is already registered")
    REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    REGISTRY.pop(name, None)


def reorder(names: tuple[str, ...]) -> None:
    """Put the measures ``names`` first, in that order (the rest after them, as registered)."""
    order = [n for n in names if n in REGISTRY] + [n for n in REGISTRY if n not in names]
    specs = dict(REGISTRY)
    REGISTRY.clear()
    REGISTRY.update((n, specs[n]) for n in order)


def registered() -> list[MeasureSpec]:
    return list(REGISTRY.values())


def describe_measures(landscape: LandscapeSettings, report: ReportSettings | None = None) -> list[str]:
    """The phrases of the report's settings line for the measures switched on, in registry order."""
    parts: list[str] = []
    kin: dict[str, list[str]] = {}
    for spec in registered():
        st = spec.on(landscape, report)
        if st is None:
            continue
        if spec.listed_as is not None:
            if spec.listed_as not in kin:
                kin[spec.listed_as] = []
                parts.append(spec.listed_as)
            kin[spec.listed_as].append(spec.name)
        elif spec.describe is not None:
            parts.append(spec.describe(st))
    return [f"{p}: {', '.join(kin[p])}" if p in kin else p for p in parts]


def off_flag(spec: MeasureSpec) -> str:
    """The ``flatfl report`` flag that switches off a measure of its default set: ``--no-`` and its name."""
    return "--no-" + spec.name.replace("_", "-")


def report_defaults(ns: dict[str, Any], chosen: tuple[tuple[str, Any], ...]) -> tuple[tuple[str, Any], ...]:
    """``chosen`` (the measures the command line asks for) with every ``report_default`` measure that its
    :func:`off_flag` does not switch off, at its default settings, in registry order; a measure both asked for
    and switched off is refused in one line."""
    have = dict(chosen)
    for spec in registered():
        off = bool(ns.get("no_measure_" + spec.name))
        if off and spec.name in have:
            raise UserError(f"{off_flag(spec)}: {spec.label} is switched off and asked for by its own flags at once")
        if spec.report_default and not off and spec.name not in have:
            have[spec.name] = spec.settings()
    return tuple((spec.name, have[spec.name]) for spec in registered() if spec.name in have)


def settings_record(specs_on: list[tuple[MeasureSpec, Any]]) -> dict[str, Any]:
    """The settings of the measures ``specs_on``, as JSON-ready dicts by name."""
    return {spec.name: asdict(st) for spec, st in specs_on}
