"""sparsity_report: weight zeros as the forward sees them, ReLU activation zeros."""

from __future__ import annotations

import pytest
import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

from blocklab.ffn import FeedForward
from blocklab.sparsity import activation_sparsity, magnitude_prune, sparsity_report


def test_counts_zeros_per_layer_and_globally():
    net = nn.Sequential(nn.Linear(4, 10), nn.ReLU(), nn.Linear(10, 5))
    with torch.no_grad():
        net[0].weight[:2] = 0  # 8 of 40
        net[2].weight[:, :3] = 0  # 15 of 50
    report = sparsity_report(net)
    assert report.layers == {"0": pytest.approx(0.2), "2": pytest.approx(0.3)}
    assert (report.zeros, report.total) == (23, 90)
    assert report.global_sparsity == pytest.approx(23 / 90)
    assert report.compression == pytest.approx(90 / 67)
    assert report.activations == {}
    assert "global sparsity 0.2556" in str(report)


def test_not_fooled_by_torch_prunes_saved_originals():
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    torch_prune.global_unstructured([(net[0], "weight"), (net[2], "weight")],
                                    pruning_method=torch_prune.L1Unstructured, amount=0.5)
    # parameters() holds the dense weight_orig: counting it would say 0% sparse.
    dense = {n: p for n, p in net.named_parameters() if n.endswith("weight_orig")}
    assert dense and all(int((p == 0).sum()) == 0 for p in dense.values())
    with torch.no_grad():  # an optimizer-like update: module.weight is stale until forward
        net[0].weight_orig.add_(1.0)
    assert sparsity_report(net).global_sparsity == pytest.approx(0.5)


def test_not_fooled_by_writes_behind_our_masks():
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    magnitude_prune(net, 0.75)
    with torch.no_grad():
        net[0].weight.data.add_(1.0)  # bypasses the version counter
    assert sparsity_report(net).global_sparsity == pytest.approx(0.75)


def test_activation_sparsity_of_relu_modules():
    net = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
    x = torch.randn(32, 4)
    h1 = torch.relu(net[0](x))
    h2 = torch.relu(net[2](h1))
    report = sparsity_report(net, x)
    assert report.activations["1"] == pytest.approx((h1 == 0).float().mean().item())
    assert report.activations["3"] == pytest.approx((h2 == 0).float().mean().item())
    assert net.training  # mode restored


@pytest.mark.parametrize("activation", ["relu", "reglu", "gelu"])
def test_activation_sparsity_inside_feedforward(activation):
    ffn = FeedForward(8, hidden_dim=32, activation=activation)
    x = torch.randn(4, 5, 8)
    h = ffn.w_in(x)
    if ffn.gated:
        gate, up = h.chunk(2, dim=-1)
        h = torch.relu(gate) * up
    else:
        h = ffn._act(h)
    got = activation_sparsity(ffn, x)
    assert got == {"": pytest.approx((h == 0).float().mean().item())}
    if activation == "gelu":
        assert got[""] == 0.0  # GELU has no exact zeros


def test_model_without_layers():
    with pytest.raises(ValueError, match=r"has no Linear/Conv weights"):
        sparsity_report(nn.Sequential(nn.ReLU()))
