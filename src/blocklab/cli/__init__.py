"""The ``blocklab`` command line.

One module per subcommand (:mod:`~blocklab.cli.lab`, :mod:`~blocklab.cli.train`,
:mod:`~blocklab.cli.distill`, :mod:`~blocklab.cli.convert`, :mod:`~blocklab.cli.cost`,
:mod:`~blocklab.cli.generate`, :mod:`~blocklab.cli.export`),
each defining ``COMMAND``: a :class:`~blocklab.cli.command.Command` with its name, help,
a function that adds its arguments to an ``argparse`` parser and a function that runs
it and returns the exit code. Adding a subcommand is adding a module and naming it in
:data:`COMMAND_MODULES`. Argument parsing and printing live here; the work is done by
library functions (``blocklab.lab``, ``blocklab.train``, ``blocklab.models``,
``blocklab.cost``), imported inside the run functions with torch, so ``--help`` stays
fast (``tests/test_cli.py`` checks that it never imports torch).

Exit codes: 0 success, 1 an experiment or task failed, 2 a usage error.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys
from collections.abc import Sequence

from blocklab.cli.command import USAGE_ERROR, Command
from blocklab.cli.lab import EXPERIMENT_MAX_QUICK_SECONDS, LAB_MINUTES

__all__ = ["main", "build_parser", "all_commands", "Command", "COMMAND_MODULES",
           "USAGE_ERROR", "LAB_MINUTES", "EXPERIMENT_MAX_QUICK_SECONDS"]

# In the order ``blocklab --help`` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "blocklab.cli.lab",
    "blocklab.cli.cost",
    "blocklab.cli.train",
    "blocklab.cli.distill",
    "blocklab.cli.convert",
    "blocklab.cli.generate",
    "blocklab.cli.export",
)


def _version() -> str:
    try:
        return importlib.metadata.version("blocklab")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def all_commands() -> list[Command]:
    """The ``COMMAND`` of every module in :data:`COMMAND_MODULES`, in that order."""
    return [importlib.import_module(name).COMMAND for name in COMMAND_MODULES]


def build_parser() -> argparse.ArgumentParser:
    """The ``blocklab`` parser with one subparser per command of :func:`all_commands`."""
    parser = argparse.ArgumentParser(
        prog="blocklab",
        description="Verified, measured and demonstrated building blocks of modern "
                    "transformers.",
        epilog="Run 'blocklab COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"blocklab {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in all_commands():
        sub = subparsers.add_parser(command.name, help=command.help,
                                    description=command.description)
        command.add_arguments(sub)
        sub.set_defaults(handler=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the subcommand, return its exit code.

    ``--help`` and ``--version`` exit through ``SystemExit(0)``, argument errors
    through ``SystemExit(2)``, as argparse does.
    """
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may follow options (``train tiny --out d lr=1e-3``), which
    # argparse cannot interleave with a positional list on its own.
    if extra and isinstance(getattr(args, "overrides", None), list) and all(
        "=" in item and not item.startswith("-") for item in extra
    ):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help(sys.stderr)
        return USAGE_ERROR
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
