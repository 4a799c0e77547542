"""Benchmarks: blocklab against the implementation people already use, and against
the machine's own limits measured in the same run (see ``harness.py``).

Each ``bench_<part>.py`` exposes ``run(quick: bool) -> BenchResult``;
``python -m benchmarks [names...] [--quick] [--out DIR]`` runs them.
"""
