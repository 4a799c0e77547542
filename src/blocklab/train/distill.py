"""Distillation training: a student learns from a frozen teacher's softened outputs.

The student minimises :class:`blocklab.losses.DistillationLoss`,
``alpha * T^2 KL(softmax(z_t/T) || softmax(z_s/T)) + (1 - alpha) CE(z_s, y)``
(Hinton et al. 2015), with the recipe of :mod:`blocklab.train.loop` (AdamW,
linear warm-up then cosine decay, gradient clipping, seeded batches and dropout,
the same batch order as ``train_classifier`` / ``train_lm`` for the same seed).

The teacher is frozen -- the three ways distillation code goes wrong with it:

* it runs in eval mode (dropout off, batch-norm on its running statistics; a
  teacher left in train mode gives noisy targets and drifts its BN statistics),
* under ``torch.no_grad()`` (no graph is built, no gradient reaches it),
* and its parameters and buffers are fingerprinted before training and checked
  unchanged after it; any change raises ``RuntimeError``.

Its mode is restored afterwards. For classifiers the teacher's logits can be
computed once (:func:`teacher_logits`) and passed in, so the teacher runs N times
instead of ``steps * batch_size`` times; language models run the teacher on each
batch (caching V logits per token of a corpus rarely fits in memory).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from blocklab.data.text import random_batches
from blocklab.losses.distill import Direction, DistillationLoss
from blocklab.train.loop import (
    TrainHistory,
    _logits,
    _run,
    check_loop_arguments,
    evaluate_classifier,
    evaluate_lm,
)

__all__ = [
    "check_unchanged",
    "distill_classifier",
    "distill_lm",
    "fingerprint",
    "teacher_logits",
]

Progress = Callable[..., Iterable[Any]]


# ---------------------------------------------------------------------- frozen teacher

def fingerprint(module: nn.Module) -> dict[str, tuple[float, float]]:
    """A cheap signature of every parameter and buffer: (sum, sum of squares) in fp64."""
    out: dict[str, tuple[float, float]] = {}
    with torch.no_grad():
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            x = tensor.detach().double()
            out[name] = (x.sum().item(), (x * x).sum().item())
    return out


def check_unchanged(module: nn.Module, before: dict[str, tuple[float, float]],
                    what: str = "teacher") -> None:
    """Raise ``RuntimeError`` naming the tensors whose fingerprint differs from ``before``."""
    after = fingerprint(module)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if changed:
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        raise RuntimeError(
            f"the {what}'s parameters or buffers changed during distillation: {shown} "
            "(a shared parameter with the student, or a teacher in train mode updating "
            "batch-norm statistics?)"
        )


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def teacher_logits(teacher: nn.Module, x: Tensor, *, batch_size: int = 1024,
                   device: str | torch.device | None = None,
                   dtype: torch.dtype = torch.float32) -> Tensor:
    """The teacher's logits on every example of ``x`` (N, ...), for caching.

    Runs in eval mode without gradients (the previous mode is restored) and
    returns (N, ..., C) on the CPU in ``dtype`` (fp16 halves the memory; the
    soft targets barely change).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device) if device is not None else _device_of(teacher)
    was_training = teacher.training
    teacher.eval()
    try:
        parts = [_logits(teacher(x[i : i + batch_size].to(device))).to("cpu", dtype)
                 for i in range(0, x.size(0), batch_size)]
    finally:
        teacher.train(was_training)
    return torch.cat(parts)


# ------------------------------------------------------------------------------ loop

def _check(student: nn.Module, teacher: nn.Module, steps: int, batch_size: int, lr: float,
           warmup: int, grad_clip: float | None, eval_every: int | None) -> None:
    for name, m in (("student", student), ("teacher", teacher)):
        if not isinstance(m, nn.Module):
            raise TypeError(f"{name} must be an nn.Module, got {type(m).__name__}")
    if student is teacher:
        raise ValueError("student and teacher must be different modules")
    shared = {id(p) for p in student.parameters()} & {id(p) for p in teacher.parameters()}
    if shared:
        raise ValueError(f"student and teacher share {len(shared)} parameter tensor(s); "
                         "the teacher would be trained too")
    check_loop_arguments(steps, batch_size, lr, warmup, grad_clip, eval_every)


