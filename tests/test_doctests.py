"""Every module's docstring examples run and give what they show (so none goes stale).

Examples that need data, weights or the network say ``# doctest: +SKIP``; everything else runs.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import xearthformer

MODULES = sorted(m.name for m in pkgutil.walk_packages(xearthformer.__path__, "xearthformer.")
                 if not m.name.endswith("__main__"))


def test_the_package_has_examples_to_run():
    attempted = sum(doctest.DocTestFinder().find(importlib.import_module(name)).__len__()
                    for name in MODULES)
    assert len(MODULES) > 50 and attempted > 100


@pytest.mark.parametrize("name", MODULES)
def test_module_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                             report=True)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed"
