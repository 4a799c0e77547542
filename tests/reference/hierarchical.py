"""Loop-style oracles for the document encoders: one document at a time, unpadded.

Each runs a trained module's own sub-layers (GRUs, transformer layers) but only ever
on the real words and real sentences of one document -- no padding, no masks, no
batching -- and writes HAN's attention pooling out from its equation,

    u = tanh(W h + b),  a = softmax(u . c),  out = sum_t a_t h_t,

so any leak of padding into the batched encoders shows up as a difference.
"""

from __future__ import annotations

import torch

from blocklab.position.sinusoidal import sinusoidal_embedding


def _pool(pool, h):
    """h (n, d) -> (sum a h, a) from the equation."""
    scores = torch.stack([torch.tanh(pool.proj(h[t])) @ pool.context for t in range(len(h))])
    a = torch.softmax(scores, dim=0)
    return (a[:, None] * h).sum(0), a


def naive_han(encoder, x, mask):
    """x (B, S, W, E), mask (B, S, W) -> (documents (B, 2h), word (B, S, W), sentence (B, S))."""
    B, S, W, _ = x.shape
    docs = torch.zeros(B, encoder.d_out, dtype=x.dtype)
    word_w = torch.zeros(B, S, W, dtype=x.dtype)
    sent_w = torch.zeros(B, S, dtype=x.dtype)
    for b in range(B):
        vectors, where = [], []
        for s in range(S):
            idx = mask[b, s].nonzero().flatten()
            if len(idx) == 0:
                continue
            h, _ = encoder.word_gru(x[b, s, idx][None])  # (1, n, 2h): this sentence alone
            v, a = _pool(encoder.word_pool, h[0])
            word_w[b, s, idx] = a
            vectors.append(v)
            where.append(s)
        if not vectors:
            continue
        h, _ = encoder.sentence_gru(torch.stack(vectors)[None])  # (1, n, 2h)
        docs[b], a = _pool(encoder.sentence_pool, h[0])
        sent_w[b, where] = a
    return docs, word_w, sent_w


def naive_hierarchical_transformer(encoder, x, mask):
    """x (B, S, W, C), mask (B, S, W) -> (documents (B, C), word (B, S, W), sentence (B, S))."""
    B, S, W, C = x.shape
    docs = torch.zeros(B, C, dtype=x.dtype)
    word_w = torch.zeros(B, S, W, dtype=x.dtype)
    sent_w = torch.zeros(B, S, dtype=x.dtype)
    pos_s = sinusoidal_embedding(torch.arange(S), C).to(x.dtype)
    for b in range(B):
        segs = [s for s in range(S) if mask[b, s].any()]
        if not segs:
            continue
        idx = {s: mask[b, s].nonzero().flatten() for s in segs}
        top = {s: encoder.summary + pos_s[s] for s in segs}
        words = {s: x[b, s, idx[s]] for s in segs}  # (n_s, C)
        n_layers = len(encoder.within)
        for i in range(n_layers):
            for s in segs:
                h = torch.cat([top[s][None], words[s]])[None]  # (1, 1 + n_s, C), no padding
                if i == 0:
                    h = h + sinusoidal_embedding(torch.arange(h.shape[1]), C).to(x.dtype)
                everything = torch.ones(1, h.shape[1], dtype=torch.bool)
                if i == n_layers - 1:
                    a = encoder.within[i].query_weights(h, everything)[0, 1:]
                    word_w[b, s, idx[s]] = a / a.sum()
                h = encoder.within[i](h, everything)[0]
                top[s], words[s] = h[0], h[1:]
            stacked = torch.stack([top[s] for s in segs])[None]  # (1, n_segs, C)
            out = encoder.across[i](stacked, torch.ones(1, len(segs), dtype=torch.bool))[0]
            top = dict(zip(segs, out, strict=True))
        final = encoder.norm(torch.stack([top[s] for s in segs]))
        docs[b], a = _pool(encoder.pool, final)
        sent_w[b, segs] = a
    return docs, word_w, sent_w


def naive_flat(encoder, x, mask):
    """x (B, S, W, C), mask (B, S, W) -> (documents (B, C), word (B, S, W))."""
    B, S, W, C = x.shape
    docs = torch.zeros(B, C, dtype=x.dtype)
    word_w = torch.zeros(B, S, W, dtype=x.dtype)
    for b in range(B):
        where = mask[b].reshape(-1).nonzero().flatten()
        if len(where) == 0:
            continue
        h = x[b].reshape(S * W, C)[where][None]  # (1, n, C): the words in reading order
        h = h + sinusoidal_embedding(torch.arange(len(where)), C).to(x.dtype)
        everything = torch.ones(1, len(where), dtype=torch.bool)
        for layer in encoder.layers:
            h = layer(h, everything)
        docs[b], a = _pool(encoder.pool, encoder.norm(h[0]))
        word_w[b].view(-1)[where] = a
    return docs, word_w
