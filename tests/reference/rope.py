"""Naive fp64 RoPE oracle, from RoFormer's equations (Su et al. 2021, eq. 13-15).

For each pair (a, b) of features, at position m, with theta_i = base^(-2i/d):
    a' = a cos(m theta_i) - b sin(m theta_i),  b' = b cos(m theta_i) + a sin(m theta_i)
pairs (i, i + d/2) in the half-split layout, (2i, 2i+1) interleaved.
"""

from __future__ import annotations

import math

import torch


def naive_rope(x, positions, *, dim=None, base=10000.0, interleaved=False, inv_freq=None):
    """x (B, H, T, D); positions (T,) or (B, T) ints; rotates the first ``dim`` features."""
    x = x.detach().double()
    B, H, T, D = x.shape
    dim = D if dim is None else dim
    half = dim // 2
    if positions.dim() == 1:
        positions = positions.expand(B, T)
    out = x.clone()
    for b in range(B):
        for t in range(T):
            m = int(positions[b, t])
            for i in range(half):
                theta = float(inv_freq[i]) if inv_freq is not None else base ** (-2 * i / dim)
                c, s = math.cos(m * theta), math.sin(m * theta)
                ia, ib = (2 * i, 2 * i + 1) if interleaved else (i, i + half)
                a, bb = x[b, :, t, ia], x[b, :, t, ib]
                out[b, :, t, ia] = a * c - bb * s
                out[b, :, t, ib] = bb * c + a * s
    return out
