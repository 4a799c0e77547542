"""Zhu & Gupta's cubic schedule, the gradual pruner, lottery-ticket rewinding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from blocklab.sparsity import (
    GradualPruner,
    Pruner,
    cubic_sparsity,
    magnitude_prune,
    rewind,
    snapshot_weights,
    sparsity_report,
)
from blocklab.train import train_classifier


def test_cubic_schedule_formula():
    kw = dict(final=0.9, start=10, end=110)
    assert cubic_sparsity(0, **kw) == 0.0
    assert cubic_sparsity(10, **kw) == 0.0
    assert cubic_sparsity(110, **kw) == 0.9
    assert cubic_sparsity(500, **kw) == 0.9
    # s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3 at a quarter of the way.
    assert cubic_sparsity(35, **kw) == pytest.approx(0.9 - 0.9 * 0.75**3)
    assert cubic_sparsity(35, initial=0.5, **kw) == pytest.approx(0.9 - 0.4 * 0.75**3)
    values = [cubic_sparsity(t, **kw) for t in range(0, 120)]
    assert values == sorted(values)
    # Fast at first, slow at the end: the first half of the steps does 7/8 of the work.
    assert cubic_sparsity(60, **kw) == pytest.approx(0.9 * 7 / 8)


def test_cubic_schedule_bad_input():
    with pytest.raises(ValueError, match=r"final \(1.5\) must be a number in \[0, 1\]"):
        cubic_sparsity(0, final=1.5, start=0, end=10)
    with pytest.raises(ValueError, match=r"end \(5\) must be >= start \(10\)"):
        cubic_sparsity(0, final=0.5, start=10, end=5)


def test_gradual_pruner_follows_the_schedule_in_training():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    x, y = torch.randn(128, 8), torch.randint(0, 4, (128,))
    pruner = GradualPruner(net, 0.9, start=5, end=25, every=5)
    train_classifier(net, x, y, steps=40, batch_size=32, lr=1e-2, callback=pruner)
    assert [s for s, _ in pruner.history] == [5, 10, 15, 20, 25]
    for step, amount in pruner.history:
        assert amount == pytest.approx(cubic_sparsity(step, final=0.9, start=5, end=25))
    report = sparsity_report(net)
    assert report.zeros == round(0.9 * report.total)


def test_gradual_pruner_bad_input():
    net = nn.Linear(8, 8)
    with pytest.raises(ValueError, match=r"every \(0\) must be >= 1"):
        GradualPruner(net, 0.5, start=0, end=10, every=0)
    with pytest.raises(ValueError, match=r"start \(5\) and end \(2\)"):
        GradualPruner(net, 0.5, start=5, end=2)
    with pytest.raises(ValueError, match=r"pattern \('2:4'\) is fixed at 50%"):
        GradualPruner(net, 0.5, start=0, end=2, pattern="2:4")
    with pytest.raises(ValueError, match=r"final \(-0.1\)"):
        GradualPruner(net, -0.1, start=0, end=2)


def test_rewind_restores_early_weights_under_the_final_mask():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    init = snapshot_weights(net)
    x, y = torch.randn(64, 8), torch.randint(0, 4, (64,))
    train_classifier(net, x, y, steps=20, batch_size=32, lr=1e-2)
    pruner = magnitude_prune(net, 0.8)
    masks = {n: m.clone() for n, m in pruner.masks.items()}
    rewind(net, init)
    for name, mask in masks.items():
        layer = net.get_submodule(name)
        assert torch.equal(layer.weight, init[f"{name}.weight"] * mask)
        assert torch.equal(layer.bias, init[f"{name}.bias"])
    # The ticket retrains with its mask in force.
    train_classifier(net, x, y, steps=5, batch_size=32, lr=1e-2, callback=Pruner(net))
    report = sparsity_report(net)
    assert report.zeros == round(0.8 * report.total)
