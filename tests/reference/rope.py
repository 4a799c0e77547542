"""Naive fp64 RoPE oracle, from RoFormer's equations (Su et al. 2021, eq. 13-15).

For each pair (a, b) of features, at position m, with theta_i = base^(-2i/d):
    a' = a cos(m theta_i) - b sin(m theta_i),  b' = b cos(m theta_i) + a sin(m theta_i)
pairs (i, i + d/2) in the half-split layout, (2i, 2i+1) interleaved; features from d
on pass through. Angles come from Python floats (float64) and ``math.cos``/``math.sin``.
"""

from __future__ import annotations

import math


def naive_rope(x, positions, *, dim=None, base=10000.0, interleaved=False, inv_freq=None,
               attention_factor=1.0):
    """x (B, H, T, D); positions (T,) or (B, T) ints; rotates the first ``dim`` features.

    ``inv_freq`` overrides theta_i (scaled RoPE); cos and sin are multiplied by
    ``attention_factor`` (YaRN). Returns float64.
    """
    x = x.detach().double()
    B, H, T, D = x.shape
    dim = D if dim is None else dim
    half = dim // 2
    if positions.dim() == 1:
        positions = positions.expand(B, T)
    thetas = [float(inv_freq[i]) if inv_freq is not None else base ** (-2 * i / dim)
              for i in range(half)]
    out = x.clone()
    for b in range(B):
        for t in range(T):
            m = int(positions[b, t])
            for i in range(half):
                c = math.cos(m * thetas[i]) * attention_factor
                s = math.sin(m * thetas[i]) * attention_factor
                ia, ib = (2 * i, 2 * i + 1) if interleaved else (i, i + half)
                a, bb = x[b, :, t, ia], x[b, :, t, ib]
                out[b, :, t, ia] = a * c - bb * s
                out[b, :, t, ib] = bb * c + a * s
    return out


def naive_score(q, k, m, n, *, base=10000.0):
    """<R_m q, R_n k> for single vectors q, k (d,), from the closed form
    sum_i Re[(q_2i + i q_2i+1) conj(k_2i + i k_2i+1) e^(i (m - n) theta_i)] (interleaved)."""
    d = q.shape[-1]
    total = 0.0
    for i in range(d // 2):
        theta = base ** (-2 * i / d)
        zq = complex(float(q[2 * i]), float(q[2 * i + 1]))
        zk = complex(float(k[2 * i]), float(k[2 * i + 1]))
        total += (zq * zk.conjugate() * complex(math.cos((m - n) * theta),
                                               math.sin((m - n) * theta))).real
    return total
