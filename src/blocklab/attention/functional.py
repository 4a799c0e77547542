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
* a fully masked query row returns zeros, never NaN;
* arguments are checked at the boundary with errors that name them.

The fast path dispatches to torch's SDPA; :func:`attention_weights` and the loop
oracle in ``tests/reference/attention.py`` are what it is checked against.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

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
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(
                f"{name} must have 4 dimensions (B, H, T, D), got shape {tuple(t.shape)}"
            )
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
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
    if H_kv == 0 or H % H_kv != 0:
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
    if mask.dim() > 4 or mask.dim() < 2:
        raise ValueError(
            f"mask must broadcast to (B, H, T, S) = {(B, H, T, S)}, got shape {tuple(mask.shape)}"
        )
    try:
        torch.broadcast_shapes(mask.shape, (B, H, T, S))
    except RuntimeError:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not broadcast to (B, H, T, S) = {(B, H, T, S)}"
        ) from None
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
        (B, H, T, D_v). Rows with no visible key are zeros.
    """
    B, H, H_kv, T, S, D = check_qkv(q, k, v)
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    G = H // H_kv
    if mask is None and (not causal or T == 1 <= S):
        # Nothing to hide (one decoding query sees every cached key): no mask at all.
        return _sdpa_grouped(q, k, v, None, scale)
    if mask is None and T == S and (G == 1 or _HAS_ENABLE_GQA):
        # torch's own causal flag: its kernels skip the masked half, and with enable_gqa
        # read each K/V head for its whole group without copying it.
        extra = {"enable_gqa": True} if G > 1 else {}
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, **extra)
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
    return out


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
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    G = H // H_kv
    scores = torch.einsum(
        "bkgtd,bksd->bkgts", q.reshape(B, H_kv, G, T, D), k
    ).reshape(B, H, T, S) * scale  # (B, H, T, S)
    m = _merge_masks(mask, causal, B, H, T, S, scores.dtype, q.device)
    if m is not None:
        scores = scores.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else scores + m
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    return torch.nan_to_num(probs, nan=0.0)
