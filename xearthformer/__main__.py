"""``python -m xearthformer``: the command line (:mod:`xearthformer.cli`), e.g. under torchrun."""

from xearthformer.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
