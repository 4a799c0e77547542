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


# ------------------------------------------------------- bad input at the boundary (#13)

def test_prefill_mask_on_a_decode_step_is_refused():
    q, k, v = _qkv(T=1, S=5)
    with pytest.raises(ValueError, match=r"mask of shape \(1, 1, 5, 5\) does not broadcast to "
                                         r"\(B, H, T, S\) = \(2, 4, 1, 5\)"):
        scaled_dot_product_attention(q, k, v, mask=torch.ones(1, 1, 5, 5, dtype=torch.bool))


@pytest.mark.parametrize(("scale", "error"), [(0.0, ValueError), (-1.0, ValueError),
                                              (float("nan"), ValueError),
                                              (float("inf"), ValueError), ("1", TypeError)])
def test_scale_must_be_finite_and_positive(scale, error):
    with pytest.raises(error, match="scale"):
        scaled_dot_product_attention(*_qkv(), scale=scale)


@pytest.mark.parametrize("causal", ["no", 1, None])
def test_causal_must_be_a_bool(causal):
    with pytest.raises(TypeError, match="causal must be a bool"):
        scaled_dot_product_attention(*_qkv(), causal=causal)


@pytest.mark.parametrize("T,S,causal", [(1, 5, False), (5, 5, True), (5, 5, False)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nan_query_gives_nan_not_zeros(T, S, causal, dtype):
    """torch's CPU flash kernel returns a zero row for a NaN query (and for some inf)."""
    q, k, v = _qkv(T=T, S=S, dtype=dtype)
    q[0, 1, 0, 0] = float("nan")
    out = scaled_dot_product_attention(q, k, v, causal=causal)
    assert out[0, 1, 0].isnan().all()
    clean = scaled_dot_product_attention(q.nan_to_num(0.0), k, v, causal=causal)
    assert torch.equal(out[1], clean[1])  # nothing leaks into the other batch row


def test_non_finite_key_never_gives_a_zero_row():
    q, k, v = _qkv(T=1, S=1, dtype=torch.float32)
    k[:, :, 0, 0] = float("nan")
    out = scaled_dot_product_attention(q, k, v)
    assert out.isnan().any(-1).all()


def test_attention_weights_keep_nan_and_zero_only_masked_rows():
    q, k, _ = _qkv(T=2, S=3)
    q[0, 0, 0, 0] = float("nan")
    mask = torch.ones(2, 4, 2, 3, dtype=torch.bool)
    mask[1, 2, 1] = False
    w = attention_weights(q, k, mask=mask)
    assert w[0, 0, 0].isnan().all() and (w[1, 2, 1] == 0).all()


def test_no_keys_gives_zeros_and_empty_gives_empty():
    q, k, v = _qkv(S=0)
    assert torch.equal(scaled_dot_product_attention(q, k, v, causal=True), torch.zeros(2, 4, 5, 8))
    q, k, v = _qkv(B=0)
    assert scaled_dot_product_attention(q, k, v).shape == (0, 4, 5, 8)
