"""Additive attention against the loop-style fp64 oracle, masks, gradients, bad inputs."""

from __future__ import annotations

import pytest
import torch

from blocklab.attention.additive import AdditiveAttention, additive_scores
from tests.conftest import assert_close
from tests.reference.additive import additive_attention_reference


def _case(dtype: torch.dtype, b: int = 2, t: int = 3, s: int = 5, dq: int = 4, dk: int = 6,
          dv: int = 7, h: int = 8) -> tuple[AdditiveAttention, torch.Tensor, torch.Tensor,
                                             torch.Tensor]:
    attn = AdditiveAttention(dq, dk, h, value_dim=dv).to(dtype)
    # Larger-than-init v so the softmax is far from uniform and errors would show.
    with torch.no_grad():
        attn.v.normal_()
    q = torch.randn(b, t, dq, dtype=dtype)
    k = torch.randn(b, s, dk, dtype=dtype)
    v = torch.randn(b, s, dv, dtype=dtype)
    return attn, q, k, v


def _oracle(attn: AdditiveAttention, q, k, v, mask=None):
    return additive_attention_reference(q, k, v, attn.w_q.weight, attn.w_k.weight, attn.v, mask)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_oracle(dtype: torch.dtype) -> None:
    attn, q, k, v = _case(dtype)
    context, weights = attn(q, k, v)
    ref_context, ref_weights = _oracle(attn, q, k, v)
    assert context.shape == (2, 3, 7) and weights.shape == (2, 3, 5)
    assert context.dtype == dtype
    assert_close(weights, ref_weights)
    assert_close(context, ref_context)


def test_values_default_to_keys() -> None:
    attn = AdditiveAttention(4, 6, 8).double()
    q, k = torch.randn(2, 3, 4, dtype=torch.float64), torch.randn(2, 5, 6, dtype=torch.float64)
    context, _ = attn(q, k)
    ref_context, _ = _oracle(attn, q, k, k)
    assert_close(context, ref_context)


def test_scores_match_oracle_logits() -> None:
    # Softmax is shift-invariant, so compare the raw scores by a direct formula as well.
    qp = torch.randn(2, 3, 8, dtype=torch.float64)
    kp = torch.randn(2, 5, 8, dtype=torch.float64)
    w = torch.randn(8, dtype=torch.float64)
    expected = torch.empty(2, 3, 5, dtype=torch.float64)
    for b in range(2):
        for t in range(3):
            for s in range(5):
                expected[b, t, s] = (w * torch.tanh(qp[b, t] + kp[b, s])).sum()
    assert_close(additive_scores(qp, kp, w), expected)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_padding_mask_matches_oracle(dtype: torch.dtype) -> None:
    attn, q, k, v = _case(dtype)
    lengths = torch.tensor([5, 2])
    mask = torch.arange(5)[None, :] < lengths[:, None]  # (B, S)
    context, weights = attn(q, k, v, mask=mask)
    ref_context, ref_weights = _oracle(attn, q, k, v, mask[:, None, :].expand(2, 3, 5))
    assert_close(weights, ref_weights)
    assert_close(context, ref_context)
    assert (weights[1, :, 2:] == 0).all()


def test_per_query_mask_and_fully_masked_row() -> None:
    attn, q, k, v = _case(torch.float64)
    mask = torch.rand(2, 3, 5) > 0.4
    mask[0, 1] = False  # a query that may attend to nothing
    mask[1, 2] = False
    q.requires_grad_(True)
    context, weights = attn(q, k, v, mask=mask)
    ref_context, ref_weights = _oracle(attn, q, k, v, mask)
    assert_close(weights, ref_weights)
    assert_close(context, ref_context)
    assert torch.isfinite(context).all() and torch.isfinite(weights).all()
    assert (weights[0, 1] == 0).all() and (context[0, 1] == 0).all()
    assert (context[1, 2] == 0).all()
    context.sum().backward()
    assert torch.isfinite(q.grad).all()
    assert (q.grad[0, 1] == 0).all()


def test_all_keys_masked_float32_no_nan() -> None:
    attn, q, k, v = _case(torch.float32)
    context, weights = attn(q, k, v, mask=torch.zeros(2, 5, dtype=torch.bool))
    assert not torch.isnan(context).any() and not torch.isnan(weights).any()
    assert (context == 0).all() and (weights == 0).all()


