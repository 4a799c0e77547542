"""l1_penalty: the sum it adds, its gradient, what it leaves out."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from blocklab.sparsity import l1_penalty
from blocklab.train import train_classifier
from tests.conftest import assert_close


def model() -> nn.Sequential:
    return nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.ReLU(), nn.Conv1d(1, 2, 3),
                         nn.Flatten(), nn.Linear(12, 3))


def test_sums_abs_weights_of_linear_and_conv_only():
    m = model().double()
    want = sum(m[i].weight.abs().sum() for i in (0, 3, 5))
    assert_close(l1_penalty(m), want)
    assert_close(l1_penalty(m, 0.25), 0.25 * want)
    with_bias = want + sum(m[i].bias.abs().sum() for i in (0, 3, 5))
    assert_close(l1_penalty(m, include_bias=True), with_bias)
    assert_close(l1_penalty(m, modules=["0"]), m[0].weight.abs().sum())


def test_gradient_is_strength_times_sign():
    m = model().double()
    l1_penalty(m, 0.1).backward()
    for i in (0, 3, 5):
        assert_close(m[i].weight.grad, 0.1 * m[i].weight.sign())
        assert m[i].bias.grad is None
    assert m[1].weight.grad is None  # the norm's gain is left alone


def test_plugs_into_the_trainer_and_shrinks_weights():
    torch.manual_seed(0)
    x, y = torch.randn(128, 6), torch.randint(0, 3, (128,))
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    plain = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    plain.load_state_dict(net.state_dict())
    kw = dict(steps=25, batch_size=32, lr=1e-2)
    train_classifier(plain, x, y, **kw)
    train_classifier(net, x, y, regularizer=functools.partial(l1_penalty, strength=1e-2), **kw)
    assert l1_penalty(net) < 0.7 * l1_penalty(plain)


@pytest.mark.parametrize("strength", [-1.0, True, "1"])
def test_bad_strength(strength):
    with pytest.raises(ValueError, match=r"strength \(.*\) must be a number >= 0"):
        l1_penalty(model(), strength)


def test_model_without_layers():
    with pytest.raises(ValueError, match=r"has no Linear/Conv layers to penalise"):
        l1_penalty(nn.Sequential(nn.ReLU()))


def test_empty_modules_list_says_so():
    with pytest.raises(ValueError, match="modules is empty"):
        l1_penalty(nn.Sequential(nn.Linear(2, 2)), modules=[])
