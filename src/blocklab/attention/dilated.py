"""Dilated attention (LongNet, Ding et al. 2023, arXiv:2307.02486, section 2.2).

One pattern (w, r) splits the N positions into segments of length w and keeps every
r-th position of each segment, head j starting at offset o_j = j mod r:

    Q~_i = [Q_{iw + o_j}, Q_{iw + o_j + r}, ..., Q_{(i+1)w - r + o_j}]     (K~_i, V~_i alike)
    O~_i = softmax(Q~_i K~_i^T / sqrt(D)) V~_i

and scatters O~_i back to the kept positions (every other position gets 0 from this
pattern). Patterns mix with weights proportional to their softmax denominators
(the paper's eq. 10):

    O = sum_k a_k O_k,   a_k = s_k / sum_l s_l = softmax_k(lse_k),
    s_k = sum_j exp(q . k_j / sqrt(D)) over the keys pattern k shows the query,

so O is exactly softmax attention over the union (a multiset) of the keys the patterns
show each query. The weights depend on q and k: gradients flow through them. (Microsoft
torchscale computes them under ``no_grad``: the forward is exact, its gradients are not.)
A segment longer than the sequence holds the whole sequence; a ragged last segment is
padded internally with masked keys, so any length works. With geometric segment lengths
and rates each pattern costs ``2 N w D / r^2`` FLOPs per matrix product, linear in N.

On CPU every head's sparse segments, of every pattern with the same length w / r, are
gathered into one batch (per pattern a copy of 1/r of q, k and v, and its output: memory
linear in N) and go through one call of torch's fused flash kernel, which also returns each query's
log-sum-exp; a custom backward feeds that kernel's backward the *mixed* output and
log-sum-exp, which is exactly the gradient of attention over the union of keys.
Elsewhere (CUDA), or where torch lacks that kernel, a plain autograd path materialises
each segment's (w/r)^2 scores. Both are checked against the loop-style fp64 oracle
``tests/reference/dilated.py`` and with ``torch.autograd.gradcheck``;
``benchmarks/bench_dilated.py`` times them against dense SDPA (and fkodom's
dilated-attention-pytorch where it can be installed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from blocklab._alloc import rows_per_block
from blocklab._checks import check_bool, check_float, check_int, check_positive
from blocklab.attention.functional import check_qkv
from blocklab.attention.multihead import head_layout

__all__ = [
    "dilated_attention",
    "pattern_attention",
    "dilated_pattern_mask",
    "dilated_attention_flops",
    "check_patterns",
    "DilatedAttention",
]


# ------------------------------------------------------------------------ validation

def check_patterns(
    segment_lengths: Sequence[int], dilation_rates: Sequence[int]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Validate the (w, r) pairs; returns them as tuples of ints.

    Raises:
        ValueError: empty or mismatched lists, a value < 1, or w not divisible by r.
        TypeError: a value that is not an int.
    """
    ws, rs = tuple(segment_lengths), tuple(dilation_rates)
    if len(ws) != len(rs):
        raise ValueError(
            f"segment_lengths {list(ws)} and dilation_rates {list(rs)} must have the same "
            f"length, got {len(ws)} and {len(rs)}"
        )
    if not ws:
        raise ValueError("segment_lengths and dilation_rates must name at least one pattern")
    for name, values in (("segment_lengths", ws), ("dilation_rates", rs)):
        for i, x in enumerate(values):
            if not isinstance(x, int) or isinstance(x, bool):
                raise TypeError(f"{name}[{i}] must be an int, got {type(x).__name__} ({x!r})")
            if x < 1:
                raise ValueError(f"{name}[{i}] ({x}) must be >= 1")
    for i, (w, r) in enumerate(zip(ws, rs, strict=True)):
        if w % r:
            raise ValueError(
                f"segment_lengths[{i}] ({w}) must be divisible by dilation_rates[{i}] ({r})"
            )
    return ws, rs


