"""The ``blocklab`` command line.

Each subcommand is one :class:`Command` in :data:`COMMANDS`: a name, its help, a
function that adds its arguments to an ``argparse`` parser and a function that
runs it and returns the exit code. Adding a subcommand is adding one entry.
Heavy imports (torch, the lab) happen inside the run functions, so ``--help``
stays fast.

Exit codes: 0 success, 1 an experiment or task failed, 2 a usage error.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

USAGE_ERROR = 2


@dataclass(frozen=True)
class Command:
    """One ``blocklab`` subcommand."""

    name: str
    help: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _version() -> str:
    try:
        return importlib.metadata.version("blocklab")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _error(command: str, message: str) -> int:
    print(f"blocklab {command}: error: {message}", file=sys.stderr)
    return USAGE_ERROR


# What each scale costs for all ten experiments on 2 idle CPU cores, in minutes: the
# sums of the experiments' own ``seconds`` (a test keeps them in step). Written here so
# that ``--help`` needs no torch import.
LAB_MINUTES = {"quick": 6, "full": 63}
EXPERIMENT_MAX_QUICK_SECONDS = 60


def _add_lab_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "ids", nargs="*", metavar="ID",
        help="experiments to run, in this order (default: every implemented one; "
             "see --list)",
    )
    scale = parser.add_mutually_exclusive_group()
    scale.add_argument("--quick", dest="quick", action="store_true", default=True,
                       help=f"quick scale (default): all ten in about "
                            f"{LAB_MINUTES['quick']} min on 2 CPU cores, each at most "
                            f"{EXPERIMENT_MAX_QUICK_SECONDS} s")
    scale.add_argument("--full", dest="quick", action="store_false",
                       help=f"full scale: larger models, more steps and repetitions, tighter "
                            f"intervals; all ten in about {LAB_MINUTES['full']} min on 2 CPU "
                            f"cores (the expected time is printed first; --list gives each)")
    parser.add_argument("--out", default="lab-report", metavar="DIR",
                        help="report directory: results.json, index.html, figures/ "
                             "(default: %(default)s)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="where to run the experiments (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, metavar="N",
                        help="random seed set before each experiment (default: %(default)s)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="torch threads per experiment (default: 1 at quick scale on "
                             "CPU, torch's default otherwise)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress output, only the final summary")
    parser.add_argument("--list", action="store_true",
                        help="list the experiments, their expected seconds at each scale and "
                             "whether they are implemented, then exit")
    parser.add_argument("--check", action="store_true",
                        help="check the report in --out instead of running: verdicts follow "
                             "from their checks, statuses from their intervals (exit 1 if not)")


def _list_experiments() -> int:
    from blocklab.lab import experiments as registry

    print(f"{'id':<14} {'card':<8} {'quick':>6} {'full':>7}  title")
    for experiment_id in registry.known_ids():
        if not registry.is_available(experiment_id):
            print(f"{experiment_id:<14} {'':<8} (not yet implemented)")
            continue
        try:
            experiment = registry.load_experiment(experiment_id)
        except Exception as err:  # a broken module is listed, not fatal
            print(f"{experiment_id:<14} {'':<8} (cannot load: {type(err).__name__}: {err})")
            continue
        quick, full = (experiment.seconds.get(k) for k in ("quick", "full"))
        times = f"{quick or 0:>5.0f}s {(full or 0) / 60:>5.0f}m" if quick and full else f"{'':>14}"
        print(f"{experiment_id:<14} {experiment.card:<8} {times}  {experiment.title}")
    return 0


def _check_report(out: str) -> int:
    import json
    from pathlib import Path

    from blocklab.lab.validate import check_results

    path = Path(out) / "results.json"
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return _error("lab", f"cannot read {path}: {err}")
    problems = check_results(results)
    for problem in problems:
        print(problem)
    n = len(results.get("experiments") or [])
    print(f"{path}: {n} experiment(s), {len(problems)} problem(s)")
    return 1 if problems else 0


def _run_lab(args: argparse.Namespace) -> int:
    if args.list:
        return _list_experiments()
    if args.check:
        return _check_report(args.out)

    import torch

    from blocklab.lab import experiments as registry
    from blocklab.lab.runner import run_lab

    if args.device == "cuda" and not torch.cuda.is_available():
        return _error("lab", f"--device cuda was requested but CUDA is not available "
                             f"(torch {torch.__version__} sees no GPU); use --device cpu")
    for experiment_id in args.ids:
        if experiment_id not in registry.known_ids():
            return _error("lab", f"unknown experiment id {experiment_id!r}; known ids: "
                                 f"{', '.join(registry.known_ids())}")
    result = run_lab(args.ids or None, quick=args.quick, out_dir=args.out,
                     device=args.device, seed=args.seed, progress=not args.quiet,
                     threads=args.threads)
    if not result.records:
        print("no experiment is implemented yet; nothing was run")
    for record in result.records:
        print(f"{record['id']:<14} {record['verdict']:<14} {record['seconds']:8.1f} s")
    print(f"report: {result.html_path}")
    return 0 if result.ok else 1


COMMANDS: list[Command] = [
    Command(
        name="lab",
        help="run the lab experiments and write an HTML report",
        description=(
            "Run lab experiments: each checks a building block's textbook claim on real "
            "runs, derives a verdict (supported, partly, inconclusive, not supported) from "
            "checks that compare measured 95% intervals with thresholds, and draws its "
            "figures. Writes DIR/results.json and a self-contained DIR/index.html; "
            "experiments already in DIR that are not rerun keep their sections. Exit code 0 "
            "if every experiment ran, 1 if any failed."
        ),
        add_arguments=_add_lab_arguments,
        run=_run_lab,
    ),
]


# Subcommands that live beside the code they drive: each module defines
# ``COMMAND: Command`` and keeps torch imports inside its run function.
COMMAND_MODULES: tuple[str, ...] = (
    "blocklab.cost.cli",
    "blocklab.train.cli",
    "blocklab.train.distill_cli",
    "blocklab.models.convert_cli",
)


def all_commands() -> list[Command]:
    """:data:`COMMANDS` plus the ``COMMAND`` of every module in :data:`COMMAND_MODULES`
    that exists."""
    import importlib
    import importlib.util

    commands = list(COMMANDS)
    for name in COMMAND_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            found = False
        if found:
            commands.append(importlib.import_module(name).COMMAND)
    return commands


def build_parser() -> argparse.ArgumentParser:
    """The ``blocklab`` parser with one subparser per entry of :data:`COMMANDS`."""
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
