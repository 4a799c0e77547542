"""``blocklab export SOURCE --out DIR [--overwrite] [--family F] [--dtype D]
[--max-shard-size S]``: a model as a Hugging Face directory.

SOURCE is any model :func:`blocklab.train.sources.load_model` reads (a ``blocklab
train`` run -- its newest intact checkpoint -- or checkpoint, a saved directory, a
Hugging Face directory). DIR receives what ``transformers.AutoModelForCausalLM`` and
``AutoTokenizer`` load: ``config.json`` and the safetensors weights
(:func:`blocklab.models.hf_io.save_pretrained`, equal logits), the tokenizer files
when SOURCE has a ``tokenizer.json`` tokenizer (the byte tokenizer has none:
transformers has no byte tokenizer to name), and the tokenizer's bos/eos ids in
``config.json`` and ``generation_config.json`` (so that ``generate`` stops at this
tokenizer's eos, not a default one). The family is ``--family``, else the one the
run was fine-tuned from (``init_from.json``) or SOURCE's own, else read from the
config (q/k/v-only biases: qwen2, a sliding window: mistral, else llama).

A non-empty DIR is refused unless ``--overwrite``, which replaces the files an export
writes (config, weights, tokenizer files) and leaves any others. Everything is
checked (the model loads, maps to the family) before DIR is touched.

Exit codes: 0 success, 2 a usage error.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from blocklab.cli.command import Command, usage_error

__all__ = ["COMMAND"]

_DTYPES = ("float32", "float16", "bfloat16")


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SOURCE",
                        help="a 'blocklab train' run directory or ckpt-* directory, a saved "
                             "model directory, or a Hugging Face directory")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="the Hugging Face directory to write")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the model and tokenizer files of a non-empty DIR")
    parser.add_argument("--family", choices=("llama", "mistral", "qwen2"),
                        help="the Hugging Face model_type (default: the source's, else "
                             "chosen from the config)")
    parser.add_argument("--dtype", choices=_DTYPES,
                        help="of the written weights (default: the model's)")
    parser.add_argument("--max-shard-size", default="5GB", metavar="SIZE",
                        help="split the weights into shards of at most SIZE (default: "
                             "%(default)s)")


def _export_files(out: Path) -> list[Path]:
    """The files of ``out`` an export writes (and --overwrite replaces)."""
    from blocklab.data.hf_tokenizer import SIDE_FILES
    from blocklab.data.tokenizer import BYTES_FILE

    names = ["config.json", "generation_config.json", "model.safetensors",
             "model.safetensors.index.json", "tokenizer.json", "tokenizer.model", BYTES_FILE,
             *SIDE_FILES]
    return [out / n for n in names if (out / n).is_file()] + \
        sorted(out.glob("model-*-of-*.safetensors"))


def _run(args: argparse.Namespace) -> int:
    def error(message: str) -> int:
        return usage_error("export", message)

    import torch

    from blocklab.models.hf import family_of, hf_config_dict
    from blocklab.models.hf_io import _parse_size
    from blocklab.train.sources import find_model_tokenizer, hf_family, load_model

    out, source = Path(args.out).expanduser(), Path(args.source).expanduser()
    if out.exists() and not out.is_dir():
        return error(f"--out {out} is a file, not a directory")
    if out.exists() and source.exists() and out.resolve() == source.resolve():
        return error("--out must not be the source directory")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        shown = ", ".join(sorted(p.name for p in out.iterdir())[:4])
        return error(f"--out {out} is not empty ({shown}); pass --overwrite to replace its "
                     "model and tokenizer files, or choose another directory")
    try:
        _parse_size(args.max_shard_size)
        model = load_model(source)
        tokenizer = find_model_tokenizer(source)
        family = args.family or hf_family(source) or family_of(model.config)
        hf_config_dict(model.config, family)  # can it be written? (before DIR is touched)
    except (ImportError, OSError, TypeError, ValueError) as err:
        return error(str(err))

    if args.overwrite:
        for path in _export_files(out):
            path.unlink()
    dtype = getattr(torch, args.dtype) if args.dtype else None
    try:
        model.save_pretrained(out, family=family, max_shard_size=args.max_shard_size,
                              dtype=dtype)
    except OSError as err:
        return error(f"{err.filename or out}: {err.strerror or err}")
    ids = {"bos_token_id": getattr(tokenizer, "bos_id", None),
           "eos_token_id": getattr(tokenizer, "eos_id", None)}
    config = json.loads((out / "config.json").read_text())
    config.update(ids)  # else transformers' class defaults (Llama: 1 and 2) would apply
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(ids, indent=2) + "\n")
    written = tokenizer.save(out) if tokenizer is not None else []
    what = "the tokenizer" if written else "no tokenizer files (byte tokenizer)"
    print(f"exported {source} as a Hugging Face {family} model with {what} to {out}")
    return 0


COMMAND = Command(
    name="export",
    help="write a trained model (and its tokenizer) as a Hugging Face directory",
    description=(
        "Write a 'blocklab train' run (its newest intact checkpoint), a checkpoint or a "
        "saved model as a Hugging Face Llama/Mistral/Qwen2 directory: config.json, "
        "safetensors weights that transformers loads with equal logits, and the "
        "tokenizer files when the run has a tokenizer.json tokenizer. A non-empty --out "
        "needs --overwrite."
    ),
    add_arguments=_add_arguments,
    run=_run,
)
