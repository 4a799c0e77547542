"""Estimates with intervals, interleaved timings, and checks that compare them.

Every number a lab verdict rests on is an :class:`Estimate`: a point value, a 95%
interval and the raw repetitions it came from. A :class:`Check` compares an estimate
with a named threshold and is ``holds`` when the whole interval lies on the right
side, ``fails`` when the whole interval lies on the wrong side, and ``inconclusive``
otherwise. :func:`verdict_of` turns the counted checks into the experiment's verdict.

Which interval for which quantity:

- :func:`mean_ci` -- repetitions over seeds: mean and Student-t interval.
- :func:`paired_diff` -- two methods run on the same seeds: mean of the per-seed
  differences (the pairing removes what the seed does to both alike).
- :func:`ratio_ci` -- per-repetition ratios (interleaved timings A B A B ..., or paired
  seeds): geometric mean with a t-interval on the log ratios.
- :func:`median_ci` -- a timing: median, with the order-statistic (distribution-free)
  interval where there are enough repetitions and the min-max range otherwise.
- :func:`slope_ci` -- a growth exponent: least-squares slope of log y on log x over all
  repetitions at every x, with its standard error and t-interval.
- :func:`exact` -- a deterministic quantity (an analytic count): zero-width interval.

An estimate from one repetition has an unbounded interval, so a check on it is never
conclusive: repetitions are what make a verdict.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

__all__ = [
    "Estimate", "Check", "Timing", "mean_ci", "paired_diff", "ratio_ci", "median_ci",
    "slope_ci", "exact", "interleaved_timings", "speedup", "verdict_of", "CONFIDENCE",
]

CONFIDENCE = 0.95
Status = Literal["holds", "fails", "inconclusive"]
Verdict = Literal["supported", "partly", "inconclusive", "not supported"]


def _t_quantile(dof: int, confidence: float = CONFIDENCE) -> float:
    """Two-sided Student-t quantile (scipy ships with scikit-learn, a dependency)."""
    from scipy.stats import t

    return float(t.ppf(0.5 + confidence / 2, dof))


def _floats(samples: Iterable[float], name: str) -> list[float]:
    values = [float(s) for s in samples]
    if not values:
        raise ValueError(f"{name} needs at least one sample, got none")
    bad = [v for v in values if not math.isfinite(v)]
    if bad:
        raise ValueError(f"{name} samples must be finite, got {bad[:3]}")
    return values


@dataclass(frozen=True)
class Estimate:
    """A measured quantity: point ``value``, 95% interval [``low``, ``high``], the raw
    ``samples`` it was computed from and how (``method``)."""

    value: float
    low: float
    high: float
    samples: tuple[float, ...] = ()
    method: str = "exact"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not self.low <= self.value <= self.high and not math.isnan(self.value):
            raise ValueError(f"interval [{self.low}, {self.high}] must contain the value "
                             f"({self.value})")

    @property
    def n(self) -> int:
        return len(self.samples)

    def map(self, fn: Callable[[float], float]) -> Estimate:
        """The estimate of ``fn(quantity)`` for a monotonic ``fn`` (e.g. ``2 ** slope``)."""
        ends = sorted((fn(self.low), fn(self.high)))
        return Estimate(fn(self.value), ends[0], ends[1], self.samples, self.method,
                        {**self.extra, "mapped": True})

    def text(self, fmt: str = ".3g") -> str:
        """``value [low, high]`` (the interval left out when it has zero width)."""
        value = format(self.value, fmt)
        if self.low == self.high:
            return value
        ends = [format(e, fmt) if math.isfinite(e) else ("-inf" if e < 0 else "inf")
                for e in (self.low, self.high)]
        return f"{value} [{ends[0]}, {ends[1]}]"

    def __format__(self, spec: str) -> str:
        return self.text(spec or ".3g")

    def to_json(self) -> dict[str, Any]:
        def num(x: float) -> float | None:
            return x if math.isfinite(x) else None

        return {"value": num(self.value), "low": num(self.low), "high": num(self.high),
                "n": self.n, "method": self.method, "samples": list(self.samples),
                **self.extra}


def exact(value: float) -> Estimate:
    """A quantity with no sampling error (an analytic count, a deterministic ratio)."""
    value = float(value)
    return Estimate(value, value, value, (value,), "exact")


def mean_ci(samples: Iterable[float], confidence: float = CONFIDENCE) -> Estimate:
    """Mean of independent repetitions with a Student-t interval."""
    xs = _floats(samples, "mean_ci")
    mean = statistics.fmean(xs)
    if len(xs) < 2:
        return Estimate(mean, -math.inf, math.inf, tuple(xs), "t")
    half = _t_quantile(len(xs) - 1, confidence) * statistics.stdev(xs) / math.sqrt(len(xs))
    return Estimate(mean, mean - half, mean + half, tuple(xs), "t",
                    {"sd": statistics.stdev(xs)})


def paired_diff(a: Sequence[float], b: Sequence[float],
                confidence: float = CONFIDENCE) -> Estimate:
    """Mean of ``a[i] - b[i]`` over paired repetitions (same seed, same data), t-interval."""
    if len(a) != len(b):
        raise ValueError(f"paired_diff needs equal lengths, got {len(a)} and {len(b)}")
    est = mean_ci([x - y for x, y in zip(a, b, strict=True)], confidence)
    return Estimate(est.value, est.low, est.high, est.samples, "paired t", est.extra)


def ratio_ci(a: Sequence[float], b: Sequence[float],
             confidence: float = CONFIDENCE) -> Estimate:
    """Ratio ``a / b`` from paired repetitions: geometric mean of ``a[i] / b[i]`` with a
    t-interval on the log ratios (ratios are multiplicative, their logs symmetric)."""
    if len(a) != len(b):
        raise ValueError(f"ratio_ci needs equal lengths, got {len(a)} and {len(b)}")
    ratios = _floats((x / y for x, y in zip(a, b, strict=True)), "ratio_ci")
    if min(ratios) <= 0:
        raise ValueError(f"ratio_ci needs positive values, got ratios {ratios}")
    logs = mean_ci([math.log(r) for r in ratios], confidence)
    return Estimate(math.exp(logs.value), math.exp(logs.low), math.exp(logs.high),
                    tuple(ratios), "log t")


def median_ci(samples: Iterable[float], confidence: float = CONFIDENCE) -> Estimate:
    """Median with the distribution-free interval between order statistics, which
    exists from 6 repetitions on for 95%; below that the min-max range is given
    (``method`` says which)."""
    xs = sorted(_floats(samples, "median_ci"))
    n, med = len(xs), statistics.median(xs)
    # The largest j with P(Binomial(n, 1/2) < j) <= (1 - confidence) / 2.
    alpha, cumulative, j = (1 - confidence) / 2, 0.0, 0
    while True:
        cumulative += math.comb(n, j) / 2**n
        if cumulative > alpha:
            break
        j += 1
    if j == 0:
        return Estimate(med, xs[0], xs[-1], tuple(xs), "median, range")
    return Estimate(med, xs[j - 1], xs[n - j], tuple(xs), "median, order statistics")


def slope_ci(x: Sequence[float], y: Sequence[float], *, log: bool = True,
             confidence: float = CONFIDENCE) -> Estimate:
    """Least-squares slope of y on x (of log y on log x when ``log``) over every point,
    with a t-interval from its standard error. Give each repetition as its own point:
    ``x = [n1, n1, n2, n2, ...]``. Needs at least 3 points (1 degree of freedom)."""
    if len(x) != len(y):
        raise ValueError(f"slope_ci needs equal lengths, got {len(x)} and {len(y)}")
    if len(set(x)) < 2:
        raise ValueError(f"slope_ci needs at least two distinct x values, got {sorted(set(x))}")
    xs, ys = _floats(x, "slope_ci x"), _floats(y, "slope_ci y")
    if log:
        if min(xs) <= 0 or min(ys) <= 0:
            raise ValueError("slope_ci(log=True) needs positive x and y")
        xs, ys = [math.log(v) for v in xs], [math.log(v) for v in ys]
    n = len(xs)
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((v - mx) ** 2 for v in xs)
    slope = sum((a - mx) * (b - my) for a, b in zip(xs, ys, strict=True)) / sxx
    if n < 3:
        return Estimate(slope, -math.inf, math.inf, tuple(float(v) for v in y), "slope")
    resid = [b - (my + slope * (a - mx)) for a, b in zip(xs, ys, strict=True)]
    se = math.sqrt(sum(r * r for r in resid) / (n - 2) / sxx)
    half = _t_quantile(n - 2, confidence) * se
    return Estimate(slope, slope - half, slope + half, tuple(float(v) for v in y), "slope",
                    {"se": se, "x": [float(v) for v in x]})


# ------------------------------------------------------------------------------ timing

@dataclass
class Timing:
    """Interleaved timings of one callable: wall and process-CPU seconds per repetition.

    ``seconds`` is what a timing check reads: CPU seconds when the work ran on the CPU
    with one torch thread (the work's own time, whatever else shares the machine, where
    wall time is stretched by other processes), wall seconds otherwise (several threads
    add their CPU time up; CUDA is timed between synchronisations)."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    device_type: str = "cpu"
    threads: int = 1

    @property
    def clock(self) -> Literal["cpu", "wall"]:
        cpu_ok = self.device_type == "cpu" and self.threads == 1 and min(self.cpu, default=0) > 0
        return "cpu" if cpu_ok else "wall"

    @property
    def seconds(self) -> list[float]:
        return self.cpu if self.clock == "cpu" else self.wall

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def to_json(self) -> dict[str, Any]:
        return {"wall_s": self.wall, "cpu_s": self.cpu, "clock": self.clock,
                "threads": self.threads, "median_s": self.median}


