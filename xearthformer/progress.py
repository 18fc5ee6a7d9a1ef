"""Progress bars: tqdm's notebook widget in Jupyter when ipywidgets is there, its text bar
everywhere else, and never the "IProgress not found" warning a plain ``tqdm.auto`` prints in a
notebook without ipywidgets.

>>> tqdm = tqdm_class()
>>> bar = tqdm(total=3, disable=True)
>>> bar.update(3); bar.close()
"""

from __future__ import annotations

import importlib.util


def tqdm_class() -> type:
    """The tqdm class to use here (same arguments and ``write`` as :class:`tqdm.tqdm`)."""
    if importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.auto import tqdm
    else:
        from tqdm.std import tqdm
    return tqdm
