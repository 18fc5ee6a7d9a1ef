"""``python -m tests.toy_cli ARGS``: the ``xearthformer`` command line with the test-only toy family
registered (so a subprocess can forecast a toy bundle and be killed part-way). With
``TOY_SLEEP=seconds`` each model call sleeps first, so that a test can kill a run between units."""

from __future__ import annotations

import os
import sys
import time

from tests.toy_family import TOY, ToyNet
from xearthformer import cli
from xearthformer.models import registry


def main(argv: list[str]) -> int:
    registry.register_family(TOY)
    pause = float(os.environ.get("TOY_SLEEP", "0") or 0)
    if pause > 0:
        predict = ToyNet.predict

        def slow(self, x, **kwargs):
            time.sleep(pause)
            return predict(self, x, **kwargs)

        ToyNet.predict = slow
    return cli.main(argv)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
