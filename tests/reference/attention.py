"""Naive fp64 oracles for attention, written from the equations, one query at a time.

    out[b, h, i] = sum_j softmax_j(q[b,h,i] . k[b,g,j] * scale + m[b,h,i,j]) v[b,g,j],
    g = h // (H / H_kv); causal: key j visible iff j <= i + (S - T).
"""

from __future__ import annotations

import math

import torch


def naive_attention(q, k, v, *, mask=None, causal=False, scale=None):
    q, k, v = q.detach().double(), k.detach().double(), v.detach().double()
    B, H, T, D = q.shape
    H_kv, S = k.shape[1], k.shape[2]
    G = H // H_kv
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    if mask is not None:
        mask = mask.expand(B, H, T, S)
    out = torch.zeros(B, H, T, v.shape[-1], dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            g = h // G
            for i in range(T):
                scores = []
                for j in range(S):
                    visible = True
                    extra = 0.0
                    if causal and j > i + (S - T):
                        visible = False
                    if mask is not None:
                        m = mask[b, h, i, j]
                        if m.dtype == torch.bool:
                            visible = visible and bool(m)
                        else:
                            extra = float(m)
                            visible = visible and extra != float("-inf")
                    if visible:
                        scores.append((j, float(q[b, h, i] @ k[b, g, j]) * scale + extra))
                if not scores:
                    continue  # a fully masked row is zeros
                top = max(s for _, s in scores)
                weights = [(j, math.exp(s - top)) for j, s in scores]
                z = sum(w for _, w in weights)
                for j, w in weights:
                    out[b, h, i] += (w / z) * v[b, g, j]
    return out
