"""blocklab: verified, measured and demonstrated building blocks of modern transformers."""

from __future__ import annotations

from os import PathLike
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported only when load is called
    from blocklab.data.tokenizer import Tokenizer
    from blocklab.models.transformer import TransformerLM

__version__ = "0.1.0"
__all__ = ["load", "load_tokenizer", "__version__"]


def load(path: str | PathLike[str]) -> TransformerLM:
    """The TransformerLM stored at ``path``: a Hugging Face model directory (config.json +
    safetensors), a ``blocklab train`` run directory (its newest intact checkpoint), one
    of its ``ckpt-*`` directories, or a directory ``blocklab convert`` / ``distill``
    wrote (model.safetensors + config.yaml). Its tokenizer: :func:`load_tokenizer` of
    the same path.

    Raises:
        ValueError: ``path`` is none of these, or its files are incomplete or damaged.
    """
    from blocklab.train.sources import load_model

    return load_model(path)


def load_tokenizer(path: str | PathLike[str]) -> Tokenizer:
    """The tokenizer stored with the model at ``path`` (any layout :func:`load` reads:
    a Hugging Face directory's ``tokenizer.json``, a run's ``tokenizer/`` copy), or the
    byte tokenizer when it has none."""
    from blocklab.data.tokenizer import ByteTokenizer
    from blocklab.train.sources import find_model_tokenizer

    return find_model_tokenizer(path) or ByteTokenizer()
