"""Models built from blocklab's blocks, and Hugging Face interop."""

from blocklab.models.classifier import (
    ClassifierOutput,
    DocumentClassifier,
    FlatTransformerEncoder,
    make_classifier,
)
from blocklab.models.config import PRESETS, TransformerConfig
from blocklab.models.generate import generate
from blocklab.models.transformer import TransformerLM

__all__ = [
    "TransformerConfig",
    "TransformerLM",
    "PRESETS",
    "generate",
    "DocumentClassifier",
    "FlatTransformerEncoder",
    "ClassifierOutput",
    "make_classifier",
]
