import math

import pytest
import torch

import blocklab._alloc
from blocklab.position import (
    RopeScaling,
    RotaryEmbedding,
    apply_rotary,
    permute_qk_weights,
    sinusoidal_embedding,
)
from blocklab.position import rope as rope_module
from tests.conftest import assert_close
from tests.reference.rope import naive_rope, naive_score


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("dim", [8, 4])
def test_matches_oracle(interleaved, dim, inplace):
    rope = RotaryEmbedding(dim, interleaved=interleaved, base=100.0)
    q, k = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 5, 8)
    pos = torch.arange(5)
    want_q = naive_rope(q, pos, dim=dim, base=100.0, interleaved=interleaved)
    want_k = naive_rope(k, pos, dim=dim, base=100.0, interleaved=interleaved)
    q_in, k_in = q.clone(), k.clone()
    rq, rk = rope(q_in, k_in, inplace=inplace)
    assert_close(rq, want_q)
    assert_close(rk, want_k)
    if dim < 8:
        assert torch.equal(rq[..., dim:], q[..., dim:])
    # In place: the very same storage holds the result; otherwise the input is untouched.
    assert (rq.data_ptr() == q_in.data_ptr()) is inplace
    assert torch.equal(q_in, rq if inplace else q)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("per_row", [False, True])
def test_large_tensors_take_the_blocked_path(interleaved, inplace, per_row, dtype, monkeypatch):
    """Large tensors are rotated in cache-sized blocks (sizes shrunk here so a small
    tensor makes many blocks); non-contiguous q/k (as from a fused projection), partial
    rotary and bf16 (rotated in fp32 scratch buffers) included."""
    monkeypatch.setattr(rope_module, "_CHUNK_MIN_NUMEL", 1 << 12)
    monkeypatch.setattr(rope_module, "_GRAIN_PER_THREAD", 1 << 10)
    B, H, T, D = 2, 4, 40, 136
    fused = torch.randn(B, T, 2 * H, D).to(dtype)
    q, k = fused[:, :, :H].transpose(1, 2), fused[:, :, H:].transpose(1, 2)  # (B, H, T, D)
    pos = torch.stack([torch.arange(T), torch.arange(T) + 1000]) if per_row else None
    rope = RotaryEmbedding(128, interleaved=interleaved, max_seq_len=64)
    want = naive_rope(q, pos if per_row else torch.arange(T), dim=128, interleaved=interleaved)
    with torch.no_grad():
        want32, _ = rope(q.float(), k.float(), pos)
        rq, rk = rope(q, k, pos, inplace=inplace)
    assert rq.dtype == dtype
    if dtype == torch.float32:
        assert_close(rq, want)
    else:  # rotated in fp32, rounded once: exactly the fp32 result, rounded
        assert torch.equal(rq, want32.to(dtype))
    assert (rq.data_ptr() == fused.data_ptr()) is inplace
    # Out of place, the result keeps the input's memory order, as torch's own ops do.
    strides = rq.stride()
    assert strides[2] > strides[1] > strides[3] == 1


@pytest.mark.parametrize("shape, transpose", [((2, 4, 40, 8), False), ((2, 4, 40, 8), True),
                                              ((1, 3, 1, 8), False), ((3, 1, 7, 8), True)])
@pytest.mark.parametrize("grain", [8, 64, 100, 320, 10_000])
def test_blocks_cover_every_row_once_in_memory_order(shape, transpose, grain):
    B, H, T, D = shape
    x = torch.empty(B, T, H, D).transpose(1, 2) if transpose else torch.empty(shape)
    hits = torch.zeros(B, H, T, dtype=torch.int64)
    blocks = rope_module._block_index(x, grain)
    for ib, ih, it in blocks:
        hits[ib, ih, it] += 1
        block = x[ib, ih, it]
        assert block.numel() <= max(grain, D)
        # One piece of memory: the block spans no more storage than it holds.
        span = sum((n - 1) * st for n, st in zip(block.shape, block.stride(), strict=True)) + 1
        assert span == block.numel()
    assert torch.equal(hits, torch.ones_like(hits))


