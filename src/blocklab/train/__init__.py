"""Training: the full trainer behind ``blocklab train`` (checkpoints, resume, torchrun
DDP/FSDP) and a minimal loop for the lab's language models and classifiers."""

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
