"""Progress bars: tqdm's notebook widget in Jupyter when ipywidgets is there, its text bar
everywhere else, and never the "IProgress not found" warning a plain ``tqdm.auto`` prints in a
notebook without ipywidgets. :func:`progress_bar` is the one place that turns a user's
``progress=True/False/None`` into tqdm's ``disable``, and the one rule for logs: off a terminal
(CI, batch jobs, ``nohup``) a bar that is shown writes at most one plain line every
:data:`LOG_INTERVAL` seconds (none for a bar that ends sooner), never carriage returns.

>>> tqdm = tqdm_class()
>>> bar = tqdm(total=3, disable=True)
>>> bar.update(3); bar.close()
"""

from __future__ import annotations

import importlib.util
import re
import sys
from typing import Any

#: seconds between two lines of a progress bar written to a log (not a terminal)
LOG_INTERVAL = 10.0
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class LogLines:
    """A text stream for tqdm off a terminal: every refresh becomes one line, with no carriage
    returns or cursor movements (log files and CI consoles show them as one endless line).

    >>> import io
    >>> out = io.StringIO(); log = LogLines(out)
    >>> log.write("\\r 10%|#  | 1/10"); log.write("\\r 10%|#  | 1/10"); log.write("\\r100%|###| 10/10\\n")
    >>> out.getvalue().splitlines()
    [' 10%|#  | 1/10', '100%|###| 10/10']
    """

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self._last = ""

    def write(self, text: str) -> None:
        for part in re.split(r"[\r\n]", _ANSI.sub("", text)):
            part = part.rstrip()
            if part and part != self._last:
                self.stream.write(part + "\n")
                self._last = part

    def flush(self) -> None:
        getattr(self.stream, "flush", lambda: None)()

    def isatty(self) -> bool:
        return False


def _interactive(stream: Any) -> bool:
    """A terminal, or a Jupyter kernel's output (which renders carriage returns)."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) or "ipykernel" in sys.modules


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

    Off a terminal a shown bar (``progress=True``) goes through :class:`LogLines`: one line at
    most every :data:`LOG_INTERVAL` seconds, nothing for bars shorter than that.

    >>> bar = progress_bar(range(3), progress=False)
    >>> list(bar)
    [0, 1, 2]
    """
    stream = kwargs.get("file") or sys.stderr
    if progress and not _interactive(stream):
        interval = max(float(kwargs.pop("mininterval", 0.0) or 0.0), LOG_INTERVAL)
        kwargs.update(file=LogLines(stream), mininterval=interval, maxinterval=max(interval, 10 * interval),
                      delay=max(float(kwargs.get("delay", 0.0) or 0.0), interval), ascii=True,
                      dynamic_ncols=False, ncols=kwargs.get("ncols") or 100)
    return tqdm_class()(iterable, disable=None if progress is None else not progress, **kwargs)
