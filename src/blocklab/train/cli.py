"""``blocklab train PRESET|CONFIG.yaml --out DIR [...] [key=value ...]``.

Also runs under ``torchrun --nproc_per_node=N -m blocklab train ...``: every process
runs this command, rank 0 writes.
"""

from __future__ import annotations

import argparse
import os
import sys

from blocklab.cli import Command

__all__ = ["COMMAND"]


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="PRESET|CONFIG.yaml",
                        help="a preset (tiny, small, lab-lm) or a YAML file of TrainConfig keys")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="override config keys, e.g. lr=1e-3 model.n_layers=4")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="run directory: config.yaml, metrics.jsonl, ckpt-*/")
    parser.add_argument("--max-steps", type=int, metavar="N", help="optimiser steps in all")
    parser.add_argument("--save-every", type=int, metavar="K", help="checkpoint every K steps")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest complete checkpoint in DIR")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="where to train")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _run(args: argparse.Namespace) -> int:
    from blocklab.train.config import ConfigError, load_train_config
    from blocklab.train.trainer import train

    overrides = list(args.overrides)
    for flag, key in (("max_steps", "max_steps"), ("save_every", "save_every"),
                      ("device", "device")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    try:
        config = load_train_config(args.config, overrides)
        config.check_data()
        result = train(config, args.out, resume=args.resume,
                       progress=False if args.quiet else None)
    except ConfigError as err:
        print(f"blocklab train: error: {err}", file=sys.stderr)
        return 2
    except ValueError as err:
        print(f"blocklab train: error: {err}", file=sys.stderr)
        return 2
    if result.final_loss is not None and os.environ.get("RANK", "0") == "0":
        print(f"step {result.steps}: loss {result.final_loss:.4f}"
              + (f", val_loss {result.final_val_loss:.4f}" if result.final_val_loss else ""))
    return 0


COMMAND = Command(
    name="train",
    help="train a TransformerLM (resumable; runs under torchrun for DDP/FSDP)",
    description=(
        "Train a TransformerLM from a preset or a YAML config on the embedded corpus or "
        "your text/JSONL file. Writes DIR/config.yaml, DIR/metrics.jsonl and atomic "
        "safetensors checkpoints DIR/ckpt-*/; --resume continues from the newest "
        "complete one with nothing lost. Under torchrun --nproc_per_node=N each process "
        "takes its share of the same global batch."
    ),
    add_arguments=_add_arguments,
    run=_run,
)
