"""What one ``blocklab`` subcommand is: :class:`Command`, and the usage-error line.

Each module of :mod:`blocklab.cli` defines one ``COMMAND``. Its module imports
nothing heavy (torch, numpy, matplotlib): those are imported inside ``run``, so
``blocklab --help`` and ``blocklab CMD --help`` build every parser without them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Command", "USAGE_ERROR", "usage_error"]

USAGE_ERROR = 2


@dataclass(frozen=True)
class Command:
    """One ``blocklab`` subcommand."""

    name: str
    help: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def usage_error(command: str, message: str) -> int:
    """Print ``blocklab COMMAND: error: MESSAGE`` to stderr; return :data:`USAGE_ERROR`."""
    print(f"blocklab {command}: error: {message}", file=sys.stderr)
    return USAGE_ERROR
