"""The full trainer behind ``blocklab train``: resumable, distributed, loses nothing.

Determinism is by construction: the batch of step s is drawn from a generator
seeded by (seed, s), and the learning rate is a function of s, so the state to
restore after a crash is just the weights, the optimiser state and the step. A run
killed at any moment and resumed from its newest checkpoint ends with the same
loss as an uninterrupted one -- bit for bit on CPU. Under ``torchrun`` each of W
processes takes rows [r*B/W, (r+1)*B/W) of the same global batch, so the loss curve
does not depend on W (up to the order of the gradient reduction).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from blocklab.data.text import corpus_tokens, random_batches
from blocklab.models.transformer import TransformerLM
from blocklab.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from blocklab.train.config import TrainConfig
from blocklab.train.distributed import (
    World,
    all_reduce_mean,
    full_state_dicts,
    init_world,
    load_full_state_dicts,
    shutdown,
    wrap_model,
)
from blocklab.train.loop import adamw, cosine_lr, evaluate_lm

__all__ = ["train", "TrainResult", "batch_for_step"]


@dataclass
class TrainResult:
    steps: int
    final_loss: float | None
    final_val_loss: float | None
    out_dir: Path
    resumed_from: int | None


def batch_for_step(
    tokens: torch.Tensor, config: TrainConfig, step: int, world: World
) -> tuple[torch.Tensor, torch.Tensor]:
    """This process's rows of the global batch of ``step``: (B / W, T) each."""
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
    x, y = random_batches(tokens, config.batch_size, config.seq_len, generator)  # (B, T)
    per_rank = config.batch_size // world.size
    rows = slice(world.rank * per_rank, (world.rank + 1) * per_rank)
    return x[rows], y[rows]


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class _Metrics:
    """metrics.jsonl, one line per logged step; truncated to the resumed step."""

    def __init__(self, path: Path, enabled: bool, start_step: int) -> None:
        self.path = path
        self.enabled = enabled
        if enabled and start_step > 0 and path.exists():
            kept = [
                line for line in path.read_text().splitlines()
                if line.strip() and _complete_record(line, start_step)
            ]
            _write_atomic(path, "".join(line + "\n" for line in kept))
        elif enabled:
            _write_atomic(path, "")
        self.tb = None
        if enabled:
            with contextlib.suppress(Exception):  # TensorBoard is optional
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(path.parent / "tensorboard"))

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
        if self.tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _complete_record(line: str, max_step: int) -> bool:
    try:
        return json.loads(line)["step"] <= max_step
    except (ValueError, KeyError, TypeError):
        return False  # a line cut short by a kill


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def train(
    config: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool | None = None,
) -> TrainResult:
    """Train ``config.model`` on ``config.data``; write metrics and checkpoints to out_dir.

    Args:
        config: a validated TrainConfig.
        out_dir: run directory (config.yaml, metrics.jsonl, ckpt-*/).
        resume: continue from the newest complete checkpoint in out_dir, if any.
        progress: a progress bar (default: when stderr is a terminal).
    """
    world = init_world(config.device)
    try:
        return _train(config, Path(out_dir), world, resume=resume, progress=progress)
    finally:
        shutdown(world)


def _train(
    config: TrainConfig, out_dir: Path, world: World, *, resume: bool, progress: bool | None
) -> TrainResult:
    config.check_world(world.size)
    config.check_data()
    train_tokens, val_tokens = corpus_tokens(config.data, config.val_fraction)
    if train_tokens.numel() <= config.seq_len or val_tokens.numel() <= config.seq_len:
        raise ValueError(
            f"data {config.data!r} is too short for seq_len {config.seq_len}: "
            f"{train_tokens.numel()} train / {val_tokens.numel()} val tokens"
        )
    if world.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_atomic(out_dir / "config.yaml", config.to_yaml_text())

    torch.manual_seed(config.seed)
    model = TransformerLM(config.model).to(world.device)
    wrapped = wrap_model(model, world, fsdp=config.fsdp)
    optimizer = adamw(wrapped, config.lr, config.weight_decay, (config.beta1, config.beta2))

    start_step, resumed_from = 0, None
    ckpt = latest_checkpoint(out_dir) if resume else None
    if ckpt is not None:
        model_state, optim_state, state = load_checkpoint(ckpt)
        load_full_state_dicts(wrapped, optimizer, model_state, optim_state)
        _set_rng_state(state["rng"])
        start_step = resumed_from = int(state["step"])
    forward = torch.compile(wrapped) if config.compile else wrapped

    metrics = _Metrics(out_dir / "metrics.jsonl", world.is_main, start_step)
    show_bar = world.is_main and (sys.stderr.isatty() if progress is None else progress)
    bar = None
    if show_bar:
        from tqdm import tqdm

        bar = tqdm(total=config.max_steps, initial=start_step, desc="train", file=sys.stderr)
    micro = config.batch_size // world.size // config.grad_accum
    autocast = (
        torch.autocast(world.device.type, dtype=torch.bfloat16)
        if config.precision == "bf16" else contextlib.nullcontext()
    )
    last_loss = last_val = None
    tick, tick_step = time.perf_counter(), start_step
    wrapped.train()
    for step in range(start_step, config.max_steps):
        lr = cosine_lr(step, steps=config.max_steps, lr=config.lr, warmup=config.warmup_steps,
                       min_lr_ratio=config.min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = batch_for_step(train_tokens, config, step, world)
        loss_sum = torch.zeros((), device=world.device)
        for i in range(config.grad_accum):
            xs = x[i * micro : (i + 1) * micro].to(world.device)
            ys = y[i * micro : (i + 1) * micro].to(world.device)
            sync = i == config.grad_accum - 1 or not hasattr(wrapped, "no_sync")
            with autocast, (contextlib.nullcontext() if sync else wrapped.no_sync()):
                loss = forward(xs, targets=ys)  # fused LM head + cross entropy
                (loss / config.grad_accum).backward()
            loss_sum += loss.detach() / config.grad_accum
        torch.nn.utils.clip_grad_norm_(wrapped.parameters(), config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        last_loss = float(all_reduce_mean(loss_sum, world))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{last_loss:.4f}")

        record: dict[str, Any] | None = None
        if done % config.log_every == 0 or done == config.max_steps:
            now = time.perf_counter()
            tokens = (done - tick_step) * config.batch_size * config.seq_len
            record = {"step": done, "loss": last_loss, "lr": lr,
                      "tokens_per_s": tokens / max(now - tick, 1e-9)}
            tick, tick_step = now, done
        if done % config.eval_every == 0 or done == config.max_steps:
            last_val = evaluate_lm(wrapped, val_tokens, batch_size=micro, seq_len=config.seq_len,
                                   max_batches=config.eval_batches, device=world.device)
            record = record or {"step": done, "loss": last_loss, "lr": lr}
            record["val_loss"] = last_val
        if record is not None:
            metrics.log(record)
            if bar is None and world.is_main:
                print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in record.items()), file=sys.stderr)
        if done % config.save_every == 0 or done == config.max_steps:
            model_state, optim_state = full_state_dicts(wrapped, optimizer)
            if world.is_main:
                save_checkpoint(out_dir, done, model_state=model_state,
                                optimizer_state=optim_state, keep_last=config.keep_last,
                                extra={"rng": _rng_state(), "data_position": done,
                                       "config": config.to_dict()})
            if world.distributed:
                torch.distributed.barrier()
    if bar is not None:
        bar.close()
    metrics.close()
    return TrainResult(steps=config.max_steps, final_loss=last_loss, final_val_loss=last_val,
                       out_dir=out_dir, resumed_from=resumed_from)