def test_weights_are_a_distribution() -> None:
    attn, q, k, v = _case(torch.float32)
    _, weights = attn(q, k, v)
    assert (weights >= 0).all()
    assert_close(weights.sum(-1), torch.ones(2, 3))


def test_gradcheck_fp64() -> None:
    attn, q, k, v = _case(torch.float64, b=1, t=2, s=3, dq=2, dk=3, dv=2, h=3)
    # Second query sees no key: its zero output must also have a clean gradient.
    mask = torch.tensor([[[True, False, True], [False, False, False]]])
    names = [name for name, _ in attn.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for _, p in attn.named_parameters())
    inputs = tuple(x.clone().requires_grad_(True) for x in (q, k, v))

    def fn(q, k, v, *params):
        return torch.func.functional_call(attn, dict(zip(names, params, strict=True)), (q, k, v),
                                          {"mask": mask})

    assert torch.autograd.gradcheck(fn, inputs + params)


def test_gradcheck_scores_fp64() -> None:
    qp = torch.randn(1, 2, 3, dtype=torch.float64, requires_grad=True)
    kp = torch.randn(1, 4, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(additive_scores, (qp, kp, w))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"query_dim": 0, "key_dim": 4, "hidden_dim": 4}, r"query_dim must be a positive int, got 0"),
        ({"query_dim": 4, "key_dim": 4, "hidden_dim": -1}, r"hidden_dim .* got -1"),
        ({"query_dim": 4, "key_dim": 4, "hidden_dim": 4, "value_dim": 0}, r"value_dim .* got 0"),
    ],
)
def test_bad_constructor_args(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AdditiveAttention(**kwargs)


def test_bad_forward_inputs() -> None:
    attn = AdditiveAttention(4, 6, 8, value_dim=7)
    q, k, v = torch.randn(2, 3, 4), torch.randn(2, 5, 6), torch.randn(2, 5, 7)
    with pytest.raises(ValueError, match=r"query must have rank 3, got shape \(3, 4\)"):
        attn(q[0], k, v)
    with pytest.raises(ValueError, match=r"query last dim \(5\) must equal query_dim \(4\)"):
        attn(torch.randn(2, 3, 5), k, v)
    with pytest.raises(ValueError, match=r"keys last dim \(3\) must equal key_dim \(6\)"):
        attn(q, torch.randn(2, 5, 3), v)
    with pytest.raises(ValueError, match=r"values last dim \(6\) must equal value_dim \(7\)"):
        attn(q, k)
    with pytest.raises(ValueError, match=r"keys length \(5\) must equal values length \(4\)"):
        attn(q, k, torch.randn(2, 4, 7))
    with pytest.raises(ValueError, match=r"batch sizes must match: query \(2\), keys \(1\)"):
        attn(q, k[:1], v)
    with pytest.raises(TypeError, match=r"query must be a torch.Tensor, got list"):
        attn([[1.0]], k, v)
    with pytest.raises(TypeError, match=r"keys must be a floating-point tensor, got dtype torch.int64"):
        attn(q, torch.ones(2, 5, 6, dtype=torch.long), v)


def test_bad_masks() -> None:
    attn = AdditiveAttention(4, 6, 8)
    q, k = torch.randn(2, 3, 4), torch.randn(2, 5, 6)
    with pytest.raises(TypeError, match=r"mask must be a bool tensor .* got dtype torch.float32"):
        attn(q, k, mask=torch.ones(2, 5))
    with pytest.raises(ValueError, match=r"mask must have shape \(B, S\) = \(2, 5\) or "
                                         r"\(B, T, S\) = \(2, 3, 5\), got \(2, 4\)"):
        attn(q, k, mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"got \(3, 5\)"):
        attn(q, k, mask=torch.ones(3, 5, dtype=torch.bool))


def test_bad_score_inputs() -> None:
    with pytest.raises(ValueError, match=r"hidden sizes must match: q_proj \(4\), k_proj \(4\), v \(3\)"):
        additive_scores(torch.randn(1, 2, 4), torch.randn(1, 3, 4), torch.randn(3))
    with pytest.raises(ValueError, match=r"q_proj batch \(2\) must equal k_proj batch \(1\)"):
        additive_scores(torch.randn(2, 2, 4), torch.randn(1, 3, 4), torch.randn(4))
    with pytest.raises(ValueError, match=r"v must have rank 1, got shape \(4, 1\)"):
        additive_scores(torch.randn(1, 2, 4), torch.randn(1, 3, 4), torch.randn(4, 1))
