"""The supported version ranges: pyproject's lower bounds are the versions `make test-lowest` installs,
and the environment running the tests satisfies the ranges (the locked .venv and .venv-lowest alike)."""

from __future__ import annotations

import re
import sys
from importlib.metadata import version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _dependencies() -> list[Requirement]:
    if sys.version_info >= (3, 11):
        import tomllib

        deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    else:  # pragma: no cover - the dependency list is simple enough to read by hand
        block = (ROOT / "pyproject.toml").read_text().split("dependencies = [", 1)[1].split("]", 1)[0]
        deps = re.findall(r'"([^"]+)"', block)
    return [Requirement(d) for d in deps]


def _pins(name: str) -> dict[str, Version]:
    pins = {}
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", line
            pins[req.name.lower()] = Version(spec.version)
    return pins


def test_every_dependency_is_a_range_with_a_lower_bound_that_is_tested():
    lowest = _pins("constraints-lowest.txt")
    for req in _dependencies():
        ops = {s.operator for s in req.specifier}
        assert ops == {">="}, f"{req}: a range with a lower bound (>=), not a pin"
        (spec,) = req.specifier
        assert lowest[req.name.lower()] == Version(spec.version), f"{req}: constraints-lowest.txt installs another"


def test_the_lock_file_lies_inside_the_ranges():
    locked = _pins("constraints.txt")
    for req in _dependencies():
        assert req.specifier.contains(locked[req.name.lower()], prereleases=True), (req, locked[req.name.lower()])


def test_this_environment_satisfies_the_ranges():
    for req in _dependencies():
        installed = Version(version(req.name))
        assert req.specifier.contains(Version(installed.base_version), prereleases=True), (req, installed)
