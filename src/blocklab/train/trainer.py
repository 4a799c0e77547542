"""The full trainer behind ``blocklab train``: resumable, distributed, loses nothing.

Determinism is by construction: the batch of step s is drawn from a generator
seeded by (seed, s), and the learning rate is a function of s, so the state to
restore after a crash is just the weights, the optimiser state and the step. A run
killed at any moment and resumed from its newest intact checkpoint ends with the
same loss as an uninterrupted one -- bit for bit on CPU. Under ``torchrun`` each of
W processes takes rows [r*B/W, (r+1)*B/W) of the same global batch, and validation
scores the same windows split over the processes and summed across them, so both
curves do not depend on W (up to the order of the reductions).

Data is text encoded by the run's tokenizer or a flat token file read in place
(:mod:`blocklab.data.tokens`); a tokenizer with more ids than ``model.vocab_size`` is
refused up front, and a token file's windows are checked against it as they are read.
With ``init_from`` a new run starts from that model's weights (step 0, a fresh
optimiser); the tokenizer (when not the byte one) is copied into ``DIR/tokenizer/``
and the source is recorded in ``DIR/init_from.json``, so that ``generate`` and
``export`` find both later, wherever the source has gone.

What it refuses rather than lose or mix a run: a run directory that is in use or
holds another run (see :mod:`blocklab.train.rundir`); a ``resume`` whose config
differs from the run's -- a different model shape always, any other change unless
``allow_config_change`` (then recorded in the metrics); checkpoints that fail
verification (skipped, each named with its reason, for the newest intact one); and
a non-finite loss or gradient norm, which stops the run before the weights are
updated, naming the step.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from blocklab.data.tokenizer import ByteTokenizer, Tokenizer, find_tokenizer, load_tokenizer
from blocklab.data.tokens import TokenFile, Tokens, load_token_data, sample_batch, take_windows
from blocklab.models.config import TransformerConfig
from blocklab.models.transformer import TransformerLM
from blocklab.train.checkpoint import (
    CheckpointError,
    list_checkpoints,
    load_checkpoint,
    load_latest,
    save_checkpoint,
)
from blocklab.train.config import ConfigError, TrainConfig
from blocklab.train.distributed import (
    World,
    all_reduce_mean,
    full_state_dicts,
    init_world,
    load_full_state_dicts,
    shutdown,
    wrap_model,
)
from blocklab.train.loop import adamw, cosine_lr
from blocklab.train.rundir import INIT_FILE, TOKENIZER_DIR, RunDirError, open_run_dir

__all__ = ["train", "TrainResult", "batch_for_step", "validation_loss", "load_trained_model",
           "FREE_KEYS"]

# Keys a resumed run may change without --allow-config-change: they decide how often
# the run logs, scores and saves, or where and how it computes, not what it computes.
# init_from only decides a new run's first weights; a resumed run reads its checkpoint.
FREE_KEYS = frozenset({"log_every", "eval_every", "eval_batches", "save_every", "keep_last",
                       "device", "compile", "fsdp", "init_from"})


@dataclass
class TrainResult:
    steps: int
    final_loss: float | None
    final_val_loss: float | None
    out_dir: Path
    resumed_from: int | None


def batch_for_step(
    tokens: Tokens, config: TrainConfig, step: int, world: World
) -> tuple[torch.Tensor, torch.Tensor]:
    """This process's rows of the global batch of ``step``: (B / W, T) each."""
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
    x, y = sample_batch(tokens, config.batch_size, config.seq_len, generator)  # (B, T)
    per_rank = config.batch_size // world.size
    rows = slice(world.rank * per_rank, (world.rank + 1) * per_rank)
    return x[rows], y[rows]


