"""A minimal training loop for lab experiments: language models and classifiers.

The recipe is nanoGPT's: AdamW (weight decay on matrices only, betas (0.9, 0.95)
for language models), a learning rate that rises linearly over ``warmup`` steps
and then follows a cosine down to a tenth of its peak,

    lr(s) = lr * (s + 1) / warmup                                   s < warmup
    lr(s) = lr_min + (lr - lr_min) * (1 + cos(pi * p)) / 2,  p = (s - warmup) / (steps - warmup)

and gradient clipping by global norm. A language model is any ``nn.Module``
mapping token ids (B, T) to logits (B, T, V), trained by cross entropy on the
next token; a classifier maps inputs (B, ...) to logits (B, C) (or (B,) for one
binary logit). Batches come from a generator seeded by ``seed`` and dropout
draws from the global RNG reseeded with ``seed`` inside a forked RNG state, so
on CPU two runs from the same initial model and seed give identical losses and
the caller's RNG state is left untouched.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blocklab.data.text import iterate_eval_batches, random_batches

Progress = Callable[..., Iterable[Any]]
# callback(step, loss, model) runs after each optimiser step; returning True stops training.
Callback = Callable[[int, float, nn.Module], "bool | None"]
Regularizer = Callable[[nn.Module], torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

MIN_LR_RATIO = 0.1


@dataclass
class TrainHistory:
    """What a training run measured.

    Attributes:
        steps: optimiser steps completed at each record (1, 2, ...).
        losses: training loss of the batch at each step (without any regularizer).
        lrs: learning rate used at each step.
        eval_steps: steps at which the evaluation set was scored.
        eval_losses: mean evaluation loss at those steps.
        eval_accuracies: evaluation accuracy at those steps (classifiers only).
        seconds: wall time of the whole run, evaluations included.
        tokens_per_second: training throughput, evaluations excluded; tokens for a
            language model, examples for a classifier.
    """

    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    tokens_per_second: float = 0.0
    lrs: list[float] = field(default_factory=list)
    eval_accuracies: list[float] = field(default_factory=list)

    def record_eval(self, step: int, loss: float, accuracy: float | None = None) -> None:
        self.eval_steps.append(step)
        self.eval_losses.append(loss)
        if accuracy is not None:
            self.eval_accuracies.append(accuracy)

    @property
    def final_eval(self) -> float | None:
        """The last evaluation loss, or None when the run did no evaluation."""
        return self.eval_losses[-1] if self.eval_losses else None

    @property
    def final_loss(self) -> float | None:
        """The last training loss, or None when no step ran."""
        return self.losses[-1] if self.losses else None


def cuda_devices(device: torch.device) -> list[int]:
    """The CUDA device indices whose RNG ``torch.random.fork_rng`` must save for ``device``."""
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def cosine_lr(step: int, *, steps: int, lr: float, warmup: int,
              min_lr_ratio: float = MIN_LR_RATIO) -> float:
    """Learning rate at 0-based ``step``: linear warm-up, then cosine to ``lr * min_lr_ratio``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    min_lr = lr * min_lr_ratio
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def adamw(model: nn.Module, lr: float, weight_decay: float,
          betas: tuple[float, float]) -> torch.optim.AdamW:
    # Decay matrices (linear and embedding weights) only; biases and norm gains are
    # offsets and scales, and shrinking them towards 0 only hurts (nanoGPT, GPT-2).
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=betas)


