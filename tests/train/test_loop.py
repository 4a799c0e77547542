"""The training loop: it learns, it is deterministic, it leaves the model as it found it."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from blocklab.data import corpus_tokens
from blocklab.train import (
    TrainHistory,
    cosine_lr,
    evaluate_classifier,
    evaluate_lm,
    train_classifier,
    train_lm,
)


def bigram(seed: int = 0, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Embedding(256, 32), nn.Dropout(dropout), nn.Linear(32, 256))


def test_train_lm_reduces_loss_on_corpus() -> None:
    train, val = corpus_tokens()
    model = bigram()
    before = evaluate_lm(model, val, batch_size=16, seq_len=64, max_batches=4)
    history = train_lm(model, train, steps=100, batch_size=8, seq_len=32, lr=1e-2,
                       eval_tokens=val, eval_every=50, eval_batches=4)
    assert history.steps == list(range(1, 101)) and len(history.losses) == 100
    assert history.eval_steps == [50, 100] and history.final_eval == history.eval_losses[-1]
    assert abs(history.losses[0] - math.log(256)) < 0.5  # starts near uniform
    late = sum(history.losses[-10:]) / 10
    assert late < history.losses[0] - 1.5
    assert history.final_eval < before - 1.5
    assert history.seconds > 0 and history.tokens_per_second > 0
    assert model.training


def test_train_lm_is_deterministic() -> None:
    train, _ = corpus_tokens()
    runs = [
        train_lm(bigram(dropout=0.1), train, steps=20, batch_size=4, seq_len=32, seed=3).losses
        for _ in range(2)
    ]
    assert runs[0] == runs[1]
    other = train_lm(bigram(dropout=0.1), train, steps=20, batch_size=4, seq_len=32, seed=4)
    assert other.losses != runs[0]


def test_train_lm_leaves_global_rng_alone() -> None:
    train, _ = corpus_tokens()
    model = bigram()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    train_lm(model, train, steps=2, batch_size=2, seq_len=8)
    assert torch.equal(torch.get_rng_state(), state)


def test_schedule_warmup_then_cosine() -> None:
    train, _ = corpus_tokens()
    history = train_lm(bigram(), train, steps=50, batch_size=2, seq_len=8, lr=1e-2, warmup=10)
    lrs = history.lrs
    assert lrs[0] == pytest.approx(1e-3) and lrs[9] == pytest.approx(1e-2)
    assert all(a > b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[-1] > 1e-3 > cosine_lr(50, steps=50, lr=1e-2, warmup=10) - 1e-12


def test_callback_and_progress() -> None:
    train, val = corpus_tokens()
    seen: list[int] = []
    wrapped: list[tuple[str, int]] = []

    def progress(items, desc, total=None):  # type: ignore[no-untyped-def]
        wrapped.append((desc, total))
        return items

    def stop_at_5(step: int, loss: float, model: nn.Module) -> bool:
        seen.append(step)
        return step == 5

    history = train_lm(bigram(), train, steps=50, batch_size=2, seq_len=8, eval_tokens=val,
                       eval_batches=1, progress=progress, callback=stop_at_5)
    assert seen == [1, 2, 3, 4, 5] and history.steps == [1, 2, 3, 4, 5]
    assert history.eval_steps == [5]  # a run that stops early is still scored
    assert wrapped == [("train lm", 50)]


def test_evaluate_lm_restores_mode_and_needs_no_grad() -> None:
    _, val = corpus_tokens()
    model = bigram(dropout=0.5)
    model.train()
    loss = evaluate_lm(model, val, batch_size=8, seq_len=32, max_batches=2)
    assert model.training
    # Eval mode: dropout is off, so two calls agree.
    assert loss == evaluate_lm(model, val, batch_size=8, seq_len=32, max_batches=2)
    assert abs(loss - math.log(256)) < 0.5
    model.eval()
    evaluate_lm(model, val, batch_size=8, seq_len=32, max_batches=2)
    assert not model.training
    assert all(p.grad is None for p in model.parameters())


def test_train_lm_errors() -> None:
    train, _ = corpus_tokens()
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        train_lm(bigram(), train, steps=0, batch_size=2, seq_len=8)
    with pytest.raises(ValueError, match=r"\(B, T, V\)"):
        # (B, V) logits: one prediction per sequence instead of one per position.
        flat = nn.Sequential(nn.Embedding(256, 4), nn.Flatten(), nn.Linear(32, 256))
        train_lm(flat, train, steps=1, batch_size=2, seq_len=8)
    small = nn.Sequential(nn.Embedding(256, 8), nn.Linear(8, 100))
    with pytest.raises(ValueError, match=r"V = 100"):
        train_lm(small, train, steps=1, batch_size=2, seq_len=8)
    with pytest.raises(ValueError, match=r"seq_len \+ 1"):
        train_lm(bigram(), train[:8], steps=1, batch_size=2, seq_len=8)


def separable(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    y = (x[:, 0] + 2 * x[:, 1] > 0).long()
    return x, y


def test_train_classifier_learns_separable_set() -> None:
    x, y = separable(512, 0)
    x_val, y_val = separable(256, 1)
    torch.manual_seed(0)
    model = nn.Linear(2, 2)
    chance = evaluate_classifier(model, x_val, y_val)
    history = train_classifier(model, x, y, steps=200, batch_size=64, lr=5e-2,
                               eval_x=x_val, eval_y=y_val, eval_every=100)
    assert isinstance(history, TrainHistory)
    assert history.eval_steps == [100, 200] and len(history.eval_accuracies) == 2
    assert evaluate_classifier(model, x_val, y_val) >= 0.97 > chance
    assert history.eval_accuracies[-1] == evaluate_classifier(model, x_val, y_val)
    assert history.losses[-1] < history.losses[0]


def test_train_classifier_binary_logit_and_custom_loss() -> None:
    x, y = separable(256, 2)
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    calls: list[int] = []

    def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return nn.functional.binary_cross_entropy_with_logits(logits.squeeze(-1), target.float())

    train_classifier(model, x, y, steps=150, batch_size=32, lr=5e-2, loss_fn=loss_fn)
    assert len(calls) == 150
    assert evaluate_classifier(model, x, y) >= 0.95


def test_train_classifier_regularizer_shrinks_weights() -> None:
    x, y = separable(256, 3)
    plain, penalised = nn.Linear(2, 2), nn.Linear(2, 2)
    penalised.load_state_dict(plain.state_dict())
    train_classifier(plain, x, y, steps=100, batch_size=64, lr=5e-2)
    train_classifier(penalised, x, y, steps=100, batch_size=64, lr=5e-2,
                     regularizer=lambda m: 0.1 * m.weight.abs().sum())
    assert penalised.weight.abs().sum() < plain.weight.abs().sum()


def test_train_classifier_errors() -> None:
    x, y = separable(16, 0)
    with pytest.raises(ValueError, match=r"x \(16, 2\) and y \(15,\)"):
        train_classifier(nn.Linear(2, 2), x, y[:15], steps=1, batch_size=4)
    with pytest.raises(ValueError, match="together"):
        train_classifier(nn.Linear(2, 2), x, y, steps=1, batch_size=4, eval_x=x)
    with pytest.raises(ValueError, match="lr must be > 0, got 0"):
        train_classifier(nn.Linear(2, 2), x, y, steps=1, batch_size=4, lr=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_train_lm_on_cuda_from_cpu_tokens() -> None:
    train, val = corpus_tokens()
    model = bigram()
    history = train_lm(model, train, steps=50, batch_size=8, seq_len=32, lr=1e-2,
                       device="cuda", eval_tokens=val, eval_batches=2)
    assert next(model.parameters()).is_cuda
    assert history.final_eval is not None and history.final_eval < history.losses[0] - 1.0