def interleaved_timings(fns: Mapping[str, Callable[[], object]], *, repeats: int,
                        device: torch.device | str = "cpu", warmup: int = 1,
                        inner: int = 1) -> dict[str, Timing]:
    """Time each callable ``repeats`` times in the order A B C A B C ... so that a
    change of machine load hits every callable alike; each repetition runs the callable
    ``inner`` times and records seconds per call, wall (``perf_counter``) and CPU
    (``process_time``). ``warmup`` untimed rounds come first."""
    if repeats < 1:
        raise ValueError(f"repeats ({repeats}) must be >= 1")
    device = torch.device(device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    out = {name: Timing(device_type=device.type, threads=torch.get_num_threads())
           for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(inner):
                fn()
            sync()
            out[name].wall.append((time.perf_counter() - wall) / inner)
            out[name].cpu.append((time.process_time() - cpu) / inner)
    return out


def speedup(timings: Mapping[str, Timing], slow: str, fast: str) -> Estimate:
    """How many times faster ``fast`` ran than ``slow``: per-round ratios of interleaved
    timings (:attr:`Timing.seconds`, ``ratio_ci``), with the wall-time ratio and its
    interval beside it in ``extra`` when the check reads CPU time."""
    a, b = timings[slow], timings[fast]
    est = ratio_ci(a.seconds, b.seconds)
    extra: dict[str, Any] = {"clock": b.clock}
    if b.clock == "cpu":
        wall = ratio_ci(a.wall, b.wall)
        extra.update(wall_ratio=wall.value, wall_low=wall.low, wall_high=wall.high)
    return Estimate(est.value, est.low, est.high, est.samples, est.method, extra)


# ------------------------------------------------------------------------------ checks

@dataclass(frozen=True)
class Check:
    """One testable statement: ``estimate op threshold``.

    Attributes:
        name: short name, shown in the report's table of checks.
        estimate: what was measured.
        op: ``">="`` / ``"<="`` compare with ``threshold``; ``"in"`` asks for the
            interval inside ``threshold = (low, high)``.
        threshold: a number, or a (low, high) pair for ``"in"``.
        why: the reason for the threshold's value.
        counted: False for context (a property that holds by construction): shown,
            never counted in the verdict.
    """

    name: str
    estimate: Estimate
    op: Literal[">=", "<=", "in"]
    threshold: float | tuple[float, float]
    why: str = ""
    counted: bool = True

    def __post_init__(self) -> None:
        if self.op not in (">=", "<=", "in"):
            raise ValueError(f"op ({self.op!r}) must be '>=', '<=' or 'in'")
        if (self.op == "in") != isinstance(self.threshold, tuple):
            raise ValueError(f"threshold ({self.threshold!r}) must be a (low, high) pair "
                             f"exactly when op is 'in' (op {self.op!r})")

    @property
    def status(self) -> Status:
        e = self.estimate
        if math.isnan(e.value):
            return "inconclusive"
        if self.op == ">=":
            return "holds" if e.low >= self.threshold else (
                "fails" if e.high < self.threshold else "inconclusive")
        if self.op == "<=":
            return "holds" if e.high <= self.threshold else (
                "fails" if e.low > self.threshold else "inconclusive")
        lo, hi = self.threshold  # type: ignore[misc]
        if lo <= e.low and e.high <= hi:
            return "holds"
        return "fails" if e.high < lo or e.low > hi else "inconclusive"

    @property
    def threshold_text(self) -> str:
        if self.op == "in":
            lo, hi = self.threshold  # type: ignore[misc]
            return f"in [{lo:g}, {hi:g}]"
        return f"{self.op} {self.threshold:g}"

    def text(self, fmt: str = ".3g") -> str:
        """``name: estimate (need op threshold) [status]`` for evidence strings."""
        return f"{self.name}: {self.estimate.text(fmt)} (need {self.threshold_text}) [{self.status}]"

    def to_json(self) -> dict[str, Any]:
        threshold = list(self.threshold) if isinstance(self.threshold, tuple) else self.threshold
        return {"name": self.name, "estimate": self.estimate.to_json(), "op": self.op,
                "threshold": threshold, "status": self.status, "why": self.why,
                "counted": self.counted}


def verdict_of(checks: Iterable[Check]) -> Verdict:
    """The lab's rule over the counted checks: all hold -> supported; some inconclusive
    and none fails -> inconclusive; some fail and some hold -> partly; none holds and
    some fail -> not supported."""
    statuses = [c.status for c in checks if c.counted]
    if not statuses:
        raise ValueError("verdict_of needs at least one counted check")
    if all(s == "holds" for s in statuses):
        return "supported"
    if "fails" not in statuses:
        return "inconclusive"
    return "partly" if "holds" in statuses else "not supported"
