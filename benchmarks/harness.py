"""The one benchmark harness: timing, machine limits, result records, tables.

Every benchmark times its cases with :func:`time_fn` (warm-up, then medians), or
with :func:`time_interleaved` when ours and the peer should share the machine's
load alike (a, b, a, b, ...), sets them beside the peer implementation and beside the machine's own limits, measured
in the same process by :func:`machine_limits`:

    copy bandwidth  = bytes read + written / s   (a large fp32 tensor copied into another)
    matmul FLOP/s   = 2 n^3 / s                  (fp32 n x n @ n x n)

and writes a :class:`BenchResult` as JSON (hardware, dtype, shapes, timings, ratios)
to ``bench-results/<name>.json``. ``torch.inference_mode`` and the like are the
caller's job: the harness times whatever callable it is given.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "Timing",
    "time_fn",
    "time_interleaved",
    "Limits",
    "machine_limits",
    "machine_info",
    "Case",
    "BenchResult",
    "format_table",
    "print_result",
    "print_summary",
]

DEFAULT_OUT = Path("bench-results")


# Timing ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Timing:
    """Seconds per call: median and the 10th/90th percentiles over n timed calls.

    ``cpu_s`` is the median process CPU time per call. With one torch thread it
    leaves out the time other processes held the core, so it stays comparable on a
    shared machine where wall time does not (with more threads it also counts the
    threads' spin-waiting).
    """

    median_s: float
    p10_s: float
    p90_s: float
    n: int
    cpu_s: float | None = None


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default) of already sorted values."""
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _timing(wall: list[float], cpu: list[float]) -> Timing:
    wall = sorted(wall)
    return Timing(
        median_s=_quantile(wall, 0.5),
        p10_s=_quantile(wall, 0.1),
        p90_s=_quantile(wall, 0.9),
        n=len(wall),
        cpu_s=_quantile(sorted(cpu), 0.5),
    )


def time_interleaved(
    fns: Mapping[str, Callable[[], object]],
    *,
    warmup: int = 1,
    repeats: int = 5,
    min_time: float = 0.0,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Timing]:
    """Time several callables round-robin (a, b, a, b, ...): ``warmup`` untimed
    rounds, then at least ``repeats`` timed rounds, more while any callable's total is
    under ``min_time`` seconds. Interleaving makes a drifting machine load (other
    processes, frequency changes) fall on every contestant alike.

    ``clock`` is replaceable so tests can drive a fake one.
    """
    if warmup < 0:
        raise ValueError(f"warmup ({warmup}) must be >= 0")
    if repeats < 1:
        raise ValueError(f"repeats ({repeats}) must be >= 1")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    rounds = 0
    while rounds < repeats or min(sum(s) for s in wall.values()) < min_time:
        for name, fn in fns.items():
            start, start_cpu = clock(), time.process_time()
            fn()
            wall[name].append(clock() - start)
            cpu[name].append(time.process_time() - start_cpu)
        rounds += 1
    return {name: _timing(wall[name], cpu[name]) for name in fns}


def time_fn(
    fn: Callable[[], object],
    *,
    warmup: int = 1,
    repeats: int = 5,
    min_time: float = 0.0,
    clock: Callable[[], float] = time.perf_counter,
) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then at least ``repeats`` timed calls,
    more while their total is under ``min_time`` seconds."""
    return time_interleaved(
        {"fn": fn}, warmup=warmup, repeats=repeats, min_time=min_time, clock=clock
    )["fn"]


# Machine limits and description ----------------------------------------------------
@dataclass(frozen=True)
class Limits:
    """What this machine can do at best, measured in this process."""

    copy_gbps: float  # GB/s (1e9 bytes), bytes read + written
    matmul_gflops: float  # GFLOP/s, fp32
    copy_bytes: int  # size of the copied tensor
    matmul_n: int  # side of the square matmul
    threads: int  # torch threads at measurement time


@functools.cache
def machine_limits(
    *, copy_mib: int = 256, matmul_n: int = 2048, repeats: int = 5, warmup: int = 1
) -> Limits:
    """Copy bandwidth and fp32 matmul throughput (medians), cached per size.

    Cached so every benchmark of one run is compared with the same measurement.
    """
    numel = copy_mib * 2**20 // 4
    src = torch.rand(numel)
    dst = torch.empty_like(src)
    copy = time_fn(lambda: dst.copy_(src), warmup=warmup, repeats=repeats)
    a = torch.rand(matmul_n, matmul_n)
    b = torch.rand(matmul_n, matmul_n)
    out = torch.empty(matmul_n, matmul_n)
    mm = time_fn(lambda: torch.mm(a, b, out=out), warmup=warmup, repeats=repeats)
    return Limits(
        copy_gbps=2 * src.nbytes / copy.median_s / 1e9,
        matmul_gflops=2 * matmul_n**3 / mm.median_s / 1e9,
        copy_bytes=src.nbytes,
        matmul_n=matmul_n,
        threads=torch.get_num_threads(),
    )


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """Hardware and software this run measured."""
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        # Other processes share the cores: a load above the core count skews timings.
        "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"),
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name()
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    return info


# Results ---------------------------------------------------------------------------
@dataclass
class Case:
    """One measured configuration: ours, the peer's, and ours against a machine limit.

    ``work`` is the units done per call (tokens), so rate = work / median seconds.
    ``limit_frac`` is the fraction of the machine limit that ``ours`` reaches, and
    ``limit_note`` says which limit and how it was computed.
    """

    name: str
    ours: Timing
    peer: Timing | None
    work: float
    unit: str = "tok/s"
    limit_frac: float | None = None
    limit_note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ours_rate(self) -> float:
        return self.work / self.ours.median_s

    @property
    def peer_rate(self) -> float | None:
        return None if self.peer is None else self.work / self.peer.median_s

    @property
    def ratio(self) -> float | None:
        """Speed-up of ours over the peer (> 1: ours is faster)."""
        return None if self.peer is None else self.peer.median_s / self.ours.median_s

    @property
    def cpu_ratio(self) -> float | None:
        """The same speed-up in process CPU time (see ``Timing.cpu_s``)."""
        if self.peer is None or not self.peer.cpu_s or not self.ours.cpu_s:
            return None
        return self.peer.cpu_s / self.ours.cpu_s


@dataclass
class BenchResult:
    """Everything one benchmark measured, as written to ``<out>/<name>.json``."""

    name: str
    peer: str
    dtype: str
    shapes: dict[str, Any]
    cases: list[Case]
    limits: Limits
    machine: dict[str, Any] = field(default_factory=machine_info)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        cases = []
        for c in self.cases:
            d = dataclasses.asdict(c)
            d.update(ours_rate=c.ours_rate, peer_rate=c.peer_rate, ratio=c.ratio,
                     cpu_ratio=c.cpu_ratio)
            cases.append(d)
        return {
            "name": self.name,
            "peer": self.peer,
            "dtype": self.dtype,
            "shapes": self.shapes,
            "machine": self.machine,
            "limits": dataclasses.asdict(self.limits),
            "cases": cases,
            "ratios": {c.name: c.ratio for c in self.cases},
            "cpu_ratios": {c.name: c.cpu_ratio for c in self.cases},
            "limit_fractions": {c.name: c.limit_frac for c in self.cases},
            "notes": self.notes,
        }

    def write(self, out_dir: str | Path = DEFAULT_OUT) -> Path:
        path = Path(out_dir) / f"{self.name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


# Printing --------------------------------------------------------------------------
def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, left: int = 1) -> str:
    """The first ``left`` columns left-aligned, the others right-aligned."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            str(c).ljust(w) if i < left else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def _rate(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def _row(case: Case) -> list[str]:
    return [
        case.name,
        _rate(case.ours_rate),
        _rate(case.peer_rate),
        "-" if case.ratio is None else f"{case.ratio:.2f}x",
        "-" if case.cpu_ratio is None else f"{case.cpu_ratio:.2f}x",
        "-" if case.limit_frac is None else f"{100 * case.limit_frac:.1f}%",
        f"±{100 * (case.ours.p90_s - case.ours.p10_s) / (2 * case.ours.median_s):.0f}%",
    ]


_HEADERS = ["case", "ours", "peer", "ratio", "cpu ratio", "% limit", "spread"]


def print_result(result: BenchResult, file=None) -> None:
    """One benchmark's table; units and limit notes under it."""
    file = file or sys.stdout
    print(f"\n== {result.name}: blocklab vs {result.peer} ({result.dtype}) ==", file=file)
    print(format_table(_HEADERS, [_row(c) for c in result.cases]), file=file)
    units = sorted({c.unit for c in result.cases})
    print(f"rates in {', '.join(units)} (median wall time); cpu ratio: the same in process "
          "CPU time; spread: half ours' p10-p90 range", file=file)
    for note in dict.fromkeys(c.limit_note for c in result.cases if c.limit_note):
        print(f"% limit: {note}", file=file)
    for note in result.notes:
        print(f"note: {note}", file=file)


def print_summary(results: Sequence[BenchResult], file=None) -> None:
    """All benchmarks of a run in one table."""
    file = file or sys.stdout
    rows = [[r.name, *_row(c)] for r in results for c in r.cases]
    print("\n== summary ==", file=file)
    print(format_table(["bench", *_HEADERS], rows, left=2), file=file)
    if results:
        lim = results[0].limits
        print(
            f"machine limits: copy {lim.copy_gbps:.1f} GB/s, fp32 matmul "
            f"{lim.matmul_gflops:.0f} GFLOP/s ({lim.threads} threads)",
            file=file,
        )
    busy = [r.name for r in results if r.machine.get("loadavg_1m", 0) > (r.machine["cores"] or 1)]
    if busy:
        print(f"warning: load average above the core count during {busy}: "
              "other processes shared the CPU and skewed these timings", file=file)
