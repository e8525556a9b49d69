"""No fact of the former one-page README is lost: docs/readme-map.md maps each of its sections to the pages
that now hold it, and every number of the section and each key sentence named in the map must be on those
pages. The former README is read from git (the commit before the split, ``FORMER``)."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.test_layering import ROOT

FORMER = "17bd09b"  # the last commit with the 1,052-line README
MAP = ROOT / "docs" / "readme-map.md"
NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
# sections whose numbers are re-measured rather than moved: `make demo`'s printed answer is replaced in the README
# (between its answer markers) when the demo is rerun; only their key sentences are checked
REMEASURED = {"The answer on digits: is FedMut flatter?"}


def former_readme() -> str:
    proc = subprocess.run(["git", "show", f"{FORMER}:README.md"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, f"git show {FORMER}:README.md failed (needs a clone with history): {proc.stderr}"
    return proc.stdout


def sections(text: str) -> dict[str, str]:
    """Heading (## or ###, outside code fences) -> its text up to the next heading; the part before the first
    heading is "flatfl (intro)"."""
    out: dict[str, list[str]] = {"flatfl (intro)": []}
    current, fenced = "flatfl (intro)", False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        m = None if fenced else re.match(r"#{2,3} (.+)", line)
        if m:
            current = m.group(1).strip()
            out[current] = []
        else:
            out[current].append(line)
    return {k: "\n".join(v) for k, v in out.items()}


def read_map() -> list[tuple[str, list[str], list[str]]]:
    """(former section, pages, key sentences) per row of the map's table."""
    text = MAP.read_text()
    table = text.split("<!-- map:start -->")[1].split("<!-- map:end -->")[0]
    rows = []
    for line in table.strip().splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        assert len(cells) == 3, line
        rows.append((cells[0], [p.strip() for p in cells[1].split(";")], [k.strip() for k in cells[2].split(";")]))
    return rows


def page_text(name: str) -> str:
    path = ROOT / name if name == "README.md" else ROOT / "docs" / name
    assert path.is_file(), f"docs/readme-map.md names {name}, which does not exist"
    return path.read_text()


def flat(text: str) -> str:
    return " ".join(text.split())


def test_every_former_section_is_mapped():
    mapped = [row[0] for row in read_map()]
    assert sorted(mapped) == sorted(sections(former_readme())), "docs/readme-map.md must list every former section"


def test_the_check_finds_a_lost_number():
    """The check itself: a section's number missing from its pages is reported."""
    assert {"0.8186", "73.36"} - set(NUMBER.findall("FedAvg 0.8186 ± 0.0563")) == {"73.36"}


@pytest.mark.parametrize("row", read_map(), ids=lambda r: r[0])
def test_each_section_lives_on_its_pages(row):
    section, pages, keys = row
    old = sections(former_readme())[section]
    new = "\n".join(page_text(p) for p in pages)
    lost = sorted(set(NUMBER.findall(old)) - set(NUMBER.findall(new)), key=lambda s: (len(s), s))
    assert section in REMEASURED or not lost, f"{section}: numbers not on {pages}: {lost}"
    for key in keys:
        assert flat(key) in flat(old), f"{section}: key sentence not in the former section: {key!r}"
        assert flat(key) in flat(new), f"{section}: key sentence not on {pages}: {key!r}"
