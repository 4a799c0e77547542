"""``blocklab train [PRESET|CONFIG.yaml] --out DIR [...] [key=value ...]``.

Fine-tuning: ``blocklab train init_from=DIR data=file.txt --out RUN`` starts from the
model in DIR (a Hugging Face Llama/Mistral/Qwen2 directory, a blocklab run, checkpoint
or saved directory) with DIR's own tokenizer; without a preset the ``finetune``
training settings are used.

Also runs under ``torchrun --nproc_per_node=N -m blocklab train ...``: every process
runs this command, rank 0 writes.

Exit codes: 0 success; 1 the run diverged (a non-finite loss or gradient norm, the
step named); 2 a usage error -- a bad config, a run directory in use, holding
another run or not writable, a resume with a changed config or no intact
checkpoint -- always one line naming the key, path or step.
"""

from __future__ import annotations

import argparse
import os
import sys

from blocklab.cli.command import Command

__all__ = ["COMMAND"]


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="PRESET|CONFIG.yaml", nargs="?",
                        help="a preset (tiny, small, lab-lm, finetune) or a YAML file of "
                             "TrainConfig keys; may be left out with init_from=PATH "
                             "(then: finetune)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="override config keys, e.g. lr=1e-3 model.n_layers=4, "
                             "data=file.txt|tokens.bin|DIR, tokenizer=bytes|tokenizer.json|DIR, "
                             "init_from=HF_DIR|RUN")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="run directory: config.yaml, metrics.jsonl, ckpt-*/")
    parser.add_argument("--max-steps", type=int, metavar="N", help="optimiser steps in all")
    parser.add_argument("--save-every", type=int, metavar="K", help="checkpoint every K steps")
    fresh = parser.add_mutually_exclusive_group()
    fresh.add_argument("--resume", action="store_true",
                       help="continue from the newest intact checkpoint in DIR (damaged ones "
                            "are skipped, each named)")
    fresh.add_argument("--overwrite", action="store_true",
                       help="remove the run already in DIR and start afresh (without "
                            "--resume or --overwrite DIR must be empty)")
    parser.add_argument("--allow-config-change", action="store_true",
                        help="with --resume: continue with a config that differs from the "
                             "run's (not in the model's shape); recorded in metrics.jsonl")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="where to train")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _error(message: str) -> int:
    print(f"blocklab train: error: {message}", file=sys.stderr)
    return 2


def _run(args: argparse.Namespace) -> int:
    from blocklab.train.config import load_train_config
    from blocklab.train.rundir import os_error_line
    from blocklab.train.trainer import train

    overrides, source = list(args.overrides), args.config
    if source is not None and "=" in source and not os.path.isfile(source):
        overrides.insert(0, source)  # ``train init_from=DIR ...``: no preset given
        source = None
    if source is None:
        if not any(item.startswith("init_from=") for item in overrides):
            return _error("give a preset or CONFIG.yaml, or init_from=PATH to fine-tune")
        source = "finetune"
    for flag, key in (("max_steps", "max_steps"), ("save_every", "save_every"),
                      ("device", "device")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    try:
        config = load_train_config(source, overrides)
        config.check_data()
        result = train(config, args.out, resume=args.resume, overwrite=args.overwrite,
                       allow_config_change=args.allow_config_change,
                       progress=False if args.quiet else None)
    except FloatingPointError as err:
        print(f"blocklab train: error: {err}", file=sys.stderr)
        return 1
    except ValueError as err:  # ConfigError, RunDirError, CheckpointError among them
        return _error(str(err))
    except OSError as err:
        return _error(os_error_line(err, args.out))
    if result.final_loss is not None and os.environ.get("RANK", "0") == "0":
        print(f"step {result.steps}: loss {result.final_loss:.4f}"
              + (f", val_loss {result.final_val_loss:.4f}" if result.final_val_loss else ""))
    return 0


COMMAND = Command(
    name="train",
    help="train a TransformerLM (resumable; runs under torchrun for DDP/FSDP)",
    description=(
        "Train a TransformerLM from a preset or a YAML config, or fine-tune one "
        "(init_from=HF_DIR|RUN), on the embedded corpus, your text/JSONL file (encoded by "
        "tokenizer=..., default: init_from's own tokenizer, else bytes) or a flat token file "
        "(nanoGPT's .bin, or a directory of train.bin + val.bin; data_dtype=uint16|uint32) "
        "read from disk a batch at a time, never whole. Writes DIR/config.yaml, DIR/metrics.jsonl and atomic "
        "safetensors checkpoints DIR/ckpt-*/ with their sizes and checksums; --resume "
        "continues from the newest intact one (damaged ones are skipped and named) with "
        "nothing lost, and refuses a changed config unless --allow-config-change. DIR "
        "must be empty otherwise (or --overwrite), and one process trains in it at a "
        "time. A non-finite loss stops the run (exit 1). Under torchrun "
        "--nproc_per_node=N each process takes its share of the same global batch."
    ),
    add_arguments=_add_arguments,
    run=_run,
)
