import pytest
import torch

from blocklab.position import RopeScaling, RotaryEmbedding, sinusoidal_embedding
from tests.conftest import assert_close
from tests.reference.rope import naive_rope


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("dim", [8, 4])
def test_matches_oracle(interleaved, dim):
    rope = RotaryEmbedding(dim, interleaved=interleaved, base=100.0)
    q, k = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 5, 8)
    rq, rk = rope(q, k)
    pos = torch.arange(5)
    assert_close(rq, naive_rope(q, pos, dim=dim, base=100.0, interleaved=interleaved))
    assert_close(rk, naive_rope(k, pos, dim=dim, base=100.0, interleaved=interleaved))
    if dim < 8:
        assert torch.equal(rq[..., dim:], q[..., dim:])


def test_per_row_positions_and_offset():
    rope = RotaryEmbedding(8)
    q, k = torch.randn(2, 2, 3, 8), torch.randn(2, 1, 3, 8)
    pos = torch.tensor([[0, 1, 2], [7, 8, 9]])
    rq, _ = rope(q, k, pos)
    assert_close(rq, naive_rope(q, pos))
    rq2, _ = rope(q, k, offset=5)
    assert_close(rq2, naive_rope(q, torch.arange(5, 8)))


def test_relative_property():
    """<R_m q, R_n k> depends only on m - n."""
    rope = RotaryEmbedding(16)
    q, k = torch.randn(1, 1, 1, 16, dtype=torch.float64), torch.randn(1, 1, 1, 16, dtype=torch.float64)
    scores = []
    for shift in (0, 17, 300):
        rq, _ = rope(q, q, torch.tensor([shift + 5]))
        _, rk = rope(k, k, torch.tensor([shift + 2]))
        scores.append(float((rq * rk).sum()))
    assert max(scores) - min(scores) < 1e-9


def test_table_grows_past_max_seq_len_and_dtype_kept():
    rope = RotaryEmbedding(8, max_seq_len=4)
    q = torch.randn(1, 1, 10, 8, dtype=torch.bfloat16)
    rq, rk = rope(q, q)
    assert rq.dtype == torch.bfloat16 and rq.shape == q.shape
    assert_close(rq, naive_rope(q.float(), torch.arange(10)), dtype=torch.bfloat16)


def test_matches_hugging_face_llama():
    transformers = pytest.importorskip("transformers")
    from transformers.models.llama import modeling_llama as ml

    config = transformers.LlamaConfig(hidden_size=64, num_attention_heads=4, rope_theta=500.0)
    hf_rope = ml.LlamaRotaryEmbedding(config)
    q, k = torch.randn(2, 4, 6, 16), torch.randn(2, 4, 6, 16)
    pos = torch.arange(6).expand(2, 6)
    cos, sin = hf_rope(q, pos)
    hq, hk = ml.apply_rotary_pos_emb(q, k, cos, sin)
    rq, rk = RotaryEmbedding(16, base=500.0)(q, k, pos)
    assert_close(rq, hq)
    assert_close(rk, hk)


def test_llama3_scaling_matches_hugging_face():
    pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers import LlamaConfig

    params = dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                  high_freq_factor=4.0, original_max_position_embeddings=8192)
    config = LlamaConfig(hidden_size=512, num_attention_heads=4, rope_parameters=params)
    theirs, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    ours, factor = RopeScaling("llama3", 8.0, 8192).inverse_frequencies(128, 500000.0)
    assert factor == 1.0
    torch.testing.assert_close(ours.float(), theirs.float())


def test_sinusoidal_values():
    pe = sinusoidal_embedding(torch.tensor([0, 3]), 4, base=100.0)
    assert torch.allclose(pe[0], torch.tensor([0.0, 1.0, 0.0, 1.0]))
    assert torch.allclose(pe[1, 0], torch.sin(torch.tensor(3.0)))
    assert torch.allclose(pe[1, 2], torch.sin(torch.tensor(0.3)))


@pytest.mark.parametrize(
    "make,exc,match",
    [
        (lambda: RotaryEmbedding(7), ValueError, r"rotary dim \(7\) must be a positive even"),
        (lambda: RotaryEmbedding(8)(torch.randn(1, 1, 2, 4), torch.randn(1, 1, 2, 4)),
         ValueError, r"rotary dim \(8\) is larger than the head dim \(4\)"),
        (lambda: RopeScaling("magic", 2.0), ValueError, "scaling kind"),
        (lambda: RopeScaling("linear", 0.5), ValueError, r"factor \(0.5\) must be >= 1"),
        (lambda: RotaryEmbedding(4)(torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4),
                                    torch.arange(4)), ValueError, "position_ids must have shape"),
        (lambda: RotaryEmbedding(4)(torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4),
                                    torch.zeros(3)), TypeError, "integer tensor"),
    ],
)
def test_bad_input(make, exc, match):
    with pytest.raises(exc, match=match):
        make()
