"""Naive fp64 oracle for additive attention, written from Bahdanau et al. (2015), eq. (6).

    e[t, s] = v^T tanh(W_q q[t] + W_k k[s]);  a[t, :] = softmax(e[t, :]);  c[t] = sum_s a[t, s] values[s]

One scalar loop per (b, t, s) and per hidden unit, so nothing here shares code
or broadcasting tricks with ``blocklab.attention.additive``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def additive_attention_reference(
    query: Tensor,
    keys: Tensor,
    values: Tensor,
    w_q: Tensor,
    w_k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Loop-style additive attention in fp64.

    Args:
        query (B, T, Dq), keys (B, S, Dk), values (B, S, Dv); w_q (H, Dq), w_k (H, Dk), v (H,)
        (``nn.Linear`` weight layout); mask bool (B, T, S), True = attend, or None.

    Returns:
        context (B, T, Dv) and weights (B, T, S), fp64; a row with no key
        allowed gets zero weights and zero context.
    """
    q, k, val = (x.detach().double() for x in (query, keys, values))
    wq, wk, vv = (x.detach().double() for x in (w_q, w_k, v))
    b_n, t_n, _ = q.shape
    s_n, dv = k.shape[1], val.shape[2]
    h_n = vv.shape[0]
    weights = torch.zeros(b_n, t_n, s_n, dtype=torch.float64)
    context = torch.zeros(b_n, t_n, dv, dtype=torch.float64)
    for b in range(b_n):
        for t in range(t_n):
            scores: list[float | None] = []
            for s in range(s_n):
                if mask is not None and not bool(mask[b, t, s]):
                    scores.append(None)
                    continue
                e = 0.0
                for h in range(h_n):
                    pre = float(wq[h] @ q[b, t]) + float(wk[h] @ k[b, s])
                    e += float(vv[h]) * math.tanh(pre)
                scores.append(e)
            allowed = [e for e in scores if e is not None]
            if not allowed:
                continue
            top = max(allowed)
            exps = [0.0 if e is None else math.exp(e - top) for e in scores]
            total = sum(exps)
            for s in range(s_n):
                weights[b, t, s] = exps[s] / total
                context[b, t] += weights[b, t, s] * val[b, s]
    return context, weights