def _distill(
    student: nn.Module,
    teacher: nn.Module,
    *,
    next_batch: Callable[[torch.Generator], tuple[Tensor, Tensor, Tensor | None]],
    loss: DistillationLoss,
    device: torch.device,
    **loop: Any,
) -> TrainHistory:
    """The shared training loop (``blocklab.train.loop._run``) with the teacher's
    logits as part of the target: ``next_batch`` gives (x, y, cached teacher logits or
    None), the teacher runs under no_grad where none are cached, and
    ``history.losses`` records the distillation loss. The teacher is checked unchanged
    afterwards."""
    teacher_mode = teacher.training
    teacher.to(device)
    teacher.eval()
    before = fingerprint(teacher)

    def batch(generator: torch.Generator) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        x, y, cached = next_batch(generator)
        x = x.to(device, non_blocking=True)
        if cached is None:
            with torch.no_grad():
                target_logits = _logits(teacher(x))
        else:
            target_logits = cached.to(device, non_blocking=True)
        return x, (y, target_logits)

    try:
        history = _run(student, next_batch=batch,
                       loss_of=lambda logits, yt: loss(logits, yt[1], yt[0]),
                       device=device, callback=None, regularizer=None,
                       loss_name="distillation loss", **loop)
    finally:
        teacher.train(teacher_mode)
    check_unchanged(teacher, before)
    return history


# ------------------------------------------------------------------------ classifiers

def distill_classifier(
    student: nn.Module,
    teacher: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    steps: int,
    batch_size: int,
    lr: float = 1e-3,
    alpha: float = 0.5,
    temperature: float = 2.0,
    cached_logits: Tensor | None = None,
    direction: Direction = "forward",
    weight_decay: float = 0.0,
    warmup: int = 0,
    grad_clip: float | None = 1.0,
    seed: int = 0,
    device: str | torch.device = "cpu",
    eval_x: Tensor | None = None,
    eval_y: Tensor | None = None,
    eval_every: int | None = None,
    progress: Progress | None = None,
) -> TrainHistory:
    """Train ``student`` on ``x`` (N, ...), labels ``y`` (N,) and ``teacher``'s soft targets.

    Args:
        student, teacher: map (B, ...) inputs to (B, C) logits; the teacher is frozen.
        alpha, temperature, direction: of :class:`blocklab.losses.DistillationLoss`.
        cached_logits: the teacher's (N, C) logits on ``x`` (see :func:`teacher_logits`);
            when given the teacher is not run during training.
        eval_x, eval_y: when given, the student's cross entropy and accuracy on them
            are recorded every ``eval_every`` steps and at the end.
        The other arguments are those of :func:`blocklab.train.train_classifier`,
        whose epoch order (a fresh permutation per epoch, last partial batch
        skipped) this follows.

    Returns:
        The :class:`TrainHistory`; ``losses`` holds the distillation loss.
    """
    _check(student, teacher, steps, batch_size, lr, warmup, grad_clip, eval_every)
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
    if x.dim() < 1 or y.dim() != 1 or x.size(0) != y.size(0) or x.size(0) == 0:
        raise ValueError(f"x {tuple(x.shape)} and y {tuple(y.shape)} must hold the same number "
                         "N >= 1 of examples, y being (N,)")
    if cached_logits is not None and (cached_logits.dim() != 2
                                      or cached_logits.size(0) != x.size(0)):
        raise ValueError(f"cached_logits must be (N, C) = ({x.size(0)}, C), got "
                         f"{tuple(cached_logits.shape)}")
    if (eval_x is None) != (eval_y is None):
        raise ValueError("eval_x and eval_y must be given together")
    device = torch.device(device)
    loss = DistillationLoss(alpha, temperature, direction=direction)
    n = x.size(0)
    batch_size = min(batch_size, n)
    order = torch.empty(0, dtype=torch.long)
    position = n

    def next_batch(generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor | None]:
        nonlocal order, position
        if position + batch_size > n:
            order, position = torch.randperm(n, generator=generator), 0
        index = order[position : position + batch_size]
        position += batch_size
        cached = None if cached_logits is None else cached_logits[index].float()
        return x[index.to(x.device)], y[index.to(y.device)], cached

    evaluate = None
    if eval_x is not None:
        def evaluate() -> tuple[float, float | None]:
            was = student.training
            student.eval()
            with torch.no_grad():
                logits = torch.cat([_logits(student(eval_x[i : i + 1024].to(device))).float()
                                    for i in range(0, eval_x.size(0), 1024)])
            student.train(was)
            ce = F.cross_entropy(logits, eval_y.to(device).long()).item()  # type: ignore[union-attr]
            return ce, evaluate_classifier(student, eval_x, eval_y, device=device)  # type: ignore[arg-type]

    return _distill(student, teacher, next_batch=next_batch, loss=loss, evaluate=evaluate,
                    steps=steps, items_per_step=batch_size, lr=lr, weight_decay=weight_decay,
                    betas=(0.9, 0.999), warmup=warmup, grad_clip=grad_clip, seed=seed,
                    device=device, eval_every=eval_every, progress=progress,
                    desc="distill classifier")


