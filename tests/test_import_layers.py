"""Imports run one way: every module imports only from the layers below its own (or, where the
table names it, from beside). Read from the source with ``ast``, imports inside functions and
``TYPE_CHECKING`` blocks included, so a lazy import cannot hide an upward dependency."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "xearthformer"

#: the layers, bottom to top: each entry is a top-level unit of the package (a module or a
#: subpackage, by name; ``__init__`` is the package root). A unit that does not exist yet
#: (``diffusion`` before the PreDiff issues) is simply empty.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("ground: errors and version", ("_version", "errors")),
    ("ground: devices, processes, memory, progress bars", ("device", "progress", "parallel", "memory")),
    ("tensors and labels", ("nn", "diffusion", "layout", "data")),
    ("encodings and scores", ("cf", "metrics")),
    ("model families", ("models",)),
    ("running models", ("checkpoint", "forecast", "training")),
    ("services", ("archive", "hub", "evaluate")),
    ("faces", ("accessor", "cli", "demo", "__main__", "__init__")),
]
#: imports allowed between units of one layer (importer -> imported)
BESIDE: set[tuple[str, str]] = {
    ("training", "checkpoint"),   # training writes bundles as it goes
    ("forecast", "checkpoint"),   # forecasts carry the digest of the bundle that made them
    ("data", "layout"),           # archive files pass the one validation (their grids)
    ("evaluate", "hub"),          # evaluate accepts pretrained names
    ("__init__", "accessor"),     # importing the package registers the accessor
    ("__main__", "cli"),
}
#: units that stay pure torch: never xarray (nor anything else labelled)
TORCH_ONLY = ("nn", "diffusion")

LAYER_OF = {unit: i for i, (_, units) in enumerate(LAYERS) for unit in units}


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def unit_of(module: str) -> str:
    """The top-level unit of a dotted name inside the package (``__init__`` for the root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports_of(module: str, path: Path) -> list[tuple[int, str]]:
    """(line, imported dotted name) of every import in ``path`` that names the package.

    ``from . import x`` counts as importing ``package.x`` when that is a module, else the
    package itself; relative imports are resolved against the module's package.
    """
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((node.lineno, sub if sub in MODULES else target))
    return [(line, name) for line, name in found if name == "xearthformer" or name.startswith("xearthformer.")]


def violations() -> list[str]:
    problems = []
    for module, path in MODULES.items():
        unit = unit_of(module)
        if unit not in LAYER_OF:
            problems.append(f"{module}: unit {unit!r} is in no layer; add it to LAYERS in {__file__}")
            continue
        for line, name in imports_of(module, path):
            other = unit_of(name)
            if other == unit:
                continue
            if other not in LAYER_OF:
                problems.append(f"{path.name}:{line}: {module} imports {name}, which is in no layer")
            elif LAYER_OF[other] > LAYER_OF[unit] or (
                    LAYER_OF[other] == LAYER_OF[unit] and (unit, other) not in BESIDE):
                problems.append(
                    f"{path.relative_to(PACKAGE.parent)}:{line}: {module} ({LAYERS[LAYER_OF[unit]][0]}) "
                    f"imports {name} ({LAYERS[LAYER_OF[other]][0]}): that import runs "
                    f"{'upward' if LAYER_OF[other] > LAYER_OF[unit] else 'sideways'}")
    return problems


def test_imports_run_downward_only():
    problems = violations()
    assert not problems, "imports against the layer order:\n" + "\n".join(problems)


@pytest.mark.parametrize("unit", TORCH_ONLY)
def test_torch_only_units_know_no_labelled_data(unit):
    for module, path in MODULES.items():
        if unit_of(module) != unit:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            assert not any(n.split(".")[0] in ("xarray", "pandas", "cf_xarray") for n in names), \
                f"{module} imports {names}: {unit}/ is pure torch"


def test_the_checker_sees_relative_and_function_level_imports():
    # the resolution rules on a known module: checkpoint imports models.base and layout at the
    # top (``from .layout import``, ``from .models.base import``) and the device module inside load()
    names = {name for _, name in imports_of("xearthformer.checkpoint", MODULES["xearthformer.checkpoint"])}
    assert {"xearthformer.models.base", "xearthformer.device", "xearthformer.layout"} <= names
    assert unit_of("xearthformer") == "__init__" and unit_of("xearthformer.models.keys") == "models"
