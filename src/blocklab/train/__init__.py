"""Training: a minimal loop for language models and classifiers used by the lab."""

from blocklab.train.loop import (
    TrainHistory,
    cosine_lr,
    evaluate_classifier,
    evaluate_lm,
    train_classifier,
    train_lm,
)

__all__ = [
    "TrainHistory",
    "cosine_lr",
    "evaluate_classifier",
    "evaluate_lm",
    "train_classifier",
    "train_lm",
]
