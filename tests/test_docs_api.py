"""The API reference (docs/api.rst) lists every public name, and every name it lists exists.

Reads the autosummary lists of ``docs/api.rst`` as text (no Sphinx needed), so it runs in
milliseconds and fails as soon as a public name is added without documentation, or a
documented name is renamed or moved away.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import re
import sys
from pathlib import Path

import pytest
import xarray as xr

import xearthformer
from xearthformer.accessor import EarthformerAccessor

API_RST = Path(__file__).resolve().parents[1] / "docs" / "api.rst"


def documented_names(text: str) -> list[str]:
    """Full names of the entries of every ``autosummary`` block, after its ``currentmodule``."""
    module, inside, names = None, False, []
    for line in text.splitlines():
        found = re.match(r"\.\. currentmodule:: (\S+)", line)
        if found:
            module, inside = found.group(1), False
            continue
        if line.startswith(".. autosummary::"):
            inside = True
            continue
        if inside:
            if not line.strip() or line.strip().startswith(":"):
                continue                       # blank line or a directive option
            if not line.startswith("   "):
                inside = False                 # the block ended
                continue
            names.append(f"{module}.{line.strip()}")
    return names


def public_names() -> set[str]:
    """Every name the package promises: its ``__all__`` lists and the accessor methods."""
    import xearthformer.data
    import xearthformer.layout
    import xearthformer.metrics

    names = {f"xearthformer.{n}" for n in xearthformer.__all__ if n not in ("__version__", "metrics")}
    for module in (xearthformer.metrics, xearthformer.layout, xearthformer.data):
        names |= {f"{module.__name__}.{n}" for n in module.__all__}
    methods = [n for n, v in vars(EarthformerAccessor).items() if not n.startswith("_") and callable(v)]
    for cls in ("Dataset", "DataArray"):
        names |= {f"xarray.{cls}.earthformer.{m}" for m in methods}
    return names


def resolve(full_name: str) -> object:
    """The object a dotted name refers to: the longest importable module, then attributes."""
    parts = full_name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
            break
        except ImportError:
            continue
    for part in parts[i:]:
        obj = getattr(obj, part)
    return obj


@pytest.fixture(scope="module")
def listed() -> list[str]:
    return documented_names(API_RST.read_text())


def test_parser_reads_autosummary_blocks():
    text = (".. currentmodule:: a\n\nintro\n\n.. autosummary::\n   :toctree: generated/\n\n"
            "   f\n   g\n\nprose\n\n.. currentmodule:: b\n\n.. autosummary::\n\n   h\n")
    assert documented_names(text) == ["a.f", "a.g", "b.h"]


def test_every_public_name_is_in_the_api_reference(listed):
    missing = sorted(public_names() - set(listed))
    assert not missing, f"public names missing from docs/api.rst: {missing}"


def test_every_listed_name_exists_once(listed):
    assert len(listed) == len(set(listed)), "a name is listed twice in docs/api.rst"
    broken = []
    for name in listed:
        try:
            resolve(name)
        except AttributeError:
            broken.append(name)
    assert not broken, f"docs/api.rst lists names that do not exist: {broken}"


def test_accessor_entries_resolve_to_the_accessor_methods(listed):
    for name in (n for n in listed if ".earthformer." in n):
        cls, method = name.split(".")[1], name.rsplit(".", 1)[1]
        assert getattr(getattr(xr, cls), "earthformer") is EarthformerAccessor
        assert resolve(name) is getattr(EarthformerAccessor, method)


# -- every listed name has an Examples section, and its examples run ---------------------------
def _is_plain_constant(obj: object) -> bool:
    """A tuple, dict, str... constant: documented by its ``#:`` comment and shown with its value."""
    return type(obj).__module__ == "builtins" and not callable(obj)


