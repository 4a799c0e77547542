"""In-place rotation of leaves that require grad, the (B, T, H, D) layout and per-row
offset tensors (issue 16): the cases of flash-attention's rotary tests
(``apply_rotary_emb`` / ``_qkv_`` with ``inplace=True``, interleaved or half-split,
partial rotary, integer or per-row ``seqlen_offsets``), against the fp64 oracle."""

import pytest
import torch

from blocklab.position import RotaryEmbedding, apply_rotary, rotary_cos_sin
from blocklab.position.rope import inverse_frequencies
from tests.conftest import assert_close
from tests.reference.rope import naive_rope

B, T, H, D = 2, 5, 3, 8
OFFSETS = [0, 3, "per_row"]


def _positions(offset) -> tuple[torch.Tensor, int | torch.Tensor]:
    """(B, T) positions and the offset argument that gives them."""
    off = torch.tensor([2, 7]) if offset == "per_row" else offset
    rows = off.view(-1, 1) if isinstance(off, torch.Tensor) else torch.tensor([[off]])
    return (rows + torch.arange(T)).expand(B, T), off


def _oracle_bthd(x: torch.Tensor, pos: torch.Tensor, **kw) -> torch.Tensor:
    """naive_rope on a (B, T, H, D) tensor (the oracle takes (B, H, T, D))."""
    return naive_rope(x.transpose(1, 2), pos, **kw).transpose(1, 2)


