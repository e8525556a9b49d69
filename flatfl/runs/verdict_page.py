"""The verdict in words and as a table: the answer sentences, the verdict table (HTML and text), verdict.csv rows.

Moved out of :mod:`flatfl.runs.report_page` (which re-exports these names); takes the verdict records that
:func:`flatfl.runs.verdicts.verdict_for` computes and formats them -- nothing here computes a statistic.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from flatfl.analysis.verdict import VERDICT_RULE
from flatfl.runs.scale_page import context_text


def fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def text_html(text: str) -> str:
    """``text`` escaped for the page, each command-line flag (``--mut-acc-rate``) and each number in scientific
    notation (``±2e-05/ckpt``) kept on one line: a browser may break a line after a hyphen, which splits
    '--slice-radius' into '--slice-' and 'radius' and '2e-05' into '2e-' and '05'."""
    return re.sub(r"--[a-z][a-z0-9-]*|±?\d+(?:\.\d+)?e[-+]\d+(?:/ckpt)?",
                  lambda m: f"<span style='white-space:nowrap'>{m.group(0)}</span>", html.escape(text))  # fmt: skip


def _clip(v: float, bounds: Sequence[float | None]) -> float:
    lo, hi = bounds
    v = v if lo is None else max(v, lo)
    return v if hi is None else min(v, hi)


PER_SEED_MAX = 5  # up to this many seeds a cell lists each seed's value instead of the 95% interval


def summary_text(
    s: Mapping[str, Any] | None,
    censored: int = 0,
    bounds: Sequence[float | None] = (None, None),
    radius: float | None = None,
) -> str:
    """'mean [lo, hi]' or 'value (1 seed)'; the interval clipped to what the quantity can be (``bounds``:
    accuracy in [0, 1], losses and widths >= 0). With 2 to :data:`PER_SEED_MAX` seeds whose values are known,
    'mean (per seed: a, b, c)' instead: a t-interval over so few seeds is wide and, clipped, reads like a
    bound ('[0, 0.966]' for a loss), where the values themselves say more (the interval stays in verdict.csv
    and report.json). ``censored`` 1D widths (never reached within ±``radius``) are left out of the mean and
    named instead."""
    return "".join(summary_parts(s, censored, bounds, radius))


def summary_parts(
    s: Mapping[str, Any] | None,
    censored: int = 0,
    bounds: Sequence[float | None] = (None, None),
    radius: float | None = None,
) -> tuple[str, str, str, str]:
    """:func:`summary_text` in its four parts (value, ' (per seed: ...)' or ' [lo, hi]', ' ±e/ckpt', the
    censored note), so that the page can set the value apart from its details."""
    cut = f"not reached within ±{fmt(radius)} (raise --slice-radius)"
    if s is None:
        return (cut if censored else "–", "", "", "")
    note = f" + {censored} {cut}" if censored else ""
    if s["lo"] is None:
        return (fmt(s["mean"]), " (1 seed)", error_text(s), note)
    values = s.get("values") or ()
    if 1 < len(values) == s["n"] <= PER_SEED_MAX:
        return (fmt(s["mean"]), f" (per seed: {', '.join(fmt(v) for v in values)})", error_text(s), note)
    return (fmt(s["mean"]), f" {interval_text(s, bounds)}", error_text(s), note)


def interval_text(s: Mapping[str, Any], bounds: Sequence[float | None] = (None, None)) -> str:
    """'[lo, hi]': the 95% interval over seeds, clipped to ``bounds``."""
    return f"[{fmt(_clip(s['lo'], bounds), 3)}, {fmt(_clip(s['hi'], bounds), 3)}]"


def error_text(s: Mapping[str, Any] | None) -> str:
    """' ±e/ckpt': the root mean square over seeds of each checkpoint's own estimation error (standard error,
    Lanczos residual, spread over the random directions), '' when the measure carries none."""
    if not s or s.get("error") is None:
        return ""
    return f" ±{fmt(s['error'], 2)}/ckpt"


def resolution_text(comp: Mapping[str, Any]) -> str:
    """What the comparison resolves at its n, and for an inconclusive verdict what would decide it (nothing for a
    comparison not made: more seeds would not decide it; verdict.csv keeps the numbers)."""
    res = comp.get("resolution")
    if not res or str(comp.get("verdict", "")).startswith("not compared"):
        return ""
    if res.get("text"):
        return res["text"]
    p = comp.get("paired") or {}
    amount = f"×{res['resolves']:.3g}" if p.get("log") else f"±{res['resolves']:.3g}"
    return f"resolves {amount} at n = {p.get('n')}"


def _row_parts(r: Mapping[str, Any], lab: str) -> tuple[str, str, str, str]:
    """A verdict row's summary for group ``lab`` in :func:`summary_parts`' four parts."""
    return summary_parts(
        r["groups"].get(lab), r["censored"].get(lab, 0), r.get("bounds") or (None, None), r.get("censor_radius")
    )


def _row_summary(r: Mapping[str, Any], lab: str) -> str:
    """A verdict row's summary cell for group ``lab`` (the text page)."""
    return "".join(_row_parts(r, lab))


