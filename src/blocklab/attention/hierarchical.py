"""Hierarchical attention over documents: words -> sentences (segments) -> document.

HAN (Yang et al. 2016, "Hierarchical Attention Networks for Document Classification"):

    h_it = BiGRU(x_it)                                   word encoder, one sentence at a time
    u_it = tanh(W_w h_it + b_w),  a_it = softmax_t(u_it . u_w),  s_i = sum_t a_it h_it
    h_i  = BiGRU(s_i)                                    sentence encoder
    u_i  = tanh(W_s h_i + b_s),   a_i  = softmax_i(u_i . u_s),   v   = sum_i a_i h_i

Padding is masked in both softmaxes (popular HAN code forgets to,
ematvey/hierarchical-attention-networks#19), the GRUs run on packed sequences so the
backward direction starts at each sentence's real last word, and the whole batch runs
at once (no Python loop over documents).

The hierarchical transformer follows HAT (Chalkidis et al. 2022) and Hi-Transformer
(Wu et al. 2021): each segment (sentence) gets a leading summary token; one layer is

    within:  self-attention inside each segment            cost ~ S W^2 d, not (S W)^2 d
    across:  self-attention among the S summary tokens     cost ~ S^2 d
    down:    the summaries go back into their segments, so the next layer's words see
             document context

With ``n_layers=1`` information only flows up; with more, layers interleave (HAT's
"interleaved" layout). The document vector is attention pooling over the final
summaries.

Both encoders return their attention weights: per word (HAN's a_it; for the transformer,
the summary token's attention over its words in the last layer, mean over heads) and
per sentence (the pooling weights). Empty sentences, empty documents and padding never
produce NaN: a fully masked softmax gives zero weights and a zero vector. Checked
against ``tests/reference/hierarchical.py``, which runs each document alone, unpadded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from blocklab.attention.functional import attention_weights
from blocklab.attention.multihead import Attention
from blocklab.ffn import FeedForward
from blocklab.norm import make_norm
from blocklab.position.sinusoidal import sinusoidal_embedding

__all__ = [
    "HierarchicalOutput",
    "AttentionPooling",
    "HANEncoder",
    "EncoderLayer",
    "HierarchicalTransformerEncoder",
    "masked_softmax",
    "segment_tokens",
    "compact",
]


@dataclass
class HierarchicalOutput:
    """What a document encoder returns.

    Attributes:
        document: (B, d_out) document vectors.
        word_weights: (B, S, W) attention over the words of each sentence (zeros on padding).
        sentence_weights: (B, S) attention over sentences (zeros on padding), or None for
            encoders without a sentence level.
    """

    document: torch.Tensor
    word_weights: torch.Tensor
    sentence_weights: torch.Tensor | None


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """softmax over ``dim`` of the entries where ``mask`` is True; all-masked slices give
    zeros (not NaN, and zero gradient)."""
    scores = scores.masked_fill(~mask, float("-inf"))
    alive = mask.any(dim=dim, keepdim=True)
    weights = torch.softmax(scores.masked_fill(~alive, 0.0), dim=dim)
    return weights * mask


def compact(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Order that moves the True entries of each row of ``mask`` (..., L) to the front,
    keeping their order, and the count of True entries per row (...,)."""
    order = torch.argsort((~mask).to(torch.int8), dim=-1, stable=True)
    return order, mask.sum(-1)


