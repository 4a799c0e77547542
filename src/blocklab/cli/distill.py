"""``blocklab distill``: distil a TransformerLM teacher into a smaller student.

    blocklab distill --teacher-preset small --teacher-steps 1000 \\
                     --student-preset tiny --steps 1000 --temperature 2 --alpha 0.5 --out DIR
    blocklab distill --teacher CKPT --student-preset tiny --corpus my.txt --out DIR

The corpus is the shipped one (``--corpus default``) or a user text/JSONL file,
with the tail 10% held out, encoded by the teacher's tokenizer (a loaded teacher's
own, :func:`blocklab.train.sources.find_model_tokenizer`; ``--tokenizer`` names
another; the byte tokenizer, vocab 256, when there is none). A student preset whose
vocabulary differs from a tokenizer-carrying teacher's takes the teacher's, and the
student is saved with the tokenizer (``DIR/tokenizer/``). The teacher is either
loaded (``--teacher`` names a ``blocklab train`` run directory -- its newest intact
checkpoint -- or one of its ``ckpt-*`` directories; a directory holding
``model.safetensors`` and ``config.yaml``, as this command writes; a
``.safetensors`` file with a ``config.yaml`` beside it; or a Hugging Face directory;
read by :func:`blocklab.train.sources.load_model`) or, without one, built
from ``--teacher-preset`` and trained first on the same corpus for
``--teacher-steps`` steps -- kept simple: one command gives a teacher and its
student. The student is trained with :func:`blocklab.train.distill.distill_lm`.

Writes to DIR: ``model.safetensors`` + ``config.yaml`` (the student),
``teacher/`` (the same for a teacher trained here) and ``metrics.json``
(validation loss and perplexity of teacher and student, parameter counts, times).
Every argument is checked against the teacher and the student (vocabulary,
``--seq-len`` against both ``max_seq_len``) before any training starts.
Exit codes: 0 success, 1 a non-finite loss (one line naming the step), 2 a usage
error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from blocklab.cli.command import Command

__all__ = ["COMMAND"]

USAGE_ERROR = 2


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    teacher = parser.add_mutually_exclusive_group()
    teacher.add_argument("--teacher", metavar="CKPT",
                         help="teacher: a 'blocklab train' run directory or one of its ckpt-* "
                              "directories, a directory with model.safetensors and "
                              "config.yaml, or a .safetensors file with config.yaml beside it")
    teacher.add_argument("--teacher-preset", default="small", metavar="NAME",
                         help="without --teacher: train a teacher of this TransformerConfig "
                              "preset first (default: %(default)s)")
    parser.add_argument("--teacher-steps", type=int, default=1000, metavar="N",
                        help="training steps for a teacher trained here (default: %(default)s)")
    parser.add_argument("--student-preset", default="tiny", metavar="NAME",
                        help="TransformerConfig preset of the student (default: %(default)s)")
    parser.add_argument("--student-d-model", type=int, metavar="C",
                        help="override the student's width d_model")
    parser.add_argument("--student-layers", type=int, metavar="L",
                        help="override the student's number of layers")
    parser.add_argument("--corpus", default="default", metavar="NAME_OR_FILE",
                        help="'default' (shipped corpus) or a text/JSONL file (default: %(default)s)")
    parser.add_argument("--tokenizer", metavar="SPEC",
                        help="'bytes', a tokenizer.json or a directory holding one (default: "
                             "the teacher's own, else bytes)")
    parser.add_argument("--steps", type=int, default=1000, metavar="N",
                        help="distillation steps (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=16, metavar="B",
                        help="sequences per step (default: %(default)s)")
    parser.add_argument("--seq-len", type=int, default=128, metavar="T",
                        help="tokens per sequence (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=3e-3,
                        help="peak learning rate, teacher and student (default: %(default)s)")
    parser.add_argument("--temperature", type=float, default=2.0, metavar="T",
                        help="distillation temperature > 0 (default: %(default)s)")
    parser.add_argument("--alpha", type=float, default=0.5,
                        help="weight of the distillation term in [0, 1]; the rest goes to "
                             "next-token cross entropy (default: %(default)s)")
    parser.add_argument("--eval-batches", type=int, default=16, metavar="N",
                        help="validation batches scored at the end (default: %(default)s)")
    parser.add_argument("--out", default="distill-out", metavar="DIR",
                        help="output directory (default: %(default)s)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="where to train (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, metavar="N",
                        help="random seed (default: %(default)s)")


def _error(message: str) -> int:
    print(f"blocklab distill: error: {message}", file=sys.stderr)
    return USAGE_ERROR


def _check_args(args: argparse.Namespace) -> str | None:
    for name in ("steps", "teacher_steps", "batch_size", "seq_len", "eval_batches"):
        if getattr(args, name) < 1:
            return f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}"
    if not args.temperature > 0:
        return f"--temperature must be > 0, got {args.temperature}"
    if not 0.0 <= args.alpha <= 1.0:
        return f"--alpha must be in [0, 1], got {args.alpha}"
    if not args.lr > 0:
        return f"--lr must be > 0, got {args.lr}"
    return None


def _run(args: argparse.Namespace) -> int:
    problem = _check_args(args)
    if problem:
        return _error(problem)

    import json
    import math
    import time

    import torch

    from blocklab.data.tokenizer import ByteTokenizer, is_plain_bytes, load_tokenizer
    from blocklab.data.tokens import load_token_data
    from blocklab.models import TransformerConfig, TransformerLM
    from blocklab.models.convert import save_model
    from blocklab.train import evaluate_lm, train_lm
    from blocklab.train.distill import distill_lm
    from blocklab.train.sources import (
        CONFIG,
        WEIGHTS,
        find_model_tokenizer,
        load_model,
        save_model_tokenizer,
    )

    if args.device == "cuda" and not torch.cuda.is_available():
        return _error("--device cuda was requested but CUDA is not available")
    try:
        if args.tokenizer is not None:
            tokenizer = load_tokenizer(args.tokenizer)
        elif args.teacher:
            tokenizer = find_model_tokenizer(args.teacher) or ByteTokenizer()
        else:
            tokenizer = ByteTokenizer()
        train, val = load_token_data(args.corpus, tokenizer)
        if not isinstance(train, torch.Tensor):
            return _error(f"--corpus {args.corpus!r}: token files are for 'blocklab train'; "
                          "give a text or JSONL file")
    except (ImportError, ValueError, TypeError) as err:
        return _error(str(err))
    overrides: dict[str, int] = {}
    if args.student_d_model is not None:
        overrides["d_model"] = args.student_d_model
    if args.student_layers is not None:
        overrides["n_layers"] = args.student_layers
    try:
        s_config = TransformerConfig.from_name(args.student_preset, **overrides)
    except (ValueError, TypeError) as err:
        return _error(str(err))
    out = Path(args.out)
    log = {"corpus": str(args.corpus), "train_tokens": train.numel(), "val_tokens": val.numel()}

    start = time.perf_counter()
    teacher = None
    try:
        if args.teacher:
            teacher = load_model(args.teacher)
            t_config = teacher.config
        else:
            t_config = TransformerConfig.from_name(args.teacher_preset)
    except (ValueError, TypeError) as err:
        return _error(str(err))
    if teacher is None and not is_plain_bytes(tokenizer):
        t_config = t_config.replace(vocab_size=tokenizer.vocab_size)  # trained here on its ids
    if not is_plain_bytes(tokenizer) and s_config.vocab_size != t_config.vocab_size:
        s_config = s_config.replace(vocab_size=t_config.vocab_size)  # the teacher's tokens
    if tokenizer.vocab_size > t_config.vocab_size:
        return _error(f"the tokenizer has {tokenizer.vocab_size} token ids, more than the "
                      f"teacher's vocab_size ({t_config.vocab_size})")
    # Checked before the teacher trains: a mismatch found after it wastes the run.
    if s_config.vocab_size != t_config.vocab_size:
        return _error(f"student vocab_size ({s_config.vocab_size}) must equal the teacher's "
                      f"({t_config.vocab_size})")
    for who, cfg in (("teacher", t_config), ("student", s_config)):
        if args.seq_len > cfg.max_seq_len:
            return _error(f"--seq-len ({args.seq_len}) exceeds the {who}'s max_seq_len "
                          f"({cfg.max_seq_len})")
    if min(train.numel(), val.numel()) <= args.seq_len:
        return _error(f"--corpus {args.corpus!r} is too short for --seq-len {args.seq_len}: "
                      f"{train.numel()} train / {val.numel()} val tokens")
    try:
        if teacher is not None:
            log["teacher_source"] = str(args.teacher)
        else:
            torch.manual_seed(args.seed)
            teacher = TransformerLM(t_config)
            print(f"training teacher ({t_config.name}, {teacher.num_parameters():,} "
                  f"parameters) for {args.teacher_steps} steps")
            train_lm(teacher, train, steps=args.teacher_steps, batch_size=args.batch_size,
                     seq_len=args.seq_len, lr=args.lr, seed=args.seed, device=args.device)
            save_model(teacher, out / "teacher")
            save_model_tokenizer(tokenizer, out / "teacher")
            log["teacher_source"] = f"preset {t_config.name}, {args.teacher_steps} steps"
        log["teacher_seconds"] = time.perf_counter() - start

        torch.manual_seed(args.seed + 1)
        student = TransformerLM(s_config)
        print(f"distilling into student ({s_config.name}, {student.num_parameters():,} "
              f"parameters) for {args.steps} steps, T={args.temperature:g}, alpha={args.alpha:g}")
        history = distill_lm(student, teacher, train, steps=args.steps,
                             batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr,
                             alpha=args.alpha, temperature=args.temperature, seed=args.seed,
                             device=args.device)
    except FloatingPointError as err:
        print(f"blocklab distill: error: {err}", file=sys.stderr)
        return 1
    save_model(student, out)
    save_model_tokenizer(tokenizer, out)

    scores = {}
    for name, model in (("teacher", teacher), ("student", student)):
        loss = evaluate_lm(model, val, batch_size=args.batch_size, seq_len=args.seq_len,
                           max_batches=args.eval_batches, device=args.device)
        scores[name] = loss
        log[f"{name}_val_loss"] = loss
        log[f"{name}_val_ppl"] = math.exp(loss)
        log[f"{name}_parameters"] = model.num_parameters()
    log.update(student_seconds=history.seconds, steps=args.steps,
               temperature=args.temperature, alpha=args.alpha,
               final_distill_loss=history.final_loss)
    (out / "metrics.json").write_text(json.dumps(log, indent=2) + "\n")
    ratio = log["teacher_parameters"] / log["student_parameters"]
    print(f"teacher: val loss {scores['teacher']:.3f} (ppl {math.exp(scores['teacher']):.2f}), "
          f"{log['teacher_parameters']:,} parameters")
    print(f"student: val loss {scores['student']:.3f} (ppl {math.exp(scores['student']):.2f}), "
          f"{log['student_parameters']:,} parameters ({ratio:.1f}x fewer)")
    print(f"student saved to {out / WEIGHTS} and {out / CONFIG}")
    return 0


COMMAND = Command(
    name="distill",
    help="distil a TransformerLM teacher into a smaller student",
    description=(
        "Knowledge distillation for language models (Hinton et al. 2015): train a "
        "student on alpha * T^2 KL(teacher/T || student/T) + (1 - alpha) * CE on a "
        "corpus. Loads the teacher from --teacher, or trains one from --teacher-preset "
        "first. Writes the student (model.safetensors, config.yaml) and metrics.json "
        "to --out."
    ),
    add_arguments=_add_arguments,
    run=_run,
)