def paired_text(p: Mapping[str, Any] | None, a: str = "A", b: str = "B") -> str:
    """The paired comparison in words: a ratio A/B for scale measures, else a difference A − B."""
    if p is None:
        return ""
    seeds = f"{p['n']} seed{'s' if p['n'] > 1 else ''}"
    if p["lo"] is not None and p["lo"] == p["hi"] == p["mean"] == 0.0:
        return f"identical on {seeds}"
    if p.get("log"):
        e = lambda v: f"{math.exp(v):.3g}"  # noqa: E731
        core = f"{a}/{b} ×{e(p['mean'])}" + ("" if p["lo"] is None else f" [{e(p['lo'])}, {e(p['hi'])}]")
    else:
        core = f"{a}−{b} {fmt(p['mean'], 3)}" + ("" if p["lo"] is None else f" [{fmt(p['lo'], 3)}, {fmt(p['hi'], 3)}]")
    if p["lo"] is None:
        return f"{core}, 1 seed"
    return f"{core}, {p['agree']}/{p['n']} seeds point the same way"


def _summary_cell(r: Mapping[str, Any], lab: str, title: str) -> str:
    """A group's cell: its summary, the 95% interval as the cell's tooltip where the cell lists the seeds."""
    s = r["groups"].get(lab)
    tip = ""
    if s and s.get("lo") is not None:
        tip = f" title='95% t-interval over seeds {html.escape(interval_text(s, r.get('bounds') or (None, None)))}'"
    value, *rest = _row_parts(r, lab)
    details = "<br>".join(text_html(p.strip()) for p in rest if p.strip())
    body = text_html(value) + (f"<br><small>{details}</small>" if details else "")
    return f"<td data-label='{html.escape(f'{lab}, {title}')}'{tip}>{body}</td>"