def test_blocks_follow_the_layout():
    x = torch.empty(2, 4, 40, 8)  # contiguous: two whole heads per 640-element block
    assert rope_module._block_index(x, 640) == [
        (slice(b, b + 1), slice(h, h + 2), slice(None)) for b in range(2) for h in (0, 2)]
    # (B, T, H, D) memory seen as (B, H, T, D): all heads of two rows per block.
    xt = torch.empty(2, 40, 4, 8).transpose(1, 2)
    assert rope_module._block_index(xt, 64) == [
        (slice(b, b + 1), slice(None), slice(t, t + 2)) for b in range(2) for t in range(0, 40, 2)]


def test_per_row_positions_and_offset():
    rope = RotaryEmbedding(8)
    q, k = torch.randn(2, 2, 3, 8), torch.randn(2, 1, 3, 8)
    pos = torch.tensor([[0, 1, 2], [7, 8, 9]])
    rq, rk = rope(q, k, pos)
    assert_close(rq, naive_rope(q, pos))
    assert_close(rk, naive_rope(k, pos))
    rq2, _ = rope(q, k, offset=5)
    assert_close(rq2, naive_rope(q, torch.arange(5, 8)))
    # (1, T) broadcasts over the batch; int32 positions work like int64.
    rq3, _ = rope(q, k, torch.tensor([[4, 2, 0]], dtype=torch.int32))
    assert_close(rq3, naive_rope(q, torch.tensor([4, 2, 0])))


def test_left_padding_and_packed_sequences():
    """Packed rows restart their positions; left-padded rows start late. Each row must
    equal the same tokens rotated alone from position 0."""
    rope = RotaryEmbedding(16)
    q = torch.randn(2, 2, 6, 16)
    pos = torch.tensor([[0, 1, 2, 0, 1, 2], [0, 0, 0, 1, 2, 3]])  # packed; left padding of 2
    rq, _ = rope(q, q.clone(), pos)
    alone, _ = rope(q[:1, :, 3:], q[:1, :, 3:].clone())
    assert_close(rq[:1, :, 3:], alone)
    alone, _ = rope(q[1:, :, 2:], q[1:, :, 2:].clone())
    assert_close(rq[1:, :, 2:], alone)


def test_relative_property():
    """<R_m q, R_n k> depends only on m - n."""
    rope = RotaryEmbedding(16)
    q = torch.randn(1, 1, 1, 16, dtype=torch.float64)
    k = torch.randn(1, 1, 1, 16, dtype=torch.float64)
    scores = []
    for shift in (0, 17, 300, 10**6):
        rq, _ = rope(q, q.clone(), torch.tensor([shift + 5]))
        _, rk = rope(k.clone(), k, torch.tensor([shift + 2]))
        scores.append(float((rq * rk).sum()))
    assert max(scores) - min(scores) < 1e-9
    # The interleaved closed form from the oracle file agrees.
    rope_i = RotaryEmbedding(16, interleaved=True)
    rq, _ = rope_i(q, q.clone(), torch.tensor([9]))
    _, rk = rope_i(k.clone(), k, torch.tensor([2]))
    assert float((rq * rk).sum()) == pytest.approx(naive_score(q[0, 0, 0], k[0, 0, 0], 9, 2),
                                                   abs=1e-12)


def test_far_positions_are_exact_in_fp32():
    """Position 10^6, base 5e5, D = 128: fp32 in, fp32 out, right to fp32 accuracy, where
    Hugging Face's fp32 angles are off by ~0.1 on unit-variance inputs."""
    base, D = 5e5, 128
    q = torch.randn(1, 4, 3, D)
    pos = torch.tensor([10**6, 10**6 + 1, 2 * 10**6])
    want = naive_rope(q, pos, base=base)
    rope = RotaryEmbedding(D, base=base)
    rq, _ = rope(q, q.clone(), pos)
    err = (rq.double() - want).abs().max().item()
    assert err < 2e-6, err
    assert rope._rows == rope.max_seq_len  # far positions do not grow a huge table
    # What fp32 angles (Hugging Face's recipe) give at the same positions.
    inv32 = 1.0 / (base ** (torch.arange(0, D, 2, dtype=torch.float32) / D))
    ang = pos[:, None].float() * inv32
    hf = apply_rotary(q, ang.cos(), ang.sin())
    assert (hf.double() - want).abs().max().item() > 1e-2


def test_negative_positions_rotate_backwards():
    rope = RotaryEmbedding(8)
    q = torch.randn(1, 1, 2, 8, dtype=torch.float64)
    rq, _ = rope(q, q.clone(), torch.tensor([-3, 4]))
    assert_close(rq, naive_rope(q, torch.tensor([-3, 4])))


