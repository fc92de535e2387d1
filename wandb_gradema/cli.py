"""``wandb-gradema`` / ``python -m wandb_gradema``: a thin argparse front over public functions.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``; modules are imported only when their command runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["main"]

#: subcommand -> (module, one-line help)
COMMANDS = {
    "demo": ("wandb_gradema.demo", "train a small model that drifts, watched offline; show what happened"),
    "sweep": ("wandb_gradema.sweep.runner", "run a W&B sweep offline with W&B's own sweep engine"),
    "report": ("wandb_gradema.report", "render drift charts of offline runs to PNG and HTML"),
}


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand; returns the exit status."""
    parser = argparse.ArgumentParser(prog="wandb-gradema", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:  # import only the module whose command runs
            importlib.import_module(module).add_arguments(p)
    args = parser.parse_args(argv)
    return int(importlib.import_module(COMMANDS[args.command][0]).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
