"""Hierarchical encoders against per-document unpadded oracles; masking and bad input."""

from __future__ import annotations

import pytest
import torch

from blocklab.attention.hierarchical import (
    AttentionPooling,
    HANEncoder,
    HierarchicalTransformerEncoder,
    compact,
    masked_softmax,
    segment_tokens,
)
from tests.conftest import assert_close
from tests.reference.hierarchical import naive_han, naive_hierarchical_transformer


def ragged_mask() -> torch.Tensor:
    """(3, 4, 5): padding inside sentences, an empty sentence in the middle, a trailing
    empty sentence, a one-word document, and an empty document."""
    mask = torch.zeros(3, 4, 5, dtype=torch.bool)
    mask[0, 0, :5] = True
    mask[0, 1, :2] = True
    mask[0, 3, [0, 2, 3]] = True  # holes inside a sentence, sentence 2 empty
    mask[1, 2, 1] = True  # one word, in the third sentence
    return mask  # document 2 is empty


def test_masked_softmax_rows_with_nothing_are_zero():
    scores = torch.randn(3, 4, requires_grad=True)
    mask = torch.tensor([[1, 1, 0, 1], [0, 0, 0, 0], [0, 1, 0, 0]], dtype=torch.bool)
    w = masked_softmax(scores, mask)
    assert_close(w[0], torch.softmax(scores[0].masked_fill(~mask[0], -1e9), 0))
    assert w[1].abs().sum() == 0 and w[2, 1] == 1
    w.sum().backward()
    assert torch.isfinite(scores.grad).all() and scores.grad[1].abs().sum() == 0


def test_attention_pooling_equation():
    pool = AttentionPooling(6, 4).double()
    h = torch.randn(2, 5, 6, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    out, w = pool(h, mask)
    a = torch.softmax(torch.tanh(pool.proj(h[0, :3])) @ pool.context, 0)
    assert_close(w[0, :3], a)
    assert_close(out[0], (a[:, None] * h[0, :3]).sum(0))
    assert out[1].abs().sum() == 0 and w[1].abs().sum() == 0


def test_compact_and_segment_tokens():
    order, n = compact(torch.tensor([[0, 1, 0, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool))
    assert order[0, :3].tolist() == [1, 3, 4] and n.tolist() == [3, 0]
    ids = torch.arange(1, 8).view(1, 7)
    seg = segment_tokens(ids, 3)
    assert seg.tolist() == [[[1, 2, 3], [4, 5, 6], [7, 0, 0]]]
    assert segment_tokens(ids, 100).shape == (1, 1, 100)  # a segment longer than the document
    assert segment_tokens(ids[:, :0], 4).tolist() == [[[0, 0, 0, 0]]]  # an empty document
    with pytest.raises(ValueError, match=r"segment_length \(0\) must be >= 1"):
        segment_tokens(ids, 0)


def test_han_matches_unpadded_oracle():
    enc = HANEncoder(6, 4).double()
    x = torch.randn(3, 4, 5, 6, dtype=torch.float64)
    mask = ragged_mask()
    out = enc(x, mask)
    docs, word_w, sent_w = naive_han(enc, x, mask)
    assert_close(out.document, docs)
    assert_close(out.word_weights, word_w)
    assert_close(out.sentence_weights, sent_w)
    # Whatever sits in the padding changes nothing.
    x2 = x.masked_fill(~mask[..., None], 1e3)
    assert_close(enc(x2, mask).document, docs)


@pytest.mark.parametrize("n_layers", [1, 2])
def test_hierarchical_transformer_matches_unpadded_oracle(n_layers):
    enc = HierarchicalTransformerEncoder(8, 2, n_layers=n_layers).double().eval()
    x = torch.randn(3, 4, 5, 8, dtype=torch.float64)
    mask = ragged_mask()
    out = enc(x, mask)
    docs, word_w, sent_w = naive_hierarchical_transformer(enc, x, mask)
    live = mask.any(-1).any(-1)
    assert_close(out.document[live], docs[live])
    assert torch.isfinite(out.document).all()
    assert_close(out.word_weights, word_w)
    assert_close(out.sentence_weights, sent_w)
    x2 = x.masked_fill(~mask[..., None], -50.0)
    assert_close(enc(x2, mask).document, out.document)


def test_information_flows_back_down_only_with_two_layers():
    """With one layer, a sentence's words never see the other sentences; with two, the
    second layer's words do (through the summaries), so the first sentence's word
    weights depend on the second sentence."""
    x = torch.randn(1, 2, 4, 8)
    mask = torch.ones(1, 2, 4, dtype=torch.bool)
    x2 = x.clone()
    x2[0, 1] = torch.randn(4, 8)
    for n_layers, changes in ((1, False), (2, True)):
        torch.manual_seed(0)
        enc = HierarchicalTransformerEncoder(8, 2, n_layers=n_layers).eval()
        w1 = enc(x, mask).word_weights[0, 0]
        w2 = enc(x2, mask).word_weights[0, 0]
        assert (not torch.allclose(w1, w2)) == changes


@pytest.mark.parametrize("make", [lambda: HANEncoder(8, 4),
                                  lambda: HierarchicalTransformerEncoder(8, 2, n_layers=2)])
def test_weights_are_distributions_and_bad_input_gives_no_nan(make):
    enc = make()
    x = torch.randn(3, 4, 5, 8, requires_grad=True)
    mask = ragged_mask()
    out = enc(x, mask)
    real_sent = mask.any(-1)
    assert_close(out.word_weights.sum(-1)[real_sent], torch.ones(int(real_sent.sum())))
    assert out.word_weights[~mask].abs().sum() == 0
    assert_close(out.sentence_weights.sum(-1)[:2], torch.ones(2))
    assert out.sentence_weights[2].abs().sum() == 0  # the empty document
    assert out.sentence_weights[~real_sent].abs().sum() == 0
    out.document.sum().backward()
    assert torch.isfinite(out.document).all() and torch.isfinite(x.grad).all()
    # All documents empty, and zero-length segments.
    empty = enc(torch.randn(2, 3, 4, 8), torch.zeros(2, 3, 4, dtype=torch.bool))
    assert torch.isfinite(empty.document).all() and empty.sentence_weights.abs().sum() == 0
    nothing = enc(torch.randn(2, 1, 0, 8), torch.zeros(2, 1, 0, dtype=torch.bool))
    assert torch.isfinite(nothing.document).all()


def test_validation():
    with pytest.raises(ValueError, match=r"d_embed \(0\) and d_hidden \(4\) must be positive"):
        HANEncoder(0, 4)
    with pytest.raises(ValueError, match=r"n_layers \(0\) must be >= 1"):
        HierarchicalTransformerEncoder(8, 2, n_layers=0)
    with pytest.raises(ValueError, match=r"d_model \(7\) must be even"):
        HierarchicalTransformerEncoder(7, 1)
