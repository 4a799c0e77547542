"""``blocklab convert CKPT --kv-heads G --out DIR [--uptrain-steps N]``.

Converts a model trained by ``blocklab train`` to G key/value heads by mean-pooling
each group (Ainslie et al. 2023; :func:`blocklab.models.convert.convert_kv_heads`),
optionally uptrains it for N steps with the run's own data and hyperparameters, and
writes ``DIR/model.safetensors``, ``DIR/config.yaml`` and ``DIR/convert.json`` (the
validation loss before conversion, after it and after uptraining; KV-cache bytes).
The source is read by :func:`blocklab.train.sources.load_source`: a run directory,
one of its checkpoints, a converted directory or a Hugging Face directory (which
carries no training settings: the shipped corpus and defaults then, unless
``--data``). The run's data is encoded by the source's tokenizer, which is copied to
``DIR/tokenizer/`` (none for bytes). A token-file run (``.bin``) is read in place for
evaluation; uptraining draws its windows from the first ``N x batch x seq_len`` tokens
of the training split (N the uptraining steps), which is as many as it consumes,
instead of copying the whole file into memory.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from blocklab.cli.command import Command

__all__ = ["COMMAND"]

USAGE_ERROR = 2


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="CKPT",
                        help="a 'blocklab train' run directory (its newest checkpoint), one "
                             "ckpt-* directory, or a directory written by 'blocklab convert'")
    parser.add_argument("--kv-heads", type=int, required=True, metavar="G",
                        help="key/value heads of the converted model; must divide the "
                             "current number (1 = multi-query attention)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output directory: model.safetensors, config.yaml, convert.json")
    parser.add_argument("--uptrain-steps", type=int, default=0, metavar="N",
                        help="optimiser steps of uptraining after the conversion, with the "
                             "run's data, batch size and lr (Ainslie et al.: ~5%% of the "
                             "pre-training steps; default: %(default)s)")
    parser.add_argument("--lr", type=float, metavar="LR",
                        help="peak learning rate of the uptraining (default: the run's)")
    parser.add_argument("--eval-batches", type=int, default=8, metavar="K",
                        help="validation batches scored before and after (default: "
                             "%(default)s)")
    parser.add_argument("--data", metavar="FILE",
                        help="data to evaluate and uptrain on (default: the run's)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where to evaluate and uptrain (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def _error(message: str) -> int:
    print(f"blocklab convert: error: {message}", file=sys.stderr)
    return USAGE_ERROR


def _run(args: argparse.Namespace) -> int:
    import torch

    from blocklab.cost.memory import kv_cache_bytes
    from blocklab.data.tokenizer import ByteTokenizer
    from blocklab.data.tokens import load_token_data
    from blocklab.models.convert import convert_kv_heads, save_model
    from blocklab.train.loop import evaluate_lm, train_lm
    from blocklab.train.sources import find_model_tokenizer, load_source, save_model_tokenizer

    if args.uptrain_steps < 0:
        return _error(f"--uptrain-steps ({args.uptrain_steps}) must be >= 0")
    if args.eval_batches < 1:
        return _error(f"--eval-batches ({args.eval_batches}) must be >= 1")
    if args.lr is not None and not args.lr > 0:
        return _error(f"--lr ({args.lr}) must be > 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        return _error("--device cuda was requested but CUDA is not available")
    try:
        model, settings = load_source(args.source)
        converted = convert_kv_heads(model, args.kv_heads)
        tokenizer = find_model_tokenizer(args.source) or ByteTokenizer()
    except (ImportError, ValueError, TypeError) as err:
        return _error(str(err))

    data = args.data or settings.get("data", "default")
    seq_len = min(int(settings.get("seq_len", 128)), model.config.max_seq_len)
    batch = int(settings.get("batch_size", 16))
    lr = args.lr if args.lr is not None else float(settings.get("lr", 1e-3))
    if tokenizer.vocab_size > model.config.vocab_size:
        return _error(f"the source's tokenizer has {tokenizer.vocab_size} token ids, more than "
                      f"its vocab_size ({model.config.vocab_size})")
    try:
        train_tokens, val_tokens = load_token_data(
            data, tokenizer, val_fraction=float(settings.get("val_fraction", 0.1)),
            dtype=settings.get("data_dtype", "uint16"))
        if not isinstance(val_tokens, torch.Tensor):  # a token file: copy what is used
            val_tokens = val_tokens.windows(torch.zeros(1, dtype=torch.long), min(
                val_tokens.numel(), args.eval_batches * batch * seq_len + 1))[0]
            train_tokens = train_tokens.windows(torch.zeros(1, dtype=torch.long), min(
                train_tokens.numel(), max(args.uptrain_steps, 1) * batch * seq_len + seq_len + 1
            ))[0]
    except (OSError, ValueError) as err:
        return _error(f"cannot read the run's data {data!r}: {err}")
    device = torch.device(args.device)

    def val_loss(m) -> float:
        return evaluate_lm(m, val_tokens, batch_size=batch, seq_len=seq_len,
                           max_batches=args.eval_batches, device=device)

    say = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    model.to(device)
    converted.to(device)
    cfg = model.config
    losses = {"source": val_loss(model), "converted": val_loss(converted)}
    say(f"val loss: {cfg.kv_heads} K/V heads {losses['source']:.4f}, "
        f"{args.kv_heads} after pooling {losses['converted']:.4f}")
    if args.uptrain_steps:
        history = train_lm(converted, train_tokens, steps=args.uptrain_steps, batch_size=batch,
                           seq_len=seq_len, lr=lr,
                           weight_decay=float(settings.get("weight_decay", 0.1)),
                           seed=int(settings.get("seed", 0)) + 1, device=device)
        losses["uptrained"] = val_loss(converted)
        losses["uptrain_final_train_loss"] = history.final_loss
        say(f"after {args.uptrain_steps} uptraining steps: {losses['uptrained']:.4f}")

    out = save_model(converted.cpu(), args.out)
    save_model_tokenizer(tokenizer, out)

    def per_token(heads: int) -> int:
        return kv_cache_bytes(n_layers=cfg.n_layers, n_kv_heads=heads, head_dim=cfg.dim_head,
                              seq_len=1, dtype=model.embed.weight.dtype)

    report = {
        "source": str(Path(args.source).resolve()),
        "from_kv_heads": cfg.kv_heads,
        "to_kv_heads": args.kv_heads,
        "n_heads": cfg.n_heads,
        "method": "mean-pool each group of K/V heads (Ainslie et al. 2023)",
        "uptrain_steps": args.uptrain_steps,
        "uptrain_lr": lr if args.uptrain_steps else None,
        "val_loss": losses,
        "params": {"source": model.num_parameters(), "converted": converted.num_parameters()},
        "kv_cache_bytes_per_token": {"source": per_token(cfg.kv_heads),
                                     "converted": per_token(args.kv_heads)},
        "train": {**settings, "seq_len": seq_len, "batch_size": batch},
    }
    (out / "convert.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"converted {cfg.kv_heads} -> {args.kv_heads} K/V heads: val loss "
          f"{losses['source']:.4f} -> {losses['converted']:.4f}"
          + (f" -> {losses['uptrained']:.4f} after {args.uptrain_steps} steps"
             if args.uptrain_steps else "")
          + f"; written to {out}")
    return 0


COMMAND = Command(
    name="convert",
    help="convert a trained model to grouped-query / multi-query attention (+ uptraining)",
    description=(
        "Convert a TransformerLM checkpoint written by 'blocklab train' to G key/value heads "
        "by mean-pooling the K/V projections of each group (Ainslie et al. 2023), optionally "
        "uptrain it for N steps on the run's data, and write DIR/model.safetensors, "
        "DIR/config.yaml and DIR/convert.json with the validation loss before and after."
    ),
    add_arguments=_add_arguments,
    run=_run,
)
