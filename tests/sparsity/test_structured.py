"""Physical pruning: smaller dense layers equal their masked originals; CSR; 2:4 on CUDA."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from blocklab.ffn import FeedForward
from blocklab.models import TransformerConfig, TransformerLM
from blocklab.sparsity import (
    CSRLinear,
    magnitude_prune,
    neuron_scores,
    prune_ffn_neurons,
    prune_linear_pair,
    semi_structured_available,
    shrink_linear_pair,
    to_csr,
    to_semi_structured,
)
from tests.conftest import assert_close


def test_shrink_linear_pair_equals_zeroing_the_units():
    first, second = nn.Linear(6, 10).double(), nn.Linear(10, 3).double()
    keep = torch.tensor([7, 1, 4, 8])
    x = torch.randn(5, 6, dtype=torch.float64)
    new_first, new_second = shrink_linear_pair(first, second, keep, activation=torch.relu)
    assert (new_first.out_features, new_second.in_features) == (4, 4)
    # Reference: the units' incoming rows zeroed (biases stay), on the unpruned pair.
    dropped = torch.ones(10, dtype=torch.bool)
    dropped[keep] = False
    with torch.no_grad():
        first.weight[dropped] = 0
    assert_close(new_second(torch.relu(new_first(x))), second(torch.relu(first(x))))


def test_prune_linear_pair_keeps_the_strongest_units():
    first, second = nn.Linear(6, 10), nn.Linear(10, 3)
    scores = neuron_scores([first.weight], second.weight)
    _, _, keep = prune_linear_pair(first, second, 0.3)
    assert keep.numel() == 7
    assert scores[keep].min() >= scores[[i for i in range(10) if i not in keep]].max()


@pytest.mark.parametrize("activation", ["relu", "gelu", "swiglu", "reglu"])
@pytest.mark.parametrize("bias", [True, False])
def test_prune_ffn_neurons_equals_zeroing_their_input_rows(activation, bias):
    ffn = FeedForward(8, hidden_dim=12, activation=activation, bias=bias).double()
    ref = FeedForward(8, hidden_dim=12, activation=activation, bias=bias).double()
    ref.load_state_dict(ffn.state_dict())
    keep = prune_ffn_neurons(ffn, 0.25)
    assert ffn.hidden_dim == 9 and keep.numel() == 9
    assert ffn.w_in.weight.shape == ((18 if ffn.gated else 9), 8)
    assert ffn.w_out.weight.shape == (8, 9)
    dropped = torch.ones(12, dtype=torch.bool)
    dropped[keep] = False
    with torch.no_grad():
        ref.w_in.weight[:12][dropped] = 0  # the plain rows, or the gate half
        if ref.gated:
            ref.w_in.weight[12:][dropped] = 0  # and the up half
    x = torch.randn(2, 3, 8, dtype=torch.float64)
    assert_close(ffn(x), ref(x))


def test_prune_ffn_neurons_in_a_transformer():
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=32, d_model=16, n_layers=2, n_heads=2,
                            activation="relu", ffn_hidden_dim=64, max_seq_len=16)
    model = TransformerLM(cfg)
    before = model.num_parameters()
    for layer in model.layers:
        prune_ffn_neurons(layer.ffn, 0.75)
    assert model.num_parameters() == before - 2 * 2 * 48 * 16
    out = model(torch.randint(0, 32, (2, 8)))
    assert out.shape == (2, 8, 32)


def test_structured_bad_input():
    with pytest.raises(ValueError, match=r"amount \(1.0\) would remove all 12"):
        prune_ffn_neurons(FeedForward(8, hidden_dim=12), 1.0)
    with pytest.raises(ValueError, match=r"amount \(2\) must be a number in \[0, 1\]"):
        prune_ffn_neurons(FeedForward(8, hidden_dim=12), 2)
    with pytest.raises(TypeError, match=r"ffn must be a blocklab.ffn.FeedForward"):
        prune_ffn_neurons(nn.Linear(2, 2), 0.5)
    with pytest.raises(ValueError, match=r"first.out_features \(4\) must equal"):
        shrink_linear_pair(nn.Linear(2, 4), nn.Linear(5, 2), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"keep_idx must name"):
        shrink_linear_pair(nn.Linear(2, 4), nn.Linear(4, 2), torch.tensor([4]))


def test_csr_linear_matches_the_masked_linear():
    layer = nn.Linear(32, 16)
    magnitude_prune(layer, 0.9)
    csr = to_csr(layer)
    assert isinstance(csr, CSRLinear) and csr.nnz == round(0.1 * 32 * 16)
    x = torch.randn(3, 5, 32)
    assert_close(csr(x), layer(x))
    with pytest.raises(ValueError, match=r"x's last dim \(7\) must be in_features \(32\)"):
        csr(torch.randn(2, 7))


def test_semi_structured_needs_a_gpu_and_2_4():
    layer = nn.Linear(16, 16)
    if not semi_structured_available():
        with pytest.raises(ValueError, match=r"need a CUDA GPU"):
            to_semi_structured(layer)


@pytest.mark.gpu
@pytest.mark.skipif(not semi_structured_available(), reason="needs CUDA sm80+")
def test_semi_structured_matches_the_masked_linear_on_cuda():
    layer = nn.Linear(128, 128).half().cuda()
    magnitude_prune(layer, 0.5, pattern="2:4")
    x = torch.randn(64, 128, dtype=torch.float16, device="cuda")
    want = layer(x)
    to_semi_structured(layer)
    torch.testing.assert_close(layer(x), want, atol=2e-2, rtol=2e-2)  # fp16 accumulation order