def _plan(n: int, ws: Sequence[int], rs: Sequence[int]) -> tuple[list[tuple[int, int, int]], int]:
    """Per pattern (w_eff, r, L): the segment length used, the rate, and the padded length
    n_segments * w_eff; plus the length everything is padded to: n, or n + 1 when some
    pattern runs past n.

    A segment longer than the sequence becomes one segment of ceil(n / r) * r positions:
    the positions past n would only be masked keys, so this is the same attention.
    Every position past n is read from one shared padding slot, position n (see
    :func:`_pattern_rows`), so memory stays linear in n whatever the rates: a rate of
    10^9 over 8 tokens pads to 9 positions, not 10^9.
    """
    plan = []
    for w, r in zip(ws, rs, strict=True):
        w_eff = w if n > w else max(-(-n // r) * r, r)
        plan.append((w_eff, r, -(-n // w_eff) * w_eff))
    return plan, n + (max(length for _, _, length in plan) > n)


# ----------------------------------------------------------- sparse segments as rows

def _pattern_rows(w: int, r: int, length: int, H: int, L_max: int,
                  device: torch.device) -> torch.Tensor:
    """The sparse segments of one pattern as rows of flat positions h * L_max + t:
    (H * n_seg, m), head h keeping t = s w + (h mod r) + r i in segment s, i < m = w / r.
    Positions past the sequence all read the padding slot t = L_max - 1 (always last in
    their segment, so a causal query never sees one).

    Gathering q (B, H * L_max, D) at these rows gives every head's sparse segments as a
    batch (B, H * n_seg, m, D) -- one copy for all heads and segments.
    """
    n_seg, m = length // w, w // r
    h = torch.arange(H, device=device).view(H, 1, 1)
    t = (torch.arange(n_seg, device=device).view(1, n_seg, 1) * w + h % r
         + r * torch.arange(m, device=device).view(1, 1, m))  # (H, n_seg, m)
    return (h * L_max + t.clamp_(max=L_max - 1)).view(H * n_seg, m)


def _row_keys(key_valid: torch.Tensor | None, rows: torch.Tensor, L_max: int
              ) -> torch.Tensor | None:
    """(B, L_max) bool -> (B, G, m): which keys each sparse segment may read; None when
    every one may."""
    if key_valid is None:
        return None
    kv = key_valid.index_select(1, (rows % L_max).view(-1)).view(-1, *rows.shape)
    return None if bool(kv.all()) else kv


def _rows_of(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """x (B, N, ...) at rows (G, m) -> (B, G, m, ...)."""
    return x.index_select(1, rows.view(-1)).view(x.shape[0], *rows.shape, *x.shape[2:])


# Rows per kernel call: at most this many elements per torch thread in each gathered
# (G, m, D) tensor. Larger gathers only add page faults: past glibc's 32 MiB mmap
# ceiling every temporary is a fresh mapping, which made 32k tokens cost 2.2-2.6x 16k
# instead of 2x (measured on a 2-core Xeon); 1 MiB pieces per thread come back 2.0x.
_GATHER_ELEMS_PER_THREAD = 1 << 18


def _groups(plan: list[tuple[int, int, int]], H: int, L_max: int, D: int,
            device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Patterns with the same sparse segment length m share kernel calls: per m, the
    rows (G, m) of all of them and each row's pattern index (G,), cut into pieces of
    at most ``_GATHER_ELEMS_PER_THREAD`` gathered elements per torch thread."""
    by_m: dict[int, list[tuple[int, torch.Tensor]]] = {}
    for p, (w, r, length) in enumerate(plan):
        by_m.setdefault(w // r, []).append((p, _pattern_rows(w, r, length, H, L_max, device)))
    pieces = []
    for m, parts in by_m.items():
        rows = torch.cat([rows for _, rows in parts])
        pattern = torch.cat([torch.full((len(rows),), p, device=device) for p, rows in parts])
        step = rows_per_block(m * D, _GATHER_ELEMS_PER_THREAD)
        pieces += list(zip(rows.split(step), pattern.split(step), strict=True))
    return pieces


# ---------------------------------------------------------------- CPU fused-kernel path

# torch's CPU flash attention with its log-sum-exp (private ops, present since torch 2.3).
_HAS_CPU_FLASH = hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu")
if _HAS_CPU_FLASH:
    _flash_fwd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    _flash_bwd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def _kernel_mask(kv: torch.Tensor | None, causal: bool, dtype: torch.dtype
                 ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Additive (B, G, 1, m) mask for the kernel and (B, G, m) rows that see a key."""
    if kv is None:
        return None, None
    mask = torch.zeros(kv.shape, dtype=dtype, device=kv.device).masked_fill_(~kv, -math.inf)
    alive = kv.cumsum(-1) > 0 if causal else kv.any(-1, keepdim=True).expand_as(kv)
    return mask.unsqueeze(2), alive


class _DilatedFlashCPU(torch.autograd.Function):
    """All patterns through torch's CPU flash kernel, one call per distinct segment
    length m; exact mixed gradients.

    Takes q, k, v (B, H, T, D) and pads them to L_max; ``key_valid`` (B, L_max) bool or
    None (every key valid). Returns the mixed output and its log-sum-exp, (B, H, L_max, D)
    and (B, H, L_max).
    """

    @staticmethod
    def forward(ctx, q, k, v, key_valid, plan, L_max, causal, scale):  # type: ignore[override]
        B, H, T, D = q.shape
        P = len(plan)
        q, k, v = (_pad(x, L_max).reshape(B, H * L_max, D) for x in (q, k, v))
        acc = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
        groups = _groups(plan, H, L_max, D, q.device)
        # Two passes keep the work on (.., D) rows to one multiply-add per group: first
        # every pattern's outputs and log-sum-exps, then the weights a_k = exp(lse_k - lse)
        # from the total lse = logsumexp_k lse_k.
        lses = torch.full((B, P * H * L_max), -math.inf, dtype=acc, device=q.device)
        results = []
        for rows, pattern in groups:
            kv = _row_keys(key_valid, rows, L_max)
            mask, alive = _kernel_mask(kv, causal, q.dtype)
            out_k, lse_k = _flash_fwd(_rows_of(q, rows), _rows_of(k, rows), _rows_of(v, rows),
                                      0.0, causal, attn_mask=mask, scale=scale)
            lse_k = lse_k.to(acc)
            if alive is not None:
                # The kernel gives a query with no visible key lse 0; its true
                # denominator is 0 (weight 0 in the mix).
                lse_k = lse_k.masked_fill(~alive, -math.inf)
            slots = (pattern.view(-1, 1) * (H * L_max) + rows).view(-1)
            lses.index_copy_(1, slots, lse_k.reshape(B, -1))
            results.append((rows, out_k, lse_k))
        lse = torch.logsumexp(lses.view(B, P, H * L_max), dim=1)  # -inf: no key anywhere
        ref = lse.masked_fill(torch.isneginf(lse), 0.0)
        out = torch.zeros(B, H * L_max, D, dtype=acc, device=q.device)
        for rows, out_k, lse_k in results:
            weights = torch.exp(lse_k - _rows_of(ref, rows))  # (B, G, m)
            out.index_add_(1, rows.view(-1), (out_k * weights.unsqueeze(-1)).view(B, -1, D))
        if L_max > T:
            # The padding slot sums every padding query's output: zero it (and its lse)
            # so the backward, which gathers both for those queries, stays finite.
            out.view(B, H, L_max, D)[:, :, T:] = 0.0
            lse.view(B, H, L_max)[:, :, T:] = -math.inf
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, key_valid, out, lse)
        ctx.plan, ctx.causal, ctx.scale, ctx.shape = plan, causal, scale, (B, H, T, L_max)
        out, lse = out.view(B, H, L_max, D), lse.view(B, H, L_max)
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, _grad_lse):  # type: ignore[override]
        q, k, v, key_valid, out, lse = ctx.saved_tensors
        B, H, T, L_max = ctx.shape
        D = q.shape[-1]
        # Queries that see no key at all have output 0 whatever q, k, v are; lse 0 keeps
        # the kernel finite there (every score is -inf, so every weight is 0).
        lse = lse.masked_fill(torch.isneginf(lse), 0.0)
        # contiguous once: the gradient of a .sum() is a stride-0 view, which every
        # gather below would otherwise copy whole.
        grad_out = grad_out.to(q.dtype).reshape(B, H * L_max, D).contiguous()
        acc = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
        grads = [torch.zeros(x.shape, dtype=acc, device=x.device) for x in (q, k, v)]
        for rows, _ in _groups(ctx.plan, H, L_max, D, q.device):
            mask, _ = _kernel_mask(_row_keys(key_valid, rows, L_max), ctx.causal, q.dtype)
            # The mixed output is softmax attention over the union of every pattern's
            # keys, so each pattern's share of the gradient is the flash backward run
            # with the *mixed* output and log-sum-exp (flash attention's own backward
            # recurrence, taken across patterns).
            parts = _flash_bwd(*(_rows_of(x, rows) for x in (grad_out, q, k, v, out, lse)),
                               0.0, ctx.causal, attn_mask=mask, scale=ctx.scale)
            for grad, part in zip(grads, parts, strict=True):
                grad.index_add_(1, rows.view(-1), part.reshape(B, -1, D).to(acc))
        dq, dk, dv = (g.view(B, H, L_max, D)[:, :, :T].to(q.dtype) for g in grads)
        return dq, dk, dv, None, None, None, None, None


def _mix(outs: list[torch.Tensor], lses: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """O = sum_k softmax_k(lse_k) O_k and the total log-sum-exp; rows no pattern covers
    (all lse -inf) get O = 0, lse = -inf. Differentiable (used by the autograd path)."""
    lse = torch.stack(lses)  # (P, B, H, L)
    total = torch.logsumexp(lse, dim=0)  # -inf where every pattern is -inf
    dead = torch.isneginf(total)
    weights = torch.exp(lse - total.masked_fill(dead, 0.0))  # 0 where lse_k = -inf
    acc = torch.float32 if outs[0].dtype in (torch.float16, torch.bfloat16) else outs[0].dtype
    out = sum(wk.unsqueeze(-1).to(acc) * ok.to(acc) for wk, ok in zip(weights, outs, strict=True))
    return out, total  # type: ignore[return-value]


# ------------------------------------------------------------------ autograd (any device)

def _segment_attention(qs: torch.Tensor, ks: torch.Tensor, vs: torch.Tensor,
                       kv: torch.Tensor | None, causal: bool, scale: float
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention inside each sparse segment, materialising its (m, m) scores.

    qs, ks, vs (B, G, m, D); kv (B, G, m) valid keys or None. Returns (B, G, m, D_v) and
    the log-sum-exp (B, G, m), -inf for a query that sees no key (its output is 0).
    """
    scores = torch.matmul(qs, ks.transpose(-1, -2))  # (B, G, m, m)
    if scores.dtype in (torch.float16, torch.bfloat16):
        scores = scores.float()  # softmax and log-sum-exp in fp32
    scores = scores * scale
    m = qs.shape[-2]
    visible = None
    if kv is not None:
        visible = kv.unsqueeze(-2)  # (B, G, 1, m)
    if causal:
        tril = torch.ones(m, m, dtype=torch.bool, device=qs.device).tril()
        visible = tril if visible is None else visible & tril
    if visible is not None:
        scores = scores.masked_fill(~visible, -math.inf)
    # lse = log sum exp(s - mx) + mx holds for any mx, so mx needs no gradient; a row
    # with no visible key keeps every term finite (mx := 0, denominator := 1) and is
    # set to -inf / 0 with torch.where, whose gradient skips the unselected branch.
    mx = scores.amax(-1, keepdim=True).detach()
    dead = torch.isneginf(mx)
    e = torch.exp(scores - mx.masked_fill(dead, 0.0))
    den = e.sum(-1, keepdim=True)
    den_safe = torch.where(dead, torch.ones_like(den), den)
    lse = torch.where(dead, torch.full_like(den, -math.inf), den_safe.log() + mx)
    out = torch.matmul((e / den_safe).to(vs.dtype), vs)
    return out, lse.squeeze(-1)


def _pad(x: torch.Tensor, length: int) -> torch.Tensor:
    """(B, H, T, D) -> (B, H, length, D), zeros after T."""
    return torch.nn.functional.pad(x, (0, 0, 0, length - x.shape[2])) if length > x.shape[2] else x


def _patterns_autograd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       key_valid: torch.Tensor | None, plan: list[tuple[int, int, int]],
                       causal: bool, scale: float, T: int | None = None
                       ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per pattern, the output (B, H, T, D_v) and log-sum-exp (B, H, T) of the first T
    positions (default all L_max); q, k, v already padded to L_max. Positions a pattern
    skips get 0 and -inf."""
    B, H, L_max, D = q.shape
    T = L_max if T is None else T
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    q, k, v = (x.reshape(B, H * L_max, x.shape[-1]) for x in (q, k, v))
    outs, lses = [], []
    for w, r, length in plan:
        rows = _pattern_rows(w, r, length, H, L_max, q.device)
        out, lse = _segment_attention(_rows_of(q, rows), _rows_of(k, rows), _rows_of(v, rows),
                                      _row_keys(key_valid, rows, L_max), causal, scale)
        flat = rows.view(-1)
        out_p = q.new_zeros(B, H * L_max, v.shape[-1]).index_add(1, flat, out.view(B, -1, v.shape[-1]))
        lse_p = torch.full((B, H * L_max), -math.inf, dtype=lse_dtype, device=q.device)
        lse_p = lse_p.index_copy(1, flat, lse.view(B, -1).to(lse_dtype))
        # The padding slot is left out: it sums every padding query's output.
        outs.append(out_p.view(B, H, L_max, -1)[:, :, :T])
        lses.append(lse_p.view(B, H, L_max)[:, :, :T])
    return outs, lses


# ---------------------------------------------------------------------------- public API

def _prepare(q, k, v, segment_lengths, dilation_rates, key_padding_mask, scale, causal):
    """Validate; expand GQA heads; the plan, padded length L_max and (B, L_max) key validity
    (None when every key is valid or only causally invisible padding is added)."""
    B, H, H_kv, T, S, D = check_qkv(q, k, v)
    if T != S:
        raise ValueError(
            f"dilated attention is self-attention: q length T ({T}) must equal k/v length S ({S})"
        )
    ws, rs = check_patterns(segment_lengths, dilation_rates)
    causal = check_bool("causal", causal)
    # 1 / sqrt(0) for an empty head dim: any scale will do, there is nothing to scale.
    scale = (1.0 / math.sqrt(D) if D else 1.0) if scale is None else check_float(
        "scale", scale, gt=0)
    if H_kv != H:
        # Head j reads its own positions (offset j mod r), so every query head needs
        # its own gathered copy of K/V anyway.
        k = k.repeat_interleave(H // H_kv, dim=1)
        v = v.repeat_interleave(H // H_kv, dim=1)
    if key_padding_mask is not None:
        if not isinstance(key_padding_mask, torch.Tensor) or key_padding_mask.dtype != torch.bool:
            raise TypeError(
                "key_padding_mask must be a bool tensor (True = real token), got "
                f"{getattr(key_padding_mask, 'dtype', type(key_padding_mask).__name__)}"
            )
        if key_padding_mask.dim() != 2 or key_padding_mask.shape[1] != S or \
                key_padding_mask.shape[0] not in (1, B):
            raise ValueError(
                f"key_padding_mask must be (B, S) = {(B, S)} (or (1, S)), "
                f"got {tuple(key_padding_mask.shape)}"
            )
    plan, L_max = _plan(T, ws, rs)
    pad = L_max - T
    key_valid = None
    # Padding keys sit after every real query, so causal attention never sees them.
    if key_padding_mask is not None or (pad and not causal):
        key_valid = torch.ones(B, L_max, dtype=torch.bool, device=q.device)
        key_valid[:, T:] = False
        if key_padding_mask is not None:
            key_valid[:, :T] = key_padding_mask.to(q.device)
    return q, k, v, key_valid, plan, L_max, float(scale)


def dilated_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    segment_lengths: Sequence[int],
    dilation_rates: Sequence[int],
    causal: bool = False,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """LongNet's dilated attention, patterns mixed by their softmax denominators.

    Args:
        q: (B, H, T, D) queries.
        k: (B, H_kv, T, D) keys, H_kv dividing H (self-attention: same length as q).
        v: (B, H_kv, T, D_v) values.
        segment_lengths: w per pattern; each divisible by its rate.
        dilation_rates: r per pattern; head j reads offset j mod r.
        causal: inside each sparse segment, a query sees only keys at or before it.
        key_padding_mask: (B, T) bool, True for real tokens; masked keys are never
            attended (a query that sees no key in any pattern gets 0).
        scale: score scale, default 1 / sqrt(D).

    Returns:
        (B, H, T, D_v) in q's dtype (mixing done in fp32 for half precision).
    """
    T = q.shape[2] if isinstance(q, torch.Tensor) and q.dim() == 4 else 0
    q, k, v, key_valid, plan, L_max, scale = _prepare(
        q, k, v, segment_lengths, dilation_rates, key_padding_mask, scale, causal)
    if 0 in (*q.shape[:3], v.shape[-1]):  # B, H, T or D_v is 0: empty in, empty out
        return q.new_zeros(*q.shape[:3], v.shape[-1])
    if q.device.type == "cpu" and _HAS_CPU_FLASH and v.shape[-1] == q.shape[-1]:
        out, _ = _DilatedFlashCPU.apply(q, k, v, key_valid, plan, L_max, causal, scale)
        return out[:, :, :T]
    out, _ = _mix(*_patterns_autograd(_pad(q, L_max), _pad(k, L_max), _pad(v, L_max),
                                      key_valid, plan, causal, scale, T=T))
    return out.to(q.dtype)


def pattern_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    segment_length: int,
    dilation_rate: int,
    causal: bool = False,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One (w, r) pattern alone, with each query's log softmax denominator.

    Plain autograd on materialised segment scores, for inspection and for building
    variants (mixing with other weights). Shapes as in :func:`dilated_attention`.

    Returns:
        out (B, H, T, D_v), zero where the pattern shows a query nothing, and
        lse (B, H, T) = log sum_j exp(score_j) over the keys it shows (-inf: none).
    """
    T = q.shape[2] if isinstance(q, torch.Tensor) and q.dim() == 4 else 0
    q, k, v, key_valid, plan, L_max, scale = _prepare(
        q, k, v, [segment_length], [dilation_rate], key_padding_mask, scale, causal)
    outs, lses = _patterns_autograd(_pad(q, L_max), _pad(k, L_max), _pad(v, L_max),
                                    key_valid, plan, causal, scale, T=T)
    return outs[0], lses[0]


def dilated_pattern_mask(
    seq_len: int,
    *,
    segment_lengths: Sequence[int],
    dilation_rates: Sequence[int],
    head: int = 0,
    causal: bool = False,
) -> torch.Tensor:
    """Which keys each query of head ``head`` sees, per pattern: bool (P, T, T).

    ``mask.any(0)`` is the union the mixture attends over (a key two patterns share is
    counted twice in the softmax, as in the paper).
    """
    ws, rs = check_patterns(segment_lengths, dilation_rates)
    check_int("seq_len", seq_len, min=0)
    check_int("head", head, min=0)
    causal = check_bool("causal", causal)
    pos = torch.arange(seq_len)
    masks = []
    for w, r in zip(ws, rs, strict=True):
        kept = pos % r == head % r  # w % r == 0: offsets are the same in every segment
        same = (pos[:, None] // w) == (pos[None, :] // w)
        m = same & kept[:, None] & kept[None, :]
        if causal:
            m &= pos[None, :] <= pos[:, None]
        masks.append(m)
    return torch.stack(masks)


def dilated_attention_flops(
    seq_len: int,
    *,
    segment_lengths: Sequence[int],
    dilation_rates: Sequence[int],
    n_heads: int,
    head_dim: int,
    causal: bool = False,
    batch: int = 1,
) -> int:
    """FLOPs of the two attention products (Q K^T and P V), 2 per multiply-add, counting
    only the (query, key) pairs the patterns show -- what a kernel that skips masked
    blocks does. Dense attention is one pattern (w >= T, r = 1).

    Per head and pattern: sum over its sparse segments of m_q * m_k pairs, each costing
    2 * D for the score and 2 * D for the value sum (LongNet: ``2 N w D / r^2`` per product
    when causal is False and T divides by w).

    Counted in closed form, O(patterns) whatever the sizes: each of the T // w whole
    segments keeps m = w / r positions for every head; the last, partial segment of
    length rem = T mod w keeps q0 + 1 positions for a head whose offset h mod r is below
    s0 and q0 for the others, (q0, s0) = divmod(rem, r).
    """
    ws, rs = check_patterns(segment_lengths, dilation_rates)
    check_int("seq_len", seq_len, min=0)
    check_positive(n_heads=n_heads, head_dim=head_dim, batch=batch)
    causal = check_bool("causal", causal)

    def pairs_of(m: int) -> int:  # (query, key) pairs of a sparse segment of m positions
        return m * (m + 1) // 2 if causal else m * m

    pairs = 0
    for w, r in zip(ws, rs, strict=True):
        whole, rem = divmod(seq_len, w)
        q0, s0 = divmod(rem, r)
        longer = (n_heads // r) * s0 + min(n_heads % r, s0)  # heads with offset < s0
        pairs += n_heads * whole * pairs_of(w // r)
        pairs += longer * pairs_of(q0 + 1) + (n_heads - longer) * pairs_of(q0)
    return 4 * head_dim * pairs * batch


# ----------------------------------------------------------------------------- module

class DilatedAttention(nn.Module):
    """Self-attention over (B, T, C) with dilated attention in place of dense attention.

    Drop-in for :class:`blocklab.attention.Attention` (same projections ``wqkv``/``wo``,
    same ``forward`` signature), e.g. ``model.layers[i].attn = DilatedAttention(...)``
    or :meth:`from_attention` to keep a trained layer's weights.

    Args:
        d_model: model width C.
        n_heads: query heads H.
        segment_lengths, dilation_rates: the (w, r) patterns.
        n_kv_heads: key/value heads H_kv (default H); must divide H.
        head_dim: D (default C / H).
        rope: a ``RotaryEmbedding`` applied to q and k, or None.
        bias: biases on the q/k/v projection.
        out_bias: bias on the output projection (default: ``bias``).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        segment_lengths: Sequence[int],
        dilation_rates: Sequence[int],
        n_kv_heads: int | None = None,
        head_dim: int | None = None,
        rope: nn.Module | None = None,
        bias: bool = False,
        out_bias: bool | None = None,
    ) -> None:
        super().__init__()
        n_kv_heads, head_dim = head_layout(d_model, n_heads, n_kv_heads, head_dim)
        self.segment_lengths, self.dilation_rates = check_patterns(segment_lengths, dilation_rates)
        self.d_model = d_model
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.head_dim = head_dim
        self.layer_idx = 0
        self.rope = rope
        self.wqkv = nn.Linear(d_model, (n_heads + 2 * n_kv_heads) * head_dim, bias=bias)
        self.wo = nn.Linear(n_heads * head_dim, d_model, bias=bias if out_bias is None else out_bias)

    @classmethod
    def from_attention(cls, attn: nn.Module, *, segment_lengths: Sequence[int],
                       dilation_rates: Sequence[int]) -> DilatedAttention:
        """A DilatedAttention with ``attn``'s sizes, rope and (shared) weights.

        ``attn`` is an :class:`~blocklab.attention.Attention` without a sliding window.
        """
        if getattr(attn, "window", None) is not None:
            raise ValueError(f"attn has a sliding window ({attn.window}); dilated attention "
                             "replaces the attention pattern, so convert a windowless layer")
        new = cls(attn.d_model, attn.n_heads, segment_lengths=segment_lengths,
                  dilation_rates=dilation_rates, n_kv_heads=attn.n_kv_heads,
                  head_dim=attn.head_dim, rope=attn.rope,
                  bias=attn.wqkv.bias is not None, out_bias=attn.wo.bias is not None)
        new.wqkv, new.wo, new.layer_idx = attn.wqkv, attn.wo, attn.layer_idx
        return new.to(attn.wqkv.weight.device)

    def forward(
        self,
        x: torch.Tensor,
        *,
        causal: bool = False,
        mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: object | None = None,
    ) -> torch.Tensor:
        """Args:
            x: (B, T, C).
            causal: causal inside each sparse segment.
            mask: a key padding mask: bool, True = attend, shaped (B, T) or broadcastable
                to (B, 1, 1, T) (what ``TransformerLM`` passes). Masks that vary over
                heads or queries are refused: dilation fixes the pattern.
            position_ids: (T,) or (B, T) positions for RoPE.
            cache: must be None (no incremental decoding; see below).

        Returns:
            (B, T, C).

        Raises:
            NotImplementedError: ``cache`` given. Which keys a query sees depends on its
                segment and offset over the whole sequence, so there is no cached decode
                step; run the full sequence without a cache.
        """
        if cache is not None:
            raise NotImplementedError(
                "DilatedAttention does not support a KV cache (incremental decoding): its "
                "segments and offsets are defined over the whole sequence; call the model "
                "on the full sequence with cache=None"
            )
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != self.d_model:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be (B, T, C={self.d_model}), got {got}")
        B, T, _ = x.shape
        H, H_kv, D = self.n_heads, self.n_kv_heads, self.head_dim
        q, k, v = self.wqkv(x).split((H * D, H_kv * D, H_kv * D), dim=-1)
        q = q.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, H_kv, D).transpose(1, 2)  # (B, H_kv, T, D)
        v = v.view(B, T, H_kv, D).transpose(1, 2)  # (B, H_kv, T, D)
        if self.rope is not None:
            q, k = self.rope(q, k, position_ids, inplace=True)
        out = dilated_attention(
            q, k, v, segment_lengths=self.segment_lengths, dilation_rates=self.dilation_rates,
            causal=causal, key_padding_mask=_key_padding(mask, B, T),
        )  # (B, H, T, D)
        return self.wo(out.transpose(1, 2).reshape(B, T, H * D))

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, "
            f"head_dim={self.head_dim}, segment_lengths={list(self.segment_lengths)}, "
            f"dilation_rates={list(self.dilation_rates)}"
        )


def _key_padding(mask: torch.Tensor | None, B: int, T: int) -> torch.Tensor | None:
    """A module mask (B, T) or (B|1, 1, 1, T) bool -> (B, T) key padding mask."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError(
            "DilatedAttention takes a bool key padding mask (True = attend), got "
            f"{getattr(mask, 'dtype', type(mask).__name__)}"
        )
    if mask.dim() == 4 and mask.shape[1] == 1 and mask.shape[2] == 1:
        mask = mask[:, 0, 0]
    if mask.dim() != 2 or mask.shape[-1] != T or mask.shape[0] not in (1, B):
        raise ValueError(
            f"DilatedAttention takes only key padding masks, (B, T) = {(B, T)} or "
            f"(B, 1, 1, T), got shape {tuple(mask.shape)}"
        )
    return mask.expand(B, T)
