"""Scaled dot-product attention (Vaswani et al. 2017), with grouped K/V heads.

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k) + M) V

Layout is PyTorch's SDPA layout: q (B, H, T, D), k and v (B, H_kv, S, D) with
H_kv dividing H (GQA, Ainslie et al. 2023; MQA when H_kv == 1). Query head h reads
key/value head h // (H / H_kv).

What this adds over calling ``torch.nn.functional.scaled_dot_product_attention``:

* grouped heads without copying K/V: the G = H / H_kv query heads of a group are
  folded into the query-length axis, so each K/V head is read once (torch's
  ``enable_gqa`` falls back to the math kernel on several backends, pytorch#154363);
* ``causal`` aligned to the *end* when T < S (decoding with a cache: query i sits at
  absolute position S - T + i), where torch aligns it top-left (pytorch#108108);
* a fully masked query row returns zeros, never NaN; NaN or inf in q or k gives NaN
  in the rows it reaches, never the zeros torch's fused CPU kernel returns for some
  of them (:func:`_nan_not_zero`);
* arguments are checked at the boundary with errors that name them.

The fast path dispatches to torch's SDPA; :func:`attention_weights` and the loop
oracle in ``tests/reference/attention.py`` are what it is checked against.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from blocklab._checks import check_bool, check_broadcastable, check_float, check_tensor

# enable_gqa arrived in torch 2.5; before it, grouped causal attention takes the
# folded path with an explicit mask.
_HAS_ENABLE_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)

__all__ = [
    "scaled_dot_product_attention",
    "attention_weights",
    "causal_mask",
    "check_qkv",
]


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[int, int, int, int, int, int]:
    """Validate q (B, H, T, D), k (B, H_kv, S, D), v (B, H_kv, S, D_v).

    Returns (B, H, H_kv, T, S, D).
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t, dim=4, layout="(B, H, T, D)", floating=True)
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    B, H, T, D = q.shape
    Bk, H_kv, S, Dk = k.shape
    if Bk != B or v.shape[0] != B:
        raise ValueError(f"batch sizes differ: q {B}, k {Bk}, v {v.shape[0]}")
    if Dk != D:
        raise ValueError(f"q head dim ({D}) must equal k head dim ({Dk})")
    if v.shape[1] != H_kv or v.shape[2] != S:
        raise ValueError(
            f"k (B, H_kv, S, D) = {tuple(k.shape)} and v = {tuple(v.shape)} disagree on H_kv or S"
        )
    if H_kv == 0:
        raise ValueError(f"k and v must have at least one head, got H_kv = 0 (k {tuple(k.shape)})")
    if H % H_kv != 0:
        raise ValueError(f"query heads H ({H}) must be divisible by key/value heads H_kv ({H_kv})")
    return B, H, H_kv, T, S, D


def causal_mask(
    T: int, S: int, *, device: torch.device | None = None, window: int | None = None
) -> torch.Tensor:
    """Bool (T, S) mask, True = attend, aligned to the end: query i is at position S - T + i.

    With ``window`` (sliding-window attention, Mistral) a query also ignores keys more
    than ``window - 1`` positions behind it.
    """
    q_pos = torch.arange(S - T, S, device=device).unsqueeze(1)  # (T, 1)
    k_pos = torch.arange(S, device=device).unsqueeze(0)  # (1, S)
    mask = k_pos <= q_pos
    if window is not None:
        mask &= (q_pos - k_pos) < window
    return mask


def _as_bool_or_additive(
    mask: torch.Tensor, B: int, H: int, T: int, S: int, dtype: torch.dtype
) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}")
    # Strictly *to* (B, H, T, S): a (T0, S) prefill mask handed to a T = 1 decode step
    # would broadcast both ways under torch's rule and fail inside the kernel.
    check_broadcastable("mask", mask.shape, (B, H, T, S), "(B, H, T, S)")
    if mask.dtype == torch.bool:
        return mask
    if not mask.is_floating_point():
        raise TypeError(f"mask must be bool (True = attend) or additive float, got {mask.dtype}")
    return mask.to(dtype)


