"""``blocklab generate PATH --prompt TEXT [--max-new-tokens N --temperature T --top-k K
--top-p P --seed S --compile auto|on|off --device cpu|cuda --tokenizer SPEC]``.

PATH is any model :func:`blocklab.train.sources.load_model` reads: a Hugging Face
directory, a ``blocklab train`` run (its newest intact checkpoint) or checkpoint, a
saved ``model.safetensors`` + ``config.yaml`` directory. The tokenizer is PATH's own
(:func:`blocklab.train.sources.find_model_tokenizer`), ``--tokenizer`` names another,
and a blocklab directory without one uses the byte tokenizer. The prompt is encoded
with the tokenizer's bos in front (when it has one), continued by
:func:`blocklab.models.generate.generate` until ``--max-new-tokens`` or the
tokenizer's eos, and the prompt and its continuation are printed to stdout (nothing
else goes there). ``--temperature 0`` is greedy; ``--seed`` makes sampling repeatable.

``--compile`` is off by default: compiling the decoding step costs more than it saves
for a few dozen tokens on a CPU; ``auto`` compiles where a compiler is found
(:func:`blocklab.models.generate.compiler_available`), ``on`` always (falling back to
eager decoding, with a warning, if compiling fails). The tokens are the same either way.

Exit codes: 0 success, 2 a usage error (a bad argument, PATH or tokenizer).
"""

from __future__ import annotations

import argparse

from blocklab.cli.command import Command, usage_error

__all__ = ["COMMAND", "continuation"]


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="PATH",
                        help="a Hugging Face model directory, a 'blocklab train' run directory "
                             "or ckpt-* directory, or a saved model directory")
    parser.add_argument("--prompt", required=True, metavar="TEXT", help="the text to continue")
    parser.add_argument("--max-new-tokens", type=int, default=64, metavar="N",
                        help="tokens to add at most (default: %(default)s)")
    parser.add_argument("--temperature", type=float, default=0.8, metavar="T",
                        help="sampling temperature; 0 is greedy (default: %(default)s)")
    parser.add_argument("--top-k", type=int, metavar="K",
                        help="sample among the K most likely tokens only")
    parser.add_argument("--top-p", type=float, metavar="P",
                        help="nucleus sampling: the smallest set of tokens with mass >= P")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="random seed of the sampling (default: %(default)s)")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="off",
                        help="torch.compile the decoding step (default: %(default)s)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where to run (default: %(default)s)")
    parser.add_argument("--tokenizer", metavar="SPEC",
                        help="'bytes', a tokenizer.json or a directory holding one "
                             "(default: PATH's own)")


def _check(args: argparse.Namespace) -> str | None:
    if args.max_new_tokens < 0:
        return f"--max-new-tokens ({args.max_new_tokens}) must be >= 0"
    if not args.temperature >= 0:
        return f"--temperature ({args.temperature}) must be >= 0"
    if args.top_k is not None and args.top_k < 1:
        return f"--top-k ({args.top_k}) must be >= 1"
    if args.top_p is not None and not 0 < args.top_p <= 1:
        return f"--top-p ({args.top_p}) must be in (0, 1]"
    return None


def continuation(tokenizer, prompt_ids: list[int], new_ids: list[int]) -> str:
    """The text ``new_ids`` add after ``prompt_ids``: the decoding of the whole sequence
    past the decoding of the prompt (a token's text can depend on the one before it,
    as with SentencePiece's leading spaces), or of ``new_ids`` alone when the two
    decodings do not line up."""
    head = tokenizer.decode(prompt_ids)
    full = tokenizer.decode(prompt_ids + new_ids)
    return full[len(head):] if full.startswith(head) else tokenizer.decode(new_ids)


def _run(args: argparse.Namespace) -> int:
    def error(message: str) -> int:
        return usage_error("generate", message)

    problem = _check(args)
    if problem:
        return error(problem)

    import torch

    from blocklab.data.tokenizer import ByteTokenizer, load_tokenizer
    from blocklab.models.generate import generate
    from blocklab.models.hf_io import is_hf_dir
    from blocklab.train.sources import find_model_tokenizer, load_model

    if args.device == "cuda" and not torch.cuda.is_available():
        return error("--device cuda was requested but CUDA is not available")
    try:
        model = load_model(args.path)
    except (OSError, TypeError, ValueError) as err:
        return error(str(err))
    try:
        if args.tokenizer is not None:
            tokenizer = load_tokenizer(args.tokenizer)
        else:
            tokenizer = find_model_tokenizer(args.path)
            if tokenizer is None and is_hf_dir(args.path):
                return error(f"{args.path} holds no tokenizer.json; name one with --tokenizer")
            tokenizer = tokenizer or ByteTokenizer()
    except (ImportError, ValueError) as err:
        return error(f"tokenizer: {err}")
    vocab = model.config.vocab_size
    if tokenizer.vocab_size > vocab:
        return error(f"the tokenizer has {tokenizer.vocab_size} token ids but the model's "
                     f"vocab_size is {vocab}: not this model's tokenizer")

    prompt_ids = tokenizer.encode(args.prompt, add_bos=tokenizer.bos_id is not None)
    if not prompt_ids:
        return error("--prompt gives no tokens; give some text")
    device = torch.device(args.device)
    model.to(device)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    eos = tokenizer.eos_id if tokenizer.eos_id is not None and tokenizer.eos_id < vocab else None
    compile_mode = {"auto": "auto", "on": True, "off": False}[args.compile]
    out = generate(model, torch.tensor([prompt_ids], device=device), args.max_new_tokens,
                   temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                   eos_token_id=eos, generator=generator, compile=compile_mode)
    # Ids the tokenizer has no token for (a model vocabulary padded past the
    # tokenizer's) and the final eos print as nothing.
    new_ids = [i for i in out[0, len(prompt_ids):].tolist()
               if i < tokenizer.vocab_size and i != eos]
    print(args.prompt + continuation(tokenizer, prompt_ids, new_ids))
    return 0


COMMAND = Command(
    name="generate",
    help="continue a prompt with a trained or Hugging Face model",
    description=(
        "Load a model (a Hugging Face directory, a 'blocklab train' run or checkpoint, or "
        "a saved model directory) and its tokenizer, continue --prompt by up to "
        "--max-new-tokens tokens (stopping at the tokenizer's eos; greedy with "
        "--temperature 0, else sampled with --top-k / --top-p), and print the prompt and "
        "its continuation."
    ),
    add_arguments=_add_arguments,
    run=_run,
)
