"""``blocklab lab [ID ...] [--quick|--full] [--out DIR] [--list] [--check]``.

Runs lab experiments (:func:`blocklab.lab.runner.run_lab`) and writes their report;
``--list`` lists them, ``--check`` checks a report already written.

Exit codes: 0 every experiment ran (or the report checks out), 1 an experiment
failed (or the report has problems), 2 a usage error.
"""

from __future__ import annotations

import argparse

from blocklab.cli.command import Command, usage_error

__all__ = ["COMMAND", "LAB_MINUTES", "EXPERIMENT_MAX_QUICK_SECONDS"]


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
        return usage_error("lab", f"cannot read {path}: {err}")
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

    from blocklab._extras import missing_extra

    message = missing_extra("lab", "blocklab lab")
    if message:
        return usage_error("lab", message)

    import torch

    from blocklab.lab import experiments as registry
    from blocklab.lab.runner import run_lab

    if args.device == "cuda" and not torch.cuda.is_available():
        return usage_error("lab", f"--device cuda was requested but CUDA is not available "
                                  f"(torch {torch.__version__} sees no GPU); use --device cpu")
    for experiment_id in args.ids:
        if experiment_id not in registry.known_ids():
            return usage_error("lab", f"unknown experiment id {experiment_id!r}; known ids: "
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


COMMAND = Command(
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
)
