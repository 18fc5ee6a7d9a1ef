"""Command line: ``xearthformer demo | train | forecast | evaluate | convert``.

Each command lives beside the code it drives: module ``M`` provides
``add_<command>_arguments(parser)`` and ``run_<command>(args) -> int``. This file only wires
them together, importing a command's module when that command runs.

>>> main(["demo", "--output", "xef-demo"])   # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .errors import XEarthformerError

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("xearthformer.demo", "train on real SST (or synthetic storms) and forecast, in minutes on a CPU"),
    "train": ("xearthformer.training.labelled", "train a model on NetCDF/Zarr data and save a .xef bundle"),
    "forecast": ("xearthformer.archive", "forecast every init time of a NetCDF archive into Zarr/NetCDF (resumable)"),
    "evaluate": ("xearthformer.evaluate", "score a model on SEVIR, SEVIR-LR or ICAR-ENSO with the papers' protocols"),
    "convert": ("xearthformer.hub", "convert an official checkpoint (Earthformer...) into a .xef bundle"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Build the parser; only ``command``'s module is imported, so ``xearthformer --help``
    (``command`` None) imports none of them and no torch."""
    parser = argparse.ArgumentParser(prog="xearthformer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        if command == name:
            module = importlib.import_module(module_name)
            getattr(module, f"add_{name}_arguments")(sp)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in COMMANDS else None
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(getattr(module, f"run_{args.command}")(args) or 0)
    except (XEarthformerError, OSError) as err:  # user errors (and files, disks): no traceback
        print(f"xearthformer {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"xearthformer {args.command}: interrupted (a resumable run continues where it "
              "stopped when started again)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
