"""Figure helpers shared by the lab's experiments: estimates drawn with their 95%
intervals as error bars (an unbounded end -- one repetition -- is drawn as none)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from blocklab.lab.estimate import Estimate, mean_ci

__all__ = ["yerr", "errorbars", "band"]


def yerr(estimates: Sequence[Estimate], k: float = 1.0) -> np.ndarray:
    """Asymmetric error bars, shape (2, N), of ``k * estimate`` for matplotlib's ``yerr``."""
    return np.array([[k * (e.value - e.low) if math.isfinite(e.low) else 0.0 for e in estimates],
                     [k * (e.high - e.value) if math.isfinite(e.high) else 0.0
                      for e in estimates]])


def errorbars(ax: Any, xs: Sequence[float], estimates: Sequence[Estimate], k: float = 1.0,
              **kw: Any) -> Any:
    """``ax.errorbar`` of ``k * estimate`` at ``xs`` with the intervals as bars."""
    kw.setdefault("capsize", 3)
    return ax.errorbar(xs, [k * e.value for e in estimates], yerr=yerr(estimates, k), **kw)


def band(ax: Any, xs: Sequence[float], runs: Sequence[Sequence[float]], fmt: str = "-",
         *, k: float = 1.0, clip: tuple[float, float] | None = None, alpha: float = 0.2,
         **kw: Any) -> Any:
    """A curve over repetitions: the mean at each x of ``runs`` (one sequence per
    repetition; NaN points left out) and its 95% interval as a band (none where the
    interval is unbounded: a single repetition). Returns the line."""
    mids, lows, highs = [], [], []
    for i in range(len(xs)):
        vals = [k * float(r[i]) for r in runs if not math.isnan(float(r[i]))]
        est = mean_ci(vals) if vals else None
        lo, hi = (est.low, est.high) if est and math.isfinite(est.low) else (math.nan, math.nan)
        if clip is not None:
            lo, hi = max(lo, clip[0]), min(hi, clip[1])
        mids.append(est.value if est else math.nan)
        lows.append(lo)
        highs.append(hi)
    (line,) = ax.plot(xs, mids, fmt, **kw)
    if any(math.isfinite(v) for v in lows):
        ax.fill_between(xs, lows, highs, color=line.get_color(), alpha=alpha, lw=0)
    return line
