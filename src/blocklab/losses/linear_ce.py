"""Cross entropy fused with the output projection, in row chunks.

    loss = mean_i [ logsumexp_v (h_i . W_v) - h_i . W_{y_i} ]

A language model's last step, ``logits = h W^T`` then cross entropy, materialises an
(N, V) logits tensor -- 2048 x 32000 fp32 is 262 MB -- and its gradient of the same
size. Here the rows are processed ``chunk_size`` at a time: each chunk's logits are
formed, turned into the loss and into d loss / d logits = softmax - onehot, and
immediately contracted into the gradients of ``h`` and ``W``, so the full logits
never exist (the approach of Liger-Kernel's fused linear cross entropy). The
gradients are computed during the forward pass and scaled by the incoming gradient
in the backward. Checked against ``F.cross_entropy(h @ W.T, y)`` in fp64.
"""

from __future__ import annotations

import torch

__all__ = ["linear_cross_entropy"]


def _chunked(
    h: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    chunk_size: int,
    ignore_index: int,
    need_h: bool,
    need_w: bool,
) -> tuple[torch.Tensor, int, torch.Tensor | None, torch.Tensor | None]:
    """(summed loss, rows counted, d sum / d h, d sum / d W), chunk by chunk."""
    valid = target != ignore_index
    work = torch.promote_types(h.dtype, torch.float32)  # bf16/fp16 in, fp32 math
    grad_h = torch.empty_like(h) if need_h else None
    grad_w = torch.zeros(weight.shape, dtype=work, device=weight.device) if need_w else None
    total = torch.zeros((), dtype=work, device=h.device)
    w32 = weight.to(work)
    for start in range(0, h.shape[0], chunk_size):
        rows = slice(start, start + chunk_size)
        hc = h[rows].to(work)  # (n, C)
        vc = valid[rows]
        tc = torch.where(vc, target[rows], torch.zeros_like(target[rows]))
        logp = torch.log_softmax(hc @ w32.T, dim=-1)  # (n, V)
        picked = logp.gather(1, tc[:, None]).squeeze(1)
        total -= (picked * vc).sum()
        if need_h or need_w:
            # d loss_i / d logits_i = softmax_i - onehot(y_i); zero for ignored rows.
            g = logp.exp_()
            g[torch.arange(g.shape[0], device=g.device), tc] -= 1.0
            g *= vc[:, None]
            if grad_h is not None:
                grad_h[rows] = (g @ w32).to(h.dtype)
            if grad_w is not None:
                grad_w.addmm_(g.T, hc)
        # Free this chunk's (n, V) buffer before the next chunk's logits are formed: two
        # chunk buffers live at a time, not three.
        logp = g = None
    return total, int(valid.sum()), grad_h, grad_w


def _chunked_fp32(*args, **kwargs):
    # The loss math stays in (at least) fp32 under autocast: the logits of a bf16
    # matmul would round the log-sum-exp and the gradients.
    with torch.autocast(device_type=args[0].device.type, enabled=False):
        return _chunked(*args, **kwargs)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, target, chunk_size, ignore_index):  # type: ignore[override]
        total, count, grad_h, grad_w = _chunked_fp32(
            h, weight, target, chunk_size, ignore_index,
            ctx.needs_input_grad[0], ctx.needs_input_grad[1],
        )
        ctx.scale = 1.0 / max(count, 1)
        ctx.weight_dtype = weight.dtype
        ctx.save_for_backward(grad_h, grad_w)
        return total * ctx.scale if count else total * float("nan")

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        grad_h, grad_w = ctx.saved_tensors
        s = grad_out * ctx.scale
        gh = grad_h * s.to(grad_h.dtype) if grad_h is not None else None
        gw = (grad_w * s).to(ctx.weight_dtype) if grad_w is not None else None
        return gh, gw, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    *,
    chunk_size: int = 128,
    ignore_index: int = -100,
) -> torch.Tensor:
    """Mean cross entropy of ``hidden @ weight.T`` against ``target``, chunked.

    Args:
        hidden: (N, C) final hidden states (or (..., C), flattened).
        weight: (V, C) output projection.
        target: (N,) class ids, ``ignore_index`` rows skipped (as ``F.cross_entropy``).
        chunk_size: rows per chunk; memory is O(chunk_size * V).

    Returns:
        The scalar mean over non-ignored rows, in float32 (float64 for fp64 inputs);
        NaN when every row is ignored, as ``F.cross_entropy``.
    """
    if hidden.shape[-1] != weight.shape[-1]:
        raise ValueError(
            f"hidden width ({hidden.shape[-1]}) must equal weight's second dim ({weight.shape[-1]})"
        )
    hidden = hidden.reshape(-1, hidden.shape[-1])
    target = target.reshape(-1)
    if target.shape[0] != hidden.shape[0]:
        raise ValueError(
            f"target has {target.shape[0]} entries but hidden has {hidden.shape[0]} rows"
        )
    if chunk_size <= 0:
        raise ValueError(f"chunk_size ({chunk_size}) must be positive")
    if not torch.is_grad_enabled() or not (hidden.requires_grad or weight.requires_grad):
        total, count, _, _ = _chunked_fp32(hidden, weight, target, chunk_size, ignore_index,
                                      False, False)
        return total / count if count else total * float("nan")
    return _LinearCrossEntropy.apply(hidden, weight, target, chunk_size, ignore_index)