def segment_tokens(ids: torch.Tensor, segment_length: int, *, pad_id: int = 0) -> torch.Tensor:
    """Cut token ids (B, L) into fixed-length segments (B, ceil(L / w), w), padding the
    last one with ``pad_id`` (HAT's segmentation). A segment longer than the document
    gives one padded segment; an empty document one segment of padding."""
    if ids.dim() != 2:
        raise ValueError(f"ids must be (B, L), got shape {tuple(ids.shape)}")
    if segment_length < 1:
        raise ValueError(f"segment_length ({segment_length}) must be >= 1")
    B, L = ids.shape
    n = max(1, -(-L // segment_length))
    out = ids.new_full((B, n * segment_length), pad_id)
    out[:, :L] = ids
    return out.view(B, n, segment_length)


class AttentionPooling(nn.Module):
    """HAN's attention pooling: u = tanh(W h + b), a = softmax(u . c), out = sum a h.

    Args:
        d_in: width of the vectors pooled.
        d_att: width of u (default d_in).
    """

    def __init__(self, d_in: int, d_att: int | None = None) -> None:
        super().__init__()
        d_att = d_in if d_att is None else d_att
        if d_in <= 0 or d_att <= 0:
            raise ValueError(f"d_in ({d_in}) and d_att ({d_att}) must be positive")
        self.proj = nn.Linear(d_in, d_att)
        self.context = nn.Parameter(torch.randn(d_att) / d_att**0.5)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Args:
            h: (N, L, d_in).
            mask: (N, L) bool, True for real items.

        Returns:
            pooled (N, d_in) -- zeros for a row with no real item -- and weights (N, L).
        """
        scores = torch.tanh(self.proj(h)) @ self.context  # (N, L)
        weights = masked_softmax(scores, mask)
        return torch.einsum("nl,nld->nd", weights.to(h.dtype), h), weights


def _packed_gru(gru: nn.GRU, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Run ``gru`` over rows x (N, L, E) holding ``lengths`` (N,) >= 1 real leading steps;
    returns (N, L, 2h), zeros past each length."""
    packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
    out, _ = gru(packed)
    return pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]


def _gather_rows(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """x (N, L, ...) reordered along L by order (N, L)."""
    index = order.view(*order.shape, *([1] * (x.dim() - 2))).expand(*order.shape, *x.shape[2:])
    return x.gather(1, index)


def _scatter_rows(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_gather_rows`."""
    index = order.view(*order.shape, *([1] * (x.dim() - 2))).expand(*order.shape, *x.shape[2:])
    return torch.zeros_like(x).scatter(1, index, x)


class HANEncoder(nn.Module):
    """HAN's two-level encoder: BiGRU + attention pooling over words, then over sentences.

    Args:
        d_embed: word embedding width E.
        d_hidden: GRU hidden width per direction h (vectors are 2h wide).
        d_att: width of the attention projections (default 2h).
    """

    def __init__(self, d_embed: int, d_hidden: int, *, d_att: int | None = None) -> None:
        super().__init__()
        if d_embed <= 0 or d_hidden <= 0:
            raise ValueError(f"d_embed ({d_embed}) and d_hidden ({d_hidden}) must be positive")
        self.d_out = 2 * d_hidden
        self.word_gru = nn.GRU(d_embed, d_hidden, batch_first=True, bidirectional=True)
        self.word_pool = AttentionPooling(2 * d_hidden, d_att)
        self.sentence_gru = nn.GRU(2 * d_hidden, d_hidden, batch_first=True, bidirectional=True)
        self.sentence_pool = AttentionPooling(2 * d_hidden, d_att)

    def _level(self, gru: nn.GRU, pool: AttentionPooling, x: torch.Tensor, mask: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """One level over rows x (N, L, E) with mask (N, L): (N, 2h) vectors, (N, L) weights.

        Real items are moved to the front of each row (padding may sit anywhere) and only
        rows with at least one real item go through the GRU.
        """
        N, L, _ = x.shape
        order, lengths = compact(mask)
        live = (lengths > 0).nonzero(as_tuple=True)[0]
        vectors = x.new_zeros(N, self.d_out)
        weights = x.new_zeros(N, L)
        if live.numel():
            xs = _gather_rows(x[live], order[live])  # (n, L, E), real items first
            ms = torch.arange(L, device=x.device) < lengths[live, None]  # (n, L)
            h = _packed_gru(gru, xs, lengths[live])  # (n, L, 2h)
            v, a = pool(h, ms)
            vectors = vectors.index_copy(0, live, v)
            weights = weights.index_copy(0, live, _scatter_rows(a, order[live]))
        return vectors, weights

    def forward(self, x: torch.Tensor, word_mask: torch.Tensor) -> HierarchicalOutput:
        """Args:
            x: (B, S, W, E) word embeddings.
            word_mask: (B, S, W) bool, True for real words.

        Returns:
            document (B, 2h), word_weights (B, S, W), sentence_weights (B, S).
        """
        B, S, W, E = x.shape
        sentences, word_w = self._level(self.word_gru, self.word_pool, x.reshape(B * S, W, E),
                                        word_mask.reshape(B * S, W))  # (B*S, 2h), (B*S, W)
        sentence_mask = word_mask.any(-1)  # (B, S)
        doc, sent_w = self._level(self.sentence_gru, self.sentence_pool,
                                  sentences.view(B, S, self.d_out), sentence_mask)
        return HierarchicalOutput(doc, word_w.view(B, S, W), sent_w)


def check_encoder_shape(d_model: int, n_layers: int) -> None:
    """What the transformer encoders here need: a layer at least, and an even width
    (sinusoidal positions)."""
    if n_layers < 1:
        raise ValueError(f"n_layers ({n_layers}) must be >= 1")
    if d_model % 2:
        raise ValueError(f"d_model ({d_model}) must be even (sinusoidal positions)")


class EncoderLayer(nn.Module):
    """A pre-norm bidirectional transformer layer: x + Attn(LN(x)), then x + FFN(LN(x)).

    Args:
        d_model: width C.
        n_heads: attention heads.
        ffn_expansion: FFN hidden width / C.
        dropout: dropout on both residual branches.
    """

    def __init__(self, d_model: int, n_heads: int, *, ffn_expansion: float = 4.0,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.attn_norm = make_norm("layernorm", d_model, 1e-5)
        self.attn = Attention(d_model, n_heads, bias=True)
        self.ffn_norm = make_norm("layernorm", d_model, 1e-5)
        self.ffn = FeedForward(d_model, expansion=ffn_expansion, activation="gelu")
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """x (N, L, C), key_mask (N, L) bool (True = real) -> (N, L, C)."""
        mask = key_mask[:, None, None, :]  # (N, 1, 1, L)
        x = x + self.drop(self.attn(self.attn_norm(x), mask=mask))
        return x + self.drop(self.ffn(self.ffn_norm(x)))

    def query_weights(self, x: torch.Tensor, key_mask: torch.Tensor, index: int = 0
                      ) -> torch.Tensor:
        """Attention of position ``index`` over the keys, mean over heads: (N, L)."""
        attn = self.attn
        H, D = attn.n_heads, attn.head_dim
        N, L, _ = x.shape
        q, k, _ = attn.wqkv(self.attn_norm(x)).split((H * D, H * D, H * D), dim=-1)
        q = q[:, index:index + 1].view(N, 1, H, D).transpose(1, 2)  # (N, H, 1, D)
        k = k.view(N, L, H, D).transpose(1, 2)  # (N, H, L, D)
        return attention_weights(q, k, mask=key_mask[:, None, None, :]).mean(1)[:, 0]


class HierarchicalTransformerEncoder(nn.Module):
    """Self-attention within segments, then across segment summaries, and back down.

    Args:
        d_model: width C (the word embedding width too).
        n_heads: attention heads.
        n_layers: interleaved (within, across) layer pairs; 1 = bottom-up only.
        ffn_expansion: FFN hidden width / C.
        dropout: residual dropout.
    """

    def __init__(self, d_model: int, n_heads: int, *, n_layers: int = 2,
                 ffn_expansion: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        check_encoder_shape(d_model, n_layers)
        self.d_out = d_model
        self.summary = nn.Parameter(torch.randn(d_model) * 0.02)
        kw = dict(ffn_expansion=ffn_expansion, dropout=dropout)
        self.within = nn.ModuleList(EncoderLayer(d_model, n_heads, **kw) for _ in range(n_layers))
        self.across = nn.ModuleList(EncoderLayer(d_model, n_heads, **kw) for _ in range(n_layers))
        self.norm = make_norm("layernorm", d_model, 1e-5)
        self.pool = AttentionPooling(d_model)

    def forward(self, x: torch.Tensor, word_mask: torch.Tensor) -> HierarchicalOutput:
        """Args:
            x: (B, S, W, C) word embeddings.
            word_mask: (B, S, W) bool, True for real words.

        Returns:
            document (B, C), word_weights (B, S, W), sentence_weights (B, S).
        """
        B, S, W, C = x.shape
        sentence_mask = word_mask.any(-1)  # (B, S)
        # Only non-empty segments go through the within-segment layers, their words moved
        # to the front and cut to the longest segment: padding costs nothing.
        order, lengths = compact(word_mask.reshape(B * S, W))
        live = sentence_mask.reshape(B * S).nonzero(as_tuple=True)[0]  # (n,)
        W_live = max(int(lengths.max()) if lengths.numel() else 0, 1)
        order_live = order[live, :W_live]  # (n, W_live)
        words = _gather_rows(x.reshape(B * S, W, C)[live], order_live)  # (n, W_live, C)
        key_mask = torch.arange(1 + W_live, device=x.device) < 1 + lengths[live, None]
        pos_w = sinusoidal_embedding(torch.arange(1 + W_live, device=x.device), C).to(x.dtype)
        pos_s = sinusoidal_embedding(torch.arange(S, device=x.device), C).to(x.dtype)
        top = (self.summary + pos_s).expand(B, S, C)  # (B, S, C) segment summaries
        word_w_live = x.new_zeros(live.numel(), W_live)
        for i, (within, across) in enumerate(zip(self.within, self.across, strict=True)):
            if live.numel():
                # (n, 1 + W_live, C): the summary token first; it is always a valid key.
                h = torch.cat([top.reshape(B * S, 1, C)[live], words], dim=1)
                if i == 0:
                    h = h + pos_w
                if i == len(self.within) - 1:
                    word_w_live = within.query_weights(h, key_mask)[:, 1:]  # last layer
                h = within(h, key_mask)  # attention inside each segment
                words = h[:, 1:]
                top = top.reshape(B * S, C).index_copy(0, live, h[:, 0]).view(B, S, C)
            top = across(top, sentence_mask)  # (B, S, C): attention across segments
        # Back in the (B, S, W) grid; renormalised over the real words (the summary
        # token took part of the mass).
        word_w_live = word_w_live * key_mask[:, 1:]
        word_w_live = word_w_live / word_w_live.sum(-1, keepdim=True).clamp_min(1e-12)
        word_w = x.new_zeros(B * S, W)
        if live.numel():
            padded = torch.cat([word_w_live, word_w_live.new_zeros(live.numel(), W - W_live)], 1)
            word_w = word_w.index_copy(0, live, _scatter_rows(padded, order[live]))
        word_w = word_w.view(B, S, W)
        doc, sent_w = self.pool(self.norm(top), sentence_mask)
        return HierarchicalOutput(doc, word_w.view(B, S, W), sent_w)
