"""Rotary positional embedding, RoPE (Su et al. 2021, RoFormer).

Each pair of features of a query or key at position m is rotated by the angle
m * theta_i, theta_i = base^(-2i/d):

    [x_a', x_b'] = [x_a cos(m theta_i) - x_b sin(m theta_i),
                    x_b cos(m theta_i) + x_a sin(m theta_i)]

with (a, b) = (i, i + d/2) in the half-split layout (GPT-NeoX, Hugging Face Llama)
or (2i, 2i + 1) in the interleaved layout (GPT-J, Meta Llama), so that
<R_m q, R_n k> = q^T R_(n-m) k depends on the positions only through m - n.
``permute_qk_weights`` moves q/k projection rows between the two layouts.

Precision: positions are integers and angles are computed in float64 (exact for
positions < 2^53), cos and sin are rounded once to float32 (float64 for fp64 inputs)
and the rotation runs in float32 whatever the input dtype, rounded once to it. At
position 10^6 with base 5e5 the rotation is right to about 1e-6, where float32
angles (Hugging Face) are off by ~0.09 (transformers PR#29285).

Speed: on CPU the rotation runs in blocks that follow the tensor's memory order and
stay in cache, each op shared by torch's intra-op threads; the interleaved layout is
one complex multiply. ``inplace=True`` rotates q and k in their own storage
(autograd: the backward is the inverse rotation, R^T = R(-theta)), leaves that require
grad and views of them included (flash-attention's ``inplace=True`` on a packed qkv
leaf). ``layout="bthd"`` rotates (B, T, H, D) tensors through a transposed view, no
copy. Under
``torch.compile`` the plain formula is traced instead (Inductor fuses it) and nothing
is cached.

Checked against the fp64 oracle in ``tests/reference/rope.py`` and Hugging Face's
``apply_rotary_pos_emb`` / ``ROPE_INIT_FUNCTIONS``.
"""

from __future__ import annotations

import itertools
from typing import Literal

import torch
from torch import nn

from blocklab._alloc import empty_like_layout, scratch
from blocklab._checks import check_bool, check_float, check_int, check_tensor
from blocklab.position.scaling import RopeScaling

__all__ = [
    "RotaryEmbedding",
    "apply_rotary",
    "rope_angles",
    "inverse_frequencies",
    "rotary_cos_sin",
    "permute_qk_weights",
]

_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)
Layout = Literal["bhtd", "bthd"]
_LAYOUTS = ("bhtd", "bthd")
# cos, sin and, for the interleaved layout, cos + i sin (one complex multiply rotates)
_Tables = tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None"]


# ------------------------------------------------------------------ frequencies and angles

def inverse_frequencies(dim: int, base: float = 10000.0) -> torch.Tensor:
    """theta_i = base^(-2i/dim) for i < dim/2, in float64, shape (dim/2,)."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0 or dim % 2:
        raise ValueError(f"rotary dim ({dim}) must be a positive even number")
    base = check_float("rotary base", base, gt=1)
    return base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)


def rope_angles(positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Angles m * theta_i in float64: positions (...,) -> (..., dim/2)."""
    return positions.to(torch.float64).unsqueeze(-1) * inv_freq.to(
        device=positions.device, dtype=torch.float64
    )


