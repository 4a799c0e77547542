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
