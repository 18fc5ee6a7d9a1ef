"""The package's public surface: lazy exports resolve, and importing it stays cheap."""

import subprocess
import sys

import pytest

import xearthformer
import xearthformer.data


@pytest.mark.parametrize("name", xearthformer.__all__)
def test_every_public_name_resolves(name):
    assert getattr(xearthformer, name) is not None


def test_functions_are_not_shadowed_by_submodules():
    # importing the modules that define them must leave the package attributes callable
    import xearthformer.hub  # noqa: F401
    import xearthformer.training.labelled  # noqa: F401

    assert callable(xearthformer.train) and callable(xearthformer.pretrained)


@pytest.mark.parametrize("name", xearthformer.data.__all__)
def test_data_readers_resolve(name):
    assert callable(getattr(xearthformer.data, name))


def test_unknown_names_raise_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        xearthformer.nope  # noqa: B018
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        xearthformer.data.nope  # noqa: B018


def test_import_is_cheap_and_does_not_load_torch():
    code = "import sys, xearthformer; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("argv", [["--help"], []])
def test_cli_help_does_not_load_torch(argv):
    # commands import their modules only when they run: listing them must stay cheap
    code = ("import sys\nfrom xearthformer.cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n"
            "    pass\nprint('torch' in sys.modules, file=sys.stderr)" % argv)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "demo" in out.stdout and "convert" in out.stdout      # every command is listed
    assert out.stderr.strip().splitlines()[-1] == "False"


def test_progress_bars_fall_back_to_text_without_jupyter_widgets(monkeypatch):
    import importlib.util

    import tqdm.std

    from xearthformer.progress import tqdm_class

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "ipywidgets" else real(name, *a))
    assert tqdm_class() is tqdm.std.tqdm
