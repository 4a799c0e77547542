"""Document classifiers: the three kinds, the flat oracle, training, and bad input."""

from __future__ import annotations

import pytest
import torch

from blocklab.attention.hierarchical import segment_tokens
from blocklab.models.classifier import (
    CLASSIFIER_KINDS,
    ClassifierOutput,
    DocumentClassifier,
    FlatTransformerEncoder,
    make_classifier,
)
from blocklab.train import evaluate_classifier, train_classifier
from tests.conftest import assert_close
from tests.reference.hierarchical import naive_flat


def _docs() -> torch.Tensor:
    """(4, 3, 5) word ids: full, ragged with an empty sentence, one word, empty."""
    x = torch.zeros(4, 3, 5, dtype=torch.long)
    x[0] = torch.randint(2, 30, (3, 5))
    x[1, 0, :2] = torch.tensor([5, 6])
    x[1, 2, :4] = torch.tensor([7, 8, 9, 10])
    x[2, 1, 0] = 11
    return x


@pytest.mark.parametrize("kind", CLASSIFIER_KINDS)
def test_shapes_weights_and_bad_input(kind):
    model = make_classifier(kind, vocab_size=30, n_classes=3, d_model=16, n_heads=2)
    x = _docs()
    out = model(x)
    assert isinstance(out, ClassifierOutput)
    assert out.logits.shape == (4, 3) and torch.isfinite(out.logits).all()
    assert out.word_weights.shape == (4, 3, 5)
    assert out.word_weights[x == 0].abs().sum() == 0
    if kind == "flat":
        assert out.sentence_weights is None
        assert_close(out.word_weights.sum((1, 2))[:3], torch.ones(3))
    else:
        assert out.sentence_weights.shape == (4, 3)
        assert_close(out.sentence_weights.sum(-1)[:3], torch.ones(3))
        assert out.sentence_weights[3].abs().sum() == 0
    torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 1, 2, 0])).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # A flat token stream cut into segments longer than the document.
    stream = torch.tensor([[3, 4, 5, 6, 7]])
    assert torch.isfinite(model(segment_tokens(stream, 64)).logits).all()
    assert torch.isfinite(model(torch.zeros(2, 1, 1, dtype=torch.long)).logits).all()


def test_flat_encoder_matches_unpadded_oracle():
    enc = FlatTransformerEncoder(8, 2, n_layers=2).double().eval()
    x = torch.randn(4, 3, 5, 8, dtype=torch.float64)
    mask = _docs() != 0
    out = enc(x, mask)
    docs, word_w = naive_flat(enc, x, mask)
    assert_close(out.document[:3], docs[:3])
    assert_close(out.word_weights, word_w)


@pytest.fixture
def one_thread():
    # Many small ops: two threads on a shared machine spend their time synchronising.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_trains_with_the_loop_and_learns_a_keyword_task(one_thread):
    """Label 1 iff word 5 occurs anywhere: every kind learns it."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(6, 40, (256, 4, 6), generator=g)
    x[torch.rand(256, 4, 6, generator=g) < 0.2] = 0
    y = torch.randint(0, 2, (256,), generator=g)
    for i in range(256):
        if y[i]:
            x[i, torch.randint(0, 4, (1,), generator=g), torch.randint(0, 6, (1,), generator=g)] = 5
    for kind in CLASSIFIER_KINDS:
        torch.manual_seed(0)
        model = make_classifier(kind, vocab_size=40, n_classes=2, d_model=16, n_heads=2,
                                n_layers=1)
        train_classifier(model, x[:192], y[:192], steps=100, batch_size=32, lr=1e-2)
        assert evaluate_classifier(model, x[192:], y[192:]) > 0.85, kind


def test_hierarchical_has_twice_the_flat_layers():
    """Documented sizes: n_layers within- plus n_layers across-segment layers."""
    def encoder_params(kind: str) -> int:
        return sum(p.numel() for p in make_classifier(kind, vocab_size=100, n_classes=5)
                   .encoder.parameters())
    flat, hier = encoder_params("flat"), encoder_params("hierarchical")
    assert 1.8 < hier / flat < 2.2


def test_validation():
    model = make_classifier("han", vocab_size=30, n_classes=2, d_model=8)
    with pytest.raises(ValueError, match=r"x must be an integer tensor \(B, S, W\)"):
        model(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"word ids must lie in \[0, vocab_size=30\), got \[30, 30\]"):
        model(torch.full((1, 1, 2), 30))
    with pytest.raises(ValueError, match="kind"):
        make_classifier("rnn", vocab_size=30, n_classes=2)
    with pytest.raises(ValueError, match=r"vocab_size \(30\) and n_classes \(1\) must be >= 2"):
        DocumentClassifier(FlatTransformerEncoder(8, 2), vocab_size=30, n_classes=1, d_embed=8)