@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("dim", [D, D // 2])  # full and partial rotary
@pytest.mark.parametrize("interleaved", [False, True])
def test_inplace_on_a_leaf_rotates_it_with_correct_gradients(interleaved, dim, offset):
    pos, off = _positions(offset)
    rope = RotaryEmbedding(dim, interleaved=interleaved)
    x0 = torch.randn(B, T, H, D, dtype=torch.float64)
    leaf = x0.clone().requires_grad_()
    out = rope.rotate(leaf, offset=off, inplace=True, layout="bthd")
    assert out.data_ptr() == leaf.data_ptr() and out.shape == leaf.shape
    want = _oracle_bthd(x0, pos, dim=dim, interleaved=interleaved)
    assert_close(out.detach(), want)
    assert_close(leaf.detach(), want)  # the leaf's storage holds R x
    g = torch.randn_like(out)
    out.backward(g)
    # d<R x, g>/dx = R^T g = R(-theta) g
    assert_close(leaf.grad, _oracle_bthd(g, -pos, dim=dim, interleaved=interleaved))


@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("dim", [D, D // 2])
@pytest.mark.parametrize("interleaved", [False, True])
def test_inplace_on_views_of_a_packed_qkv_leaf(interleaved, dim, offset):
    """flash-attention's apply_rotary_emb_qkv_: q and k of a (B, T, 3, H, D) leaf."""
    pos, off = _positions(offset)
    rope = RotaryEmbedding(dim, interleaved=interleaved)
    qkv0 = torch.randn(B, T, 3, H, D, dtype=torch.float64)
    qkv = qkv0.clone().requires_grad_()
    q = rope.rotate(qkv[:, :, 0], offset=off, inplace=True, layout="bthd")
    k = rope.rotate(qkv[:, :, 1], offset=off, inplace=True, layout="bthd")
    v = qkv[:, :, 2]
    kw = dict(dim=dim, interleaved=interleaved)
    assert_close(qkv.detach()[:, :, 0], _oracle_bthd(qkv0[:, :, 0], pos, **kw))
    assert_close(qkv.detach()[:, :, 1], _oracle_bthd(qkv0[:, :, 1], pos, **kw))
    assert torch.equal(qkv.detach()[:, :, 2], qkv0[:, :, 2])
    g = torch.randn(3, B, T, H, D, dtype=torch.float64)
    ((q * g[0]).sum() + (k * g[1]).sum() + (v * g[2]).sum()).backward()
    assert_close(qkv.grad[:, :, 0], _oracle_bthd(g[0], -pos, **kw))
    assert_close(qkv.grad[:, :, 1], _oracle_bthd(g[1], -pos, **kw))
    assert torch.equal(qkv.grad[:, :, 2], g[2])


@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("interleaved", [False, True])
def test_apply_rotary_with_tables_and_offsets_in_place_on_a_leaf(interleaved, offset):
    """flash-attention's call: cos/sin tables (S_ro, dim/2) and seqlen_offsets."""
    pos, off = _positions(offset)
    dim = D // 2
    cos, sin = rotary_cos_sin(torch.arange(16), inverse_frequencies(dim), dtype=torch.float64)
    x0 = torch.randn(B, T, H, D, dtype=torch.float64)
    leaf = x0.clone().requires_grad_()
    out = apply_rotary(leaf, cos, sin, interleaved=interleaved, inplace=True, layout="bthd",
                       offset=off)
    kw = dict(dim=dim, interleaved=interleaved)
    assert_close(out.detach(), _oracle_bthd(x0, pos, **kw))
    g = torch.randn_like(out)
    out.backward(g)
    assert_close(leaf.grad, _oracle_bthd(g, -pos, **kw))


def test_inplace_on_a_leaf_in_the_default_layout_and_low_precision():
    rope = RotaryEmbedding(D)
    x0 = torch.randn(B, H, T, D)
    leaf = x0.to(torch.bfloat16).requires_grad_()
    out = rope.rotate(leaf, inplace=True)
    assert out.data_ptr() == leaf.data_ptr()
    out.float().sum().backward()
    pos = torch.arange(T)
    assert_close(out.detach(), naive_rope(x0.to(torch.bfloat16).double(), pos),
                 dtype=torch.bfloat16)
    assert_close(leaf.grad, naive_rope(torch.ones(B, H, T, D, dtype=torch.float64), -pos),
                 dtype=torch.bfloat16)


def test_inplace_on_a_leaf_some_backward_saved_is_caught():
    """The write bumps the leaf's version: a backward that saved it refuses to run."""
    leaf = torch.randn(1, 1, T, D, requires_grad=True)
    w = torch.randn(D, requires_grad=True)
    y = (leaf * w).sum()  # mul saves leaf for w's gradient
    RotaryEmbedding(D).rotate(leaf, inplace=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("interleaved", [False, True])
def test_bthd_layout_is_rotated_without_copies(interleaved, inplace):
    rope = RotaryEmbedding(D, interleaved=interleaved)
    x = torch.randn(B, T, H, D)
    pos, off = _positions("per_row")
    want = _oracle_bthd(x, pos, interleaved=interleaved)
    src = x.clone()
    out = rope.rotate(src, offset=off, inplace=inplace, layout="bthd")
    assert out.shape == (B, T, H, D) and out.is_contiguous()  # x's memory order kept
    assert (out.data_ptr() == src.data_ptr()) is inplace
    assert_close(out, want)
    # The same as transposing by hand to (B, H, T, D) and passing (B, T) position_ids.
    by_hand = rope.rotate(x.clone().transpose(1, 2), pos, inplace=inplace).transpose(1, 2)
    torch.testing.assert_close(out, by_hand, rtol=0, atol=0)


def test_forward_takes_bthd_and_per_row_offsets():
    rope = RotaryEmbedding(D)
    q, k = torch.randn(B, T, H, D), torch.randn(B, T, 1, D)
    pos, off = _positions("per_row")
    rq, rk = rope(q, k, offset=off, layout="bthd")
    assert rq.shape == q.shape and rk.shape == k.shape
    assert_close(rq, _oracle_bthd(q, pos))
    assert_close(rk, _oracle_bthd(k, pos))


@pytest.mark.parametrize(("call", "error", "match"), [
    (lambda r: r.rotate(torch.randn(B, T, H, D), layout="thd"), ValueError, r"layout \('thd'\)"),
    (lambda r: r.rotate(torch.randn(B, T, D), layout="bthd"), ValueError,
     r"x must be a \(B, T, H, D\) tensor"),
    (lambda r: r.rotate(torch.randn(B, H, T, D), offset=torch.zeros(3, dtype=torch.long)),
     ValueError, r"shape \(B,\) with B = 2, got \(3,\)"),
    (lambda r: r.rotate(torch.randn(B, H, T, D), offset=torch.zeros(2)), TypeError,
     "integer tensor"),
    (lambda r: apply_rotary(torch.randn(B, H, T, D), *r.cos_sin(None, 6, "cpu"), offset=2),
     ValueError, r"offset \(2\) \+ T \(5\) is more than the table's 6 rows"),
    (lambda r: apply_rotary(torch.randn(B, H, T, D), *r.cos_sin(None, 6, "cpu"),
                            offset=torch.tensor([0, 2])),
     ValueError, r"offsets span \[0, 2\], T = 5"),
])
def test_bad_layouts_and_offsets(call, error, match):
    with pytest.raises(error, match=match):
        call(RotaryEmbedding(D))


def test_bthd_and_per_row_offsets_compile_fullgraph():
    """Traced without graph breaks: the layout is a view, the offsets graph data; and a
    longrope module picks its factor set from a traced length."""
    from blocklab.position import RopeScaling

    torch._dynamo.reset()
    longrope = RopeScaling("longrope", 4.0, 4, short_factor=[1.0] * 4, long_factor=[3.0] * 4)
    for scaling in (None, longrope):
        rope = RotaryEmbedding(D, scaling=scaling)
        x = torch.randn(B, T, H, D)
        off = torch.tensor([0, 6])
        fn = torch.compile(lambda x, off, rope=rope: rope.rotate(x, offset=off, layout="bthd"),
                           backend="eager", fullgraph=True)
        assert_close(fn(x, off), rope.rotate(x, offset=off, layout="bthd"))
