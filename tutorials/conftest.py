"""Run the tutorial notebooks (pytest --nbmake tutorials) against this checkout, in fast mode.

nbmake executes each notebook in a separate Jupyter kernel, which does not see the
``sys.path`` of the pytest process but inherits its environment:

* the repo root first on ``PYTHONPATH`` makes ``import xearthformer`` in the kernel load the
  working tree, whether or not the package is installed;
* ``XEF_TUTORIAL_FAST=1`` makes every notebook run its fast mode (the same code on less
  data, with fewer training steps; see the first cells of each notebook). Set
  ``XEF_TUTORIAL_FAST=0`` to test the full versions;
* ``OMP_WAIT_POLICY=PASSIVE`` keeps idle OpenMP threads from spinning, which on a shared
  2-core machine makes training several times slower.
"""

import os

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ["PYTHONPATH"] = os.pathsep.join(
    [_ROOT, *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]]
)
os.environ.setdefault("XEF_TUTORIAL_FAST", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
