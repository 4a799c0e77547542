"""blocklab.hf.causal_lm_loss equals Hugging Face's ForCausalLMLoss of the full logits."""

from __future__ import annotations

import pytest
import torch

from blocklab.hf import causal_lm_loss
from blocklab.hf.loss import default_chunk_size
from tests.conftest import assert_close

loss_utils = pytest.importorskip("transformers.loss.loss_utils")

B, T, C, V = 3, 11, 16, 50


def _inputs(dtype=torch.float64, ignored=0.3, ignore_index=-100):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(B, T, C, generator=g, dtype=dtype, requires_grad=True)
    weight = torch.randn(V, C, generator=g, dtype=dtype, requires_grad=True)
    labels = torch.randint(V, (B, T), generator=g)
    labels[torch.rand(B, T, generator=g) < ignored] = ignore_index
    return hidden, weight, labels


def _reference(hidden, weight, labels, *, num_items_in_batch=None, ignore_index=-100):
    """Hugging Face's ForCausalLMLoss in the inputs' dtype (it upcasts fp64 to fp32)."""
    shift = torch.nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:].reshape(-1)
    logits = (hidden @ weight.T).reshape(-1, V)
    reduction = "mean" if num_items_in_batch is None else "sum"
    loss = torch.nn.functional.cross_entropy(logits, shift, ignore_index=ignore_index,
                                             reduction=reduction)
    return loss if num_items_in_batch is None else loss / num_items_in_batch


def _both(kwargs, ours_kwargs=None, reference=_reference, **inputs):
    hidden, weight, labels = _inputs(ignore_index=kwargs.get("ignore_index", -100), **inputs)
    ref = reference(hidden, weight, labels, **kwargs)
    ref_grads = torch.autograd.grad(ref, (hidden, weight))
    got = causal_lm_loss(hidden, weight, labels, **kwargs, **(ours_kwargs or {}))
    grads = torch.autograd.grad(got, (hidden, weight))
    return (got, grads), (ref, ref_grads)


@pytest.mark.parametrize("kwargs", [
    {}, dict(num_items_in_batch=torch.tensor(17)), dict(num_items_in_batch=5),
    dict(ignore_index=7)])
@pytest.mark.parametrize("chunk_size", [1, 4, None, 1000])
def test_equals_hugging_face_formula_in_fp64(kwargs, chunk_size):
    (got, grads), (ref, ref_grads) = _both(kwargs, dict(chunk_size=chunk_size))
    assert got.dtype == torch.float64
    assert_close(got, ref)
    for a, b in zip(grads, ref_grads, strict=True):
        assert_close(a, b)


@pytest.mark.parametrize("kwargs", [{}, dict(num_items_in_batch=torch.tensor(17))])
def test_equals_hugging_face_loss_in_fp32(kwargs):
    def hf(hidden, weight, labels, **kw):
        return loss_utils.ForCausalLMLoss(hidden @ weight.T, labels, V, **kw)

    (got, grads), (ref, ref_grads) = _both(kwargs, reference=hf, dtype=torch.float32)
    assert got.dtype == torch.float32
    assert_close(got, ref)
    for a, b in zip(grads, ref_grads, strict=True):
        assert_close(a, b)


def test_shift_labels_are_used_as_given():
    hidden, weight, labels = _inputs()
    shift = torch.randint(V, (B, T))
    ref = torch.nn.functional.cross_entropy((hidden @ weight.T).reshape(-1, V), shift.flatten())
    assert_close(causal_lm_loss(hidden, weight, None, shift_labels=shift), ref)


def test_nothing_counted():
    hidden, weight, labels = _inputs()
    labels[:] = -100
    assert torch.isnan(causal_lm_loss(hidden, weight, labels))  # mean of nothing, as HF
    loss = causal_lm_loss(hidden, weight, labels, num_items_in_batch=4)
    assert loss.item() == 0.0  # a micro-batch with no counted token adds nothing
    grads = torch.autograd.grad(loss, (hidden, weight))
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)


def test_bad_arguments():
    hidden, weight, labels = _inputs()
    with pytest.raises(ValueError, match="labels or shift_labels"):
        causal_lm_loss(hidden, weight, None)
    with pytest.raises(ValueError, match="positions"):
        causal_lm_loss(hidden, weight, labels[:, :-1])
    with pytest.raises(ValueError, match="chunk_size"):
        causal_lm_loss(hidden, weight, labels, chunk_size=0)


def test_default_chunk_size_follows_the_width():
    assert [default_chunk_size(c) for c in (16, 256, 300, 4096)] == [128, 256, 512, 1024]
