"""Losses: focal loss and class weighting for imbalanced data, knowledge distillation."""

from blocklab.losses.distill import DistillationLoss, kd_loss
from blocklab.losses.focal import (
    FocalLoss,
    SigmoidFocalLoss,
    focal_loss,
    log1m_softmax,
    prior_bias,
    sigmoid_focal_loss,
)
from blocklab.losses.weighted import class_weights, weighted_cross_entropy

__all__ = [
    "DistillationLoss",
    "FocalLoss",
    "SigmoidFocalLoss",
    "class_weights",
    "focal_loss",
    "kd_loss",
    "log1m_softmax",
    "prior_bias",
    "sigmoid_focal_loss",
    "weighted_cross_entropy",
]
