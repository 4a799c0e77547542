"""Buffers for kernels: fresh tensors laid out like an existing one, reusable
per-thread scratch space for blocked loops, and the row blocks those loops take.

Tried and left out: putting fresh output buffers on transparent huge pages
(``madvise(MADV_HUGEPAGE)``, what ``THP_MEM_ALLOC_ENABLE=1`` does in PyTorch). On the
2-core VM it filled a new 64 MiB tensor in 6 ms instead of 17 at the median, but one
fill in five stalled for 50-130 ms (host-side faults on never-touched guest memory),
which made RoPE's out-of-place benchmark slower, not faster.
"""

from __future__ import annotations

import threading

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



def rows_per_block(row_len: int, elems_per_thread: int) -> int:
    """Rows of ``row_len`` elements per block of a blocked loop: about
    ``elems_per_thread`` elements for each torch intra-op thread (so each thread's share
    of an op stays in its cache), at least one row."""
    return max(1, elems_per_thread * torch.get_num_threads() // max(row_len, 1))


def row_spans(n_rows: int, row_len: int, elems_per_thread: int) -> list[tuple[int, int]]:
    """(start, stop) of the row blocks ``rows_per_block`` cuts ``n_rows`` rows into."""
    step = rows_per_block(row_len, elems_per_thread)
    return [(r0, min(n_rows, r0 + step)) for r0 in range(0, n_rows, step)]


_SCRATCH = threading.local()


def scratch(name: str, shape: torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A reusable contiguous buffer of the given shape, contents undefined: one per
    (thread, name, dtype, device), grown as needed. For the temporaries of blocked
    loops, where a fresh allocation per block would fault its pages in from the kernel
    every time. Callers bound the size (it is kept until the thread ends) and must be
    done with a buffer before asking for the same name again."""
    cache = _SCRATCH.__dict__.setdefault("bufs", {})
    key = (name, dtype, device)
    buf, views = cache.get(key, (None, {}))
    view = views.get(shape)
    if view is None:
        # Normal tensors even under inference_mode: an inference tensor (or a view made
        # there) could not be written outside it, say by training after generation.
        with torch.inference_mode(False):
            n = shape.numel()
            if buf is None or buf.numel() < n:
                buf, views = torch.empty(n, dtype=dtype, device=device), {}
            view = views[shape] = buf[:n].view(shape)
        cache[key] = (buf, views)
    return view
