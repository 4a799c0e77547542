"""Dilated attention: the fp64 oracle, dense equivalence, exact mixing gradients, masks,
causality, validation, and the TransformerLM drop-in."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from blocklab.attention.dilated import (
    DilatedAttention,
    _mix,
    _pad,
    _patterns_autograd,
    _prepare,
    dilated_attention,
    dilated_attention_flops,
    dilated_pattern_mask,
    pattern_attention,
)
from blocklab.attention.functional import scaled_dot_product_attention
from blocklab.attention.multihead import Attention
from blocklab.models import TransformerConfig, TransformerLM
from tests.conftest import assert_close
from tests.reference.dilated import naive_dilated_attention, naive_visible_keys

# (B, H, H_kv, T, D, segment_lengths, dilation_rates): ragged lengths, segments longer
# than the sequence, fewer heads than the rate, grouped K/V heads.
CASES = [
    (2, 4, 4, 24, 8, (8, 16), (1, 2)),
    (1, 4, 4, 23, 8, (8, 16, 32), (1, 2, 4)),
    (2, 3, 3, 21, 4, (6, 12), (3, 6)),
    (1, 2, 2, 13, 8, (64,), (8,)),
    (2, 4, 2, 20, 8, (4, 12), (2, 3)),
    (1, 2, 1, 9, 4, (3, 6, 9), (1, 3, 9)),
]


def _qkv(B, H, H_kv, T, D, dtype=torch.float64, grad=False):
    q = torch.randn(B, H, T, D, dtype=dtype)
    k = torch.randn(B, H_kv, T, D, dtype=dtype)
    v = torch.randn(B, H_kv, T, D, dtype=dtype)
    return tuple(x.requires_grad_(grad) for x in (q, k, v))


def _autograd_path(q, k, v, ws, rs, causal=False, key_padding_mask=None):
    """The materialising path that runs off CPU, called directly."""
    qq, kk, vv, kv, plan, L_max, scale = _prepare(q, k, v, ws, rs, key_padding_mask, None, causal)
    out, _ = _mix(*_patterns_autograd(_pad(qq, L_max), _pad(kk, L_max), _pad(vv, L_max), kv,
                                      plan, causal, scale))
    return out[:, :, : q.shape[2]].to(q.dtype)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_matches_oracle_fp64_values_and_gradients(case, causal, masked):
    B, H, H_kv, T, D, ws, rs = case
    q, k, v = _qkv(B, H, H_kv, T, D, grad=True)
    kpm = torch.rand(B, T) > 0.3 if masked else None
    kw = dict(segment_lengths=ws, dilation_rates=rs, causal=causal, key_padding_mask=kpm)
    ref = naive_dilated_attention(q, k, v, **kw)
    grad = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, (q, k, v), grad)
    for name, out in (("cpu kernel", dilated_attention(q, k, v, **kw)),
                      ("autograd path", _autograd_path(q, k, v, ws, rs, causal, kpm))):
        assert_close(out, ref)
        for got, want in zip(torch.autograd.grad(out, (q, k, v), grad), ref_grads, strict=True):
            assert torch.isfinite(got).all(), name
            assert_close(got, want)


@pytest.mark.parametrize("case", CASES[:3])
def test_kernel_calls_in_pieces_match_oracle(case, monkeypatch):
    """Long sequences gather their segments a few rows at a time (one row here)."""
    import blocklab.attention.dilated as dilated_module

    monkeypatch.setattr(dilated_module, "_GATHER_ELEMS_PER_THREAD", 1)
    B, H, H_kv, T, D, ws, rs = case
    q, k, v = _qkv(B, H, H_kv, T, D, grad=True)
    kw = dict(segment_lengths=ws, dilation_rates=rs, causal=True,
              key_padding_mask=torch.rand(B, T) > 0.3)
    rows = dilated_module._groups(dilated_module._plan(T, ws, rs)[0], H, 64, D, q.device)
    assert all(len(r) == 1 for r, _ in rows) and len(rows) > len(ws)
    ref = naive_dilated_attention(q, k, v, **kw)
    out = dilated_attention(q, k, v, **kw)
    assert_close(out, ref)
    grad = torch.randn_like(ref)
    for got, want in zip(torch.autograd.grad(out, (q, k, v), grad),
                         torch.autograd.grad(ref, (q, k, v), grad), strict=True):
        assert_close(got, want)


def test_gradcheck_fp64():
    q, k, v = _qkv(1, 3, 3, 11, 4, grad=True)
    kpm = torch.tensor([[True] * 9 + [False, True]])
    for causal in (False, True):
        assert torch.autograd.gradcheck(
            lambda q, k, v, c=causal: dilated_attention(
                q, k, v, segment_lengths=[4, 8], dilation_rates=[1, 2], causal=c,
                key_padding_mask=kpm),
            (q, k, v),
        )


def test_mixing_weights_need_their_gradient():
    """Weights computed under no_grad (torchscale) leave the forward exact but the
    gradient wrong; ours matches the exact one."""
    q, k, v = _qkv(1, 2, 2, 16, 8, grad=True)
    q.data *= 2  # sharper scores: denominators differ more between patterns
    kw = dict(segment_lengths=[4, 16], dilation_rates=[1, 4])
    exact = naive_dilated_attention(q, k, v, **kw)
    detached = naive_dilated_attention(q, k, v, detach_weights=True, **kw)
    assert_close(detached, exact)
    g_exact = torch.autograd.grad(exact.sum(), q)[0]
    g_detached = torch.autograd.grad(detached.sum(), q)[0]
    rel = (g_detached - g_exact).norm() / g_exact.norm()
    assert rel > 0.1, rel
    assert_close(torch.autograd.grad(dilated_attention(q, k, v, **kw).sum(), q)[0], g_exact)


@pytest.mark.parametrize("T", [1, 17, 64, 100])
@pytest.mark.parametrize("causal", [False, True])
def test_one_segment_rate_one_is_dense(T, causal):
    q, k, v = _qkv(2, 4, 4, T, 16, dtype=torch.float32)
    dense = scaled_dot_product_attention(q, k, v, causal=causal)
    for w in (T, 128):
        out = dilated_attention(q, k, v, segment_lengths=[w], dilation_rates=[1], causal=causal)
        assert_close(out, dense)
        assert_close(_autograd_path(q, k, v, [w], [1], causal), dense)


def test_same_pattern_twice_is_that_pattern():
    """Mixing a pattern with itself: equal denominators, weights 1/2 each."""
    q, k, v = _qkv(1, 2, 2, 20, 8, dtype=torch.float32)
    once = dilated_attention(q, k, v, segment_lengths=[8], dilation_rates=[2])
    twice = dilated_attention(q, k, v, segment_lengths=[8, 8], dilation_rates=[2, 2])
    assert_close(twice, once)


def test_pattern_attention_and_mixing_by_lse():
    q, k, v = _qkv(1, 4, 4, 20, 8)
    ws, rs = (4, 8, 16), (1, 2, 4)
    outs, lses = zip(*(pattern_attention(q, k, v, segment_length=w, dilation_rate=r,
                                         causal=True) for w, r in zip(ws, rs, strict=True)),
                     strict=True)
    weights = torch.softmax(torch.stack(lses), dim=0)
    mixed = sum(wk[..., None] * ok for wk, ok in zip(weights, outs, strict=True))
    assert_close(mixed, dilated_attention(q, k, v, segment_lengths=ws, dilation_rates=rs,
                                          causal=True))
    # lse is the log-sum-exp of the scores the pattern mask shows.
    scores = q @ k.transpose(-1, -2) / math.sqrt(8)
    for h in range(4):
        masks = dilated_pattern_mask(20, segment_lengths=ws, dilation_rates=rs, head=h,
                                     causal=True)
        for p in range(3):
            want = torch.logsumexp(scores[0, h].masked_fill(~masks[p], -math.inf), dim=-1)
            assert_close(lses[p][0, h], want)


def test_pattern_mask_matches_oracle():
    ws, rs = (6, 12, 24), (1, 3, 6)
    for head in range(4):
        for causal in (False, True):
            masks = dilated_pattern_mask(30, segment_lengths=ws, dilation_rates=rs, head=head,
                                         causal=causal)
            want = naive_visible_keys(30, segment_lengths=ws, dilation_rates=rs, head=head,
                                      causal=causal)
            for m, pairs in zip(masks, want, strict=True):
                assert set(map(tuple, m.nonzero().tolist())) == pairs


def test_causal_never_sees_the_future():
    q, k, v = _qkv(1, 4, 4, 40, 8, dtype=torch.float32, grad=True)
    kw = dict(segment_lengths=[8, 16, 32], dilation_rates=[1, 2, 4], causal=True)
    out = dilated_attention(q, k, v, **kw)
    t = 21
    k2, v2 = k.detach().clone(), v.detach().clone()
    k2[:, :, t + 1:] += 5 * torch.randn_like(k2[:, :, t + 1:])
    v2[:, :, t + 1:] += 5 * torch.randn_like(v2[:, :, t + 1:])
    out2 = dilated_attention(q.detach(), k2, v2, **kw)
    torch.testing.assert_close(out2[:, :, : t + 1], out[:, :, : t + 1].detach(), atol=0, rtol=0)
    dk, dv = torch.autograd.grad(out[:, :, : t + 1].sum(), (k, v))
    assert dk[:, :, t + 1:].abs().max() == 0 and dv[:, :, t + 1:].abs().max() == 0


def test_key_padding_mask_hides_keys_and_empty_rows_are_zero():
    q, k, v = _qkv(2, 2, 2, 12, 8, dtype=torch.float32, grad=True)
    kpm = torch.ones(2, 12, dtype=torch.bool)
    kpm[0, 5:9] = False
    kpm[1] = False  # nothing to attend to at all
    kw = dict(segment_lengths=[4, 8], dilation_rates=[1, 2], key_padding_mask=kpm)
    out = dilated_attention(q, k, v, **kw)
    k2, v2 = k.detach().clone(), v.detach().clone()
    k2[0, :, 5:9] = 100.0
    v2[0, :, 5:9] = -100.0
    assert_close(dilated_attention(q.detach(), k2, v2, **kw)[0], out[0].detach())
    assert out[1].abs().max() == 0
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    assert all(torch.isfinite(g).all() for g in grads)
    # Causal rows whose only visible keys are masked are zero, not NaN.
    causal_out = dilated_attention(q, k, v, causal=True, **kw)
    assert torch.isfinite(causal_out).all()


def test_bf16_close_to_oracle():
    q, k, v = _qkv(2, 4, 4, 37, 16)
    kpm = torch.rand(2, 37) > 0.2
    kw = dict(segment_lengths=[8, 16], dilation_rates=[2, 4], causal=True, key_padding_mask=kpm)
    ref = naive_dilated_attention(q, k, v, **kw)
    qb, kb, vb = (x.to(torch.bfloat16).requires_grad_() for x in (q, k, v))
    out = dilated_attention(qb, kb, vb, **kw)
    assert out.dtype == torch.bfloat16
    assert_close(out, ref)
    out.float().sum().backward()
    assert qb.grad.dtype == torch.bfloat16 and torch.isfinite(qb.grad).all()


def test_empty_sequence():
    q, k, v = _qkv(2, 2, 2, 0, 4, dtype=torch.float32)
    out = dilated_attention(q, k, v, segment_lengths=[4], dilation_rates=[2])
    assert out.shape == (2, 2, 0, 4)


def test_flops_formula():
    kw = dict(segment_lengths=[4, 8, 16], dilation_rates=[1, 2, 4], n_heads=4, head_dim=8)
    # Counted matmul FLOPs of the materialising path (it computes every (m, m) score).
    q, k, v = _qkv(1, 4, 4, 32, 8, dtype=torch.float32)
    with FlopCounterMode(display=False) as counter:
        _autograd_path(q, k, v, [4, 8, 16], [1, 2, 4])
    assert counter.get_total_flops() == dilated_attention_flops(32, **kw)
    # Linear in length for fixed patterns; dense is one pattern covering everything.
    assert dilated_attention_flops(64, **kw) == 2 * dilated_attention_flops(32, **kw)
    dense = dilated_attention_flops(32, segment_lengths=[32], dilation_rates=[1], n_heads=4,
                                    head_dim=8, causal=True)
    assert dense == 4 * 8 * 4 * 32 * 33 // 2


def test_validation_errors_name_arguments():
    q, k, v = _qkv(1, 2, 2, 8, 4, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"segment_lengths\[1\] \(6\) must be divisible by "
                                         r"dilation_rates\[1\] \(4\)"):
        dilated_attention(q, k, v, segment_lengths=[4, 6], dilation_rates=[1, 4])
    with pytest.raises(ValueError, match=r"must have the same length, got 2 and 1"):
        dilated_attention(q, k, v, segment_lengths=[4, 8], dilation_rates=[1])
    with pytest.raises(ValueError, match=r"dilation_rates\[0\] \(0\) must be >= 1"):
        dilated_attention(q, k, v, segment_lengths=[4], dilation_rates=[0])
    with pytest.raises(ValueError, match="at least one pattern"):
        dilated_attention(q, k, v, segment_lengths=[], dilation_rates=[])
    with pytest.raises(TypeError, match=r"segment_lengths\[0\] must be an int"):
        dilated_attention(q, k, v, segment_lengths=[4.0], dilation_rates=[1])
    with pytest.raises(ValueError, match=r"q length T \(8\) must equal k/v length S \(6\)"):
        dilated_attention(q, k[:, :, :6], v[:, :, :6], segment_lengths=[4], dilation_rates=[1])
    with pytest.raises(ValueError, match=r"key_padding_mask must be \(B, S\) = \(1, 8\)"):
        dilated_attention(q, k, v, segment_lengths=[4], dilation_rates=[1],
                          key_padding_mask=torch.ones(1, 7, dtype=torch.bool))
    with pytest.raises(TypeError, match="key_padding_mask must be a bool tensor"):
        dilated_attention(q, k, v, segment_lengths=[4], dilation_rates=[1],
                          key_padding_mask=torch.ones(1, 8))


# ------------------------------------------------------------------------------ module

def _tiny_lm(**kw) -> TransformerLM:
    cfg = TransformerConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, max_seq_len=128,
                            **kw)
    return TransformerLM(cfg).eval()


def test_from_attention_covering_pattern_equals_attention():
    attn = Attention(32, 4, n_kv_heads=2)
    dil = DilatedAttention.from_attention(attn, segment_lengths=[64], dilation_rates=[1])
    x = torch.randn(2, 30, 32)
    for causal in (False, True):
        assert_close(dil(x, causal=causal), attn(x, causal=causal))


def test_swap_into_transformer_lm():
    model = _tiny_lm()
    ids = torch.randint(0, 64, (2, 40))
    pad = torch.ones(2, 40, dtype=torch.bool)
    pad[1, :7] = False  # left padding
    want = model(ids, padding_mask=pad)
    for layer in model.layers:
        layer.attn = DilatedAttention.from_attention(layer.attn, segment_lengths=[64],
                                                     dilation_rates=[1])
    got = model(ids, padding_mask=pad)
    assert_close(got[0], want[0])
    assert_close(got[1, 7:], want[1, 7:])

    # Real dilation: a fresh module swapped in trains (finite loss and gradients).
    model.layers[1].attn = DilatedAttention(32, 4, segment_lengths=[8, 16, 32],
                                            dilation_rates=[1, 2, 4], rope=model.rope)
    model.train()
    logits = model(ids)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 64), ids[:, 1:].reshape(-1))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.layers[1].attn.wqkv.weight.grad is not None


def test_module_refuses_cache_and_general_masks():
    model = _tiny_lm()
    model.layers[0].attn = DilatedAttention(32, 4, segment_lengths=[8], dilation_rates=[2])
    with pytest.raises(NotImplementedError, match="does not support a KV cache"):
        model.generate(torch.randint(0, 64, (1, 5)), 2)
    attn = DilatedAttention(32, 4, segment_lengths=[8], dilation_rates=[2])
    x = torch.randn(1, 6, 32)
    with pytest.raises(ValueError, match="only key padding masks"):
        attn(x, mask=torch.ones(1, 4, 6, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"x must be \(B, T, C=32\)"):
        attn(torch.randn(1, 6, 16))
    with pytest.raises(ValueError, match=r"d_model \(30\) must be divisible by n_heads \(4\)"):
        DilatedAttention(30, 4, segment_lengths=[8], dilation_rates=[2])
    with pytest.raises(ValueError, match="sliding window"):
        DilatedAttention.from_attention(Attention(32, 4, window=4), segment_lengths=[8],
                                        dilation_rates=[1])
    assert "segment_lengths=[8]" in repr(attn)


# ------------------------------------------------------------- sizes at the boundary (#13)

@pytest.mark.parametrize("causal", [False, True])
def test_rate_far_above_the_length_stays_small(causal):
    """A rate of 10^9 over 8 tokens once padded every head to 10^9 positions (32 GB)."""
    q, k, v = _qkv(1, 4, 2, 8, 4, grad=True)
    kw = dict(segment_lengths=[10**9, 4], dilation_rates=[10**9, 2], causal=causal)
    out = dilated_attention(q, k, v, **kw)
    ref = naive_dilated_attention(q, k, v, **kw)
    assert_close(out, ref)
    grad = torch.randn_like(ref)
    for got, want in zip(torch.autograd.grad(out, (q, k, v), grad),
                         torch.autograd.grad(ref, (q, k, v), grad), strict=True):
        assert_close(got, want)


@pytest.mark.parametrize("shape", [(0, 2, 8, 4), (1, 2, 0, 4), (1, 2, 8, 0)])
def test_empty_in_empty_out(shape):
    q = torch.randn(shape)
    out = dilated_attention(q, q, q, segment_lengths=[4], dilation_rates=[2])
    assert out.shape == shape


def test_flops_closed_form_matches_the_count_and_checks_sizes():
    def loop(T, ws, rs, H):
        return sum(len(range(s + h % r, min(s + w, T), r)) ** 2
                   for h in range(H) for w, r in zip(ws, rs, strict=True) for s in range(0, T, w))

    for T in (0, 1, 7, 64, 100):
        for ws, rs in (([4], [1]), ([6, 12], [2, 3]), ([8, 32], [4, 16])):
            assert dilated_attention_flops(T, segment_lengths=ws, dilation_rates=rs, n_heads=5,
                                           head_dim=2) == 4 * 2 * loop(T, ws, rs, 5)
    for kw, error in (({"seq_len": -5}, ValueError), ({"n_heads": -2}, ValueError),
                      ({"head_dim": 0}, ValueError), ({"batch": True}, TypeError),
                      ({"causal": "no"}, TypeError)):
        args = dict(seq_len=8, segment_lengths=[4], dilation_rates=[1], n_heads=2, head_dim=4)
        args.update(kw)
        with pytest.raises(error, match=next(iter(kw))):
            dilated_attention_flops(args.pop("seq_len"), **args)
