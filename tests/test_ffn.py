import pytest
import torch
import torch.nn.functional as F

from blocklab.ffn import ACTIVATIONS, FeedForward, ffn_hidden_dim
from tests.conftest import assert_close


def test_llama_7b_width():
    assert ffn_hidden_dim(4096, activation="swiglu", multiple_of=256) == 11008
    ffn = FeedForward(4096, activation="swiglu", multiple_of=256, bias=False)
    assert ffn.hidden_dim == 11008
    assert sum(p.numel() for p in ffn.parameters()) == 3 * 4096 * 11008


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_parameter_counts(activation):
    d = 48
    ffn = FeedForward(d, activation=activation, bias=True)
    h = ffn.hidden_dim
    if activation in ("reglu", "geglu", "swiglu"):
        assert h == int(2 * 4 * d / 3)
        expected = 3 * d * h + 2 * h + d
    else:
        assert h == 4 * d
        expected = 2 * d * h + h + d
    assert sum(p.numel() for p in ffn.parameters()) == expected


def test_glu_matched_parameters_equal_plain_within_rounding():
    plain = sum(p.numel() for p in FeedForward(96, activation="gelu", bias=False).parameters())
    glu = sum(p.numel() for p in FeedForward(96, activation="swiglu", bias=False).parameters())
    assert abs(glu - plain) / plain < 0.01


@pytest.mark.parametrize(
    "activation,fn",
    [
        ("relu", F.relu), ("gelu", F.gelu), ("silu", F.silu),
        ("gelu_tanh", lambda x: F.gelu(x, approximate="tanh")),
        ("relu2", lambda x: F.relu(x) ** 2),
    ],
)
def test_plain_formula(activation, fn):
    ffn = FeedForward(16, hidden_dim=24, activation=activation).double()
    x = torch.randn(3, 5, 16, dtype=torch.float64)
    expected = ffn.w_out(fn(ffn.w_in(x)))
    assert_close(ffn(x), expected)


@pytest.mark.parametrize("activation,fn", [("swiglu", F.silu), ("geglu", F.gelu), ("reglu", F.relu)])
def test_glu_formula(activation, fn):
    ffn = FeedForward(16, hidden_dim=24, activation=activation, bias=False).double()
    x = torch.randn(3, 16, dtype=torch.float64)
    gate_w, up_w = ffn.w_in.weight[:24], ffn.w_in.weight[24:]
    expected = (fn(x @ gate_w.T) * (x @ up_w.T)) @ ffn.w_out.weight.T
    assert_close(ffn(x), expected)


def test_multiple_of_rounds_up():
    assert FeedForward(10, expansion=4.0, activation="gelu", multiple_of=16).hidden_dim == 48


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(activation="tanh"), "activation .'tanh'. must be one of"),
        (dict(expansion=0), r"expansion \(0\) must be positive"),
        (dict(hidden_dim=-3), r"hidden_dim \(-3\) must be positive"),
        (dict(multiple_of=0), r"multiple_of \(0\) must be positive"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FeedForward(16, **kwargs)
