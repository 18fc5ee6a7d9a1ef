"""The API reference (docs/api.rst) lists every public name, and every name it lists exists.

Reads the autosummary lists of ``docs/api.rst`` as text (no Sphinx needed), so it runs in
milliseconds and fails as soon as a public name is added without documentation, or a
documented name is renamed or moved away.
"""

from __future__ import annotations

import importlib
import re
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
