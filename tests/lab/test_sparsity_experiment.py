"""The sparsity lab experiment (DL0051): its rules, and a smoke-scale run end to end."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from blocklab.lab import experiments as registry
from blocklab.lab.base import VERDICTS, Context, verdict_of
from blocklab.lab.experiments import sparsity as sp


def test_run_smoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    smoke = sp.SCALES["smoke"]
    monkeypatch.setitem(sp.SCALES, "quick", smoke)
    outcome = sp.EXPERIMENT.run(Context(quick=True, out_dir=tmp_path))

    assert outcome.verdict in VERDICTS
    expected = {"l1_best_lambda", "l1_near_zero_ratio", "relu_zero_min", "prune_acc_dense",
                "prune_acc_reference", "prune_tolerance", "prune_max_sparsity",
                "gradual_minus_oneshot_high", "lm_loss_dense", "lm_gradual_gain_high",
                "csr_crossover", "verdict_l1", "verdict_relu", "verdict_pruning",
                "verdict_speed"}
    for lam in smoke.lambdas:
        expected |= {f"l1_acc_{lam:g}", f"l1_near_zero_{lam:g}", f"l1_pruned_acc_{lam:g}"}
    for s in smoke.sparsities:
        expected |= {f"prune_acc_{m}_{s:g}" for m in ("oneshot", "gradual", "none")}
    for s in smoke.speed_sparsities:
        expected |= {f"speed_ms_{v}_{s:g}" for v in ("dense", "masked", "physical", "csr")}
    assert expected <= set(outcome.metrics)
    for key, value in outcome.metrics.items():
        assert isinstance(value, (int, float)), (key, value)
        assert math.isfinite(value) or key == "csr_crossover", (key, value)
    assert 0.0 <= outcome.metrics["prune_acc_dense"] <= 1.0
    assert all(tag in outcome.evidence for tag in ("[L1: ", "[ReLU: ", "[Pruning: ", "[Speed: "))

    assert len(outcome.figures) == 4
    for rel in outcome.figures:
        path = tmp_path / rel
        assert path.is_file() and path.suffix == ".png" and path.stat().st_size > 10_000


def test_experiment_identity() -> None:
    assert "sparsity" in registry.EXPERIMENT_IDS
    assert registry.load_experiment("sparsity") is sp.EXPERIMENT
    assert sp.EXPERIMENT.card == "DL0051"
    assert sp.scale_for(Context(quick=True)) is sp.SCALES["quick"]
    assert sp.scale_for(Context(quick=False)) is sp.SCALES["full"]


def test_sub_verdicts_and_their_combination() -> None:
    assert verdict_of({"a": True, "b": True}) == "supported"
    assert verdict_of({"a": True, "b": False}) == "partly"
    assert verdict_of({"a": False, "b": False}) == "not supported"
    assert sp.combine({"x": "supported", "y": "supported"}) == "supported"
    assert sp.combine({"x": "supported", "y": "partly"}) == "partly"
    assert sp.combine({"x": "not supported", "y": "not supported"}) == "not supported"
    assert sp.combine({"x": "not supported", "y": "supported"}) == "partly"


def _run(lam: float, acc: float, near: float) -> sp.L1Run:
    return sp.L1Run(lam=lam, accuracy=acc, near_zero=near, exact_zero=0.0, pruned_accuracy=acc,
                    weights=np.zeros(1), probes={}, probe_steps=[])


def test_best_l1_is_the_strongest_lambda_that_keeps_accuracy() -> None:
    runs = [_run(0, 0.97, 0.01), _run(1e-4, 0.965, 0.5), _run(1e-3, 0.951, 0.7),
            _run(1e-2, 0.90, 0.95)]
    assert sp.best_l1(runs).lam == 1e-3  # 0.951 >= 0.97 - 0.02; 0.90 is not
    assert sp.best_l1(runs[:1]).lam == 0


def test_max_sparsity_and_tolerance() -> None:
    curve = {"oneshot": {0.5: 0.97, 0.9: 0.94, 0.95: 0.80},
             "gradual": {0.5: 0.97, 0.9: 0.965, 0.95: 0.90}}
    assert sp.max_sparsity_within(curve, 0.975, 0.01) == 0.9  # gradual at 90% is in
    assert sp.max_sparsity_within(curve, 0.99, 0.01) == 0.0
    # 2 standard errors of 98% on 360 images is 1.48 points: wider than 1 point.
    assert sp.accuracy_tolerance(0.98, 360) == pytest.approx(2 * math.sqrt(0.98 * 0.02 / 360))
    assert sp.accuracy_tolerance(0.999, 100000) == sp.PRUNE_MAX_DROP


def test_crossover_needs_every_higher_sparsity_faster() -> None:
    # Times in ms: dense / csr >= SPEEDUP counts as faster.
    speed = {0.5: {"dense": 1.0, "csr": 0.5}, 0.75: {"dense": 1.0, "csr": 0.7},
             0.9: {"dense": 1.0, "csr": 0.3}}
    assert sp.crossover(speed, "csr") == 0.5
    speed[0.75]["csr"] = 1.0  # not faster at 75%: faster only from 90%
    assert sp.crossover(speed, "csr") == 0.9
    speed[0.9]["csr"] = 1.0
    assert sp.crossover(speed, "csr") is None


def test_scale_validation() -> None:
    with pytest.raises(ValueError, match=r"lambdas must start with 0"):
        dataclasses.replace(sp.SCALES["quick"], lambdas=(1e-4, 1e-3))
    with pytest.raises(ValueError, match=r"sparsities must hold values in \(0, 1\)"):
        dataclasses.replace(sp.SCALES["quick"], sparsities=(0.5, 1.0))
    with pytest.raises(ValueError, match=r"steps must be positive, got 0"):
        dataclasses.replace(sp.SCALES["quick"], steps=0)
