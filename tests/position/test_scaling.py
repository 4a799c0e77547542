"""RoPE scaling rules against Hugging Face's ROPE_INIT_FUNCTIONS and LlamaRotaryEmbedding,
at positions inside and past the original context length."""

import math

import pytest
import torch

from blocklab.position import RopeScaling, RotaryEmbedding
from tests.conftest import assert_close
from tests.reference.rope import naive_rope

transformers = pytest.importorskip("transformers")
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402
from transformers.models.llama import modeling_llama as ml  # noqa: E402

HEAD_DIM, N_HEADS, BASE, ORIGINAL = 32, 2, 10000.0, 32

# (our RopeScaling, Hugging Face rope_parameters): the same rule written both ways.
CASES = {
    "linear": (RopeScaling("linear", 4.0, ORIGINAL), dict(rope_type="linear", factor=4.0)),
    "dynamic_ntk": (RopeScaling("dynamic_ntk", 4.0, ORIGINAL),
                    dict(rope_type="dynamic", factor=4.0)),
    "yarn": (RopeScaling("yarn", 4.0, ORIGINAL),
             dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=ORIGINAL)),
    "yarn-options": (RopeScaling("yarn", 8.0, ORIGINAL, beta_fast=16.0, beta_slow=2.0,
                                 truncate=False),
                     dict(rope_type="yarn", factor=8.0, original_max_position_embeddings=ORIGINAL,
                          beta_fast=16.0, beta_slow=2.0, truncate=False)),
    "yarn-mscale": (RopeScaling("yarn", 4.0, ORIGINAL, mscale=1.0, mscale_all_dim=0.5),
                    dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=ORIGINAL,
                         mscale=1.0, mscale_all_dim=0.5)),
    "yarn-attention": (RopeScaling("yarn", 4.0, ORIGINAL, attention_factor=1.5),
                       dict(rope_type="yarn", factor=4.0, attention_factor=1.5,
                            original_max_position_embeddings=ORIGINAL)),
    "llama3": (RopeScaling("llama3", 4.0, ORIGINAL, low_freq_factor=1.0, high_freq_factor=4.0),
               dict(rope_type="llama3", factor=4.0, low_freq_factor=1.0, high_freq_factor=4.0,
                    original_max_position_embeddings=ORIGINAL)),
}


def _hf_config(params: dict, max_pos: int = ORIGINAL):
    # Hugging Face's "dynamic" reads the original length from max_position_embeddings.
    return transformers.LlamaConfig(
        hidden_size=HEAD_DIM * N_HEADS, num_attention_heads=N_HEADS, head_dim=HEAD_DIM,
        max_position_embeddings=max_pos, rope_parameters=dict(params, rope_theta=BASE),
    )


def _hf_rotate(params, q, k, pos):
    hf_rope = ml.LlamaRotaryEmbedding(_hf_config(params))  # fresh: no dynamic state carried
    cos, sin = hf_rope(q, pos)
    return ml.apply_rotary_pos_emb(q, k, cos, sin)


@pytest.mark.parametrize("case", sorted(CASES))
def test_frequencies_match_hugging_face(case):
    ours_scaling, params = CASES[case]
    kind = params["rope_type"]
    for seq_len in (None, 4 * ORIGINAL):
        extra = {} if seq_len is None else {"seq_len": seq_len}
        theirs, their_factor = ROPE_INIT_FUNCTIONS[kind](_hf_config(params), "cpu", **extra)
        ours, our_factor = ours_scaling.inverse_frequencies(HEAD_DIM, BASE, seq_len=seq_len)
        assert ours.dtype == torch.float64
        # Hugging Face computes in fp32: agreement to fp32 rounding.
        torch.testing.assert_close(ours.float(), theirs.float(), rtol=2e-6, atol=0)
        assert our_factor == pytest.approx(their_factor, rel=1e-12)


