"""Estimates, intervals, interleaved timings and checks (blocklab.lab.estimate)."""

from __future__ import annotations

import math
import random

import pytest

from blocklab.lab.base import torch_threads
from blocklab.lab.estimate import (
    Check,
    Estimate,
    Timing,
    exact,
    interleaved_timings,
    mean_ci,
    median_ci,
    paired_diff,
    ratio_ci,
    slope_ci,
    speedup,
    verdict_of,
)


def test_mean_ci_is_the_student_t_interval() -> None:
    est = mean_ci([1.0, 2.0, 3.0, 4.0])
    half = 3.182446305284263 * math.sqrt(5 / 3) / 2  # t(0.975, 3) * sd / sqrt(n)
    assert est.value == 2.5 and est.n == 4 and est.method == "t"
    assert math.isclose(est.low, 2.5 - half) and math.isclose(est.high, 2.5 + half)


@pytest.mark.parametrize("interval", [mean_ci, median_ci])
def test_intervals_cover_about_95_percent(interval) -> None:
    rng = random.Random(0)
    trials, n = 2000, 9
    covered = 0
    for _ in range(trials):
        est = interval([rng.gauss(3.0, 1.0) for _ in range(n)])
        covered += est.low <= 3.0 <= est.high
    # mean_ci: 95% nominal; the median's order-statistic interval at n=9 is 96.1%.
    assert 0.93 <= covered / trials <= 0.98


def test_one_sample_is_never_conclusive() -> None:
    est = mean_ci([1.0])
    assert est.low == -math.inf and est.high == math.inf
    assert Check("one", est, ">=", 0.0).status == "inconclusive"
    assert est.to_json()["low"] is None


def test_paired_diff_removes_the_shared_seed_effect() -> None:
    a = [10.0, 20.0, 30.0, 40.0]
    b = [9.0, 19.1, 28.9, 39.0]
    unpaired = mean_ci(a).low - mean_ci(b).high
    est = paired_diff(a, b)
    assert unpaired < 0 < est.low  # the seeds' spread hides what pairing shows
    with pytest.raises(ValueError, match="equal lengths, got 4 and 3"):
        paired_diff(a, b[:3])


def test_ratio_ci_is_the_geometric_mean() -> None:
    est = ratio_ci([2.0, 8.0], [1.0, 2.0])
    assert math.isclose(est.value, math.sqrt(2.0 * 4.0))
    assert est.samples == (2.0, 4.0) and est.low < est.value < est.high
    with pytest.raises(ValueError, match="positive"):
        ratio_ci([1.0, -1.0], [1.0, 1.0])


def test_median_ci_order_statistics() -> None:
    small = median_ci([3.0, 1.0, 2.0])
    assert (small.value, small.low, small.high) == (2.0, 1.0, 3.0)
    assert small.method == "median, range"
    big = median_ci(list(range(20)))
    assert big.method == "median, order statistics"
    assert (big.low, big.high) == (5.0, 14.0)  # the 6th and 15th of 20 (95.9%)


def test_slope_ci() -> None:
    x = [1, 1, 2, 2, 4, 4, 8, 8]
    y = [v ** 2 * f for v, f in zip(x, [1.0, 1.02] * 4, strict=True)]
    est = slope_ci(x, y)
    assert math.isclose(est.value, 2.0, abs_tol=1e-9)
    assert est.low < 2.0 < est.high and est.high - est.low < 0.05
    per_doubling = est.map(lambda s: 2**s)
    assert math.isclose(per_doubling.value, 4.0) and per_doubling.low < 4.0
    noisy = slope_ci([1, 2, 4, 8], [1.0, 3.0, 2.0, 9.0])
    assert noisy.high - noisy.low > 1.0
    with pytest.raises(ValueError, match="two distinct x"):
        slope_ci([2, 2, 2], [1, 2, 3])


def test_non_finite_samples_are_refused() -> None:
    with pytest.raises(ValueError, match="finite"):
        mean_ci([1.0, math.nan])
    with pytest.raises(ValueError, match="at least one sample"):
        median_ci([])
    with pytest.raises(ValueError, match="must contain the value"):
        Estimate(1.0, 2.0, 3.0)