def test_table_grows_past_max_seq_len_and_dtype_kept():
    rope = RotaryEmbedding(8, max_seq_len=4)
    q = torch.randn(1, 1, 10, 8, dtype=torch.bfloat16)
    rq, rk = rope(q, q)
    assert rq.dtype == torch.bfloat16 and rq.shape == q.shape
    assert_close(rq, naive_rope(q.float(), torch.arange(10)), dtype=torch.bfloat16)
    assert rope._rows >= 10
    rq, _ = rope(q[:, :, :1], q[:, :, :1], offset=40)  # decoding past the table
    assert_close(rq, naive_rope(q[:, :, :1].float(), torch.tensor([40])), dtype=torch.bfloat16)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("inplace", [False, True])
def test_low_precision_in_and_out(dtype, interleaved, inplace):
    """bf16/fp16 in, same dtype out, rotated in fp32 and rounded once: the result is the
    oracle rounded to the dtype, to within one rounding step."""
    rope = RotaryEmbedding(16, interleaved=interleaved)
    q = torch.randn(2, 2, 40, 16).to(dtype)
    pos = torch.arange(3000, 3040)
    want = naive_rope(q, pos, interleaved=interleaved).to(dtype)
    rq, rk = rope(q.clone(), q.clone(), pos, inplace=inplace)
    assert rq.dtype == dtype and rk.dtype == dtype
    ulp = torch.finfo(dtype).eps * want.double().abs().clamp_min(1.0)
    assert ((rq.double() - want.double()).abs() <= ulp).all()


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("dim", [8, 6])
def test_gradcheck(interleaved, dim):
    """Both autograd functions in fp64: out of place, and in place on a computed tensor."""
    rope = RotaryEmbedding(dim, interleaved=interleaved)
    q = torch.randn(2, 2, 3, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 1, 3, 8, dtype=torch.float64, requires_grad=True)
    pos = torch.tensor([[0, 5, 9], [3, 2, 1]])

    def out_of_place(q, k):
        return rope(q, k, pos)

    def in_place(q, k):
        return rope(q * 1.0, k * 1.0, pos, inplace=True)

    for fn in (out_of_place, in_place):
        assert torch.autograd.gradcheck(fn, (q, k))
        assert torch.autograd.gradgradcheck(fn, (q, k))


def test_inplace_autograd_paths_agree():
    """A plain tensor is rotated in place and marked dirty; an output of split (which
    autograd forbids modifying) is rotated out of place. Gradients equal the reference."""
    rope = RotaryEmbedding(8)
    w = torch.randn(16, 24, requires_grad=True)
    x = torch.randn(2, 3, 16)

    def loss(mode: str) -> torch.Tensor:
        y = x @ w  # (2, 3, 24)
        if mode == "split":
            q, k, _ = y.split(8, dim=-1)
        else:
            q, k = y[..., :8] * 1.0, y[..., 8:16] * 1.0
        q, k = q.unsqueeze(1), k.unsqueeze(1)  # (B, 1, T, 8)
        ptr = q.data_ptr()
        rq, rk = rope(q, k, inplace=mode != "reference")
        if mode == "plain":
            assert rq.data_ptr() == ptr and rq is q
        return (rq * rk.roll(1, -2)).sum() + rq.pow(2).sum()

    grads = {}
    for mode in ("reference", "plain", "split"):
        w.grad = None
        loss(mode).backward()
        grads[mode] = w.grad.clone()
    assert_close(grads["plain"], grads["reference"])
    assert_close(grads["split"], grads["reference"])


def test_attention_in_place_rotation_trains_like_out_of_place(monkeypatch):
    """Attention rotates in place; its gradients equal those of an out-of-place rotation."""
    from blocklab.attention import Attention

    torch.manual_seed(0)
    attn = Attention(32, 4, n_kv_heads=2, rope=RotaryEmbedding(8))
    x = torch.randn(2, 6, 32, requires_grad=True)

    def grads():
        attn.zero_grad()
        x.grad = None
        attn(x, causal=True).pow(2).sum().backward()
        return x.grad.clone(), attn.wqkv.weight.grad.clone()

    inplace = grads()
    forward = RotaryEmbedding.forward
    monkeypatch.setattr(RotaryEmbedding, "forward",
                        lambda self, q, k, pos=None, *, inplace=False, offset=0:
                        forward(self, q, k, pos, inplace=False, offset=offset))
    reference = grads()
    for a, b in zip(inplace, reference, strict=True):
        assert_close(a, b)