def validation_loss(
    model: torch.nn.Module, tokens: Tokens, config: TrainConfig, world: World
) -> float:
    """Mean next-token cross entropy over the first ``eval_batches * batch_size``
    non-overlapping windows of ``tokens``, whatever the number of processes.

    Each of W processes scores a contiguous 1/W of the windows, ``batch_size / W /
    grad_accum`` at a time (the training micro-batch), and the sums of loss and
    tokens are added across processes. Every process runs the same number of
    forward passes (one scoring nothing where its share is shorter), as FSDP's
    collectives need.
    """
    T = config.seq_len
    n = min((tokens.numel() - 1) // T, config.eval_batches * config.batch_size)
    share = -(-n // world.size)
    first, last = min(n, world.rank * share), min(n, (world.rank + 1) * share)
    micro = config.batch_size // world.size // config.grad_accum
    sums = torch.zeros(2, dtype=torch.float64, device=world.device)  # (loss, tokens)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(first, first + share, micro):
                stop = min(start + micro, last)
                rows = range(start, stop) if stop > start else range(0, 1)  # (b,) windows
                starts = torch.tensor(list(rows)) * T
                window = take_windows(tokens, starts, T + 1)  # (b, T + 1)
                _check_token_ids(window, tokens, config.model.vocab_size)
                window = window.to(world.device)
                logits = model(window[:, :-1])  # (b, T, V)
                loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(),
                                       window[:, 1:].reshape(-1), reduction="sum")
                if stop > start:
                    sums += torch.stack([loss.double(), loss.new_tensor(window[:, 1:].numel(),
                                                                         dtype=torch.float64)])
    finally:
        model.train(was_training)
    if world.distributed:
        torch.distributed.all_reduce(sums, op=torch.distributed.ReduceOp.SUM)
    return float(sums[0] / sums[1])


def _check_token_ids(window: torch.Tensor, tokens: Tokens, vocab_size: int) -> None:
    """A token file's ids are seen only as they are read: each window is checked."""
    if isinstance(tokens, TokenFile) and window.numel():
        top = int(window.max())
        if top >= vocab_size:
            raise ValueError(f"{tokens.path}: token id {top} >= model.vocab_size "
                             f"({vocab_size}); the file was written with another tokenizer "
                             f"or dtype (data_dtype={tokens.dtype})")


def _run_tokenizer(config: TrainConfig, out_dir: Path, resume: bool) -> Tokenizer:
    """The run's tokenizer: the copy in a resumed run's directory, else ``tokenizer``,
    else init_from's own, else bytes; checked against ``model.vocab_size``."""
    from blocklab.train.sources import find_model_tokenizer

    spec = config.tokenizer
    try:
        saved = out_dir / TOKENIZER_DIR
        if resume and saved.is_dir() and list_checkpoints(out_dir):
            tokenizer, spec = find_tokenizer(saved) or ByteTokenizer(), str(saved)
        elif spec is not None:
            tokenizer = load_tokenizer(spec)
        elif config.init_from is not None:
            tokenizer = find_model_tokenizer(config.init_from) or ByteTokenizer()
            spec = f"init_from {config.init_from}'s"
        else:
            tokenizer, spec = ByteTokenizer(), "bytes"
    except (ImportError, ValueError) as err:
        raise ConfigError(f"tokenizer: {err}") from None
    vocab = config.model.vocab_size
    if tokenizer.vocab_size > vocab:
        raise ConfigError(
            f"the tokenizer ({spec}) has {tokenizer.vocab_size} token ids but model.vocab_size "
            f"is {vocab}: the model has no embedding for the ids >= {vocab}; use a model "
            "with a larger vocabulary or another tokenizer"
        )
    return tokenizer


def _initial_model(config: TrainConfig) -> TransformerLM:
    """A new run's model: random (seeded), or init_from's weights in fp32."""
    torch.manual_seed(config.seed)
    if config.init_from is None:
        return TransformerLM(config.model)
    from blocklab.models.hf_io import is_hf_dir
    from blocklab.train.sources import load_model

    try:
        source = (TransformerLM.from_pretrained(config.init_from, dtype=torch.float32)
                  if is_hf_dir(config.init_from) else load_model(config.init_from).float())
    except (OSError, TypeError, ValueError) as err:
        raise ConfigError(f"init_from {config.init_from!r}: {err}") from None
    if source.config == config.model:
        return source.train()
    if _shapes(source.config.to_dict()) != _shapes(config.model.to_dict()):
        changed = _diff(source.config.to_dict(), config.model.to_dict())
        raise ConfigError(f"model differs in shape from init_from {config.init_from!r}: "
                          + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items()))
    model = TransformerLM(config.model)
    model.load_state_dict(source.state_dict())
    return model


