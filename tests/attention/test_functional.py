import pytest
import torch
import torch.nn.functional as F

from blocklab.attention import attention_weights, causal_mask, scaled_dot_product_attention
from tests.conftest import assert_close
from tests.reference.attention import naive_attention


def _qkv(B=2, H=4, H_kv=2, T=5, S=7, D=8, dtype=torch.float32, Dv=None):
    q = torch.randn(B, H, T, D, dtype=dtype)
    k = torch.randn(B, H_kv, S, D, dtype=dtype)
    v = torch.randn(B, H_kv, S, Dv or D, dtype=dtype)
    return q, k, v


@pytest.mark.parametrize("H,H_kv", [(4, 4), (4, 2), (4, 1)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("T,S", [(5, 5), (3, 7), (1, 6)])
def test_matches_oracle(H, H_kv, causal, T, S):
    q, k, v = _qkv(H=H, H_kv=H_kv, T=T, S=S)
    out = scaled_dot_product_attention(q, k, v, causal=causal)
    assert_close(out, naive_attention(q, k, v, causal=causal))


@pytest.mark.parametrize("H_kv", [4, 2, 1])
def test_bool_and_additive_masks_match_oracle(H_kv):
    q, k, v = _qkv(H=4, H_kv=H_kv, T=4, S=6)
    mask = torch.rand(2, 1, 4, 6) > 0.3
    mask[..., 0] = True
    out = scaled_dot_product_attention(q, k, v, mask=mask)
    assert_close(out, naive_attention(q, k, v, mask=mask))
    additive = torch.zeros(2, 1, 4, 6).masked_fill(~mask, float("-inf")) + torch.randn(2, 1, 4, 6)
    out2 = scaled_dot_product_attention(q, k, v, mask=additive)
    assert_close(out2, naive_attention(q, k, v, mask=additive))


def test_mask_and_causal_combined():
    q, k, v = _qkv(H=4, H_kv=2, T=4, S=6)
    mask = torch.rand(2, 4, 4, 6) > 0.5
    out = scaled_dot_product_attention(q, k, v, mask=mask, causal=True)
    assert_close(out, naive_attention(q, k, v, mask=mask, causal=True))


def test_fp64_exact_and_custom_scale():
    q, k, v = _qkv(dtype=torch.float64)
    out = scaled_dot_product_attention(q, k, v, scale=0.3, causal=True, mask=None)
    assert_close(out, naive_attention(q, k, v, scale=0.3, causal=True))


def test_value_dim_may_differ():
    q, k, v = _qkv(Dv=3)
    assert scaled_dot_product_attention(q, k, v).shape == (2, 4, 5, 3)


def test_fully_masked_row_gives_zeros_and_finite_grads():
    q, k, v = _qkv(H=4, H_kv=2, T=3, S=4)
    for t in (q, k, v):
        t.requires_grad_(True)
    mask = torch.ones(2, 1, 3, 4, dtype=torch.bool)
    mask[0, 0, 1] = False  # query 1 of batch 0 sees nothing
    out = scaled_dot_product_attention(q, k, v, mask=mask)
    assert torch.isfinite(out).all()
    assert (out[0, :, 1] == 0).all()
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
    additive = torch.zeros(2, 1, 3, 4).masked_fill(~mask, float("-inf"))
    out2 = scaled_dot_product_attention(q, k, v, mask=additive)
    assert (out2[0, :, 1] == 0).all() and torch.isfinite(out2).all()


def test_causal_more_queries_than_keys_has_empty_rows():
    q, k, v = _qkv(T=6, S=4)
    out = scaled_dot_product_attention(q, k, v, causal=True)
    assert torch.isfinite(out).all()
    assert (out[:, :, :2] == 0).all()  # queries 0, 1 precede every key
    assert_close(out, naive_attention(q, k, v, causal=True))


def test_equals_torch_sdpa_for_plain_mha():
    q, k, v = _qkv(H=4, H_kv=4, T=6, S=6)
    ours = scaled_dot_product_attention(q, k, v, causal=True)
    theirs = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert_close(ours, theirs)


def test_gqa_equals_repeated_kv_heads():
    q, k, v = _qkv(H=8, H_kv=2)
    grouped = scaled_dot_product_attention(q, k, v, causal=True)
    full = scaled_dot_product_attention(
        q, k.repeat_interleave(4, dim=1), v.repeat_interleave(4, dim=1), causal=True
    )
    assert_close(grouped, full)


def test_causal_mask_is_end_aligned_and_windowed():
    m = causal_mask(2, 5)
    assert m.tolist() == [[True, True, True, True, False], [True] * 5]
    w = causal_mask(5, 5, window=2)
    assert w[4].tolist() == [False, False, False, True, True]


def test_attention_weights_rows_sum_to_one_or_zero():
    q, k, _ = _qkv(H=4, H_kv=2, T=4, S=6)
    mask = torch.ones(2, 1, 4, 6, dtype=torch.bool)
    mask[1, 0, 2] = False
    w = attention_weights(q, k, mask=mask, causal=True)
    sums = w.sum(-1)
    assert torch.allclose(sums[1, :, 2], torch.zeros(4))
    sums[1, :, 2] = 1
    assert torch.allclose(sums, torch.ones_like(sums))


def test_gradcheck_fp64():
    q, k, v = _qkv(B=1, H=2, H_kv=1, T=3, S=4, D=4, dtype=torch.float64)
    mask = torch.tensor([True, True, False, True]).view(1, 1, 1, 4)
    for t in (q, k, v):
        t.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, b, c: scaled_dot_product_attention(a, b, c, mask=mask, causal=True), (q, k, v)
    )


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(q=torch.randn(2, 3, 4)), ValueError, "q must have 4 dimensions"),
        (dict(k=torch.randn(2, 3, 7, 8), v=torch.randn(2, 3, 7, 8)), ValueError,
         r"H \(4\) must be divisible by .* H_kv \(3\)"),
        (dict(v=torch.randn(2, 3, 7, 8)), ValueError, "disagree on H_kv or S"),
        (dict(k=torch.randn(2, 2, 7, 6)), ValueError, r"q head dim \(8\) must equal k head dim \(6\)"),
        (dict(v=torch.randn(2, 2, 7, 8, dtype=torch.float64)), TypeError, "share a dtype"),
        (dict(q=torch.ones(2, 4, 5, 8, dtype=torch.long)), TypeError, "floating-point"),
        (dict(mask=torch.ones(3, 1, 5, 7, dtype=torch.bool)), ValueError, "does not broadcast"),
        (dict(mask=torch.ones(2, 1, 5, 7, dtype=torch.long)), TypeError, "bool"),
        (dict(k=torch.randn(3, 2, 7, 8)), ValueError, "batch sizes differ"),
    ],
)
def test_bad_input_raises_clear_errors(kwargs, exc, match):
    q, k, v = _qkv()
    args = dict(q=q, k=k, v=v, mask=None)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        scaled_dot_product_attention(args["q"], args["k"], args["v"], mask=args["mask"])
