import pytest
import torch

from blocklab.attention import Attention, KVCache
from blocklab.position import RotaryEmbedding
from tests.conftest import assert_close
from tests.reference.attention import naive_attention


def _reference_forward(attn: Attention, x: torch.Tensor, causal: bool) -> torch.Tensor:
    """The module's math spelled out with the oracle, from its own weights."""
    B, T, _ = x.shape
    H, H_kv, D = attn.n_heads, attn.n_kv_heads, attn.head_dim
    w = attn.wqkv.weight.double()
    qkv = x.double() @ w.T
    if attn.wqkv.bias is not None:
        qkv = qkv + attn.wqkv.bias.double()
    q, k, v = qkv.split((H * D, H_kv * D, H_kv * D), dim=-1)
    q = q.view(B, T, H, D).transpose(1, 2)
    k = k.view(B, T, H_kv, D).transpose(1, 2)
    v = v.view(B, T, H_kv, D).transpose(1, 2)
    out = naive_attention(q, k, v, causal=causal).transpose(1, 2).reshape(B, T, H * D)
    out = out @ attn.wo.weight.double().T
    if attn.wo.bias is not None:
        out = out + attn.wo.bias.double()
    return out


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_matches_oracle(n_kv_heads):
    attn = Attention(32, 4, n_kv_heads=n_kv_heads, bias=True)
    x = torch.randn(2, 6, 32)
    assert_close(attn(x, causal=True), _reference_forward(attn, x, causal=True))


def test_mha_equals_gqa_with_repeated_heads():
    """n_kv_heads == n_heads is plain MHA: a GQA module with its K/V rows copied per
    query head computes the same thing."""
    gqa = Attention(32, 4, n_kv_heads=2)
    mha = Attention(32, 4, n_kv_heads=4)
    D = 8
    q_w, k_w, v_w = gqa.wqkv.weight.split((4 * D, 2 * D, 2 * D))
    rep = lambda w: w.view(2, D, 32).repeat_interleave(2, dim=0).reshape(4 * D, 32)  # noqa: E731
    with torch.no_grad():
        mha.wqkv.weight.copy_(torch.cat([q_w, rep(k_w), rep(v_w)]))
        mha.wo.weight.copy_(gqa.wo.weight)
    x = torch.randn(2, 5, 32)
    assert_close(mha(x, causal=True), gqa(x, causal=True))


@pytest.mark.parametrize("n_kv_heads", [4, 1])
def test_cached_decoding_equals_full_forward(n_kv_heads):
    rope = RotaryEmbedding(8)
    attn = Attention(32, 4, n_kv_heads=n_kv_heads, rope=rope).eval()
    x = torch.randn(2, 9, 32)
    full = attn(x, causal=True)
    cache = KVCache(n_layers=1, batch=2, n_kv_heads=n_kv_heads, head_dim=8, max_seq_len=16)
    outs = [attn(x[:, :4], causal=True, cache=cache)]
    cache.advance(4)
    for t in range(4, 9):
        outs.append(attn(x[:, t : t + 1], causal=True, cache=cache))
        cache.advance(1)
    assert_close(torch.cat(outs, dim=1), full)
    assert cache.length == 9


def test_kv_cache_bytes_scale_with_kv_heads():
    sizes = dict(n_layers=2, batch=3, head_dim=16, max_seq_len=10)
    mha = KVCache(n_kv_heads=8, **sizes)
    mqa = KVCache(n_kv_heads=1, **sizes)
    assert mha.nbytes == 2 * 2 * 8 * 16 * 10 * 3 * 4
    assert mha.nbytes == 8 * mqa.nbytes
    with pytest.raises(ValueError, match="KV cache full"):
        mqa.update(0, torch.zeros(3, 1, 11, 16), torch.zeros(3, 1, 11, 16))


def test_sliding_window_limits_what_a_query_sees():
    attn = Attention(16, 2, window=3)
    x = torch.randn(1, 8, 16)
    base = attn(x, causal=True)
    x2 = x.clone()
    x2[:, 0] += 10.0  # position 0 is outside the window of positions >= 3
    changed = (attn(x2, causal=True) - base).abs().amax(-1)[0]
    assert (changed[3:] == 0).all() and changed[0] > 0