@pytest.mark.parametrize(("op", "threshold", "status"), [
    (">=", 0.5, "holds"), (">=", 1.0, "inconclusive"), (">=", 2.0, "fails"),
    ("<=", 2.0, "holds"), ("<=", 1.0, "inconclusive"), ("<=", 0.5, "fails"),
    ("in", (0.0, 2.0), "holds"), ("in", (1.0, 3.0), "inconclusive"), ("in", (3.0, 4.0), "fails"),
])
def test_check_status(op: str, threshold, status: str) -> None:
    est = Estimate(1.0, 0.8, 1.2, (0.8, 1.2), "t")
    check = Check("c", est, op, threshold)
    assert check.status == status
    assert check.text().endswith(f"[{status}]")
    assert check.to_json()["status"] == status


def test_check_validates_op_and_threshold() -> None:
    with pytest.raises(ValueError, match="op"):
        Check("c", exact(1.0), ">", 0.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pair"):
        Check("c", exact(1.0), "in", 0.0)


def _checks(*statuses: str) -> list[Check]:
    value = {"holds": 2.0, "fails": -2.0, "inconclusive": 0.0}
    return [Check(s, Estimate(value[s], value[s] - 1, value[s] + 1), ">=", 0.0)
            for s in statuses]


@pytest.mark.parametrize(("statuses", "verdict"), [
    (("holds", "holds"), "supported"),
    (("holds", "inconclusive"), "inconclusive"),
    (("inconclusive",), "inconclusive"),
    (("holds", "fails"), "partly"),
    (("holds", "fails", "inconclusive"), "partly"),
    (("fails", "inconclusive"), "not supported"),
    (("fails",), "not supported"),
])
def test_verdict_rule(statuses: tuple[str, ...], verdict: str) -> None:
    checks = _checks(*statuses)
    assert [c.status for c in checks] == list(statuses)
    assert verdict_of(checks) == verdict


def test_context_checks_are_not_counted() -> None:
    checks = [*_checks("holds"), Check("formula", exact(-1.0), ">=", 0.0, counted=False)]
    assert verdict_of(checks) == "supported"
    with pytest.raises(ValueError, match="at least one counted"):
        verdict_of(checks[1:])


def test_interleaved_timings_alternate_and_give_cpu_time() -> None:
    order: list[str] = []

    def work(name: str, n: int):
        def fn() -> None:
            order.append(name)
            sum(range(n))
        return fn

    timings = interleaved_timings({"slow": work("slow", 200_000), "fast": work("fast", 2_000)},
                                  repeats=5, warmup=1)
    assert order == ["slow", "fast"] * 6
    assert len(timings["slow"].wall) == len(timings["slow"].cpu) == 5
    est = speedup(timings, slow="slow", fast="fast")
    assert est.value > 5 and est.n == 5
    with torch_threads(1):
        one = interleaved_timings({"slow": work("slow", 200_000), "fast": work("fast", 2_000)},
                                  repeats=3)
    assert one["fast"].clock == "cpu" and one["fast"].seconds == one["fast"].cpu
    assert speedup(one, slow="slow", fast="fast").extra["wall_ratio"] > 5


def test_timing_clock() -> None:
    """CPU time on one CPU thread; wall time for several threads or CUDA."""
    def pair(**kw) -> dict[str, Timing]:
        return {"dense": Timing(wall=[4.0, 4.0, 4.0], cpu=[2.0, 2.2, 1.8], **kw),
                "fast": Timing(wall=[1.0, 1.0, 1.0], cpu=[1.0, 1.1, 0.9], **kw)}

    est = speedup(pair(), "dense", "fast")
    assert est.value == pytest.approx(2.0) and est.low == pytest.approx(2.0)
    assert est.extra["wall_ratio"] == pytest.approx(4.0)
    for kw in ({"threads": 2}, {"device_type": "cuda"}):
        assert pair(**kw)["fast"].clock == "wall"
        assert speedup(pair(**kw), "dense", "fast").value == pytest.approx(4.0)
    with pytest.raises(ValueError, match="repeats"):
        interleaved_timings({"a": lambda: None}, repeats=0)