def _defining_module(full_name: str, obj: object):
    """The xearthformer module whose source defines ``obj`` (for constants, the one whose
    source assigns it; ``inspect.getmodule`` cannot tell for a type alias)."""
    if inspect.isfunction(inspect.unwrap(obj)) or inspect.isclass(obj):
        return inspect.getmodule(inspect.unwrap(obj))
    short = full_name.rsplit(".", 1)[-1]
    for module_name, module in sorted(sys.modules.items()):
        if module_name.startswith("xearthformer") and getattr(module, short, None) is obj:
            try:
                source = inspect.getsource(module)
            except (OSError, TypeError):
                continue
            if re.search(rf"^{short}\s*(:[^=]*)?=", source, re.M):
                return module
    raise AssertionError(f"no module of xearthformer assigns {full_name}")


def comment_doc(module, short: str) -> str:
    """The ``#:`` comment lines just above ``short = ...`` in ``module``'s source (the form
    Sphinx reads for module-level data), without the ``#: `` prefix."""
    lines = inspect.getsource(module).splitlines()
    at = next(i for i, line in enumerate(lines) if re.match(rf"{short}\s*(:[^=]*)?=", line))
    doc: list[str] = []
    for line in reversed(lines[:at]):
        if not line.startswith("#:"):
            break
        doc.insert(0, line[3:] if line.startswith("#: ") else line[2:])
    return "\n".join(doc)


def docstring(full_name: str) -> tuple[str, dict]:
    """The documentation text of a listed name and the globals its examples run in."""
    obj = resolve(full_name)
    module = _defining_module(full_name, obj)
    if inspect.isfunction(inspect.unwrap(obj)) or inspect.isclass(obj):
        return inspect.getdoc(obj) or "", vars(module)
    return comment_doc(module, full_name.rsplit(".", 1)[-1]), vars(module)


def has_examples_section(doc: str) -> bool:
    """A numpydoc ``Examples`` heading followed by at least one ``>>>`` line."""
    found = re.search(r"^Examples\n-{8,}\n(.*)", doc, re.M | re.S)
    return bool(found) and ">>>" in found.group(1)


def test_comment_doc_and_examples_section_parsers():
    import types

    module = types.ModuleType("m")
    source = "A = 1\n#: Two.\n#:\n#: Examples\n#: --------\n#: >>> B\n#: 2\nB: int = 2\n"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(inspect, "getsource", lambda m: source)
        assert comment_doc(module, "B") == "Two.\n\nExamples\n--------\n>>> B\n2"
        assert comment_doc(module, "A") == ""
    assert has_examples_section("Sum.\n\nExamples\n--------\n>>> 1 + 1\n2")
    assert not has_examples_section("Sum.\n\n>>> 1 + 1\n2")                # no heading
    assert not has_examples_section("Sum.\n\nExamples\n--------\nNone yet.")  # no example


def example_names(listed: list[str]) -> list[str]:
    """The listed names that must have examples: all but plain constants. An accessor method
    is listed on Dataset and DataArray; one of the two is enough (same function)."""
    names = []
    for name in listed:
        if _is_plain_constant(resolve(name)) or name.startswith("xarray.DataArray.earthformer."):
            continue
        names.append(name)
    return names


def test_every_listed_name_has_an_examples_section(listed):
    missing = [name for name in example_names(listed) if not has_examples_section(docstring(name)[0])]
    assert not missing, (f"{len(missing)} names in docs/api.rst have no numpydoc 'Examples' section "
                         f"with a >>> example in their docstring: {missing}")


def test_the_examples_of_listed_names_run(listed):
    import matplotlib

    matplotlib.use("Agg")  # the plotting examples draw off screen
    import matplotlib.pyplot as plt

    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    parser = doctest.DocTestParser()
    report: list[str] = []
    try:
        for name in example_names(listed):
            doc, globs = docstring(name)
            runner.run(parser.get_doctest(doc, dict(globs), name, None, 0), out=report.append)
    finally:
        plt.close("all")
    result = runner.summarize(verbose=False)
    assert result.failed == 0, "".join(report)
    assert result.attempted > 100      # the examples were found (SKIPped ones are not counted)
