"""Naive fp64 oracle for LongNet dilated attention, written from the paper's equations.

For each pattern (w, r) and head h (offset o = h mod r), the segment of query i is
[s w, s w + w) with s = i // w; the query takes part iff i = s w + o + r t for some t,
and then sees the keys s w + o + r t' of its segment (t' <= t when causal, unmasked):

    O_k[i] = sum_j exp(q_i . k_j * scale) v_j / s_k[i],   s_k[i] = sum_j exp(q_i . k_j * scale)
    O[i]   = sum_k s_k[i] O_k[i] / sum_k s_k[i]             (LongNet eq. 10)

One query at a time, with torch ops on fp64 scalars so autograd can differentiate it.
``detach_weights=True`` computes the mixing weights without gradient (what torchscale
does), to show how wrong the resulting gradients are.
"""

from __future__ import annotations

import math

import torch


def naive_dilated_attention(q, k, v, *, segment_lengths, dilation_rates, causal=False,
                            key_padding_mask=None, scale=None, detach_weights=False):
    q, k, v = q.double(), k.double(), v.double()
    B, H, N, D = q.shape
    G = H // k.shape[1]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    rows = []
    for b in range(B):
        for h in range(H):
            g = h // G
            for i in range(N):
                denominators, outputs = [], []
                for w, r in zip(segment_lengths, dilation_rates, strict=True):
                    o = h % r
                    start = (i // w) * w
                    if (i - start) % r != o:
                        continue  # this head's offset skips query i in this pattern
                    keys = [
                        j for j in range(start + o, min(start + w, N), r)
                        if (not causal or j <= i)
                        and (key_padding_mask is None or bool(key_padding_mask[b, j]))
                    ]
                    if not keys:
                        continue
                    e = torch.stack([torch.exp(q[b, h, i] @ k[b, g, j] * scale) for j in keys])
                    s = e.sum()
                    denominators.append(s)
                    outputs.append((e[:, None] * v[b, g, keys]).sum(0) / s)
                if not denominators:
                    rows.append(torch.zeros(v.shape[-1], dtype=torch.float64))
                    continue
                s_all = torch.stack(denominators)
                if detach_weights:
                    s_all = s_all.detach()
                weights = s_all / s_all.sum()
                rows.append(sum(a * out for a, out in zip(weights, outputs, strict=True)))
    return torch.stack(rows).reshape(B, H, N, v.shape[-1])


def naive_visible_keys(n, *, segment_lengths, dilation_rates, head, causal=False):
    """The (query, key) pairs head ``head`` sees in each pattern: a list of sets."""
    out = []
    for w, r in zip(segment_lengths, dilation_rates, strict=True):
        pairs = set()
        o = head % r
        for i in range(n):
            start = (i // w) * w
            if (i - start) % r != o:
                continue
            for j in range(start + o, min(start + w, n), r):
                if not causal or j <= i:
                    pairs.add((i, j))
        out.append(pairs)
    return out
