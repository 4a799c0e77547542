"""Fresh tensors laid out like an existing one.

Tried and left out: putting fresh output buffers on transparent huge pages
(``madvise(MADV_HUGEPAGE)``, what ``THP_MEM_ALLOC_ENABLE=1`` does in PyTorch). On the
2-core VM it filled a new 64 MiB tensor in 6 ms instead of 17 at the median, but one
fill in five stalled for 50-130 ms (host-side faults on never-touched guest memory),
which made RoPE's out-of-place benchmark slower, not faster.
"""

from __future__ import annotations

import torch


def empty_like_layout(x: torch.Tensor) -> torch.Tensor:
    """A new tensor of x's shape, dtype and device laid out in x's memory order, as
    torch's elementwise ops lay out their results: contiguous for a contiguous x,
    (B, T, H, D) in memory for a (B, H, T, D) view of a (B, T, H, D) tensor, even
    when x has gaps (q and k sliced from a fused projection)."""
    order = sorted(range(x.dim()), key=lambda d: -x.stride(d))  # outermost first, stable
    buf = torch.empty([x.shape[d] for d in order], dtype=x.dtype, device=x.device)
    inverse = [0] * len(order)
    for i, d in enumerate(order):
        inverse[d] = i
    return buf.permute(inverse)
