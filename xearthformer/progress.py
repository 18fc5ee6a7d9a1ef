"""Progress bars: tqdm's notebook widget in Jupyter when ipywidgets is there, its text bar
everywhere else, and never the "IProgress not found" warning a plain ``tqdm.auto`` prints in a
notebook without ipywidgets. :func:`progress_bar` is the one place that turns a user's
``progress=True/False/None`` into tqdm's ``disable``.

>>> tqdm = tqdm_class()
>>> bar = tqdm(total=3, disable=True)
>>> bar.update(3); bar.close()
"""

from __future__ import annotations

import importlib.util
from typing import Any


def tqdm_class() -> type:
    """The tqdm class to use here (same arguments and ``write`` as :class:`tqdm.tqdm`)."""
    if importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.auto import tqdm
    else:
        from tqdm.std import tqdm
    return tqdm


def progress_bar(iterable: Any = None, *, progress: bool | None = None, **kwargs: Any) -> Any:
    """A tqdm bar (of :func:`tqdm_class`) over ``iterable``: the one ``disable`` rule.

    ``progress`` True shows it, False hides it, None shows it only on a terminal (tqdm's
    ``disable=None``). Other keywords go to tqdm (``total``, ``desc``, ``unit``...).

    >>> bar = progress_bar(range(3), progress=False)
    >>> list(bar)
    [0, 1, 2]
    """
    return tqdm_class()(iterable, disable=None if progress is None else not progress, **kwargs)