# ---------------------------------------------------------------------- language models

def distill_lm(
    student: nn.Module,
    teacher: nn.Module,
    train_tokens: Tensor,
    *,
    steps: int,
    batch_size: int,
    seq_len: int,
    lr: float = 3e-3,
    alpha: float = 0.5,
    temperature: float = 2.0,
    direction: Direction = "forward",
    weight_decay: float = 0.1,
    warmup: int | None = None,
    grad_clip: float | None = 1.0,
    seed: int = 0,
    device: str | torch.device = "cpu",
    eval_tokens: Tensor | None = None,
    eval_every: int | None = None,
    eval_batches: int | None = 16,
    progress: Progress | None = None,
) -> TrainHistory:
    """Train a language model ``student`` on the next-token soft targets of ``teacher``.

    Args:
        student, teacher: map (B, T) token ids to (B, T, V) logits with the same V
            (e.g. two :class:`blocklab.models.TransformerLM`); the teacher is frozen
            and run on every batch.
        train_tokens: 1-D tokens; windows drawn as in :func:`blocklab.train.train_lm`
            (same seed, same windows).
        alpha, temperature, direction: of :class:`blocklab.losses.DistillationLoss`;
            the KL is averaged over all B * T positions.
        eval_tokens: when given, the student's next-token cross entropy on them
            (nats per token) is recorded every ``eval_every`` steps and at the end.
        The other arguments are those of :func:`blocklab.train.train_lm`.

    Returns:
        The :class:`TrainHistory`; ``losses`` holds the distillation loss,
        ``eval_losses`` the student's cross entropy.
    """
    warmup = min(100, steps // 10) if warmup is None else warmup
    _check(student, teacher, steps, batch_size, lr, warmup, grad_clip, eval_every)
    if not isinstance(train_tokens, Tensor) or train_tokens.dim() != 1:
        got = getattr(train_tokens, "shape", type(train_tokens).__name__)
        raise ValueError(f"train_tokens must be a 1-D tensor, got {got}")
    if seq_len < 1 or train_tokens.numel() < seq_len + 1:
        raise ValueError(f"train_tokens ({train_tokens.numel()}) must hold at least seq_len + 1 "
                         f"({seq_len + 1}) tokens, seq_len >= 1")
    for name, m in (("student", student), ("teacher", teacher)):
        v = getattr(getattr(m, "config", None), "vocab_size", None)
        if v is not None and int(train_tokens.max()) >= v:
            raise ValueError(f"train_tokens hold id {int(train_tokens.max())} but the {name}'s "
                             f"vocab_size is {v}")
    v_s = getattr(getattr(student, "config", None), "vocab_size", None)
    v_t = getattr(getattr(teacher, "config", None), "vocab_size", None)
    if v_s is not None and v_t is not None and v_s != v_t:
        raise ValueError(f"student vocab_size ({v_s}) must equal teacher vocab_size ({v_t})")
    device = torch.device(device)
    loss = DistillationLoss(alpha, temperature, direction=direction)

    def next_batch(generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor | None]:
        x, y = random_batches(train_tokens, batch_size, seq_len, generator)
        return x, y, None

    evaluate = None
    if eval_tokens is not None:
        def evaluate() -> tuple[float, float | None]:
            return evaluate_lm(student, eval_tokens, batch_size=batch_size, seq_len=seq_len,
                               max_batches=eval_batches, device=device), None

    return _distill(student, teacher, next_batch=next_batch, loss=loss, evaluate=evaluate,
                    steps=steps, items_per_step=batch_size * seq_len, lr=lr,
                    weight_decay=weight_decay, betas=(0.9, 0.95), warmup=warmup,
                    grad_clip=grad_clip, seed=seed, device=device, eval_every=eval_every,
                    progress=progress, desc="distill lm")
