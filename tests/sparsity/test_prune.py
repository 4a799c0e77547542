"""magnitude_prune: which weights go, exact amounts, lasting masks, plain state_dicts."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

from blocklab.sparsity import (
    Pruner,
    compute_mask,
    keep_pruned,
    magnitude_prune,
    mask_zeros,
    sparsity_report,
)
from blocklab.sparsity.prune import MASK
from blocklab.train import train_classifier


def mlp(widths=(12, 16, 8, 4)) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def zeros(model: nn.Module) -> int:
    return sum(int((m.weight == 0).sum()) for m in linears(model))


def n_weights(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in linears(model))


# ----------------------------------------------------------- which weights go

@pytest.mark.parametrize("amount", [0.1, 0.37, 0.5, 0.9])
def test_layer_scope_prunes_the_smallest_of_each_layer(amount):
    model = mlp()
    before = [m.weight.detach().clone() for m in linears(model)]
    magnitude_prune(model, amount, scope="layer")
    for w0, layer in zip(before, linears(model), strict=True):
        k = round(amount * w0.numel())
        assert int((layer.weight == 0).sum()) == k
        pruned = layer.weight == 0
        # Every pruned weight is no larger than every kept one.
        assert w0.abs()[pruned].max() <= w0.abs()[~pruned].min()
        torch.testing.assert_close(layer.weight[~pruned], w0[~pruned], rtol=0, atol=0)


@pytest.mark.parametrize("amount", [0.25, 0.8, 0.98])
def test_global_scope_prunes_the_smallest_overall(amount):
    model = mlp()
    flat0 = torch.cat([m.weight.detach().flatten() for m in linears(model)])
    magnitude_prune(model, amount)  # global by default
    flat = torch.cat([m.weight.detach().flatten() for m in linears(model)])
    pruned = flat == 0
    assert int(pruned.sum()) == round(amount * flat.numel())
    assert flat0.abs()[pruned].max() <= flat0.abs()[~pruned].min()


def test_same_weights_as_torch_prune_unstructured():
    model = mlp((32, 64, 48, 10))
    ref = copy.deepcopy(model)
    magnitude_prune(model, 0.6, scope="layer")
    for m in linears(ref):
        torch_prune.l1_unstructured(m, "weight", amount=0.6)
    for ours, theirs in zip(linears(model), linears(ref), strict=True):
        assert torch.equal(ours.weight != 0, theirs.weight_mask.bool())

    model = mlp((32, 64, 48, 10))
    ref = copy.deepcopy(model)
    magnitude_prune(model, 0.85, scope="global")
    torch_prune.global_unstructured([(m, "weight") for m in linears(ref)],
                                    pruning_method=torch_prune.L1Unstructured, amount=0.85)
    for ours, theirs in zip(linears(model), linears(ref), strict=True):
        assert torch.equal(ours.weight != 0, theirs.weight_mask.bool())


@pytest.mark.parametrize(("pattern", "dim"), [("rows", 0), ("channels", 1)])
def test_structured_layer_scope_matches_torch_ln_structured(pattern, dim):
    model = mlp((32, 64, 48, 10))
    ref = copy.deepcopy(model)
    magnitude_prune(model, 0.5, scope="layer", pattern=pattern)
    for m in linears(ref):
        torch_prune.ln_structured(m, "weight", amount=0.5, n=2, dim=dim)
    for ours, theirs in zip(linears(model), linears(ref), strict=True):
        assert torch.equal(ours.weight != 0, theirs.weight_mask.bool())
        # Whole slices go: along dim 0 rows are all-zero or all-kept.
        nz = (ours.weight != 0).sum(dim=1 - dim)
        assert set(nz.tolist()) <= {0, ours.weight.shape[1 - dim]}


def test_rows_and_channels_of_a_conv():
    conv = nn.Conv2d(8, 16, 3)
    magnitude_prune(conv, 0.25, scope="layer", pattern="rows")
    per_filter = (conv.weight != 0).flatten(1).sum(1)
    assert int((per_filter == 0).sum()) == 4 and set(per_filter.tolist()) == {0, 8 * 9}
    conv = nn.Conv2d(8, 16, 3)
    magnitude_prune(conv, 0.5, scope="layer", pattern="channels")
    per_channel = (conv.weight != 0).transpose(0, 1).flatten(1).sum(1)
    assert int((per_channel == 0).sum()) == 4


def test_global_rows_come_nearest_the_amount():
    model = mlp((12, 40, 30, 4))
    magnitude_prune(model, 0.5, pattern="rows")
    report = sparsity_report(model)
    row_sizes = {m.weight.shape[1] for m in linears(model)}
    assert abs(report.zeros - 0.5 * report.total) <= max(row_sizes) / 2
    for m in linears(model):
        nz = (m.weight != 0).sum(1)
        assert set(nz.tolist()) <= {0, m.weight.shape[1]}


def test_two_of_four_keeps_the_two_largest_of_each_group():
    layer = nn.Linear(16, 6)
    w0 = layer.weight.detach().clone()
    magnitude_prune(layer, 0.5, pattern="2:4")
    # Oracle, loop by loop: in each row, each run of four inputs keeps its two largest |w|.
    for row in range(6):
        for start in range(0, 16, 4):
            group = w0[row, start : start + 4].tolist()
            top2 = sorted(range(4), key=lambda i, g=group: abs(g[i]), reverse=True)[:2]
            for i in range(4):
                got = layer.weight[row, start + i].item()
                assert got == (group[i] if i in top2 else 0.0)


def test_two_of_four_on_a_conv_uses_the_flattened_inputs():
    conv = nn.Conv2d(4, 8, 1)  # in * kernel = 4
    magnitude_prune(conv, 0.5, pattern="2:4")
    assert torch.equal((conv.weight != 0).reshape(8, 4).sum(-1), torch.full((8,), 2))


def test_amount_zero_changes_nothing_and_one_zeroes_all():
    model = mlp()
    x = torch.randn(5, 12)
    want = model(x)
    magnitude_prune(model, 0.0)
    torch.testing.assert_close(model(x), want, rtol=0, atol=0)
    magnitude_prune(model, 1.0)
    assert zeros(model) == n_weights(model)


def test_compute_mask_is_the_same_math():
    model = mlp()
    weights = {str(i): m.weight.detach().clone() for i, m in enumerate(linears(model))}
    masks = compute_mask(weights, 0.7)
    magnitude_prune(model, 0.7)
    for mask, layer in zip(masks.values(), linears(model), strict=True):
        assert torch.equal(mask, layer.weight != 0)


def test_only_the_named_modules_are_pruned():
    model = mlp()
    magnitude_prune(model, 0.5, modules=["0"])
    assert int((model[0].weight == 0).sum()) == round(0.5 * model[0].weight.numel())
    assert int((model[2].weight == 0).sum()) == 0
    magnitude_prune(model, 0.5, modules=[model[2]])
    assert int((model[2].weight == 0).sum()) == round(0.5 * model[2].weight.numel())


# ------------------------------------------------------------- cumulative masks

def test_masks_only_grow():
    model = mlp()
    magnitude_prune(model, 0.5)
    first = {n: m.clone() for n, m in Pruner(model).masks.items()}
    magnitude_prune(model, 0.8)
    assert zeros(model) == round(0.8 * n_weights(model))
    for name, mask in Pruner(model).masks.items():
        assert not (mask & ~first[name]).any()  # nothing pruned before comes back
    magnitude_prune(model, 0.3)  # a smaller amount revives nothing
    assert zeros(model) == round(0.8 * n_weights(model))


# ------------------------------------------------------- masks survive training

def _train_steps(model, optimizer, steps=5, x=None):
    x = torch.randn(32, 12) if x is None else x
    y = torch.randint(0, 4, (32,))
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
])
def test_masks_survive_optimizer_steps_with_state_from_before_pruning(make_opt):
    model = mlp()
    opt = make_opt(model.parameters())
    _train_steps(model, opt)  # Adam moments / momentum are non-zero everywhere
    pruner = magnitude_prune(model, 0.7)
    handle = keep_pruned(opt, pruner)
    masks = {n: m.clone() for n, m in pruner.masks.items()}
    _train_steps(model, opt, steps=10)
    for name, layer in model.named_modules():
        if name in masks:
            assert torch.all(layer.weight[~masks[name]] == 0)  # exact, right after the step
            assert torch.any(layer.weight[masks[name]] != 0)
    handle.remove()


def test_forward_masks_even_without_the_step_hook():
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    _train_steps(model, opt)
    magnitude_prune(model, 0.6)
    masks = {n: m.clone() for n, m in Pruner(model).masks.items()}
    opt.step()  # stale Adam moments move the pruned weights ...
    assert any(torch.any(model.get_submodule(n).weight[~m] != 0) for n, m in masks.items())
    model(torch.randn(2, 12))  # ... and the next forward puts them back to zero
    for name, m in masks.items():
        assert torch.all(model.get_submodule(name).weight[~m] == 0)


def test_gradients_of_pruned_weights_are_zero():
    model = mlp()
    pruner = magnitude_prune(model, 0.5)
    nn.functional.cross_entropy(model(torch.randn(8, 12)), torch.randint(0, 4, (8,))).backward()
    for name, mask in pruner.masks.items():
        grad = model.get_submodule(name).weight.grad
        assert torch.all(grad[~mask] == 0) and torch.any(grad[mask] != 0)


def test_masks_survive_the_lab_trainer():
    model = mlp()
    x, y = torch.randn(64, 12), torch.randint(0, 4, (64,))
    pruner = magnitude_prune(model, 0.9)
    train_classifier(model, x, y, steps=20, batch_size=16, lr=1e-2, weight_decay=0.1,
                     callback=pruner)
    assert zeros(model) == round(0.9 * n_weights(model))


def test_two_forwards_before_one_backward():
    model = mlp()
    magnitude_prune(model, 0.5)
    loss = model(torch.randn(4, 12)).sum() + model(torch.randn(4, 12)).sum()
    loss.backward()


def test_load_of_dense_weights_is_masked_again():
    model = mlp()
    pruner = magnitude_prune(model, 0.5)
    model.load_state_dict(mlp().state_dict())
    x = torch.randn(3, 12)
    out = model(x)
    assert zeros(model) == round(0.5 * n_weights(model))
    assert pruner.sparsity() == pytest.approx(zeros(model) / n_weights(model))
    assert out.shape == (3, 4)


# ------------------------------------------------------------------- state_dict

def test_state_dict_keys_stay_plain_and_load_into_an_unpruned_model():
    model = mlp()
    fresh = mlp()
    magnitude_prune(model, 0.75)
    state = model.state_dict()
    assert list(state) == list(fresh.state_dict())
    assert not any("orig" in k or "mask" in k for k in state)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer))  # strict: no missing or unexpected keys
    assert zeros(fresh) == round(0.75 * n_weights(fresh))
    x = torch.randn(6, 12)
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


def test_state_dict_after_a_step_holds_exact_zeros():
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    _train_steps(model, opt)
    magnitude_prune(model, 0.6)
    opt.step()  # no step hook, no forward: the state_dict pre-hook masks
    fresh = mlp()
    fresh.load_state_dict(model.state_dict())
    assert zeros(fresh) == round(0.6 * n_weights(fresh))


def test_mask_zeros_restores_training_masks_from_a_sparse_checkpoint():
    model = mlp()
    magnitude_prune(model, 0.8)
    fresh = mlp()
    fresh.load_state_dict(model.state_dict())
    mask_zeros(fresh)
    opt = torch.optim.Adam(fresh.parameters(), lr=1e-2)
    keep_pruned(opt, fresh)
    _train_steps(fresh, opt)
    assert zeros(fresh) == round(0.8 * n_weights(fresh))


# ---------------------------------------------------------------- copies, removal

def test_a_deepcopy_keeps_its_own_masks():
    model = mlp()
    magnitude_prune(model, 0.5)
    clone = copy.deepcopy(model)
    opt = torch.optim.Adam(clone.parameters(), lr=1e-2, weight_decay=0.1)
    keep_pruned(opt, clone)
    _train_steps(clone, opt)
    assert zeros(clone) == zeros(model) == round(0.5 * n_weights(model))
    assert Pruner(clone).sparsity() == pytest.approx(0.5, abs=0.01)
    for a, b in zip(linears(model), linears(clone), strict=True):
        assert getattr(a, MASK).data_ptr() != getattr(b, MASK).data_ptr()


def test_remove_keeps_the_zeros_and_drops_the_hooks():
    model = mlp()
    pruner = magnitude_prune(model, 0.5)
    pruner.remove()
    assert zeros(model) == round(0.5 * n_weights(model))
    assert pruner.masks == {}
    for layer in linears(model):
        assert not hasattr(layer, MASK) and not layer._forward_pre_hooks
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    _train_steps(model, opt, steps=1)
    assert zeros(model) < round(0.5 * n_weights(model))  # free to move again


# ------------------------------------------------------------------- bad input

@pytest.mark.parametrize("amount", [-0.1, 1.5, True, "0.5", float("nan")])
def test_amount_outside_unit_interval_is_rejected(amount):
    with pytest.raises(ValueError, match=r"amount \(.*\) must be a number in \[0, 1\]"):
        magnitude_prune(mlp(), amount)


def test_unknown_pattern_and_scope_are_rejected():
    with pytest.raises(ValueError, match=r"pattern \('3:4'\) must be one of"):
        magnitude_prune(mlp(), 0.5, pattern="3:4")
    with pytest.raises(ValueError, match=r"scope \('model'\) must be one of"):
        magnitude_prune(mlp(), 0.5, scope="model")


def test_two_of_four_needs_width_divisible_by_four_and_half():
    with pytest.raises(ValueError, match=r"'2:4' needs the input width of '0' divisible by 4, "
                                         r"got 6"):
        magnitude_prune(nn.Sequential(nn.Linear(6, 8)), 0.5, pattern="2:4")
    with pytest.raises(ValueError, match=r"amount \(0.7\) must be 0.5 for pattern '2:4'"):
        magnitude_prune(nn.Linear(8, 8), 0.7, pattern="2:4")


def test_bad_modules_are_rejected():
    with pytest.raises(ValueError, match=r"modules: '1' is a ReLU"):
        magnitude_prune(mlp(), 0.5, modules=["1"])
    with pytest.raises(ValueError, match=r"modules: 'nope' is not a submodule"):
        magnitude_prune(mlp(), 0.5, modules=["nope"])
    with pytest.raises(ValueError, match=r"has no Linear/Conv layers"):
        magnitude_prune(nn.Sequential(nn.ReLU()), 0.5)