def verdict_table_html(
    verdict: Sequence[Mapping[str, Any]],
    labels: Sequence[str],
    anchors: Mapping[str, str] | None = None,
) -> str:
    """Measures as rows; per condition a column per group (mean [95% CI], or the seeds' values) and a verdict
    per comparison. ``anchors``: in-page ids to link -- a measure key to its definition, a condition name
    ('loss', 'acc') to the section stating its matching rule, 'verdict' to the verdict rule."""
    anchors = anchors or {}
    ref = verdict[0]["reference"]
    others = [lab for lab in labels if lab != ref]

    def link(key: str, text: str) -> str:
        return f"<a href='#{html.escape(anchors[key])}'>{text}</a>" if key in anchors else text

    head1 = "<tr class='head'><th rowspan='2'>measure</th>" + "".join(
        f"<th colspan='{len(labels) + len(others)}'>{html.escape(c['title'])}"
        + (f" <small>({link(c['condition'], 'rule')})</small>" if c.get("condition") in anchors else "")
        + "</th>"
        for c in verdict
    )
    head2 = "<tr class='head'>" + "".join(
        "".join(f"<th>{html.escape(lab)}</th>" for lab in labels)
        + "".join(
            f"<th>{link('verdict', 'verdict')}{'' if len(others) == 1 else ': ' + html.escape(o)}</th>" for o in others
        )  # fmt: skip
        for _ in verdict
    )
    body = []
    for i, row in enumerate(verdict[0]["rows"]):
        arrow = "↓" if row["lower_is_better"] else "↑"
        name = link(f"m-{row['measure']}", html.escape(row["label"]))
        cells = [f"<td class='m' style='text-align:left'>{name} {arrow}</td>"]
        for c in verdict:
            r = c["rows"][i]
            title = c["title"]
            cells += [_summary_cell(r, lab, title) for lab in labels]
            for o in others:
                comp = r["comparisons"][o]
                cls = "none" if comp["winner"] is None else ("win-a" if comp["winner"] == ref else "win-b")
                tag = html.escape(f"verdict{'' if len(others) == 1 else ' ' + o}, {title}")
                res = resolution_text(comp).removeprefix("inconclusive ")  # the verdict above says it
                detail = "; ".join(t for t in (paired_text(comp["paired"], ref, o), res) if t)
                cells.append(
                    f"<td class='v {cls}' data-label='{tag}'>{text_html(comp['verdict'])}<br><small>"
                    f"{text_html(detail)}</small></td>"
                )
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        "<div style='overflow-x:auto'><table class='verdict'>"
        + head1
        + "</tr>"
        + head2
        + "</tr>"
        + "".join(body)
        + "</table></div>"
    )


def differs_lines(verdict: Sequence[Mapping[str, Any]], labels: Sequence[str] | None = None) -> list[str]:
    """Per comparison, once (in the order of ``labels``): every setting besides the seed in which the two
    groups differ (``differs_by_text``, :func:`flatfl.runs.groups.differences_text`)."""
    if not verdict:
        return []
    comps = verdict[0]["comparisons"]
    order = [lab for lab in labels if lab in comps] if labels is not None else list(comps)
    return [comps[o]["differs_by_text"] for o in order if comps[o].get("differs_by_text")]


def answer_html(verdict: Sequence[Mapping[str, Any]], table: str = "") -> str:
    """The answer in sentences: per condition and comparison the bottom line, then what each comparison's
    groups differ in, then ``table`` (the verdict table: the answer first, then the table), then the details
    (a disagreement, the caution, what would decide an inconclusive measure)."""
    parts = []
    for c in verdict:
        for other, comp in c["comparisons"].items():
            who = f"{html.escape(c['reference'])} vs {html.escape(other)}"
            parts.append(
                f"<p class='answer'><b>At {html.escape(c['title'])}</b> ({who}): {text_html(comp['headline'])}</p>"
            )
            if comp.get("caution"):  # a verdict that stands, with what may undermine it
                parts.append(f"<p class='differs caution'>{text_html(comp['caution'])}</p>")
    parts += [f"<p class='differs'>{text_html(t)}</p>" for t in differs_lines(verdict)]
    if table:
        parts.append(table)
    for c in verdict:
        for other, comp in c["comparisons"].items():
            details = answer_details(comp)
            if not details:
                continue
            who = f"{html.escape(c['reference'])} vs {html.escape(other)}, {html.escape(c['title'])}"
            items = "".join(
                f"<li{' class=disagree' if d == comp.get('disagreement') else ''}>{text_html(d)}</li>" for d in details
            )
            parts.append(f"<p><small>{who}:</small></p><ul>{items}</ul>")
    return "\n".join(parts)