@pytest.mark.parametrize("interleaved", [False, True])
def test_tables_built_under_inference_mode_serve_training(interleaved):
    rope = RotaryEmbedding(8, interleaved=interleaved)
    q = torch.randn(1, 2, 5, 8)
    with torch.inference_mode():
        rope(q, q.clone())
    leaf = q.clone().requires_grad_()
    rq, rk = rope(leaf, leaf * 1.0)
    (rq.sum() + rk.sum()).backward()
    assert leaf.grad is not None


def test_inplace_refuses_shared_storage():
    # (Leaves that require grad are rotated in place: tests/position/test_rope_layouts.py.)
    rope = RotaryEmbedding(8)
    leaf = torch.randn(1, 1, 2, 8, requires_grad=True)
    q = torch.randn(1, 1, 2, 8)
    with pytest.raises(ValueError, match="separate storage"):
        rope(q, q, inplace=True)
    with torch.no_grad():  # a leaf may be rotated in place without autograd
        rope(leaf, torch.randn(1, 1, 2, 8), inplace=True)


def test_compile_fullgraph():
    """No graph break: the compiled path computes cos/sin from the positions (no table,
    no host sync), dynamic NTK included."""
    for scaling in (None, RopeScaling("dynamic_ntk", 2.0, 4)):
        rope = RotaryEmbedding(8, scaling=scaling, max_seq_len=4)
        q, k = torch.randn(1, 2, 6, 8), torch.randn(1, 1, 6, 8)
        pos = torch.arange(6).expand(1, 6) + 3
        compiled = torch.compile(rope, fullgraph=True, backend="eager")
        for args in ((q, k), (q, k, pos)):
            got = compiled(*args)
            want = rope(*args)
            for a, b in zip(got, want, strict=True):
                assert_close(a, b)


def test_attention_with_in_place_rope_compiles_fullgraph():
    from blocklab.attention import Attention

    attn = Attention(32, 4, n_kv_heads=2, rope=RotaryEmbedding(8))
    x = torch.randn(2, 6, 32, requires_grad=True)
    compiled = torch.compile(attn, fullgraph=True, backend="eager")
    got = compiled(x, causal=True)
    assert_close(got, attn(x, causal=True))
    (grad,) = torch.autograd.grad(got.sum(), x)
    assert_close(grad, torch.autograd.grad(attn(x, causal=True).sum(), x)[0])


@pytest.mark.slow
def test_compile_fullgraph_inductor():
    rope = RotaryEmbedding(8, interleaved=True)
    q, k = torch.randn(1, 2, 6, 8), torch.randn(1, 1, 6, 8)
    got = torch.compile(rope, fullgraph=True)(q, k, torch.arange(6))
    for a, b in zip(got, rope(q, k, torch.arange(6)), strict=True):
        assert_close(a, b)


def test_matches_hugging_face_llama():
    transformers = pytest.importorskip("transformers")
    from transformers.models.llama import modeling_llama as ml

    config = transformers.LlamaConfig(hidden_size=64, num_attention_heads=4, rope_theta=500.0)
    hf_rope = ml.LlamaRotaryEmbedding(config)
    q, k = torch.randn(2, 4, 6, 16), torch.randn(2, 4, 6, 16)
    pos = torch.tensor([[0, 1, 2, 3, 4, 5], [7, 9, 11, 13, 15, 17]])
    cos, sin = hf_rope(q, pos)
    hq, hk = ml.apply_rotary_pos_emb(q, k, cos, sin)
    rq, rk = RotaryEmbedding(16, base=500.0)(q, k, pos)
    assert_close(rq, hq)
    assert_close(rk, hk)


