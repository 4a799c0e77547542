"""Run blocklab's benchmarks against their peers and the machine's own limits.

``python -m benchmarks [names...] [--quick] [--out DIR] [--threads N]`` runs every
``benchmarks/bench_<name>.py`` (or only the names given), prints each one's table
and a summary, and writes ``<out>/<name>.json``.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import traceback
from pathlib import Path

import torch

from benchmarks.harness import DEFAULT_OUT, machine_info, print_result, print_summary


def available() -> list[str]:
    """Benchmark names, from the bench_<name>.py modules next to this file."""
    here = str(Path(__file__).parent)
    return sorted(
        m.name.removeprefix("bench_")
        for m in pkgutil.iter_modules([here])
        if m.name.startswith("bench_")
    )


def main(argv: list[str] | None = None) -> int:
    names = available()
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default all: {', '.join(names)})")
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for JSON results")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's own choice)")
    args = parser.parse_args(argv)
    chosen = [n.removeprefix("bench_") for n in args.names] or names
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; known: {names}")
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads ({args.threads}) must be >= 1")
        torch.set_num_threads(args.threads)

    info = machine_info()
    print(
        f"{info['cpu']}, {info['cores']} cores, torch {info['torch']} "
        f"({info['torch_threads']} threads), load {info['loadavg_1m']:.1f}, {info['date_utc']}"
    )
    results, failed = [], []
    for name in chosen:
        # One benchmark failing (a parity check, a peer missing) must not hide the others.
        try:
            module = importlib.import_module(f"benchmarks.bench_{name}")
            result = module.run(quick=args.quick)
        except Exception:
            traceback.print_exc()
            print(f"!! benchmark {name} failed (traceback above)", flush=True)
            failed.append(name)
            continue
        path = result.write(args.out)
        print_result(result)
        print(f"-> {path}", flush=True)
        results.append(result)
    print_summary(results)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