def _logits(out: Any) -> torch.Tensor:
    """Logits from a model output: a tensor, an object with ``.logits``, or a tuple."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"model output must be logits, got {type(out).__name__}")


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def check_loop_arguments(steps: int, batch_size: int, lr: float, warmup: int,
                  grad_clip: float | None, eval_every: int | None) -> None:
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if grad_clip is not None and not grad_clip > 0:
        raise ValueError(f"grad_clip must be > 0 or None, got {grad_clip}")
    if eval_every is not None and eval_every < 1:
        raise ValueError(f"eval_every must be >= 1 or None, got {eval_every}")



def _to(y: torch.Tensor | tuple[torch.Tensor, ...], device: torch.device):
    """A target tensor, or a tuple of them, on ``device``."""
    if isinstance(y, torch.Tensor):
        return y.to(device, non_blocking=True)
    return tuple(t.to(device, non_blocking=True) for t in y)


def _run(
    model: nn.Module,
    *,
    next_batch: Callable[[torch.Generator], tuple[torch.Tensor, Any]],
    loss_of: Callable[[torch.Tensor, Any], torch.Tensor],
    evaluate: Callable[[], tuple[float, float | None]] | None,
    steps: int,
    items_per_step: int,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    warmup: int,
    grad_clip: float | None,
    seed: int,
    device: torch.device,
    eval_every: int | None,
    progress: Progress | None,
    callback: Callback | None,
    regularizer: Regularizer | None,
    desc: str,
    loss_name: str = "training loss",
) -> TrainHistory:
    """The loop every trainer shares (plain, classifier, distillation): schedule,
    step, clip, record, evaluate. ``next_batch`` gives (x, y) with y a tensor or a
    tuple of them (moved to ``device`` here); ``loss_of(logits, y)``."""
    was_training = model.training
    model.to(device)
    optimizer = adamw(model, lr, weight_decay, betas)
    generator = torch.Generator().manual_seed(seed)
    history = TrainHistory()

    def record_eval(step: int) -> None:
        history.record_eval(step, *evaluate())  # type: ignore[misc]

    cuda = cuda_devices(device)
    start = time.perf_counter()
    train_seconds = 0.0
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        iterator: Iterable[int] = range(steps)
        if progress is not None:
            iterator = progress(iterator, desc, total=steps)
        postfix_every = max(1, steps // 100)
        step = 0
        for i in iterator:
            step = i + 1
            t0 = time.perf_counter()
            model.train()
            lr_now = cosine_lr(i, steps=steps, lr=lr, warmup=warmup)
            for group in optimizer.param_groups:
                group["lr"] = lr_now
            x, y = next_batch(generator)
            x, y = x.to(device, non_blocking=True), _to(y, device)
            loss = loss_of(_logits(model(x)), y)
            total = loss + regularizer(model) if regularizer is not None else loss
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            loss_value = loss.item()
            train_seconds += time.perf_counter() - t0
            if not math.isfinite(loss_value):
                raise FloatingPointError(
                    f"{loss_name} is {loss_value} at step {step} (lr {lr_now:.3g}); "
                    "lower lr or check the inputs"
                )
            history.steps.append(step)
            history.losses.append(loss_value)
            history.lrs.append(lr_now)
            if hasattr(iterator, "set_postfix") and step % postfix_every == 0:
                iterator.set_postfix(loss=f"{loss_value:.4f}", refresh=False)
            if evaluate is not None and eval_every is not None and step % eval_every == 0:
                record_eval(step)
            if callback is not None and callback(step, loss_value, model):
                break
        if evaluate is not None and (not history.eval_steps or history.eval_steps[-1] != step):
            record_eval(step)
    model.train(was_training)
    history.seconds = time.perf_counter() - start
    history.tokens_per_second = len(history.steps) * items_per_step / max(train_seconds, 1e-9)
    return history


def evaluate_lm(
    model: nn.Module,
    tokens: torch.Tensor,
    *,
    batch_size: int,
    seq_len: int,
    max_batches: int | None = None,
    device: str | torch.device | None = None,
) -> float:
    """Mean next-token cross entropy (nats per token) over non-overlapping windows.

    Args:
        model: maps (B, T) token ids to (B, T, V) logits.
        tokens: 1-D tokens, walked as in :func:`blocklab.data.iterate_eval_batches`.
        max_batches: score only the first this many batches (always the same ones).
        device: where to run (default: where the model's parameters are).

    The model runs in eval mode without gradients; its previous mode is restored.
    """
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches must be >= 1 or None, got {max_batches}")
    device = torch.device(device) if device is not None else _model_device(model)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for b, (x, y) in enumerate(iterate_eval_batches(tokens, batch_size, seq_len)):
                if max_batches is not None and b >= max_batches:
                    break
                x, y = x.to(device), y.to(device)
                logits = _logits(model(x))  # (b, T, V)
                total += F.cross_entropy(
                    logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1), reduction="sum"
                ).item()
                count += y.numel()
    finally:
        model.train(was_training)
    return total / count


def train_lm(
    model: nn.Module,
    train_tokens: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    seq_len: int,
    lr: float = 3e-3,
    weight_decay: float = 0.1,
    warmup: int | None = None,
    grad_clip: float | None = 1.0,
    seed: int = 0,
    device: str | torch.device = "cpu",
    eval_tokens: torch.Tensor | None = None,
    eval_every: int | None = None,
    eval_batches: int | None = 16,
    progress: Progress | None = None,
    callback: Callback | None = None,
    regularizer: Regularizer | None = None,
) -> TrainHistory:
    """Train a language model on random windows of ``train_tokens``.

    Args:
        model: maps (B, T) ``torch.long`` token ids to (B, T, V) logits (a tensor,
            an output with ``.logits``, or a tuple whose first item is the logits);
            moved to ``device`` in place.
        train_tokens: 1-D token tensor, N >= seq_len + 1, ids < V.
        steps: optimiser steps; each sees ``batch_size * seq_len`` tokens.
        warmup: linear warm-up steps (default ``min(100, steps // 10)``).
        grad_clip: maximum global gradient norm, None for no clipping.
        seed: seeds batch sampling and dropout.
        eval_tokens: when given, the mean loss over its first ``eval_batches``
            batches (None: all) is recorded every ``eval_every`` steps and at the end.
        progress: wraps the step range, called as ``progress(range(steps), "desc", total=steps)``.
        callback: ``callback(step, loss, model)`` after each step; True stops training.
        regularizer: ``regularizer(model)`` -> scalar added to the loss being
            minimised (an L1 penalty, say); the recorded losses leave it out.

    Returns:
        The run's :class:`TrainHistory`.
    """
    if not isinstance(train_tokens, torch.Tensor) or train_tokens.dim() != 1:
        got = getattr(train_tokens, "shape", type(train_tokens).__name__)
        raise ValueError(f"train_tokens must be a 1-D tensor, got {got}")
    warmup = min(100, steps // 10) if warmup is None else warmup
    check_loop_arguments(steps, batch_size, lr, warmup, grad_clip, eval_every)
    if seq_len < 1 or train_tokens.numel() < seq_len + 1:
        raise ValueError(
            f"train_tokens ({train_tokens.numel()}) must hold at least seq_len + 1 "
            f"({seq_len + 1}) tokens, seq_len >= 1"
        )
    device = torch.device(device)
    max_token = int(train_tokens.max())
    checked = False

    def loss_of(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        nonlocal checked
        if not checked:
            if logits.dim() != 3 or logits.shape[:2] != y.shape:
                raise ValueError(
                    f"model must map (B, T) = {tuple(y.shape)} tokens to (B, T, V) logits, "
                    f"got {tuple(logits.shape)}"
                )
            if max_token >= logits.size(-1):
                raise ValueError(
                    f"train_tokens hold id {max_token} but the model's logits cover "
                    f"only V = {logits.size(-1)} ids"
                )
            checked = True
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1))

    evaluate = None
    if eval_tokens is not None:
        def evaluate() -> tuple[float, float | None]:
            return evaluate_lm(model, eval_tokens, batch_size=batch_size, seq_len=seq_len,
                               max_batches=eval_batches, device=device), None

    return _run(
        model,
        next_batch=lambda g: random_batches(train_tokens, batch_size, seq_len, g),
        loss_of=loss_of,
        evaluate=evaluate,
        steps=steps,
        items_per_step=batch_size * seq_len,
        lr=lr,
        weight_decay=weight_decay,
        betas=(0.9, 0.95),
        warmup=warmup,
        grad_clip=grad_clip,
        seed=seed,
        device=device,
        eval_every=eval_every,
        progress=progress,
        callback=callback,
        regularizer=regularizer,
        desc="train lm",
    )


def _predictions(logits: torch.Tensor) -> torch.Tensor:
    # One logit per example is binary classification: positive when the logit is > 0.
    if logits.dim() == 1 or (logits.dim() == 2 and logits.size(-1) == 1):
        return (logits.reshape(-1) > 0).long()
    return logits.argmax(dim=-1)


def _check_xy(x: torch.Tensor, y: torch.Tensor, x_name: str, y_name: str) -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"{x_name} and {y_name} must be tensors, got "
                        f"{type(x).__name__} and {type(y).__name__}")
    if x.dim() < 1 or y.dim() < 1 or x.size(0) != y.size(0) or x.size(0) == 0:
        raise ValueError(
            f"{x_name} {tuple(x.shape)} and {y_name} {tuple(y.shape)} must hold the same "
            "number N >= 1 of examples along dim 0"
        )


def _score_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int,
                      device: torch.device, loss_fn: LossFn | None) -> tuple[float, float]:
    """(mean loss, accuracy) in eval mode without gradients; restores the model's mode."""
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    try:
        with torch.no_grad():
            for start in range(0, x.size(0), batch_size):
                xb = x[start : start + batch_size].to(device)
                yb = y[start : start + batch_size].to(device)
                logits = _logits(model(xb))
                if loss_fn is not None:
                    loss_sum += loss_fn(logits, yb).item() * yb.size(0)
                correct += (_predictions(logits) == yb.reshape(-1).long()).sum().item()
    finally:
        model.train(was_training)
    n = x.size(0)
    return (loss_sum / n if loss_fn is not None else math.nan), correct / n


def evaluate_classifier(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int = 1024,
    device: str | torch.device | None = None,
) -> float:
    """Accuracy of ``model`` on inputs ``x`` (N, ...) with integer labels ``y`` (N,).

    Logits (N, C) predict their argmax; a single logit per example, (N,) or (N, 1),
    predicts class 1 when positive. Runs in eval mode without gradients and
    restores the model's previous mode.
    """
    _check_xy(x, y, "x", "y")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device) if device is not None else _model_device(model)
    return _score_classifier(model, x, y, batch_size=batch_size, device=device, loss_fn=None)[1]


def _default_classifier_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if logits.dim() == 1 or (logits.dim() == 2 and logits.size(-1) == 1):
        return F.binary_cross_entropy_with_logits(logits.reshape(-1).float(), y.float())
    return F.cross_entropy(logits.float(), y.long())


def train_classifier(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    warmup: int = 0,
    grad_clip: float | None = 1.0,
    seed: int = 0,
    device: str | torch.device = "cpu",
    eval_x: torch.Tensor | None = None,
    eval_y: torch.Tensor | None = None,
    eval_every: int | None = None,
    loss_fn: LossFn | None = None,
    progress: Progress | None = None,
    callback: Callback | None = None,
    regularizer: Regularizer | None = None,
) -> TrainHistory:
    """Train a classifier on ``x`` (N, ...) with integer labels ``y`` (N,).

    Each epoch visits the examples in a fresh random order in batches of
    ``batch_size`` (the incomplete last batch of an epoch is skipped; a batch
    larger than N is the whole set).

    Args:
        model: maps (B, ...) inputs to (B, C) logits, or (B,)/(B, 1) for binary.
        loss_fn: ``loss_fn(logits, y)`` -> scalar (default cross entropy; binary
            cross entropy for one logit), e.g. a focal or class-weighted loss.
        eval_x, eval_y: when given, loss and accuracy on them are recorded every
            ``eval_every`` steps and at the end.
        The other arguments are as in :func:`train_lm`.

    Returns:
        The run's :class:`TrainHistory`; ``eval_accuracies`` holds the accuracies.
    """
    _check_xy(x, y, "x", "y")
    if (eval_x is None) != (eval_y is None):
        raise ValueError("eval_x and eval_y must be given together")
    if eval_x is not None:
        _check_xy(eval_x, eval_y, "eval_x", "eval_y")  # type: ignore[arg-type]
    check_loop_arguments(steps, batch_size, lr, warmup, grad_clip, eval_every)
    device = torch.device(device)
    loss_fn = loss_fn or _default_classifier_loss
    n = x.size(0)
    batch_size = min(batch_size, n)
    order = torch.empty(0, dtype=torch.long)
    position = n  # start with a fresh permutation

    def next_batch(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal order, position
        if position + batch_size > n:
            order, position = torch.randperm(n, generator=generator), 0
        index = order[position : position + batch_size].to(x.device)
        position += batch_size
        return x[index], y[index]

    evaluate = None
    if eval_x is not None:
        def evaluate() -> tuple[float, float | None]:
            return _score_classifier(model, eval_x, eval_y, batch_size=max(batch_size, 1024),
                                     device=device, loss_fn=loss_fn)

    return _run(
        model,
        next_batch=next_batch,
        loss_of=loss_fn,
        evaluate=evaluate,
        steps=steps,
        items_per_step=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        betas=(0.9, 0.999),
        warmup=warmup,
        grad_clip=grad_clip,
        seed=seed,
        device=device,
        eval_every=eval_every,
        progress=progress,
        callback=callback,
        regularizer=regularizer,
        desc="train classifier",
    )
