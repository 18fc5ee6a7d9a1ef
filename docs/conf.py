"""Sphinx configuration of the xearthformer documentation (built by ``bash ci/docs.sh``).

The build is offline and strict (``-W --keep-going``): no intersphinx inventories, no
remote images or fonts. The tutorial notebooks are copied from ``../tutorials`` and
executed during the build in their fast mode (``XEF_TUTORIAL_FAST=1``), so the rendered
outputs always come from the code in this checkout.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))          # document this checkout, installed or not
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])
os.environ.setdefault("XEF_TUTORIAL_FAST", "1")   # the notebook kernels inherit it
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads must not spin

import xearthformer  # noqa: E402

project = "xearthformer"
author = "the xearthformer developers"
copyright = "2026, the xearthformer developers"
version = release = xearthformer.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_nb",
    "sphinx_autosummary_accessors",
    "sphinx_copybutton",
]

import sphinx_autosummary_accessors  # noqa: E402

templates_path = ["_templates", sphinx_autosummary_accessors.templates_path]
exclude_patterns = ["_build", "**.ipynb_checkpoints", "jupyter_execute"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"

# -- API reference ---------------------------------------------------------------------------
autosummary_generate = True
autosummary_imported_members = True
autodoc_typehints = "none"               # the numpydoc sections say the types
autodoc_default_options = {"members": False}
numpydoc_show_class_members = False      # class pages list members explicitly where useful
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# -- notebooks (myst-nb) ----------------------------------------------------------------------
nb_execution_mode = "force"
nb_execution_timeout = 600
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# -- HTML -------------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"xearthformer {release}"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "navbar_align": "left",
    "header_links_before_dropdown": 6,
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_sidebars = {"index": [], "getting-started": [], "cli": [], "benchmarks": [], "tutorials/*": []}
html_show_sourcelink = False
html_last_updated_fmt = None


def _copy_tutorials() -> None:
    """Copy ../tutorials/*.ipynb next to docs/tutorials/index.md (the copies are ignored by git)."""
    target = DOCS / "tutorials"
    for old in target.glob("*.ipynb"):
        old.unlink()
    for nb in sorted((ROOT / "tutorials").glob("[0-9]*.ipynb")):
        shutil.copy2(nb, target / nb.name)


def _write_cli_help() -> None:
    """Write ``xearthformer COMMAND --help`` of every command into docs/_generated/."""
    import contextlib
    import io

    from xearthformer import cli

    out = DOCS / "_generated"
    out.mkdir(exist_ok=True)
    commands = [None, *cli.COMMANDS]
    for command in commands:
        parser = cli.build_parser(command)
        if command is not None:
            parser = next(a for a in parser._actions if a.dest == "command").choices[command]
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            parser.print_help()
        (out / f"cli-{command or 'main'}.txt").write_text(buf.getvalue())


def _defining_module_doc(name: str, obj: object) -> list[str] | None:
    """The ``#:`` comment or docstring of constant ``name`` in the module that defines it.

    Constants are documented where they are defined (e.g. ``metrics/categorical.py``) but
    listed under the public module that re-exports them; autodoc only looks in the latter.
    """
    from sphinx.pycode import ModuleAnalyzer

    short = name.rsplit(".", 1)[-1]
    for module_name, module in sorted(sys.modules.items()):
        if not module_name.startswith("xearthformer") or getattr(module, short, None) is not obj:
            continue
        try:
            docs = ModuleAnalyzer.for_module(module_name).find_attr_docs()
        except Exception:  # a module without source
            continue
        if ("", short) in docs:
            return list(docs[("", short)])
    return None


def _constant_docstrings(app, what, name, obj, options, lines) -> None:
    """Replace the docstring of the *type* of a constant (tuple, dict...) or of a type alias
    (``XArray = Union[...]``, whose own docstring is typing's) by the constant's ``#:`` comment."""
    if what not in ("data", "attribute") or type(obj).__module__ not in ("builtins", "typing", "types"):
        return
    lines[:] = _defining_module_doc(name, obj) or []


def setup(app) -> None:
    app.connect("autodoc-process-docstring", _constant_docstrings)


_copy_tutorials()
_write_cli_help()
