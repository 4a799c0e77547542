"""The benchmark harness: timing statistics, limits, JSON records, tables.

Fast checks of the harness only; running the benchmarks themselves is slow and
marked so (``pytest -m slow``).
"""

from __future__ import annotations

import json
import time

import pytest
from benchmarks.__main__ import available, main
from benchmarks.harness import (
    BenchResult,
    Case,
    Limits,
    Timing,
    machine_info,
    machine_limits,
    print_result,
    print_summary,
    time_fn,
    time_interleaved,
)


class FakeClock:
    """A clock that only moves when a timed function says it took some time."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def taking(self, durations):
        it = iter(durations)

        def fn() -> None:
            self.now += next(it)

        return fn


def test_time_fn_median_and_percentiles_on_known_durations():
    clock = FakeClock()
    # One warm-up call (100 s, must be ignored), then five timed ones, out of order.
    fn = clock.taking([100.0, 5.0, 1.0, 4.0, 2.0, 3.0])
    t = time_fn(fn, warmup=1, repeats=5, clock=clock)
    assert t.n == 5
    assert t.median_s == pytest.approx(3.0)
    assert t.p10_s == pytest.approx(1.4)  # numpy's linear interpolation
    assert t.p90_s == pytest.approx(4.6)


def test_time_fn_runs_until_min_time():
    clock = FakeClock()
    t = time_fn(clock.taking([0.5] * 100), warmup=0, repeats=1, min_time=2.0, clock=clock)
    assert t.n == 4
    assert t.median_s == pytest.approx(0.5)


def test_time_fn_rejects_bad_arguments():
    with pytest.raises(ValueError, match="repeats"):
        time_fn(lambda: None, repeats=0)
    with pytest.raises(ValueError, match="warmup"):
        time_fn(lambda: None, warmup=-1)


def test_time_interleaved_alternates_calls():
    calls = []
    out = time_interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, warmup=1, repeats=2
    )
    assert calls == ["a", "b"] * 3
    assert set(out) == {"a", "b"} and out["a"].n == 2


def test_time_fn_with_real_sleep():
    t = time_fn(lambda: time.sleep(0.005), warmup=0, repeats=3)
    assert 0.005 <= t.median_s < 0.5
    assert 0.0 <= t.cpu_s < t.median_s  # sleeping costs no CPU
    assert t.p10_s <= t.median_s <= t.p90_s


def test_machine_limits_tiny_sizes_are_positive():
    lim = machine_limits(copy_mib=1, matmul_n=64, repeats=2)
    assert lim.copy_gbps > 0 and lim.matmul_gflops > 0
    assert lim.copy_bytes == 2**20 and lim.matmul_n == 64
    assert machine_limits(copy_mib=1, matmul_n=64, repeats=2) is lim  # one measurement per run


def test_machine_info_names_the_hardware():
    info = machine_info()
    for key in ("cpu", "cores", "torch", "torch_threads", "python", "platform", "date_utc"):
        assert info[key], key


def _result() -> BenchResult:
    limits = Limits(copy_gbps=10.0, matmul_gflops=100.0, copy_bytes=1, matmul_n=1, threads=1)
    case = Case(
        name="b1",
        ours=Timing(median_s=1.0, p10_s=0.9, p90_s=1.1, n=5, cpu_s=1.0),
        peer=Timing(median_s=2.0, p10_s=1.9, p90_s=2.1, n=5, cpu_s=3.0),
        work=100,
        limit_frac=0.25,
        limit_note="test limit",
    )
    solo = Case(name="solo", ours=Timing(0.5, 0.5, 0.5, 1), peer=None, work=10)
    return BenchResult(name="demo", peer="peer", dtype="float32", shapes={"d": 8},
                       cases=[case, solo], limits=limits)


def test_case_rates_and_ratio():
    case, solo = _result().cases
    assert case.ours_rate == pytest.approx(100.0)
    assert case.peer_rate == pytest.approx(50.0)
    assert case.ratio == pytest.approx(2.0)  # ours twice as fast
    assert case.cpu_ratio == pytest.approx(3.0)
    assert solo.ratio is None and solo.peer_rate is None and solo.cpu_ratio is None


def test_result_json_is_written_and_loadable(tmp_path):
    path = _result().write(tmp_path / "out")
    assert path == tmp_path / "out" / "demo.json"
    data = json.loads(path.read_text())
    assert data["ratios"] == {"b1": pytest.approx(2.0), "solo": None}
    assert data["cpu_ratios"]["b1"] == pytest.approx(3.0)
    assert data["limit_fractions"]["b1"] == pytest.approx(0.25)
    assert data["limits"]["copy_gbps"] == 10.0
    assert data["shapes"] == {"d": 8} and data["dtype"] == "float32"
    assert data["cases"][0]["ours"]["median_s"] == 1.0
    assert data["machine"]["cpu"]


def test_tables_show_ratio_and_limit(capsys):
    result = _result()
    print_result(result)
    print_summary([result])
    out = capsys.readouterr().out
    assert "2.00x" in out and "3.00x" in out and "25.0%" in out and "test limit" in out
    assert "demo" in out and "copy 10.0 GB/s" in out


def test_main_lists_and_checks_benchmark_names():
    assert {"generate", "train"} <= set(available())
    with pytest.raises(SystemExit):
        main(["no-such-benchmark"])


def test_main_reports_a_failing_benchmark_and_runs_the_rest(tmp_path, monkeypatch, capsys):
    import sys
    import types

    def failing(quick: bool) -> BenchResult:
        raise AssertionError("parity check failed")

    def passing(quick: bool) -> BenchResult:
        return _result()

    for name, run in (("bad", failing), ("good", passing)):
        monkeypatch.setitem(sys.modules, f"benchmarks.bench_{name}",
                            types.SimpleNamespace(run=run))
    monkeypatch.setattr("benchmarks.__main__.available", lambda: ["bad", "good"])
    assert main(["bad", "good", "--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "benchmark bad failed" in out and "failed: bad" in out
    assert (tmp_path / "demo.json").exists()


@pytest.mark.slow
def test_every_benchmark_runs_quick(tmp_path, capsys):
    assert main(["--quick", "--out", str(tmp_path)]) == 0
    for name in available():
        data = json.loads((tmp_path / f"{name}.json").read_text())
        assert all(r > 0 for r in data["ratios"].values())
    assert "summary" in capsys.readouterr().out