def rotary_cos_sin(
    positions: torch.Tensor,
    inv_freq: torch.Tensor,
    *,
    attention_factor: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the angles (float64) times the attention factor, rounded once to
    ``dtype``: positions (...,) -> two (..., dim/2) tensors on the positions' device."""
    device = positions.device
    if device.type == "mps":  # no float64 there: compute on the CPU, then move
        positions = positions.cpu()
    ang = rope_angles(positions, inv_freq)
    cos, sin = ang.cos(), ang.sin()
    if attention_factor != 1.0:
        cos, sin = cos * attention_factor, sin * attention_factor
    return cos.to(device=device, dtype=dtype), sin.to(device=device, dtype=dtype)


# ------------------------------------------------------------------ the rotation, reference

def _rotate_reference(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool
) -> torch.Tensor:
    """The textbook formula with plain differentiable ops: a new tensor, x's dtype.

    Used under ``torch.compile`` (Inductor fuses it into one kernel)."""
    half = cos.shape[-1]
    rot = 2 * half
    work = torch.promote_types(x.dtype, cos.dtype)
    xr = x[..., :rot].to(work)
    x1, x2 = (xr[..., 0::2], xr[..., 1::2]) if interleaved else (xr[..., :half], xr[..., half:])
    c, s = cos.to(work), sin.to(work)
    r1 = x1 * c - x2 * s
    r2 = x2 * c + x1 * s
    if interleaved:
        rotated = torch.stack((r1, r2), dim=-1).flatten(-2)
    else:
        rotated = torch.cat((r1, r2), dim=-1)
    rotated = rotated.to(x.dtype)
    if rot == x.shape[-1]:
        return rotated
    return torch.cat((rotated, x[..., rot:]), dim=-1)


# ------------------------------------------------------------------ the rotation, fast kernels
#
# A rotation is a few elementwise passes (one complex multiply when the layout is
# interleaved). Over a large tensor every pass would stream it from memory again, so
# on CPU the tensor is cut into blocks of about _GRAIN_PER_THREAD elements per torch
# thread, each rotated while it sits in cache, its ops shared by torch's own intra-op
# threads. Blocks follow x's memory order: whole heads of a contiguous (B, H, T, D)
# tensor, all heads of a range of rows for a (B, T, H, D) fused projection seen as
# (B, H, T, D). Blocks that cut across memory order alias in the cache (32 heads
# 512 KiB apart fall in the same sets) and run 2-3x slower; Python threads sharing
# blocks lost to the GIL and to torch's intra-op threads (measured on a 2-core Xeon).

_GRAIN_PER_THREAD = 131072  # elements of x: 512 KiB of fp32
_CHUNK_MIN_NUMEL = 1 << 18  # below this, a handful of whole-tensor ops is cheaper
def _block_index(x: torch.Tensor, grain: int) -> list[tuple[slice, slice, slice]]:
    """(B, H, T) slices cutting x (B, H, T, D) into blocks of at most ``grain``
    elements (at least one row) that each lie in one piece of memory as far as x's
    strides allow: dims are taken whole from the innermost (smallest stride) out while
    the block fits, the next is cut into ranges, the outer ones go one index at a time."""
    whole = slice(None)
    per, cut = x.shape[-1], False
    ranges: list[list[slice]] = [[whole]] * 3
    for d in sorted(range(3), key=lambda d: x.stride(d)):  # innermost first
        n = x.shape[d]
        if not cut and per * n <= grain:
            per *= n
            continue
        step = 1 if cut else max(1, grain // per)
        ranges[d] = [slice(i, min(n, i + step)) for i in range(0, n, step)]
        cut = True
    return list(itertools.product(*ranges))


def _halves(x: torch.Tensor, interleaved: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if interleaved:
        return x[..., 0::2], x[..., 1::2]
    half = x.shape[-1] // 2
    return x[..., :half], x[..., half:]


def _as_complex(x: torch.Tensor) -> torch.Tensor | None:
    """(..., 2h) real -> (..., h) complex view of adjacent pairs, or None if not viewable."""
    if x.dtype not in (torch.float32, torch.float64):
        return None
    try:
        return torch.view_as_complex(x.unflatten(-1, (-1, 2)))
    except RuntimeError:  # strides or offset not pair-aligned
        return None


def _rotate_block(
    x: torch.Tensor,
    out: torch.Tensor | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
    z: torch.Tensor | None,
    interleaved: bool,
    reuse: bool = False,
) -> None:
    """Rotate one block: out = R x, or x in place when out is None.

    x, out: (..., D); cos, sin: (..., h) broadcastable, the working dtype; z: cos + i sin
    or None. The first 2h features are rotated, the rest copied. ``reuse``: take
    temporaries from the per-thread buffers (blocks of bounded size only).
    """
    rot = 2 * cos.shape[-1]
    full = rot == x.shape[-1]
    if out is not None and not full:
        out[..., rot:].copy_(x[..., rot:])
    xr = x if full else x[..., :rot]
    orr = xr if out is None else out if full else out[..., :rot]

    def temp(slot: int, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if reuse:
            return scratch(f"rope{slot}", like.shape, dtype, like.device)
        return torch.empty(like.shape, dtype=dtype, device=like.device)

    if xr.dtype != cos.dtype:  # bf16/fp16: rotate an fp32 copy, round once
        w = temp(1, xr, cos.dtype).copy_(xr)
        _rotate_block(w, None, cos, sin, z, interleaved, reuse)
        orr.copy_(w)
        return
    if interleaved and z is not None:
        zx, zo = _as_complex(xr), _as_complex(orr)
        if zx is not None and zo is not None:
            if out is None:
                zx.mul_(z)
            else:
                torch.mul(zx, z, out=zo)
            return
    x1, x2 = _halves(xr, interleaved)
    if out is None:
        t = torch.mul(x1, sin, out=temp(0, x1, x1.dtype))
        x1.mul_(cos).addcmul_(x2, sin, value=-1)  # x1 c - x2 s
        torch.addcmul(t, x2, cos, out=x2)  # x2 c + x1 s, one pass
    else:
        o1, o2 = _halves(orr, interleaved)
        torch.mul(x1, cos, out=o1).addcmul_(x2, sin, value=-1)
        torch.mul(x2, cos, out=o2).addcmul_(x1, sin)


def _rotate(
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    interleaved: bool,
    out: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
) -> torch.Tensor:
    """R x into ``out`` (x's shape, any strides) or x in place; no autograd.

    x: (B, H, T, D); cos, sin: (T, h) or (B or 1, 1, T, h), the working dtype; z:
    cos + i sin, for the interleaved layout (computed when None)."""
    x = x.detach()
    if interleaved and z is None and cos.dtype in (torch.float32, torch.float64):
        z = torch.complex(cos, sin)
    # One complex multiply is a single pass already: blocks would only add overhead.
    one_pass = (z is not None and x.dtype == cos.dtype and 2 * cos.shape[-1] == x.shape[-1]
                and _as_complex(x) is not None and (out is None or _as_complex(out) is not None))
    if one_pass or x.device.type != "cpu" or x.numel() < _CHUNK_MIN_NUMEL or x.dim() != 4:
        _rotate_block(x, out, cos, sin, z, interleaved)
        return x if out is None else out
    grain = _GRAIN_PER_THREAD * max(1, torch.get_num_threads())
    blocks = _block_index(x, grain)
    shared = cos.dim() == 2 or cos.shape[0] == 1  # the same table rows for every batch row
    tables: dict[tuple, tuple] = {}

    def table(ib: slice, it: slice) -> tuple:
        key = (it.start, it.stop) if shared else (ib.start, ib.stop, it.start, it.stop)
        if key not in tables:
            tb = (it,) if cos.dim() == 2 else (slice(None) if shared else ib, slice(None), it)
            tables[key] = cos[tb], sin[tb], None if z is None else z[tb]
        return tables[key]

    if x.dtype != cos.dtype:  # bf16/fp16: each block through an fp32 scratch copy
        for idx in blocks:
            _rotate_block(x[idx], None if out is None else out[idx], *table(idx[0], idx[2]),
                          interleaved, reuse=True)
        return x if out is None else out
    # Per block only the ops themselves: views of the halves are cut once, here.
    # (Per-block Python work costs as much as an op on a 2-core machine.)
    rot = 2 * cos.shape[-1]
    x1a, x2a = _halves(x[..., :rot], interleaved)
    if out is not None:
        o1a, o2a = _halves(out[..., :rot], interleaved)
        if rot < x.shape[-1]:
            out[..., rot:].copy_(x[..., rot:])
    for idx in blocks:
        x1, x2 = x1a[idx], x2a[idx]
        c, s, _ = table(idx[0], idx[2])
        if out is None:
            t = torch.mul(x1, s, out=scratch("rope0", x1.shape, x1.dtype, x1.device))
            x1.mul_(c).addcmul_(x2, s, value=-1)  # x1 c - x2 s
            torch.addcmul(t, x2, c, out=x2)  # x2 c + x1 s
        else:
            torch.mul(x1, c, out=o1a[idx]).addcmul_(x2, s, value=-1)
            torch.mul(x2, c, out=o2a[idx]).addcmul_(x1, s)
    return x if out is None else out


class _Rotate(torch.autograd.Function):
    """y = R x into a new tensor; dx = R^T dy, the rotation by -theta."""

    @staticmethod
    def forward(ctx, x, cos, sin, z, interleaved):  # type: ignore[override]
        ctx.save_for_backward(cos, sin)
        ctx.interleaved = interleaved
        return _rotate(x, cos, sin, interleaved, z=z,
                       out=empty_like_layout(x))

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        cos, sin = ctx.saved_tensors
        return _Rotate.apply(grad, cos, -sin, None, ctx.interleaved), None, None, None, None


class _RotateInplace(torch.autograd.Function):
    """x <- R x in x's storage (marked dirty, so autograd tracks it); dx = R^T dy."""

    @staticmethod
    def forward(ctx, x, cos, sin, z, interleaved):  # type: ignore[override]
        _rotate(x, cos, sin, interleaved, z=z)
        ctx.mark_dirty(x)
        ctx.save_for_backward(cos, sin)
        ctx.interleaved = interleaved
        return x

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        cos, sin = ctx.saved_tensors
        return _Rotate.apply(grad, cos, -sin, None, ctx.interleaved), None, None, None, None


class _RotateLeafInplace(torch.autograd.Function):
    """x <- R x in the storage of a leaf that requires grad (or of a view of one); the
    result aliases x and dx = R^T dy.

    Autograd forbids marking a leaf dirty (``mark_dirty`` raises "a leaf Variable that
    requires grad is being used in an in-place operation"), so this function owns the
    write without marking it, as flash-attention's rotary does: the gradient reaches
    the leaf through this node (the leaf's value afterwards is R x, as asked). A
    tensor saved for another backward that shares the storage is still caught: the
    write bumps the version counter, and that backward refuses to run.
    """

    @staticmethod
    def forward(ctx, x, cos, sin, z, interleaved):  # type: ignore[override]
        _rotate(x, cos, sin, interleaved, z=z)
        ctx.save_for_backward(cos, sin)
        ctx.interleaved = interleaved
        # An alias of x's storage that autograd does not see as a view of it: a view
        # would be invalidated when a sibling view of the same leaf is rotated next
        # (q then k of a packed qkv), since views share one version counter.
        return x.detach()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        cos, sin = ctx.saved_tensors
        return _Rotate.apply(grad, cos, -sin, None, ctx.interleaved), None, None, None, None


def _views_grad_leaf(x: torch.Tensor) -> bool:
    """x is a leaf that requires grad, or a view of one."""
    root = x._base if x._is_view() else x
    return root.is_leaf and root.requires_grad


def _can_mark_dirty(x: torch.Tensor) -> bool:
    """Whether autograd can track an in-place change of x: not for outputs of
    ``split``/``chunk``/``unbind`` or views made under no_grad."""
    if not x._is_view():
        return True
    get_meta = getattr(torch._C._autograd, "_get_creation_meta", None)
    if get_meta is None:
        return False
    return get_meta(x) == torch._C._autograd.CreationMeta.DEFAULT


def apply_rotary(
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    *,
    interleaved: bool = False,
    inplace: bool = False,
    layout: Layout = "bhtd",
    offset: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """Rotate the first ``2 * cos.shape[-1]`` features of x; the rest pass through.

    Args:
        x: (B, H, T, D), or (B, T, H, D) with ``layout="bthd"`` (flash-attention's
            layout; a packed qkv's ``qkv[:, :, 0]`` is one), rotated through a
            transposed view, no copy.
        cos, sin: (T, dim/2) or (B, 1, T, dim/2), float32 (float64 for fp64 work); the
            rotation runs in the wider of their dtype and x's. With ``offset``, tables
            (S_ro, dim/2) of which rows offset..offset+T-1 are used.
        interleaved: pairs (2i, 2i+1) instead of (i, i + dim/2).
        inplace: rotate x in its own storage and return it, leaves that require grad
            and views of them included; with autograd, out of place for views of
            computed tensors autograd cannot track (see ``RotaryEmbedding.forward``).
        layout: "bhtd" or "bthd", x's dim order.
        offset: None (cos/sin rows are x's T positions), an int, or a per-row (B,)
            integer tensor (flash-attention's ``seqlen_offsets``).

    Returns:
        R x, x's shape, layout and dtype: a new tensor laid out in x's memory order
        (contiguous for a contiguous x), or x's storage when ``inplace``.
    """
    xv = _to_bhtd("x", x, layout)  # (B, H, T, D)
    out = _apply_rotary(xv, cos, sin, interleaved=interleaved, inplace=inplace,
                        offset=offset)
    return out if layout == "bhtd" else out.transpose(1, 2)


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *,
                  interleaved: bool, inplace: bool,
                  offset: int | torch.Tensor | None) -> torch.Tensor:
    check_tensor("x", x, floating=True)
    check_tensor("cos", cos, floating=True)
    check_tensor("sin", sin, floating=True)
    interleaved, inplace = check_bool("interleaved", interleaved), check_bool("inplace", inplace)
    if offset is not None and cos.shape == sin.shape:
        cos, sin = _table_rows(cos, sin, offset, x.shape[-2], x.shape[0])
    if cos.shape != sin.shape or cos.dim() not in (2, 4):
        raise ValueError(
            f"cos {tuple(cos.shape)} and sin {tuple(sin.shape)} must both be (T, dim/2) "
            "or (B, 1, T, dim/2)"
        )
    rot = 2 * cos.shape[-1]
    if rot > x.shape[-1]:
        raise ValueError(f"rotary dim ({rot}) is larger than the head dim ({x.shape[-1]})")
    if cos.shape[-2] != x.shape[-2] or (cos.dim() == 4 and cos.shape[0] not in (1, x.shape[0])):
        raise ValueError(
            f"cos/sin {tuple(cos.shape)} do not match x {tuple(x.shape)} in T or B"
        )
    if torch.compiler.is_compiling():
        # Traced functionally: Inductor fuses the formula, and the result is a new tensor.
        return _rotate_reference(x, cos, sin, interleaved)
    return _apply(x, cos, sin, None, interleaved, inplace)


def _apply(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, z: torch.Tensor | None,
           interleaved: bool, inplace: bool) -> torch.Tensor:
    """apply_rotary after validation, eager; z: cos + i sin if the caller has it cached."""
    work = torch.promote_types(x.dtype, cos.dtype)
    if cos.dtype != work or cos.device != x.device:
        cos, sin = cos.to(device=x.device, dtype=work), sin.to(device=x.device, dtype=work)
        z = None
    needs_grad = torch.is_grad_enabled() and x.requires_grad
    if inplace:
        if not needs_grad:
            _rotate(x, cos, sin, interleaved, z=z)
            return x
        if _views_grad_leaf(x):
            return _RotateLeafInplace.apply(x, cos, sin, z, interleaved)
        if _can_mark_dirty(x):
            return _RotateInplace.apply(x, cos, sin, z, interleaved)
        # An untracked write could corrupt a tensor some op saved for its backward,
        # and a tracked one is forbidden: rotate out of place.
        return _Rotate.apply(x, cos, sin, z, interleaved)
    if needs_grad:
        return _Rotate.apply(x, cos, sin, z, interleaved)
    return _rotate(x, cos, sin, interleaved, z=z,
                   out=empty_like_layout(x))


def _to_bhtd(name: str, x: torch.Tensor, layout: str) -> torch.Tensor:
    """x in ``layout`` -> a (B, H, T, D) view of it (no copy)."""
    if layout not in _LAYOUTS:
        raise ValueError(f"layout ({layout!r}) must be one of {_LAYOUTS}")
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        want = "(B, H, T, D)" if layout == "bhtd" else "(B, T, H, D)"
        raise ValueError(f"{name} must be a {want} tensor, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else x!r}")
    return x if layout == "bhtd" else x.transpose(1, 2)


def _check_offset_tensor(offset: torch.Tensor, batch: int) -> torch.Tensor:
    """A per-row offset: an integer tensor of shape (B,) or (1,) -> (B or 1, 1) long."""
    if offset.dtype not in _INT_DTYPES:
        raise TypeError(f"offset must be an int or an integer tensor of shape (B,), got "
                        f"{offset.dtype}")
    if offset.dim() != 1 or offset.shape[0] not in (1, batch):
        raise ValueError(f"offset must be an int or a tensor of shape (B,) with B = {batch}, "
                         f"got {tuple(offset.shape)}")
    return offset.to(torch.long).unsqueeze(-1)


def _table_rows(
    cos: torch.Tensor, sin: torch.Tensor, offset: int | torch.Tensor, T: int, batch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows offset..offset+T-1 of (S_ro, dim/2) tables: (T, dim/2) slices for an int,
    (B, 1, T, dim/2) gathers for a per-row (B,) tensor."""
    if cos.dim() != 2:
        raise ValueError(f"with offset, cos and sin must be (S_ro, dim/2) tables, got "
                         f"{tuple(cos.shape)}")
    rows = cos.shape[0]
    if isinstance(offset, torch.Tensor):
        off = _check_offset_tensor(offset, batch).to(cos.device)  # (B or 1, 1)
        if not torch.compiler.is_compiling() and off.numel():
            lo, hi = (int(v) for v in torch.aminmax(off))
            if lo < 0 or hi + T > rows:
                raise ValueError(f"offset + T must lie in [0, {rows}] (the table's rows): "
                                 f"offsets span [{lo}, {hi}], T = {T}")
        idx = off + torch.arange(T, device=cos.device)  # (B or 1, T)
        return cos[idx].unsqueeze(1), sin[idx].unsqueeze(1)  # (B or 1, 1, T, dim/2)
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(f"offset ({offset!r}) must be an int >= 0 or a (B,) tensor")
    if offset + T > rows:
        raise ValueError(f"offset ({offset}) + T ({T}) is more than the table's {rows} rows")
    return cos[offset : offset + T], sin[offset : offset + T]


# ------------------------------------------------------------------ layout conversion

def permute_qk_weights(
    w: torch.Tensor,
    n_heads: int,
    head_dim: int,
    *,
    to: Literal["interleaved", "half"],
    rotary_dim: int | None = None,
) -> torch.Tensor:
    """Reorder q or k projection rows between the two rotary layouts.

    A checkpoint trained with interleaved pairs (Meta Llama, GPT-J) gives the same
    attention scores in a half-split model (Hugging Face Llama, GPT-NeoX) once each
    head's rows (2i, 2i+1) are moved to (i, i + dim/2) -- Hugging Face's
    ``convert_llama_weights_to_hf`` permute -- and back with ``to="interleaved"``.

    Args:
        w: weight (n_heads * head_dim, in_features) or bias (n_heads * head_dim,).
        n_heads, head_dim: H (or H_kv for k) and D.
        to: the layout of the result.
        rotary_dim: rotated features per head (default head_dim); the rest keep
            their place.

    Returns:
        A new tensor, w's shape.
    """
    if to not in ("interleaved", "half"):
        raise ValueError(f"to ({to!r}) must be 'interleaved' or 'half'")
    rot = head_dim if rotary_dim is None else rotary_dim
    if rot <= 0 or rot % 2 or rot > head_dim:
        raise ValueError(f"rotary_dim ({rot}) must be even, positive and <= head_dim ({head_dim})")
    if w.dim() not in (1, 2) or w.shape[0] != n_heads * head_dim:
        raise ValueError(
            f"w must have n_heads * head_dim = {n_heads * head_dim} rows, got {tuple(w.shape)}"
        )
    rest = tuple(w.shape[1:])
    v = w.reshape(n_heads, head_dim, *rest)
    r = v[:, :rot]
    if to == "half":  # row 2i + c -> row c * rot/2 + i
        r = r.reshape(n_heads, rot // 2, 2, *rest).transpose(1, 2)
    else:  # row c * rot/2 + i -> row 2i + c
        r = r.reshape(n_heads, 2, rot // 2, *rest).transpose(1, 2)
    r = r.reshape(n_heads, rot, *rest)
    return torch.cat((r, v[:, rot:]), dim=1).reshape(w.shape)


# ------------------------------------------------------------------ the module

class RotaryEmbedding(nn.Module):
    """RoPE applied to queries and keys.

    Args:
        dim: number of rotated features per head (even); ``dim < D`` rotates the
            first ``dim`` features only (partial rotary, GPT-NeoX ``rotary_pct``).
        base: the frequency base (``rope_theta``).
        interleaved: Meta / GPT-J pair layout instead of the half split.
        scaling: a context-extension rule (see ``RopeScaling``), or None.
        max_seq_len: rows of the cos/sin table built on first use; it grows on demand
            (doubling, up to max(max_seq_len, 65536) rows), and positions past that
            are computed directly.

    The cos/sin tables are plain attributes, not buffers: ``model.to(bfloat16)`` must
    not round them. Tables are kept per device and dtype (float32, float64 for fp64
    inputs).

    dynamic_ntk recomputes the frequencies from the current length l = largest
    position + 1 (offset + T when decoding with a cache) on every call, as a pure
    function of l -- what Hugging Face's "dynamic" gives a fresh module. Keys already
    in a KV cache keep the rotation they were written with, exactly as in Hugging Face
    (transformers#25104): scores between new queries and old keys then mix two
    frequency sets. Hugging Face also keeps the largest l seen across calls; this
    module does not (it has no state to go stale). longrope switches the same way,
    from its short to its long factors once l passes the original length.
    """

    def __init__(
        self,
        dim: int,
        *,
        base: float = 10000.0,
        interleaved: bool = False,
        scaling: RopeScaling | None = None,
        max_seq_len: int = 2048,
    ) -> None:
        super().__init__()
        check_int("dim", dim)
        max_seq_len = check_int("max_seq_len", max_seq_len, min=1)
        interleaved = check_bool("interleaved", interleaved)
        if scaling is not None and not isinstance(scaling, RopeScaling):
            raise TypeError(f"scaling must be a RopeScaling or None, got {type(scaling).__name__}")
        self.inv_freq64 = inverse_frequencies(dim, base)
        self.attention_factor = 1.0
        if scaling is not None:
            self.inv_freq64, self.attention_factor = scaling.inverse_frequencies(dim, base)
        self.dim = dim
        self.base = float(base)
        self.interleaved = bool(interleaved)
        self.scaling = scaling
        self.max_seq_len = max_seq_len
        self._rows_limit = max(max_seq_len, 1 << 16)
        self._rows = max_seq_len
        self._tables: dict[tuple[torch.device, torch.dtype], _Tables] = {}

    # -- cos/sin ------------------------------------------------------------------
    def _table(self, rows: int, device: torch.device, dtype: torch.dtype) -> _Tables:
        """cos, sin (and cos + i sin if interleaved) of at least ``rows`` rows."""
        if rows > self._rows:
            self._rows = min(max(rows, 2 * self._rows), self._rows_limit)
            self._tables.clear()
        key = (device, dtype)
        if key not in self._tables:
            # Normal tensors even when first built under inference_mode: a later
            # training step saves slices of them for backward.
            with torch.inference_mode(False):
                cos, sin = rotary_cos_sin(torch.arange(self._rows), self.inv_freq64,
                                          attention_factor=self.attention_factor, dtype=dtype)
                cos, sin = cos.to(device), sin.to(device)
                z = torch.complex(cos, sin) if self.interleaved else None
            self._tables[key] = (cos, sin, z)
        return self._tables[key]

    def _direct(self, positions: torch.Tensor, dtype: torch.dtype,
                length: int | torch.Tensor | None = None) -> _Tables:
        inv_freq = self.inv_freq64
        if self.scaling is not None and self.scaling.is_dynamic:
            inv_freq = self.scaling.inverse_frequencies(self.dim, self.base, seq_len=length)[0]
        cos, sin = rotary_cos_sin(positions, inv_freq, attention_factor=self.attention_factor,
                                  dtype=dtype)
        return cos, sin, None

    def _check_positions(self, position_ids: torch.Tensor, T: int, batch: int | None) -> None:
        if not isinstance(position_ids, torch.Tensor) or position_ids.dtype not in _INT_DTYPES:
            got = position_ids.dtype if isinstance(position_ids, torch.Tensor) else type(
                position_ids).__name__
            raise TypeError(f"position_ids must be an integer tensor of shape (T,) or (B, T), "
                            f"got {got}")
        shape = tuple(position_ids.shape)
        ok = position_ids.dim() in (1, 2) and shape[-1] == T
        if ok and position_ids.dim() == 2 and batch is not None:
            ok = shape[0] in (1, batch)
        if not ok:
            raise ValueError(
                f"position_ids must have shape (T,) or (B, T) with T = {T}"
                + (f", B = {batch}" if batch is not None else "") + f", got {shape}"
            )

    def _cos_sin_z(
        self,
        position_ids: torch.Tensor | None,
        T: int,
        device: torch.device,
        offset: int | torch.Tensor,
        dtype: torch.dtype,
        batch: int | None,
    ) -> _Tables:
        device = torch.device(device)
        dynamic = self.scaling is not None and self.scaling.is_dynamic
        original = self.scaling.original_max_seq_len if self.scaling is not None else 0
        if position_ids is None and isinstance(offset, torch.Tensor):
            off = _check_offset_tensor(offset, 1 if batch is None else batch)  # (B or 1, 1)
            position_ids = off.to(device) + torch.arange(T, device=device)  # (B or 1, T)
        if position_ids is None:
            if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
                raise ValueError(f"offset ({offset!r}) must be an int >= 0 or a (B,) tensor")
            length = offset + T
            fits = length <= self._rows_limit and not (dynamic and length > original)
            if fits and not torch.compiler.is_compiling():
                cos, sin, z = self._table(length, device, dtype)
                return (cos[offset:length], sin[offset:length],
                        None if z is None else z[offset:length])
            return self._direct(torch.arange(offset, length, device=device), dtype, length)
        self._check_positions(position_ids, T, batch)
        pid = position_ids.to(device=device, dtype=torch.long)
        if torch.compiler.is_compiling() or device.type != "cpu":
            # No host sync: compute from the positions (dynamic's length as a tensor).
            cos, sin, z = self._direct(pid, dtype, pid.max() + 1 if dynamic else None)
        else:
            lo, hi = (int(v) for v in torch.aminmax(pid)) if pid.numel() else (0, 0)
            if lo >= 0 and hi < self._rows_limit and not (dynamic and hi + 1 > original):
                cos, sin, z = self._table(hi + 1, device, dtype)
                # (T, dim/2) or (B, T, dim/2)
                cos, sin, z = cos[pid], sin[pid], None if z is None else z[pid]
            else:
                cos, sin, z = self._direct(pid, dtype, hi + 1)
        if pid.dim() == 2:  # (B, 1, T, dim/2)
            cos, sin, z = cos.unsqueeze(1), sin.unsqueeze(1), None if z is None else z.unsqueeze(1)
        return cos, sin, z

    def cos_sin(
        self,
        position_ids: torch.Tensor | None,
        T: int,
        device: torch.device,
        offset: int = 0,
        dtype: torch.dtype = torch.float32,
        *,
        batch: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (attention factor included) for the positions: (T, dim/2) for
        positions offset..offset+T-1 or (T,) position_ids, (B, 1, T, dim/2) for per-row
        (B, T) position_ids. Any integer position is allowed, negative or far."""
        cos, sin, _ = self._cos_sin_z(position_ids, T, device, offset, dtype, batch)
        return cos, sin

    # -- forward ----------------------------------------------------------------------
    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        *,
        inplace: bool = False,
        offset: int | torch.Tensor = 0,
        layout: Layout = "bhtd",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate q and k.

        Args:
            q: (B, H, T, D), or (B, T, H, D) with ``layout="bthd"``.
            k: (B, H_kv, T, D), or (B, T, H_kv, D).
            position_ids: None (positions offset..offset+T-1), (T,) or (B, T) integers
                (packed sequences, left padding, per-row offsets).
            inplace: rotate q and k in their own storage and return them. With
                autograd the change is tracked (mark_dirty) and the backward is the
                inverse rotation. Leaves that require grad (and views of them, e.g.
                q and k of a packed qkv leaf) are rotated in their storage too and the
                returned tensor carries the gradient back to them (torch cannot mark a
                leaf dirty, so the rotation owns the write, as flash-attention's does).
                Views of computed tensors whose in-place change autograd forbids
                (outputs of ``split``/``chunk``, as Attention's q and k while
                training) are rotated out of place. Without autograd (inference,
                no_grad) it is always in place. Under ``torch.compile`` the rotation
                is traced out of place.
            offset: first position when position_ids is None (decoding with a cache):
                an int, or a per-row (B,) integer tensor (rows at different offsets).
            layout: "bhtd" or "bthd" (flash-attention's), q's and k's dim order; the
                other is rotated through a transposed view, no copy.

        Returns:
            (q, k) rotated, same shapes, layout and dtypes.
        """
        q, k = _to_bhtd("q", q, layout), _to_bhtd("k", k, layout)  # (B, H(_kv), T, D)
        for name, t in (("q", q), ("k", k)):
            self._check_input(name, t)
        if q.shape[0] != k.shape[0] or q.shape[-2:] != k.shape[-2:]:
            raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} differ in B, T or D")
        inplace = check_bool("inplace", inplace)
        # (Empty tensors all share data pointer 0, and there is nothing to overwrite.)
        if inplace and not torch.compiler.is_compiling() and q.numel() and k.numel() \
                and q.data_ptr() == k.data_ptr():
            raise ValueError("inplace=True needs q and k in separate storage (got the same tensor)")
        tables = self._tables_for(q, position_ids, offset)
        rq, rk = self._rotate_one(q, tables, inplace), self._rotate_one(k, tables, inplace)
        return (rq, rk) if layout == "bhtd" else (rq.transpose(1, 2), rk.transpose(1, 2))

    def rotate(
        self,
        x: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        *,
        inplace: bool = False,
        offset: int | torch.Tensor = 0,
        layout: Layout = "bhtd",
    ) -> torch.Tensor:
        """Rotate one (B, H, T, D) tensor -- or (B, T, H, D) with ``layout="bthd"``,
        e.g. ``qkv[:, :, 0]`` of a packed (B, T, 3, H, D) projection: the queries and
        keys of a fused projection viewed together as H + H_kv heads cost one call
        instead of two.

        Arguments as :meth:`forward`; returns R x, x's shape, layout and dtype.
        """
        xv = _to_bhtd("x", x, layout)  # (B, H, T, D)
        self._check_input("x", xv)
        inplace = check_bool("inplace", inplace)
        out = self._rotate_one(xv, self._tables_for(xv, position_ids, offset), inplace)
        return out if layout == "bhtd" else out.transpose(1, 2)

    def _check_input(self, name: str, t: torch.Tensor) -> None:
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{name} must be a (B, H, T, D) tensor, got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else t!r}")
        # An integer tensor would be rotated in float32 and truncated back: garbage.
        check_tensor(name, t, floating=True)
        if self.dim > t.shape[-1]:
            raise ValueError(
                f"rotary dim ({self.dim}) is larger than the head dim ({t.shape[-1]}) of {name}")

    def _tables_for(
        self, x: torch.Tensor, position_ids: torch.Tensor | None, offset: int | torch.Tensor
    ) -> _Tables:
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        return self._cos_sin_z(position_ids, x.shape[-2], x.device, offset, dtype, x.shape[0])

    def _rotate_one(self, x: torch.Tensor, tables: _Tables, inplace: bool) -> torch.Tensor:
        cos, sin, z = tables
        if torch.compiler.is_compiling():
            # Traced functionally: Inductor fuses the formula; nothing is cached.
            return _rotate_reference(x, cos, sin, self.interleaved)
        return _apply(x, cos, sin, z, self.interleaved, inplace)

    def extra_repr(self) -> str:
        extra = f", scaling={self.scaling.kind}x{self.scaling.factor:g}" if self.scaling else ""
        return f"dim={self.dim}, base={self.base:g}, interleaved={self.interleaved}{extra}"
