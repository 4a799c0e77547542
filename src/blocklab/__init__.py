"""blocklab: verified, measured and demonstrated building blocks of modern transformers."""

from __future__ import annotations

from os import PathLike
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported only when load is called
    from blocklab.models.transformer import TransformerLM

__version__ = "0.1.0"
__all__ = ["load", "__version__"]


def load(path: str | PathLike[str]) -> TransformerLM:
    """The TransformerLM stored at ``path``: a Hugging Face model directory (config.json +
    safetensors), a ``blocklab train`` run directory (its newest intact checkpoint) or
    one of its ``ckpt-*`` directories.

    Raises:
        ValueError: ``path`` is none of these, or its files are incomplete or damaged.
    """
    from blocklab.models.hf_io import is_hf_dir

    if is_hf_dir(path):
        from blocklab.models.transformer import TransformerLM

        return TransformerLM.from_pretrained(path)
    from blocklab.train.trainer import load_trained_model

    return load_trained_model(path)[0]