def _merge_masks(
    mask: torch.Tensor | None,
    causal: bool,
    B: int,
    H: int,
    T: int,
    S: int,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor | None:
    """One mask (bool or additive) combining the user's mask and the causal one."""
    if mask is not None:
        mask = _as_bool_or_additive(mask, B, H, T, S, dtype)
    if not causal:
        return mask
    cm = causal_mask(T, S, device=device)
    if mask is None:
        return cm
    if mask.dtype == torch.bool:
        return mask & cm
    return mask.masked_fill(~cm, float("-inf"))


def _fully_masked_rows(mask: torch.Tensor) -> torch.Tensor:
    """(..., T, 1) bool: rows where no key is visible."""
    if mask.dtype == torch.bool:
        return ~mask.any(dim=-1, keepdim=True)
    return torch.isneginf(mask).all(dim=-1, keepdim=True)


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v over grouped heads.

    Args:
        q: (B, H, T, D) queries.
        k: (B, H_kv, S, D) keys, H_kv dividing H.
        v: (B, H_kv, S, D_v) values.
        mask: bool (True = attend) or additive float, broadcastable to (B, H, T, S).
        causal: hide future keys; aligned to the end when T < S.
        scale: score scale, default 1 / sqrt(D).

    Returns:
        (B, H, T, D_v). Rows with no visible key are zeros; rows whose scores are not
        finite (NaN or inf in q or k) are NaN.
    """
    B, H, H_kv, T, S, D = check_qkv(q, k, v)
    causal = check_bool("causal", causal)
    # 1 / sqrt(0) for an empty head dim: any scale will do, there is nothing to scale.
    scale = (1.0 / math.sqrt(D) if D else 1.0) if scale is None else check_float(
        "scale", scale, gt=0)
    G = H // H_kv
    if mask is not None:
        mask = _as_bool_or_additive(mask, B, H, T, S, q.dtype)
    if S == 0:  # no key at all: every row is a fully masked row
        return q.new_zeros(B, H, T, v.shape[-1])
    if mask is None and (not causal or T == 1 <= S):
        # Nothing to hide (one decoding query sees every cached key): no mask at all.
        return _nan_not_zero(_sdpa_grouped(q, k, v, None, scale), q, k, None)
    if mask is None and T == S and (G == 1 or _HAS_ENABLE_GQA):
        # torch's own causal flag: its kernels skip the masked half, and with enable_gqa
        # read each K/V head for its whole group without copying it.
        extra = {"enable_gqa": True} if G > 1 else {}
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, **extra)
        return _nan_not_zero(out, q, k, None)
    attn_mask = _merge_masks(mask, causal, B, H, T, S, q.dtype, q.device)

    dead = None
    if attn_mask is not None and (mask is not None or T > S):
        # Rows with no visible key: let them attend everywhere (finite values and
        # gradients inside the kernel), then zero them below.
        dead = _fully_masked_rows(attn_mask)
        if attn_mask.dtype == torch.bool:
            attn_mask = attn_mask | dead
        else:
            attn_mask = attn_mask.masked_fill(dead, 0.0)

    out = _sdpa_grouped(q, k, v, attn_mask, scale)
    if dead is not None:
        out = out.masked_fill(dead, 0.0)
    return _nan_not_zero(out, q, k, dead)


def _nan_not_zero(
    out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, dead: torch.Tensor | None
) -> torch.Tensor:
    """NaN, not zeros, in the rows of ``out`` that non-finite q or k values reach.

    torch's fused CPU kernel (flash attention) returns an all-zero row instead of NaN
    for some NaN or inf in q or k (which ones depends on dtype, length and causality).
    A valid row sums to exactly 0 only when it sees no key (``dead``) or by rare
    accident, so what every call pays is one summing pass over the output; q and k are
    read only when some row sums to 0. Not on other devices (reading the flag would
    wait for the device on every call) nor while torch.compile traces.
    """
    if out.device.type != "cpu" or not out.numel() or torch.compiler.is_compiling():
        return out
    # Row sums, not any(): torch's any() over floats is ~15x slower than its sum, and
    # each extra op costs as much as the reduction at decoding sizes.
    row_sums = out.sum(-1)  # (B, H, T); NaN (not 0) for a NaN row
    if dead is not None:
        row_sums = row_sums.masked_fill(dead[..., 0], 1.0)
    if bool(row_sums.all()):
        return out
    seen = out.ne(0).any(-1, keepdim=True)  # (B, H, T, 1)
    if dead is not None:
        seen = seen | dead
    H, H_kv = q.shape[1], k.shape[1]
    bad = ~torch.isfinite(q).all(-1, keepdim=True)  # (B, H, T, 1)
    bad_k = ~torch.isfinite(k).flatten(2).all(-1)  # (B, H_kv): some key not finite
    bad = bad | bad_k.repeat_interleave(H // H_kv, dim=1)[:, :, None, None]
    return out.masked_fill(bad & ~seen, float("nan"))


def _sdpa_grouped(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """torch SDPA over grouped heads, K/V never copied.

    Each group's G query heads are folded into the query-length axis,
    (B, H, T, D) -> (B, H_kv, G * T, D), so every K/V head is read once.
    """
    B, H, T, D = q.shape
    H_kv, S = k.shape[1], k.shape[2]
    G = H // H_kv
    if G == 1:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
    qg = q.reshape(B, H_kv, G * T, D)
    if attn_mask is not None:
        attn_mask = attn_mask.expand(B, H, T, S).reshape(B, H_kv, G * T, S)
    out = F.scaled_dot_product_attention(qg, k, v, attn_mask=attn_mask, scale=scale)
    return out.reshape(B, H, T, v.shape[-1])  # (B, H, T, D_v)


def attention_weights(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """The attention probabilities softmax(q k^T * scale + mask), shape (B, H, T, S).

    Plain math (materialises the scores), for inspection and heat maps; fully
    masked rows are all zeros.
    """
    B, H, H_kv, T, S, D = check_qkv(q, k, k)
    causal = check_bool("causal", causal)
    scale = (1.0 / math.sqrt(D) if D else 1.0) if scale is None else check_float(
        "scale", scale, gt=0)
    G = H // H_kv
    scores = torch.einsum(
        "bkgtd,bksd->bkgts", q.reshape(B, H_kv, G, T, D), k
    ).reshape(B, H, T, S) * scale  # (B, H, T, S)
    m = _merge_masks(mask, causal, B, H, T, S, scores.dtype, q.device)
    if m is not None:
        scores = scores.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else scores + m
    # A row that sees no key is all -inf: zeros, not softmax's NaN. (A NaN score from
    # a non-finite q or k stays NaN.)
    dead = torch.isneginf(scores).all(-1, keepdim=True)
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    return probs.masked_fill(dead, 0.0)