def answer_details(comp: Mapping[str, Any]) -> list[str]:
    """The sentences under a bottom line: a disagreement, the caution and what would decide each inconclusive
    measure."""
    out = [comp[k] for k in ("disagreement", "scale_caveat") if comp.get(k)]
    out += [f"{label}: {text}" for label, text in (comp.get("inconclusive") or {}).items()]
    return out


def verdict_text(verdict: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> str:
    """The verdict table as plain text (printed at the end of ``flatfl report``)."""
    ref = verdict[0]["reference"]
    others = [lab for lab in labels if lab != ref]
    lines = ["The answer:"]
    for c in verdict:
        for other in others:  # in the groups' order (report.json's dicts have sorted keys)
            comp = c["comparisons"][other]
            lines.append(f"  At {c['title']} ({ref} vs {other}): {comp['headline']}")
            if comp.get("caution"):
                lines.append(f"    {comp['caution']}")
    lines += [f"  {t}" for t in differs_lines(verdict, labels)]
    lines.append(f"Rule: {VERDICT_RULE}.")
    for c in verdict:
        lines.append(f"\n{c['title']}")
        for other in others:
            lines += [f"  {ref} vs {other}: {d}" for d in answer_details(c["comparisons"][other])]
        cols = ["measure", *labels, *[f"verdict ({o})" if len(others) > 1 else "verdict" for o in others]]
        table = []
        for r in c["rows"]:
            cells = [r["label"]]
            cells += [_row_summary(r, lab) for lab in labels]
            cells += [_verdict_cell(r["comparisons"][o]) for o in others]
            table.append(cells)
        widths = [max(len(str(x)) for x in col) for col in zip(cols, *table)]
        lines.append("  " + "  ".join(str(h).ljust(w) for h, w in zip(cols, widths)))
        lines += ["  " + "  ".join(str(x).ljust(w) for x, w in zip(row, widths)) for row in table]
        lines += context_text(c, labels)  # weight norms (flatfl.runs.scale): context, not verdicts
    return "\n".join(lines)


def _verdict_cell(comp: Mapping[str, Any]) -> str:
    """The printed verdict with what the comparison resolves (an inconclusive one: what would decide it)."""
    res = resolution_text(comp)
    if res.startswith(comp["verdict"]):
        return res
    return comp["verdict"] + (f" ({res})" if res else "")


def verdict_csv_rows(verdict: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """verdict.csv: one row per condition, measure and comparison."""
    out = []
    for c in verdict:
        for r in c["rows"]:
            for other, comp in r["comparisons"].items():
                a, b, p = r["groups"].get(c["reference"]), r["groups"].get(other), comp["paired"] or {}
                res = comp.get("resolution") or {}
                out.append(
                    {
                        "condition": c["condition"],
                        "condition_title": c["title"],
                        "measure": r["measure"],
                        "group_a": c["reference"],
                        "a_mean": a and a["mean"],
                        "a_lo": a and a["lo"],
                        "a_hi": a and a["hi"],
                        "a_seeds": a and a["n"],
                        "a_error": a and a.get("error"),
                        "group_b": other,
                        "b_mean": b and b["mean"],
                        "b_lo": b and b["lo"],
                        "b_hi": b and b["hi"],
                        "b_seeds": b and b["n"],
                        "b_error": b and b.get("error"),
                        "diff_mean": p.get("mean"),
                        "diff_lo": p.get("lo"),
                        "diff_hi": p.get("hi"),
                        "seeds_agree": p.get("agree"),
                        "paired_seeds": p.get("n"),
                        "diff_sd": p.get("sd"),
                        "diff_noise": p.get("noise"),
                        "margin": res.get("margin"),
                        "resolves": res.get("resolves"),
                        "seeds_needed": res.get("seeds"),
                        "budget_needed": res.get("budget"),
                        "verdict": comp["verdict"],
                    }
                )
    return out
