"""Every public function, class and method of the documented API has a docstring (the site's API reference,
docs/reference/api.md, is generated from them).

The public API: ``flatfl.analysis`` -- the names in its ``__all__``; ``flatfl.runs.run`` and every module of
``flatfl.flower`` -- the public functions and classes defined in the module itself (names imported from
elsewhere are documented where they are defined); and of each public class, the public methods and properties
it defines itself. A dataclass's generated ``Name(field, ...)`` text does not count as a docstring.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

FLOWER = "flatfl.flower"


def _modules() -> list[str]:
    names = ["flatfl.analysis", "flatfl.runs.run"]
    try:
        flower = importlib.import_module(FLOWER)
    except ImportError:  # flwr missing: flatfl.flower's modules import it
        return names
    return names + [FLOWER] + [f"{FLOWER}.{m.name}" for m in pkgutil.iter_modules(flower.__path__)]


def _has_doc(obj: object) -> bool:
    doc = obj.__doc__ if inspect.isclass(obj) else inspect.getdoc(obj)
    if not doc or not doc.strip():
        return False
    if inspect.isclass(obj) and doc.startswith(f"{obj.__name__}("):  # dataclasses.dataclass's generated text
        return False
    return True


def public_api(modname: str) -> list[tuple[str, object]]:
    """(qualified name, object) of every public function, class, method and property of a module."""
    mod = importlib.import_module(modname)
    if modname == "flatfl.analysis":
        names = list(mod.__all__)
    else:
        names = [
            n
            for n, v in vars(mod).items()
            if not n.startswith("_")
            and (inspect.isclass(v) or inspect.isfunction(v))
            and getattr(v, "__module__", None) == modname
        ]
    out: list[tuple[str, object]] = [(modname, mod)]
    for name in names:
        obj = getattr(mod, name)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue  # constants (e.g. flatfl.flower.client_app.app) are described in the module docstring
        out.append((f"{modname}.{name}", obj))
        if inspect.isclass(obj):
            for attr, value in vars(obj).items():
                if attr.startswith("_"):
                    continue
                if isinstance(value, property):
                    out.append((f"{modname}.{name}.{attr}", value.fget))
                elif isinstance(value, (staticmethod, classmethod)):
                    out.append((f"{modname}.{name}.{attr}", value.__func__))
                elif inspect.isfunction(value):
                    out.append((f"{modname}.{name}.{attr}", value))
    return out


def test_the_api_list_is_what_the_docs_render():
    """The lists are not empty and reach into classes: a test that found nothing would pass on nothing."""
    names = {n for m in _modules() for n, _ in public_api(m)}
    for must in ("flatfl.analysis.hessian_eigenvalues", "flatfl.analysis.ModelLoss.hvp", "flatfl.runs.run.Run.model",
                 "flatfl.analysis.EigenResult"):  # fmt: skip
        assert must in names
    assert len(names) > 100


def test_a_missing_docstring_is_found():
    """The check itself: a function and a dataclass without docstrings are reported."""
    import dataclasses

    def bare():
        pass

    @dataclasses.dataclass(frozen=True)
    class Bare:
        x: int

    assert not _has_doc(bare) and not _has_doc(Bare) and _has_doc(public_api)


@pytest.mark.parametrize("modname", _modules())
def test_every_public_definition_has_a_docstring(modname):
    missing = [name for name, obj in public_api(modname) if not _has_doc(obj)]
    assert not missing, f"{len(missing)} without a docstring:\n" + "\n".join(missing)
