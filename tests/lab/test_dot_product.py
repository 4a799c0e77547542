"""The dot_product lab experiment: plumbing at a seconds-long scale, and its helpers."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from blocklab.lab.base import VERDICTS, Context, card_rows
from blocklab.lab.estimate import Estimate, mean_ci, ratio_ci, verdict_of
from blocklab.lab.experiments import dot_product as dp
from tests.conftest import assert_close


def test_run_smoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    smoke = dp.SCALES["smoke"]
    monkeypatch.setitem(dp.SCALES, "quick", smoke)
    outcome = dp.EXPERIMENT.run(Context(quick=True, out_dir=tmp_path))
    card_rows(dp.EXPERIMENT.card_items, outcome.checks)  # the card mapping fits the run

    assert outcome.verdict in VERDICTS
    expected = {"area_dot", "area_additive", "area_gap", "area_scaled_wide",
                "area_unscaled_wide", "scale_gain", "acc_dot", "acc_additive", "var_slope",
                "entropy_ratio_dmax", "grad_ratio_dmax", "steps_to_learn_dot",
                "steps_to_learn_additive"}
    for t in smoke.lengths:
        expected |= {f"dot_ms_T{t}", f"additive_ms_T{t}", f"speedup_T{t}"}
    for d in smoke.dims:
        expected |= {f"var_d{d}", f"entropy_scaled_d{d}", f"entropy_unscaled_d{d}",
                     f"grad_scaled_d{d}", f"grad_unscaled_d{d}", f"saturated_unscaled_d{d}"}
    assert expected <= set(outcome.metrics)
    for key, value in outcome.metrics.items():
        assert isinstance(value, Estimate), key
        assert value.samples and value.low <= value.value <= value.high, (key, value)
    assert 0.0 <= outcome.metrics["acc_dot"].value <= 1.0
    assert outcome.metrics["area_gap"].n == smoke.seeds  # one paired difference per seed

    counted = [c.name for c in outcome.checks if c.counted]
    assert counted == [f"speed-up of dot over additive at T=S={t}" for t in smoke.lengths] + [
        "learning-curve area, dot - additive",
        "learning-curve area, scaled - unscaled (large d_k)"]
    assert len(outcome.checks) == len(counted) + 3  # the Gaussian-vector context
    for check in outcome.checks:
        assert check.status in ("holds", "fails", "inconclusive")
        assert check.estimate.samples
        assert math.isfinite(check.estimate.low) and math.isfinite(check.estimate.high)
        assert check.text() in outcome.evidence
    assert outcome.verdict == verdict_of(outcome.checks)

    assert len(outcome.figures) == 3
    for rel in outcome.figures:
        path = tmp_path / rel
        assert path.is_file() and path.suffix == ".png" and path.stat().st_size > 10_000


def test_checks_follow_the_intervals() -> None:
    def metrics(gap: list[float], gain: list[float], speed: list[float]) -> dict:
        return {"speedup_T64": ratio_ci(speed, [1.0] * len(speed)),
                "area_gap": mean_ci(gap), "scale_gain": mean_ci(gain),
                "var_slope": mean_ci([1.0, 1.01]), "entropy_ratio_dmax": mean_ci([0.1, 0.11]),
                "grad_ratio_dmax": mean_ci([0.01, 0.02])}

    good = ([0.2, 0.25, 0.22], [0.4, 0.5, 0.45], [5.0, 5.5, 5.2])
    assert verdict_of(dp.make_checks(metrics(*good))) == "supported"
    # Additive clearly better: the quality check fails, the others still hold.
    assert verdict_of(dp.make_checks(metrics([-0.3, -0.25, -0.28], *good[1:]))) == "partly"
    # A gain straddling its threshold is inconclusive, not a coin flip.
    assert verdict_of(dp.make_checks(metrics(good[0], [0.0, 0.1, 0.05], good[2]))) == (
        "inconclusive")
    # Context never moves the verdict.
    m = metrics(*good)
    m["var_slope"] = mean_ci([2.0, 2.1])
    assert verdict_of(dp.make_checks(m)) == "supported"


def test_learning_area_and_steps_to() -> None:
    curve = ([0, 10, 20, 30], [0.1, 0.5, 0.96, 1.0])
    assert dp.learning_area(curve) == pytest.approx((0.5 + 0.96 + 1.0) / 3)
    assert dp.steps_to(curve, 0.95, cap=30) == 20
    assert dp.steps_to(curve, 1.01, cap=99) == 99


def test_experiment_identity() -> None:
    assert dp.EXPERIMENT.id == "dot_product"
    assert dp.EXPERIMENT.card == "DL0037"
    assert dp.scale_for(Context(quick=True)) is dp.SCALES["quick"]
    assert dp.scale_for(Context(quick=False)) is dp.SCALES["full"]


def test_softmax_jacobian_norm_matches_autograd() -> None:
    scores = torch.randn(4, 7, dtype=torch.float64) * 3
    norms = dp.softmax_jacobian_norm(torch.softmax(scores, -1))
    for row, norm in zip(scores, norms, strict=True):
        jac = torch.autograd.functional.jacobian(lambda z: torch.softmax(z, -1), row)
        assert_close(norm, torch.linalg.matrix_norm(jac))
    # A one-hot softmax passes no gradient; a uniform one over S keys has norm sqrt((S-1)/S^2).
    assert dp.softmax_jacobian_norm(torch.tensor([0.0, 1.0, 0.0])).item() == 0.0
    assert_close(dp.softmax_jacobian_norm(torch.full((4,), 0.25, dtype=torch.float64)),
                 torch.tensor(math.sqrt(3) / 4, dtype=torch.float64))


def test_recall_batch_is_consistent() -> None:
    scale = dp.SCALES["quick"]
    keys, values, query, target = dp.recall_batch(64, scale, torch.Generator().manual_seed(0))
    assert keys.shape == values.shape == (64, scale.n_pairs)
    for row in range(64):
        assert len(set(keys[row].tolist())) == scale.n_pairs  # keys are distinct
        (where,) = (keys[row] == query[row]).nonzero(as_tuple=True)
        assert where.numel() == 1
        assert values[row, where].item() == target[row].item()


def test_readers_share_shapes() -> None:
    query, memory = torch.randn(3, 1, 8), torch.randn(3, 5, 8)
    for make in dp.READERS.values():
        assert make(8)(query, memory, memory).shape == (3, 1, 8)


def test_scale_validation() -> None:
    with pytest.raises(ValueError, match=r"n_pairs \(40\) must not exceed vocab \(32\)"):
        dataclasses.replace(dp.SCALES["quick"], n_pairs=40)
    with pytest.raises(ValueError, match=r"steps must be positive, got 0"):
        dataclasses.replace(dp.SCALES["quick"], steps=0)
