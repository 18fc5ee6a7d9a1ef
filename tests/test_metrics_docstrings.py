"""The examples in the metrics' docstrings run and give what they show; every public name has
one."""

from __future__ import annotations

import doctest
import importlib

import pytest

from xearthformer import metrics

MODULES = ["_common", "categorical", "continuous", "enso", "pooling", "probabilistic", "events",
           "neighbourhood", "spectral", "products"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(f"xearthformer.metrics.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("name", [n for n in metrics.__all__ if n != "SEVIR_THRESHOLDS"])
def test_every_public_name_has_an_example(name):
    doc = getattr(metrics, name).__doc__ or ""
    assert ">>>" in doc, f"{name} has no example in its docstring"
