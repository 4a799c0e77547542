"""The distiller: the teacher stays frozen, cached logits equal live ones, the CLI works."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from blocklab.cli import main
from blocklab.losses import kd_loss
from blocklab.models import TransformerConfig, TransformerLM
from blocklab.models.convert import save_model
from blocklab.train import evaluate_classifier, train_classifier
from blocklab.train.distill import (
    check_unchanged,
    distill_classifier,
    distill_lm,
    fingerprint,
    teacher_logits,
)
from blocklab.train.sources import load_model


@pytest.fixture(autouse=True)
def _one_thread():
    # Models here are tiny: a second intra-op thread only adds synchronisation, which
    # on a busy 2-core machine costs 10-50x.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _blobs(n: int = 256, d: int = 8, c: int = 4, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    centers = 3 * torch.randn(c, d, generator=g)
    y = torch.randint(c, (n,), generator=g)
    return centers[y] + torch.randn(n, d, generator=g), y


def _mlp(d: int = 8, c: int = 4, hidden: int = 32, seed: int = 0, dropout: float = 0.0,
         batchnorm: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(d, hidden)]
    if batchnorm:
        layers.append(nn.BatchNorm1d(hidden))
    layers += [nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, c)]
    return nn.Sequential(*layers)


def _teacher(x: torch.Tensor, y: torch.Tensor, **kwargs) -> nn.Module:
    teacher = _mlp(hidden=64, **kwargs)
    train_classifier(teacher, x, y, steps=60, batch_size=64, lr=1e-2)
    return teacher


def test_distill_classifier_learns_and_leaves_teacher_untouched() -> None:
    x, y = _blobs()
    teacher = _teacher(x, y, dropout=0.5, batchnorm=True)
    teacher.train()  # a teacher left in train mode: the distiller must switch it to eval
    teacher.zero_grad(set_to_none=True)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = _mlp(hidden=8, seed=1)
    history = distill_classifier(student, teacher, x, y, steps=80, batch_size=32, lr=1e-2,
                                 temperature=4.0, eval_x=x, eval_y=y, eval_every=40)
    assert history.steps == list(range(1, 81)) and history.eval_steps == [40, 80]
    assert history.eval_accuracies[-1] > 0.9
    assert history.losses[-1] < history.losses[0]
    for k, v in teacher.state_dict().items():  # BN running stats included
        assert torch.equal(v, before[k]), k
    assert teacher.training  # its mode is restored
    assert all(p.grad is None for p in teacher.parameters())


def test_cached_logits_equal_live_teacher() -> None:
    x, y = _blobs()
    teacher = _teacher(x, y, dropout=0.3)
    cached = teacher_logits(teacher, x, batch_size=50)
    assert cached.shape == (256, 4) and teacher.training
    runs = []
    for cache in (None, cached):
        student = _mlp(hidden=8, seed=1)
        runs.append(distill_classifier(student, teacher, x, y, steps=20, batch_size=32,
                                       cached_logits=cache, seed=5).losses)
    assert runs[0] == pytest.approx(runs[1], rel=1e-5)


def test_alpha_zero_is_training_on_labels() -> None:
    """With alpha 0 the distiller is train_classifier: same batches, same losses."""
    x, y = _blobs()
    teacher = _teacher(x, y)
    a, b = _mlp(seed=2), _mlp(seed=2)
    ours = distill_classifier(a, teacher, x, y, steps=15, batch_size=32, alpha=0.0, seed=3)
    plain = train_classifier(b, x, y, steps=15, batch_size=32, seed=3)
    assert ours.losses == pytest.approx(plain.losses, rel=1e-6)


def test_changed_teacher_is_detected() -> None:
    teacher = _mlp()
    before = fingerprint(teacher)
    check_unchanged(teacher, before)
    with torch.no_grad():
        teacher[0].weight[0, 0] += 1e-3
    with pytest.raises(RuntimeError, match=r"0\.weight"):
        check_unchanged(teacher, before)


def test_shared_parameters_are_refused() -> None:
    x, y = _blobs(32)
    teacher = _mlp()
    student = nn.Sequential(teacher[0], nn.ReLU(), nn.Linear(32, 4))
    with pytest.raises(ValueError, match="share"):
        distill_classifier(student, teacher, x, y, steps=1, batch_size=8)
    with pytest.raises(ValueError, match="different"):
        distill_classifier(teacher, teacher, x, y, steps=1, batch_size=8)
    with pytest.raises(ValueError, match="cached_logits"):
        distill_classifier(_mlp(seed=1), teacher, x, y, steps=1, batch_size=8,
                           cached_logits=torch.zeros(31, 4))
    with pytest.raises(ValueError, match="temperature"):
        distill_classifier(_mlp(seed=1), teacher, x, y, steps=1, batch_size=8, temperature=0.0)


def _lm(d_model: int, n_layers: int, seed: int) -> TransformerLM:
    torch.manual_seed(seed)
    return TransformerLM(TransformerConfig(vocab_size=256, d_model=d_model, n_layers=n_layers,
                                           n_heads=2, max_seq_len=64))


def test_distill_lm_tiny_transformer() -> None:
    tokens = torch.randint(0, 256, (4000,))
    tokens[1::2] = (tokens[0::2] + 1) % 256  # a learnable rule: odd token = even + 1
    teacher, student = _lm(32, 2, 0), _lm(16, 1, 1)
    before = fingerprint(teacher)
    history = distill_lm(student, teacher, tokens, steps=30, batch_size=4, seq_len=32,
                         lr=1e-2, temperature=2.0, eval_tokens=tokens[:1000], eval_every=15,
                         eval_batches=2)
    check_unchanged(teacher, before)
    assert history.eval_steps == [15, 30] and all(math.isfinite(v) for v in history.losses)
    assert history.losses[-1] < history.losses[0]
    # A student distilled from itself has nothing to learn from the soft term.
    x = tokens[:64].view(2, 32)
    assert kd_loss(student(x), student(x)).item() < 1e-6


def test_distill_lm_vocab_mismatch() -> None:
    teacher = _lm(32, 1, 0)
    student = TransformerLM(TransformerConfig(vocab_size=300, d_model=16, n_layers=1, n_heads=2))
    with pytest.raises(ValueError, match="vocab_size"):
        distill_lm(student, teacher, torch.randint(0, 256, (500,)), steps=1, batch_size=2,
                   seq_len=8)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    model = _lm(32, 1, 0)
    save_model(model, tmp_path / "ckpt")
    loaded = load_model(tmp_path / "ckpt")
    x = torch.randint(0, 256, (1, 10))
    assert torch.equal(loaded(x), model(x))
    tied = TransformerLM(TransformerConfig(vocab_size=256, d_model=16, n_layers=1, n_heads=2,
                                           tie_embeddings=True))
    save_model(tied, tmp_path / "tied")
    again = load_model(tmp_path / "tied" / "model.safetensors")
    assert torch.equal(again(x), tied(x))
    with pytest.raises(ValueError, match="not found"):
        load_model(tmp_path / "missing")


def test_cli_distill_trains_teacher_then_student(tmp_path: Path, capsys) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 80)
    out = tmp_path / "run"
    args = ["distill", "--teacher-preset", "tiny", "--teacher-steps", "4",
            "--student-preset", "tiny", "--student-d-model", "32", "--student-layers", "1",
            "--corpus", str(corpus), "--steps", "4", "--batch-size", "2", "--seq-len", "16",
            "--eval-batches", "2", "--out", str(out)]
    assert main(args) == 0
    for f in ("model.safetensors", "config.yaml", "metrics.json", "teacher/model.safetensors"):
        assert (out / f).is_file(), f
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["student_parameters"] < metrics["teacher_parameters"]
    assert math.isfinite(metrics["student_val_ppl"])
    student = load_model(out)
    assert student.config.d_model == 32 and student.config.n_layers == 1
    # Reuse the teacher it wrote.
    assert main(["distill", "--teacher", str(out / "teacher"), "--student-preset", "tiny",
                 "--student-layers", "1", "--corpus", str(corpus), "--steps", "2",
                 "--batch-size", "2", "--seq-len", "16", "--eval-batches", "1",
                 "--out", str(tmp_path / "run2")]) == 0
    assert "student saved" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--temperature", "0"], "--temperature"),
        (["--alpha", "1.5"], "--alpha"),
        (["--steps", "0"], "--steps"),
        (["--teacher", "/nonexistent/ckpt"], "not found"),
        (["--student-preset", "huge"], "unknown preset"),
        (["--corpus", "/nonexistent/file.txt"], "corpus"),
    ],
)
def test_cli_distill_usage_errors(extra: list[str], match: str, tmp_path: Path, capsys) -> None:
    args = ["distill", "--teacher-steps", "1", "--steps", "1", "--out", str(tmp_path), *extra]
    assert main(args) == 2
    assert match in capsys.readouterr().err


def test_evaluate_classifier_of_distilled_student_beats_chance() -> None:
    x, y = _blobs(512, seed=3)
    teacher = _teacher(x, y)
    student = _mlp(hidden=4, seed=4)
    distill_classifier(student, teacher, x, y, steps=60, batch_size=64, lr=1e-2,
                       cached_logits=teacher_logits(teacher, x, dtype=torch.float16))
    assert evaluate_classifier(student, x, y) > 0.8