def _record_sources(config: TrainConfig, tokenizer: Tokenizer, out_dir: Path) -> None:
    """Copy the tokenizer into the run (none for bytes) and say where init_from was."""
    from blocklab.models.hf_io import is_hf_dir
    from blocklab.train.sources import hf_family, save_model_tokenizer

    if not (out_dir / TOKENIZER_DIR).exists():
        save_model_tokenizer(tokenizer, out_dir)
    if config.init_from is not None and not (out_dir / INIT_FILE).exists():
        source = Path(config.init_from).expanduser().resolve()
        record = {"init_from": str(source),
                  "format": "huggingface" if is_hf_dir(source) else "blocklab",
                  "family": hf_family(source), "tokenizer": config.tokenizer}
        _write_atomic(out_dir / INIT_FILE, json.dumps(record, indent=1) + "\n")


def _agree(world: World, error: BaseException | None) -> None:
    """Raise ``error`` where it happened and a RunDirError on every other process, so
    that a failure on one process never leaves the others waiting in a collective."""
    if world.distributed:
        flag = torch.tensor([0.0 if error is None else 1.0], device=world.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item() and error is None:
            error = RunDirError("another process of this run failed (see its message)")
    if error is not None:
        raise error


def _diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> dict[str, list[Any]]:
    """{dotted key: [old, new]} where two configs differ ("model.rope_scaling.factor"),
    the model's display name left out."""
    out: dict[str, list[Any]] = {}
    for key in sorted(old.keys() | new.keys()):
        a, b, name = old.get(key), new.get(key), f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out.update(_diff(a, b, f"{name}."))
        elif a != b and name != "model.name":
            out[name] = [a, b]
    return out


def _shapes(model_config: dict[str, Any]) -> tuple[dict[str, tuple[int, ...]], ...]:
    """The shapes of the state dict and of the distinct parameters (tied weights count
    once) of the model a config describes, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = TransformerLM(TransformerConfig.from_dict(model_config))
    return ({k: tuple(v.shape) for k, v in model.state_dict().items()},
            {k: tuple(v.shape) for k, v in model.named_parameters()})


def _config_changes(saved: dict[str, Any], config: TrainConfig, where: Path, *,
                    allow: bool) -> dict[str, list[Any]]:
    """Keys whose value differs between the checkpoint's config and ``config``, as
    {key: [saved, requested]}; refuse a different model shape, and any other change
    of a key outside FREE_KEYS unless ``allow``."""
    # Keys added to TrainConfig since the run was saved read as their defaults.
    defaults = {k: v for k, v in TrainConfig().to_dict().items() if k != "model"}
    saved = {**defaults, **saved}
    changes = _diff(saved, json.loads(json.dumps(config.to_dict())))  # compared as saved

    def listed(keys: list[str]) -> str:
        return ", ".join(f"{k} {changes[k][0]!r} -> {changes[k][1]!r}" for k in keys)

    model_keys = [k for k in changes if k.startswith("model.")]
    if model_keys:
        try:
            same_shape = _shapes(saved["model"]) == _shapes(config.model.to_dict())
        except (TypeError, ValueError):
            same_shape = False
        if not same_shape:
            raise ConfigError(f"cannot resume {where.name} with another model shape: "
                              f"{listed(model_keys)}; start a new run in another --out")
    needs_flag = [k for k in changes if k not in FREE_KEYS]
    if needs_flag and not allow:
        raise ConfigError(f"the config differs from the run's ({where.name}): "
                          f"{listed(needs_flag)}; pass --allow-config-change to continue with "
                          "it (recorded in metrics.jsonl), or resume with the run's config")
    return changes


def _check_run_state(path: Path, state: dict[str, Any]) -> None:
    """What a ``blocklab train`` checkpoint must hold beyond tensors and step."""
    rng, config = state.get("rng"), state.get("config")
    if not isinstance(rng, dict) or not isinstance(rng.get("torch"), list):
        raise CheckpointError(path, "state.json holds no RNG state (not written by blocklab train)")
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise CheckpointError(path, "state.json holds no config (not written by blocklab train)")


def _resume_point(
    out_dir: Path, world: World
) -> tuple[Path | None, tuple[dict, dict, dict] | None]:
    """The newest intact checkpoint of ``out_dir``, loaded, saying what it skipped;
    (None, None) when the run has no checkpoint yet."""
    path, loaded, skipped = load_latest(out_dir, check=_check_run_state)
    if world.is_main:
        for bad, reason in skipped:
            print(f"blocklab train: skipped {bad.name}: {reason}", file=sys.stderr)
    if path is None and list_checkpoints(out_dir):
        reasons = "; ".join(f"{bad.name}: {reason}" for bad, reason in skipped)
        raise RunDirError(f"no intact checkpoint to resume in {out_dir} ({reasons})")
    if path is not None and skipped and world.is_main:
        print(f"blocklab train: resuming from {path.name}", file=sys.stderr)
    return path, loaded


def load_trained_model(path: str | Path) -> tuple[TransformerLM, dict[str, Any]]:
    """(model, its TrainConfig as a dict) from a ``blocklab train`` run directory (its
    newest intact checkpoint) or one of its ``ckpt-*`` directories.

    Raises:
        ValueError: no intact checkpoint there (:class:`CheckpointError` says why).
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise ValueError(f"{path} is not a directory")
    if (path / "state.json").exists():
        model_state, _, state = load_checkpoint(path)
        _check_run_state(path, state)
    else:
        found, loaded, skipped = load_latest(path, check=_check_run_state)
        if found is None:
            why = "; ".join(f"{p.name}: {r}" for p, r in skipped) or "no ckpt-* directory"
            raise ValueError(f"{path} holds no intact blocklab train checkpoint ({why})")
        model_state, _, state = loaded
    config = state["config"]
    try:
        model = TransformerLM(TransformerConfig.from_dict(config["model"]))
        model.load_state_dict(model_state)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{path}: the weights do not fit the saved config ({err})") from None
    return model, config


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
    overwrite: bool = False,
    allow_config_change: bool = False,
    progress: bool | None = None,
) -> TrainResult:
    """Train ``config.model`` on ``config.data``; write metrics and checkpoints to out_dir.

    Args:
        config: a validated TrainConfig.
        out_dir: run directory (config.yaml, metrics.jsonl, ckpt-*/); must be empty
            or absent unless ``resume`` or ``overwrite``.
        resume: continue from the newest intact checkpoint in out_dir, if any.
        overwrite: remove the run already in out_dir and start afresh.
        allow_config_change: with ``resume``, accept a config that differs from the
            run's in other keys than the model's shape; the change is recorded.
        progress: a progress bar (default: when stderr is a terminal).

    Raises:
        ConfigError: the config cannot be used (or differs from the resumed run's).
        RunDirError: out_dir is in use, holds another run, or has checkpoints of
            which none is intact.
        OSError: out_dir cannot be written; its ``filename`` says where.
        FloatingPointError: the loss or gradient norm became non-finite.
    """
    world = init_world(config.device)
    try:
        config.check_world(world.size)
        config.check_data()
        tokenizer = _run_tokenizer(config, Path(out_dir), resume)
        tokens = load_token_data(config.data, tokenizer, val_fraction=config.val_fraction,
                                 dtype=config.data_dtype)
        if min(t.numel() for t in tokens) <= config.seq_len:
            raise ValueError(
                f"data {config.data!r} is too short for seq_len {config.seq_len}: "
                f"{tokens[0].numel()} train / {tokens[1].numel()} val tokens"
            )
        lock, error = None, None
        if world.is_main:
            try:
                lock = open_run_dir(Path(out_dir), resume=resume, overwrite=overwrite)
            except (RunDirError, OSError) as err:
                error = err
        _agree(world, error)
        try:
            return _train(config, tokens, tokenizer, Path(out_dir), world, resume=resume,
                          allow_config_change=allow_config_change, progress=progress)
        finally:
            if lock is not None:
                lock.release()
    finally:
        shutdown(world)


