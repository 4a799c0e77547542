"""The sparsity lab experiment (DL0051): its checks, helpers, and a smoke-scale run."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from blocklab.lab import experiments as registry
from blocklab.lab.base import VERDICTS, Context, card_rows
from blocklab.lab.estimate import Check, Estimate, exact, verdict_of
from blocklab.lab.experiments import sparsity as sp
from blocklab.sparsity import magnitude_prune

CHECK_NAMES = {"L1 near-zero share", "L1 / no-L1 near-zero share", "L1 accuracy cost",
               "near-zero share per decade of lambda", "ReLU zeros, MLP (least sparse layer)",
               "ReLU zeros, LM FFN (least sparse layer)", "accuracy loss at 90% (gradual)",
               "gradual - one-shot at 95%", "masked speed-up at 90%",
               "structured speed-up at 90%", "CSR speed-up at 95%"}


def _assert_estimate(est: Estimate) -> None:
    assert est.n >= 1 and len(est.samples) == est.n
    assert est.low <= est.value <= est.high


def test_run_smoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    smoke = sp.SCALES["smoke"]
    monkeypatch.setitem(sp.SCALES, "quick", smoke)
    outcome = sp.EXPERIMENT.run(Context(quick=True, out_dir=tmp_path))
    card_rows(sp.EXPERIMENT.card_items, outcome.checks)  # the card mapping fits the run

    assert {c.name for c in outcome.checks} == CHECK_NAMES
    for check in outcome.checks:
        assert check.counted and check.why
        assert check.status in ("holds", "fails", "inconclusive")
        _assert_estimate(check.estimate)
        assert check.text() in outcome.evidence
    # Repetitions: every training quantity has one sample per seed.
    by_name = {c.name: c for c in outcome.checks}
    assert by_name["L1 accuracy cost"].estimate.n == smoke.reps
    assert by_name["ReLU zeros, LM FFN (least sparse layer)"].estimate.n == smoke.lm_reps
    assert by_name["masked speed-up at 90%"].estimate.n == smoke.speed_repeats
    assert outcome.verdict in VERDICTS
    assert outcome.verdict == verdict_of(outcome.checks)

    m = outcome.metrics
    for lam in smoke.lambdas:
        for key in ("l1_acc", "l1_near_zero", "l1_zeroed_acc"):
            _assert_estimate(m[f"{key}_{lam:g}"])
            assert m[f"{key}_{lam:g}"].n == smoke.reps
    for s in smoke.sparsities:
        for method in ("oneshot", "gradual", "none"):
            assert 0 <= m[f"prune_acc_{method}_{s:g}"].value <= 1
        for variant in ("masked", "structured", "csr"):
            _assert_estimate(m[f"speedup_{variant}_{s:g}"])
    _assert_estimate(m["structured_loss"])
    assert m["structured_units"] == sp.structured_units(smoke.widths, sp.PRUNE_SPARSITY)

    assert len(outcome.figures) == 4
    for rel in outcome.figures:
        path = tmp_path / rel
        assert path.is_file() and path.suffix == ".png" and path.stat().st_size > 10_000


def test_experiment_identity() -> None:
    assert "sparsity" in registry.EXPERIMENT_IDS
    assert registry.load_experiment("sparsity") is sp.EXPERIMENT
    assert sp.EXPERIMENT.card == "DL0051"
    assert set(sp.EXPERIMENT.seconds) == {"quick", "full"}
    assert sp.scale_for(Context(quick=True)) is sp.SCALES["quick"]
    assert sp.scale_for(Context(quick=False)) is sp.SCALES["full"]


def test_structured_units_keep_the_weight_budget() -> None:
    widths = (64, 256, 256, 10)
    # 64 k + k^2 + 10 k <= 10% of 84,480 weights: k = 62 (8,432), k = 63 is 8,631.
    assert sp.structured_units(widths, 0.9) == 62
    assert sp.structured_units(widths, 0.0) == 256


def test_structured_mlp_shrinks_and_removing_nothing_changes_nothing() -> None:
    torch.manual_seed(0)
    widths = (8, 16, 16, 3)
    dense = sp.make_mlp(widths)
    x = torch.randn(5, 8)
    same = sp.structured_mlp(dense, widths, 0.0)
    torch.testing.assert_close(same(x), dense(x))
    small = sp.structured_mlp(dense, widths, 0.75)
    k = sp.structured_units(widths, 0.75)
    assert [m.out_features for m in sp.linears(small)] == [k, k, 3]
    assert small(x).shape == (5, 3)


def test_plain_copy_bakes_the_mask_in() -> None:
    torch.manual_seed(0)
    model = sp.make_mlp((8, 16, 16, 3))
    magnitude_prune(model, 0.8)
    plain = sp.plain_copy(model)
    x = torch.randn(4, 8)
    torch.testing.assert_close(plain(x), model(x))
    zeros = sum(int((m.weight == 0).sum()) for m in sp.linears(plain))
    total = sum(m.weight.numel() for m in sp.linears(plain))
    assert zeros == round(0.8 * total)
    assert not any(m._forward_pre_hooks for m in plain.modules())


def _rep(rng: np.random.Generator, scale: sp.Scale) -> sp.Rep:
    def noisy(v: float) -> float:
        return v + float(rng.normal(0, 0.002))

    rep = sp.Rep()
    for lam, acc, near in zip(scale.lambdas, (0.98, 0.97, 0.94), (0.01, 0.66, 0.9), strict=True):
        rep.acc[lam], rep.near_zero[lam] = noisy(acc), noisy(near)
    rep.probes = {"1": [0.5, noisy(0.2)], "3": [0.5, noisy(0.35)]}
    rep.prune = {"dense_ft": {0.0: noisy(0.98)},
                 "gradual": {0.9: noisy(0.975), 0.95: noisy(0.92)},
                 "oneshot": {0.9: noisy(0.97), 0.95: noisy(0.83)}}
    return rep


def test_checks_flatten_the_claims_and_a_mask_that_speeds_up_fails() -> None:
    scale = sp.SCALES["quick"]
    rng = np.random.default_rng(0)
    reps = [_rep(rng, scale) for _ in range(6)]
    lm = [{"layers.0.ffn": [0.5, 0.59 + 0.01 * i], "layers.1.ffn": [0.5, 0.9]} for i in range(4)]

    def speed(masked: float) -> dict[float, dict[str, Estimate]]:
        tight = {"masked": masked, "structured": 5.0, "csr": 1.5}
        return {s: {k: Estimate(v, 0.97 * v, 1.03 * v, (v,), "test") for k, v in tight.items()}
                for s in scale.sparsities}

    checks = sp.make_checks(reps, lm, speed(1.0), scale)
    status = {c.name: c.status for c in checks}
    assert status["ReLU zeros, MLP (least sparse layer)"] == "fails"  # 20% < 50%
    assert status["masked speed-up at 90%"] == "holds"  # no gain: what the card claims
    assert status["L1 near-zero share"] == status["CSR speed-up at 95%"] == "holds"
    assert verdict_of(checks) == "partly"
    faster = {c.name: c.status for c in sp.make_checks(reps, lm, speed(3.0), scale)}
    assert faster["masked speed-up at 90%"] == "fails"


def test_verdict_rule_over_flat_checks() -> None:
    def check(status_value: float) -> Check:
        return Check("x", exact(status_value), ">=", 1.0)

    assert verdict_of([check(2), check(3)]) == "supported"
    assert verdict_of([check(2), check(0)]) == "partly"
    assert verdict_of([check(0), check(0)]) == "not supported"
    straddle = Check("y", Estimate(1.0, 0.5, 1.5, (1.0,)), ">=", 1.0)
    assert verdict_of([check(2), straddle]) == "inconclusive"


def test_scale_validation() -> None:
    quick = sp.SCALES["quick"]
    with pytest.raises(ValueError, match=r"lambdas must start with 0"):
        dataclasses.replace(quick, lambdas=(1e-4, 1e-3))
    with pytest.raises(ValueError, match=r"hold L1_LAMBDA"):
        dataclasses.replace(quick, lambdas=(0.0, 1e-4, 1e-3))
    with pytest.raises(ValueError, match=r"sparsities must hold values in \(0, 1\)"):
        dataclasses.replace(quick, sparsities=(0.9, 1.0))
    with pytest.raises(ValueError, match=r"must hold PRUNE_SPARSITY"):
        dataclasses.replace(quick, sparsities=(0.8, 0.95))
    with pytest.raises(ValueError, match=r"one repetition has no interval"):
        dataclasses.replace(quick, reps=1)
    with pytest.raises(ValueError, match=r"steps must be positive, got 0"):
        dataclasses.replace(quick, steps=0)
    assert math.isclose(sp.L1_LAMBDA, 2e-4)
    assert all(sp.L1_LAMBDA in s.lambdas and sp.PRUNE_SPARSITY in s.sparsities
               for s in sp.SCALES.values())
