"""Document classifiers: word embeddings -> a document encoder -> a linear head.

    logits = W_head v + b,   v = encoder(E[x], x != pad)

The encoder is any module mapping word embeddings (B, S, W, E) and a word mask to a
:class:`~blocklab.attention.hierarchical.HierarchicalOutput`:
:class:`~blocklab.attention.hierarchical.HANEncoder` (Yang et al. 2016),
:class:`~blocklab.attention.hierarchical.HierarchicalTransformerEncoder` (HAT-style), or
:class:`FlatTransformerEncoder`, the baseline that reads the document's words as one
sequence with full self-attention (cost ~ (S W)^2) and pools them with attention. A
reproduction of HAN found such a flat attention model within 0.5 points of it, so the
flat baseline always sits beside the hierarchical ones.

``DocumentClassifier(x)`` returns a :class:`ClassifierOutput` whose ``.logits`` the
training loop reads, with the encoder's word and sentence attention weights for
inspection. :func:`make_classifier` builds the three kinds by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from blocklab.attention.hierarchical import (
    AttentionPooling,
    EncoderLayer,
    HANEncoder,
    HierarchicalOutput,
    HierarchicalTransformerEncoder,
    check_encoder_shape,
    compact,
)
from blocklab.position.sinusoidal import sinusoidal_embedding

__all__ = [
    "ClassifierOutput",
    "DocumentClassifier",
    "FlatTransformerEncoder",
    "make_classifier",
    "CLASSIFIER_KINDS",
]

CLASSIFIER_KINDS = ("flat", "han", "hierarchical")


@dataclass
class ClassifierOutput:
    """logits (B, n_classes); word_weights (B, S, W); sentence_weights (B, S) or None."""

    logits: torch.Tensor
    word_weights: torch.Tensor
    sentence_weights: torch.Tensor | None


class FlatTransformerEncoder(nn.Module):
    """The document's real words as one sequence, full bidirectional self-attention,
    attention pooling. Padding between sentences is squeezed out first, so positions
    count real words.

    Args:
        d_model: width C (the word embedding width too).
        n_heads: attention heads.
        n_layers: transformer layers.
        ffn_expansion: FFN hidden width / C.
        dropout: residual dropout.
    """

    def __init__(self, d_model: int, n_heads: int, *, n_layers: int = 2,
                 ffn_expansion: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        check_encoder_shape(d_model, n_layers)
        self.d_out = d_model
        self.layers = nn.ModuleList(
            EncoderLayer(d_model, n_heads, ffn_expansion=ffn_expansion, dropout=dropout)
            for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.pool = AttentionPooling(d_model)

    def forward(self, x: torch.Tensor, word_mask: torch.Tensor) -> HierarchicalOutput:
        """Args:
            x: (B, S, W, C) word embeddings.
            word_mask: (B, S, W) bool, True for real words.

        Returns:
            document (B, C), word_weights (B, S, W) (the pooling weights), no sentence level.
        """
        B, S, W, C = x.shape
        flat_mask = word_mask.reshape(B, S * W)
        order, lengths = compact(flat_mask)  # real words first, in reading order
        L = max(int(lengths.max()) if B else 0, 1)
        order = order[:, :L]
        h = x.reshape(B, S * W, C).gather(1, order[..., None].expand(B, L, C))  # (B, L, C)
        mask = torch.arange(L, device=x.device) < lengths[:, None]  # (B, L)
        h = h + sinusoidal_embedding(torch.arange(L, device=x.device), C).to(x.dtype)
        for layer in self.layers:
            h = layer(h, mask)
        doc, weights = self.pool(self.norm(h), mask)  # (B, C), (B, L)
        word_w = weights.new_zeros(B, S * W).scatter(1, order, weights)
        return HierarchicalOutput(doc, word_w.view(B, S, W), None)


class DocumentClassifier(nn.Module):
    """Embeddings, a document encoder, a linear head.

    Args:
        encoder: maps (B, S, W, d_embed) embeddings and a (B, S, W) mask to a
            HierarchicalOutput; must have ``d_out``.
        vocab_size: word ids are < vocab_size; id ``pad_id`` is padding.
        n_classes: output classes.
        d_embed: embedding width.
        dropout: dropout on the embeddings and the document vector.
        pad_id: the padding id.
    """

    def __init__(self, encoder: nn.Module, *, vocab_size: int, n_classes: int, d_embed: int,
                 dropout: float = 0.0, pad_id: int = 0) -> None:
        super().__init__()
        if vocab_size < 2 or n_classes < 2:
            raise ValueError(f"vocab_size ({vocab_size}) and n_classes ({n_classes}) must be >= 2")
        self.vocab_size = vocab_size
        self.pad_id = pad_id
        self.embed = nn.Embedding(vocab_size, d_embed, padding_idx=pad_id)
        self.encoder = encoder
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.d_out, n_classes)

    def forward(self, x: torch.Tensor) -> ClassifierOutput:
        """Args:
            x: (B, S, W) word ids, ``pad_id`` for padding.

        Returns:
            ClassifierOutput with logits (B, n_classes) and the encoder's weights.
        """
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.is_floating_point():
            raise ValueError(
                f"x must be an integer tensor (B, S, W), got {getattr(x, 'shape', type(x))}"
            )
        if x.numel() and (int(x.max()) >= self.vocab_size or int(x.min()) < 0):
            raise ValueError(f"word ids must lie in [0, vocab_size={self.vocab_size}), "
                             f"got [{int(x.min())}, {int(x.max())}]")
        mask = x != self.pad_id
        out = self.encoder(self.drop(self.embed(x)), mask)
        return ClassifierOutput(self.head(self.drop(out.document)), out.word_weights,
                                out.sentence_weights)


def make_classifier(kind: Literal["flat", "han", "hierarchical"], *, vocab_size: int,
                    n_classes: int, d_model: int = 64, n_heads: int = 4, n_layers: int = 2,
                    dropout: float = 0.0) -> DocumentClassifier:
    """One of the three classifiers at a comparable size.

    ``han``: embeddings of width d_model, GRUs of d_model / 2 per direction (document
    vectors d_model wide). ``flat`` / ``hierarchical``: transformers of width d_model,
    ``n_layers`` layers (the hierarchical one: n_layers within-segment and n_layers
    across-segment layers).
    """
    if kind == "han":
        encoder: nn.Module = HANEncoder(d_model, d_model // 2)
    elif kind == "flat":
        encoder = FlatTransformerEncoder(d_model, n_heads, n_layers=n_layers, dropout=dropout)
    elif kind == "hierarchical":
        encoder = HierarchicalTransformerEncoder(d_model, n_heads, n_layers=n_layers,
                                                 dropout=dropout)
    else:
        raise ValueError(f"kind ({kind!r}) must be one of {CLASSIFIER_KINDS}")
    return DocumentClassifier(encoder, vocab_size=vocab_size, n_classes=n_classes,
                              d_embed=d_model, dropout=dropout)
