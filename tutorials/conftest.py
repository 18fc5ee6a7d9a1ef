"""Run the tutorial notebooks (pytest --nbmake tutorials) against this checkout.

nbmake executes each notebook in a separate Jupyter kernel, which does not see the
``sys.path`` of the pytest process but inherits its environment: putting the repo root first
on ``PYTHONPATH`` makes ``import xearthformer`` in the kernel load the working tree, whether
or not the package is installed.
"""

import os

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ["PYTHONPATH"] = os.pathsep.join(
    [_ROOT, *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]]
)