@pytest.mark.parametrize(
    "args,kwargs,exc,match",
    [
        ((32, 4), dict(n_kv_heads=3), ValueError, r"n_heads \(4\) must be divisible by n_kv_heads \(3\)"),
        ((30, 4), {}, ValueError, r"d_model \(30\) must be divisible by n_heads \(4\)"),
        ((32, 0), {}, ValueError, r"n_heads \(0\) must be positive"),
        ((32, 4.0), {}, TypeError, "n_heads must be an int"),
    ],
)
def test_bad_configuration(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        Attention(*args, **kwargs)


def test_wrong_input_width():
    with pytest.raises(ValueError, match=r"x must be \(B, T, C=32\)"):
        Attention(32, 4)(torch.randn(2, 3, 16))


# ---------------------------------------------------------------- KVCache checks (#13)

def _cache(**kw) -> KVCache:
    sizes = dict(n_layers=2, batch=2, n_kv_heads=2, head_dim=8, max_seq_len=10)
    return KVCache(**{**sizes, **kw})


@pytest.mark.parametrize(("shape", "match"), [
    ((1, 2, 3, 8), r"cache holds \(batch, n_kv_heads, head_dim\) = \(2, 2, 8\), k and v have "
                   r"\(1, 2, 8\)"),  # a batch-1 key is not spread over a batch-2 cache
    ((2, 1, 3, 8), r"k and v have \(2, 1, 8\)"),
    ((2, 2, 3, 4), r"k and v have \(2, 2, 4\)"),
    ((2, 2, 11, 8), r"KV cache full: 0 stored \+ 11 new > max_seq_len 10"),
])
def test_cache_update_checks_the_layout(shape, match):
    with pytest.raises(ValueError, match=match):
        _cache().update(0, torch.zeros(shape), torch.zeros(shape))


@pytest.mark.parametrize(("layer", "error"), [(2, ValueError), (-1, ValueError),
                                              (True, TypeError), (0.0, TypeError)])
def test_cache_update_checks_the_layer(layer, error):
    with pytest.raises(error, match="layer"):
        _cache().update(layer, torch.zeros(2, 2, 1, 8), torch.zeros(2, 2, 1, 8))


@pytest.mark.parametrize(("n", "error", "match"), [
    (-1, ValueError, r"T \(-1\) must be >= 0"), (1.5, TypeError, "T must be an int"),
    (True, TypeError, "T must be an int"), (11, ValueError, "would pass max_seq_len"),
])
def test_cache_advance_checks(n, error, match):
    cache = _cache()
    with pytest.raises(error, match=match):
        cache.advance(n)
    assert cache.length == 0
    cache.advance(10)
    assert cache.length == 10


@pytest.mark.parametrize(("kw", "error"), [({"batch": True}, TypeError), ({"head_dim": 0}, ValueError),
                                           ({"max_seq_len": 2.0}, TypeError)])
def test_cache_sizes_are_positive_ints(kw, error):
    with pytest.raises(error, match=next(iter(kw))):
        _cache(**kw)


@pytest.mark.parametrize(("kw", "match"), [
    ({"head_dim": 4}, r"cache holds .* = \(2, 2, 4\), x and this layer have \(2, 2, 8\)"),
    ({"n_kv_heads": 4}, r"x and this layer have \(2, 2, 8\)"),
    ({"max_seq_len": 2}, "KV cache full"),
])
def test_attention_checks_its_cache_before_computing(kw, match):
    attn = Attention(32, 4, n_kv_heads=2)
    with pytest.raises(ValueError, match=match):
        attn(torch.randn(2, 3, 32), cache=_cache(**kw))


@pytest.mark.parametrize(("kw", "error"), [({"head_dim": True}, TypeError),
                                           ({"n_kv_heads": True}, TypeError),
                                           ({"window": 0}, ValueError),
                                           ({"bias": "no"}, TypeError)])
def test_bools_are_not_sizes_nor_strings_bools(kw, error):
    with pytest.raises(error, match=next(iter(kw))):
        Attention(32, 4, **kw)
    with pytest.raises(TypeError, match="causal must be a bool"):
        Attention(32, 4)(torch.randn(1, 2, 32), causal="no")