@pytest.mark.parametrize("case", sorted(CASES))
def test_rotation_matches_hugging_face_past_the_original_length(case):
    ours_scaling, params = CASES[case]
    T = 4 * ORIGINAL
    q, k = torch.randn(2, N_HEADS, T, HEAD_DIM), torch.randn(2, 1, T, HEAD_DIM)
    pos = torch.stack([torch.arange(T), torch.arange(T).flip(0)])
    hq, hk = _hf_rotate(params, q, k, pos)
    rope = RotaryEmbedding(HEAD_DIM, base=BASE, scaling=ours_scaling, max_seq_len=ORIGINAL)
    rq, rk = rope(q, k, pos)
    # Hugging Face's fp32 angles carry ~position * 6e-8 of error (about 1e-5 here).
    assert_close(rq, hq, atol=5e-5)
    assert_close(rk, hk, atol=5e-5)
    # And against the fp64 oracle with the same frequencies, to fp32 accuracy.
    inv, factor = ours_scaling.inverse_frequencies(HEAD_DIM, BASE, seq_len=T)
    assert_close(rq, naive_rope(q, pos, inv_freq=inv, attention_factor=factor))


@pytest.mark.parametrize("T", [ORIGINAL // 2, ORIGINAL, 3 * ORIGINAL])
def test_dynamic_ntk_follows_the_current_length(T):
    """Unscaled up to the original length; past it the base grows with the length, for
    contiguous positions (offset) and for position_ids alike, as Hugging Face's
    "dynamic" computes it for a fresh module."""
    _, params = CASES["dynamic_ntk"]
    q, k = torch.randn(1, N_HEADS, T, HEAD_DIM), torch.randn(1, N_HEADS, T, HEAD_DIM)
    hq, _ = _hf_rotate(params, q, k, torch.arange(T)[None])
    rope = RotaryEmbedding(HEAD_DIM, base=BASE, scaling=CASES["dynamic_ntk"][0])
    rq, _ = rope(q, k)
    assert_close(rq, hq, atol=5e-5)
    rq2, _ = rope(q, k, torch.arange(T))
    assert_close(rq2, rq)
    if T <= ORIGINAL:
        assert_close(rq, RotaryEmbedding(HEAD_DIM, base=BASE)(q, k)[0])


def test_dynamic_ntk_decoding_rotates_new_tokens_with_the_total_length():
    """With a cache (offset), the new token uses the frequencies of offset + T, while the
    cached keys keep theirs -- Hugging Face's behaviour (transformers#25104)."""
    scaling = RopeScaling("dynamic_ntk", 4.0, ORIGINAL)
    rope = RotaryEmbedding(HEAD_DIM, base=BASE, scaling=scaling)
    q = torch.randn(1, 1, 1, HEAD_DIM)
    n = 2 * ORIGINAL
    rq, _ = rope(q, q.clone(), offset=n)
    inv, _ = scaling.inverse_frequencies(HEAD_DIM, BASE, seq_len=n + 1)
    assert_close(rq, naive_rope(q, torch.tensor([n]), inv_freq=inv))


def test_ntk_is_a_base_change():
    """Static NTK equals Hugging Face's default rope with rope_theta = base s^(d/(d-2))."""
    s = 4.0
    theta = BASE * s ** (HEAD_DIM / (HEAD_DIM - 2))
    q, k = torch.randn(1, N_HEADS, 100, HEAD_DIM), torch.randn(1, N_HEADS, 100, HEAD_DIM)
    hq, _ = ml.apply_rotary_pos_emb(q, k, *ml.LlamaRotaryEmbedding(
        transformers.LlamaConfig(hidden_size=HEAD_DIM * N_HEADS, num_attention_heads=N_HEADS,
                                 rope_theta=theta))(q, torch.arange(100)[None]))
    rq, _ = RotaryEmbedding(HEAD_DIM, base=BASE, scaling=RopeScaling("ntk", s, ORIGINAL))(q, k)
    assert_close(rq, hq, atol=5e-5)


def test_scaling_keeps_the_high_frequencies():
    """What each rule does to the fastest and slowest rotation (s = 4)."""
    base = RotaryEmbedding(HEAD_DIM, base=BASE).inv_freq64
    for kind, fast_kept, slow_divided in [("linear", False, True), ("ntk", True, True),
                                          ("yarn", True, True), ("llama3", True, True)]:
        inv, _ = RopeScaling(kind, 4.0, ORIGINAL).inverse_frequencies(HEAD_DIM, BASE)
        assert math.isclose(inv[0], base[0]) is fast_kept, kind
        assert math.isclose(inv[-1], base[-1] / 4, rel_tol=1e-9) is slow_divided, kind


@pytest.mark.parametrize(
    "make,exc,match",
    [
        (lambda: RopeScaling("magic", 2.0), ValueError, "scaling kind"),
        (lambda: RopeScaling("linear", 0.5), ValueError, r"factor \(0.5\) must be >= 1"),
        (lambda: RopeScaling("linear", float("inf")), ValueError, "finite"),
        (lambda: RopeScaling("linear", "2"), TypeError, "must be a number"),
        (lambda: RopeScaling("linear", 2.0, 0), ValueError, "original_max_seq_len"),
        (lambda: RopeScaling("llama3", 2.0, low_freq_factor=4.0, high_freq_factor=1.0),
         ValueError, "high_freq_factor"),
        (lambda: RopeScaling("yarn", 2.0, beta_fast=1.0, beta_slow=32.0), ValueError, "beta_fast"),
        (lambda: RopeScaling("yarn", 2.0, attention_factor=0.0), ValueError, "attention_factor"),
        (lambda: RopeScaling("ntk", 2.0).inverse_frequencies(2, BASE), ValueError, "dim > 2"),
    ],
)
def test_bad_scaling(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


# ---------------------------------------------------------------- longrope (Phi-3), issue 16

def _phi3_factors(n: int) -> tuple[list[float], list[float]]:
    """Shaped like Phi-3-mini-128k's: short near 1, long growing to ~60 for slow dims."""
    short = [1.0 + 0.1 * i / n for i in range(n)]
    long = [1.0 + 59.0 * (i / (n - 1)) ** 2 for i in range(n)]
    return short, long


def _phi3(rotary_fraction: float = 1.0, attention_factor: float | None = None):
    """(our RopeScaling, Hugging Face Phi3Config) for a Phi-3-shaped config: 4x extension."""
    dim = int(HEAD_DIM * rotary_fraction)
    short, long = _phi3_factors(dim // 2)
    params = dict(rope_type="longrope", rope_theta=BASE, short_factor=short, long_factor=long,
                  partial_rotary_factor=rotary_fraction)
    if attention_factor is not None:
        params["attention_factor"] = attention_factor
    config = transformers.Phi3Config(
        hidden_size=HEAD_DIM * N_HEADS, num_attention_heads=N_HEADS, num_key_value_heads=1,
        max_position_embeddings=4 * ORIGINAL, original_max_position_embeddings=ORIGINAL,
        rope_parameters=params,
    )
    ours = RopeScaling("longrope", 4.0, ORIGINAL, short_factor=short, long_factor=long,
                       attention_factor=attention_factor)
    return ours, config, dim


@pytest.mark.parametrize("attention_factor", [None, 1.25])
@pytest.mark.parametrize("rotary_fraction", [1.0, 0.5])
def test_longrope_frequencies_match_hugging_face(rotary_fraction, attention_factor):
    ours_scaling, config, dim = _phi3(rotary_fraction, attention_factor)
    for seq_len in (None, ORIGINAL // 2, ORIGINAL, ORIGINAL + 1, 4 * ORIGINAL):
        extra = {} if seq_len is None else {"seq_len": seq_len}
        theirs, their_factor = ROPE_INIT_FUNCTIONS["longrope"](config, "cpu", **extra)
        ours, our_factor = ours_scaling.inverse_frequencies(dim, BASE, seq_len=seq_len)
        torch.testing.assert_close(ours.float(), theirs.float(), rtol=2e-6, atol=0)
        assert our_factor == pytest.approx(their_factor, rel=1e-12)
        # A traced length (0-d tensor) picks the same set.
        if seq_len is not None:
            traced, _ = ours_scaling.inverse_frequencies(dim, BASE, seq_len=torch.tensor(seq_len))
            assert torch.equal(traced, ours)
    expected = 1.25 if attention_factor else math.sqrt(1 + math.log(4.0) / math.log(ORIGINAL))
    assert ours_scaling.inverse_frequencies(dim, BASE)[1] == pytest.approx(expected)


@pytest.mark.parametrize("T", [ORIGINAL // 2, ORIGINAL, ORIGINAL + 1, 4 * ORIGINAL])
@pytest.mark.parametrize("rotary_fraction", [1.0, 0.5])
def test_longrope_logits_match_phi3_below_and_above_the_original_length(rotary_fraction, T):
    from transformers.models.phi3 import modeling_phi3 as mp

    ours_scaling, config, dim = _phi3(rotary_fraction)
    q, k = torch.randn(2, N_HEADS, T, HEAD_DIM), torch.randn(2, 1, T, HEAD_DIM)
    pos = torch.arange(T)[None].expand(2, T)
    cos, sin = mp.Phi3RotaryEmbedding(config)(q, pos)  # fresh: no state carried
    hq, hk = mp.apply_rotary_pos_emb(q, k, cos, sin)
    rope = RotaryEmbedding(dim, base=BASE, scaling=ours_scaling, max_seq_len=ORIGINAL)
    rq, rk = rope(q, k)
    # Hugging Face's fp32 angles carry ~position * 6e-8 of error.
    assert_close(rq, hq, atol=5e-5)
    assert_close(rk, hk, atol=5e-5)
    # The attention logits q R_(n-m) k, as the model computes them.
    assert_close(rq @ rk.transpose(-1, -2), hq @ hk.transpose(-1, -2), atol=5e-4)
    inv, factor = ours_scaling.inverse_frequencies(dim, BASE, seq_len=T)
    assert_close(rq, naive_rope(q, torch.arange(T), dim=dim, inv_freq=inv,
                                attention_factor=factor))
    # Explicit per-row position_ids take the same path as contiguous positions.
    assert_close(rope(q, k, pos)[0], rq)


def test_longrope_decoding_switches_to_the_long_factors_past_the_original_length():
    """A token at position L (length L + 1) is rotated with the long factors; the cached
    keys keep the short ones -- Hugging Face's behaviour."""
    ours_scaling, _, dim = _phi3()
    rope = RotaryEmbedding(dim, base=BASE, scaling=ours_scaling)
    q = torch.randn(1, 1, 1, HEAD_DIM)
    for n, long in ((ORIGINAL - 1, False), (ORIGINAL, True)):
        rq, _ = rope(q, q.clone(), offset=n)
        inv, factor = ours_scaling.inverse_frequencies(dim, BASE, seq_len=n + 1)
        factors = ours_scaling.long_factor if long else ours_scaling.short_factor
        assert torch.allclose(inv, rope.inv_freq64 * torch.tensor(ours_scaling.short_factor,
                                                                   dtype=torch.float64)
                              / torch.tensor(factors, dtype=torch.float64))
        assert_close(rq, naive_rope(q, torch.tensor([n]), inv_freq=inv, attention_factor=factor))


@pytest.mark.parametrize(("make", "exc", "match"), [
    (lambda: RopeScaling("longrope", 2.0), ValueError, "longrope needs short_factor"),
    (lambda: RopeScaling("longrope", 2.0, short_factor=[1.0]), ValueError,
     "longrope needs long_factor"),
    (lambda: RopeScaling("longrope", 2.0, short_factor=[1.0, 1.0], long_factor=[1.0]),
     ValueError, r"short_factor \(2 values\) and long_factor \(1\)"),
    (lambda: RopeScaling("longrope", 2.0, short_factor=[1.0, 0.0], long_factor=[1.0, 1.0]),
     ValueError, "finite and > 0"),
    (lambda: RopeScaling("longrope", 2.0, short_factor=[True], long_factor=[1.0]),
     TypeError, "sequence of numbers"),
    (lambda: RopeScaling("longrope", 2.0, short_factor=[1.0], long_factor=[1.0],
                         attention_factor=-1.0), ValueError, "attention_factor"),
    (lambda: RotaryEmbedding(8, scaling=RopeScaling("longrope", 2.0, short_factor=[1.0] * 3,
                                                     long_factor=[1.0] * 3)),
     ValueError, r"3 values, the rotary dim 8 needs dim / 2 = 4"),
])
def test_bad_longrope(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_longrope_is_hashable_and_named():
    s = RopeScaling("longrope", 2.0, short_factor=[1.0] * 4, long_factor=[2.0] * 4)
    assert isinstance(s.short_factor, tuple) and hash(s) == hash(
        RopeScaling("longrope", 2.0, short_factor=(1.0,) * 4, long_factor=(2.0,) * 4))
    assert "longrope" in repr(RotaryEmbedding(8, scaling=s))
