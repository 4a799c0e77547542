"""Figure helpers shared by the lab's experiments: estimates drawn with their 95%
intervals as error bars (an unbounded end -- one repetition -- is drawn as none)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from blocklab.lab.estimate import Estimate

__all__ = ["yerr", "errorbars"]


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