def _train(
    config: TrainConfig, tokens: tuple[Tokens, Tokens], tokenizer: Tokenizer, out_dir: Path,
    world: World, *, resume: bool, allow_config_change: bool, progress: bool | None
) -> TrainResult:
    train_tokens, val_tokens = tokens
    # Everything is checked before anything in out_dir is rewritten.
    ckpt, loaded = _resume_point(out_dir, world) if resume else (None, None)
    changes: dict[str, list[Any]] = {}
    if loaded is not None:
        changes = _config_changes(loaded[2]["config"], config, ckpt, allow=allow_config_change)
        torch.manual_seed(config.seed)
        model = TransformerLM(config.model)  # the checkpoint's weights replace these
    else:
        model = _initial_model(config)
    if world.is_main:
        _write_atomic(out_dir / "config.yaml", config.to_yaml_text())
        _record_sources(config, tokenizer, out_dir)

    model = model.to(world.device)
    wrapped = wrap_model(model, world, fsdp=config.fsdp)
    optimizer = adamw(wrapped, config.lr, config.weight_decay, (config.beta1, config.beta2))

    start_step, resumed_from = 0, None
    if loaded is not None:
        model_state, optim_state, state = loaded
        load_full_state_dicts(wrapped, optimizer, model_state, optim_state)
        _set_rng_state(state["rng"])
        start_step = resumed_from = int(state["step"])
        del loaded, model_state, optim_state
    forward = torch.compile(wrapped) if config.compile else wrapped

    metrics = _Metrics(out_dir / "metrics.jsonl", world.is_main, start_step)
    if changes:
        metrics.log({"step": start_step, "resumed_from": ckpt.name, "config_change": changes})
        if world.is_main:
            print(f"blocklab train: resuming {ckpt.name} with a changed config: "
                  + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items()),
                  file=sys.stderr)
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
        _check_token_ids(x, train_tokens, config.model.vocab_size)
        _check_token_ids(y[:, -1:], train_tokens, config.model.vocab_size)
        loss_sum = torch.zeros((), device=world.device)
        for i in range(config.grad_accum):
            xs = x[i * micro : (i + 1) * micro].to(world.device)
            ys = y[i * micro : (i + 1) * micro].to(world.device)
            sync = i == config.grad_accum - 1 or not hasattr(wrapped, "no_sync")
            with autocast, (contextlib.nullcontext() if sync else wrapped.no_sync()):
                loss = forward(xs, targets=ys)  # fused LM head + cross entropy
                (loss / config.grad_accum).backward()
            loss_sum += loss.detach() / config.grad_accum
        done = step + 1
        last_loss = float(all_reduce_mean(loss_sum, world))
        norm = torch.nn.utils.clip_grad_norm_(wrapped.parameters(), config.grad_clip)
        norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        for what, value in (("loss", last_loss), ("gradient norm", norm)):
            if not math.isfinite(value):
                newest = list_checkpoints(out_dir)
                raise FloatingPointError(
                    f"step {done}: {what} is {value} (lr {lr:.3g}); stopped before updating "
                    "the weights" + (f", newest checkpoint {newest[-1][1].name}" if newest else "")
                    + "; lower lr or check the data and config"
                )
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
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
            last_val = validation_loss(wrapped, val_tokens, config, world)
            record = record or {"step": done, "loss": last_loss, "lr": lr}
            record["val_loss"] = last_val
        if record is not None:
            metrics.log(record)
            if bar is None and world.is_main:
                print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in record.items()), file=sys.stderr)
        if done % config.save_every == 0 or done == config.max_steps:
            model_state, optim_state = full_state_dicts(wrapped, optimizer)
            error = None
            if world.is_main:
                try:
                    save_checkpoint(out_dir, done, model_state=model_state,
                                    optimizer_state=optim_state, keep_last=config.keep_last,
                                    extra={"rng": _rng_state(), "data_position": done,
                                           "config": config.to_dict()})
                except OSError as err:
                    error = err
            _agree(world, error)  # also the barrier: no process runs ahead of the save
    if bar is not None:
        bar.close()
    metrics.close()
    return TrainResult(steps=config.max_steps, final_loss=last_loss, final_val_loss=last_val,
                       out_dir=out_dir, resumed_from=resumed_from)