def test_llama3_scaling_matches_hugging_face():
    pytest.importorskip("transformers")
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

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
        (lambda: RotaryEmbedding(4)(torch.randn(2, 1, 3, 4), torch.randn(2, 1, 3, 4),
                                    torch.zeros(3, 3, dtype=torch.long)),
         ValueError, r"B = 2, got \(3, 3\)"),
        (lambda: RotaryEmbedding(4)(torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4),
                                    torch.zeros(1, 1, 3, dtype=torch.long)),
         ValueError, "position_ids must have shape"),
        (lambda: RotaryEmbedding(4)(torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4),
                                    torch.zeros(3)), TypeError, "integer tensor"),
        (lambda: RotaryEmbedding(4)(torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4),
                                    torch.zeros(3, dtype=torch.bool)), TypeError, "integer tensor"),
        (lambda: RotaryEmbedding(4)(torch.randn(1, 1, 3, 4), torch.randn(1, 1, 2, 4)),
         ValueError, "differ in B, T or D"),
        (lambda: RotaryEmbedding(4)(torch.randn(1, 3, 4), torch.randn(1, 3, 4)),
         ValueError, r"q must be a \(B, H, T, D\)"),
        (lambda: RotaryEmbedding(4)(torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4), offset=-1),
         ValueError, r"offset \(-1\)"),
        (lambda: RotaryEmbedding(8, base=1.0), ValueError, r"rotary base \(1.0\) must be > 1"),
        (lambda: RotaryEmbedding(8, scaling={"kind": "linear"}), TypeError, "RopeScaling"),
        (lambda: apply_rotary(torch.randn(1, 1, 3, 8), torch.randn(3, 4), torch.randn(2, 4)),
         ValueError, "must both be"),
        (lambda: permute_qk_weights(torch.randn(12, 4), 2, 8, to="interleaved"),
         ValueError, r"n_heads \* head_dim = 16 rows"),
        (lambda: permute_qk_weights(torch.randn(16, 4), 2, 8, to="meta"),
         ValueError, r"to \('meta'\)"),
    ],
)
def test_bad_input(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_rope_extra_repr_names_the_scaling():
    r = RotaryEmbedding(8, scaling=RopeScaling("yarn", 4.0, 64))
    assert "yarn" in repr(r) and math.isclose(r.attention_factor, 0.1 * math.log(4) + 1)


@pytest.mark.parametrize("first", ["inference", "no_grad", "grad"])
def test_blocked_path_scratch_serves_every_grad_mode(first, monkeypatch):
    """The blocked path reuses per-thread scratch buffers: ones made under
    inference_mode must still serve no_grad and training calls (and vice versa)."""
    monkeypatch.setattr(rope_module, "_CHUNK_MIN_NUMEL", 1 << 10)
    monkeypatch.setattr(rope_module, "_GRAIN_PER_THREAD", 1 << 9)
    monkeypatch.setattr(blocklab._alloc, "_SCRATCH", __import__("threading").local())
    rope = RotaryEmbedding(16, max_seq_len=32)
    modes = {"inference": torch.inference_mode, "no_grad": torch.no_grad,
             "grad": torch.enable_grad}
    order = [first] + [m for m in modes if m != first]
    for mode in order + order:
        q = torch.randn(2, 4, 32, 16, requires_grad=mode == "grad")
        want = naive_rope(q.detach(), torch.arange(32))
        with modes[mode]():
            x = q * 1  # a computed tensor: in-place rotation allowed under autograd
            rq = rope.rotate(x, inplace=True)
        assert_close(rq.detach(), want)
        if mode == "grad":
            rq.sum().backward()
            assert q.grad is not None and torch.isfinite(q.grad).all()


# ------------------------------------------------------- bad input at the boundary (#13)

def test_integer_and_bool_inputs_are_refused():
    rope = RotaryEmbedding(8)
    ones = torch.ones(1, 1, 3, 8, dtype=torch.long)
    with pytest.raises(TypeError, match="q must be a floating-point tensor"):
        rope(ones, ones)
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        apply_rotary(ones, torch.ones(3, 4), torch.ones(3, 4))
    with pytest.raises(TypeError, match="interleaved must be a bool, got str"):
        RotaryEmbedding(8, interleaved="no")
    with pytest.raises(TypeError, match="inplace must be a bool"):
        rope(torch.randn(1, 1, 3, 8), torch.randn(1, 1, 3, 8), inplace="no")
    with pytest.raises(ValueError, match=r"rotary base \(inf\) must be finite"):
        RotaryEmbedding(8, base=float("inf"))


@pytest.mark.parametrize("shape", [(0, 2, 3, 8), (2, 2, 0, 8)])
def test_empty_tensors_rotate_in_place(shape):
    q, k = torch.randn(shape), torch.randn(shape)
    rq, rk = RotaryEmbedding(8)(q, k, inplace=True)
    assert rq.shape == shape and rk.shape == shape
