"""Class weights for imbalanced data, and weighted cross entropy with its normalisation stated.

Weighted cross entropy multiplies each example's loss by the weight of its true
class, ``w[y_i] * CE_i``, so that a rare class counts as much as a frequent one.
Three ways to derive the weights from the class counts ``n_c``:

* ``"inverse"``: ``w_c ~ 1 / n_c`` -- every class then carries the same total weight;
* ``"inverse_sqrt"``: ``w_c ~ 1 / sqrt(n_c)`` -- a milder correction;
* ``"effective_number"``: Cui et al. 2019, "Class-Balanced Loss Based on Effective
  Number of Samples": ``w_c ~ (1 - beta) / (1 - beta^n_c)``, the inverse of the
  "effective number" of samples ``(1 - beta^n) / (1 - beta)``, which grows like n
  for small n and saturates at ``1 / (1 - beta)``; beta = 0 gives equal weights,
  beta -> 1 gives ``"inverse"``.

All are normalised to sum to the number of classes C (Cui et al.'s convention), so
balanced counts give weights of exactly 1.

Normalisation of the weighted mean (pytorch#40560): ``F.cross_entropy(weight=w)``
with ``reduction="mean"`` divides ``sum_i w[y_i] CE_i`` by ``sum_i w[y_i]``, *not*
by N. :func:`weighted_cross_entropy` states the choice: ``normalize="weight"``
(the default, torch's) or ``normalize="count"`` (divide by the number N of
non-ignored targets, so that the weights also scale the loss, as the alpha of
:func:`blocklab.losses.focal_loss` does). Checked against fp64 loop oracles in
``tests/reference/losses.py`` and against ``F.cross_entropy``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from blocklab.losses.focal import _check_class_targets, _check_logits

__all__ = ["class_weights", "weighted_cross_entropy", "WEIGHT_METHODS"]

WeightMethod = Literal["inverse", "inverse_sqrt", "effective_number"]
WEIGHT_METHODS: tuple[str, ...] = ("inverse", "inverse_sqrt", "effective_number")


def class_weights(
    counts: Tensor | Sequence[int] | Sequence[float],
    method: WeightMethod = "inverse",
    *,
    beta: float = 0.999,
) -> Tensor:
    """Per-class loss weights from class counts, normalised to sum to C.

    Args:
        counts: (C,) number of training examples of each class, all > 0 (a class
            with no example has no defined weight; drop it or give it a count).
        method: ``"inverse"`` (1/n), ``"inverse_sqrt"`` (1/sqrt(n)) or
            ``"effective_number"`` ((1 - beta) / (1 - beta^n), Cui et al. 2019).
        beta: in [0, 1), used by ``"effective_number"`` only; Cui et al. use
            0.9-0.9999, 0.999 on CIFAR-LT.

    Returns:
        (C,) float32 weights with ``weights.sum() == C``.
    """
    if method not in WEIGHT_METHODS:
        raise ValueError(f"method ({method!r}) must be one of {WEIGHT_METHODS}")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= beta < 1.0:
        raise ValueError(f"beta ({beta!r}) must be a float in [0, 1)")
    n = torch.as_tensor(counts, dtype=torch.float64)
    if n.dim() != 1 or n.numel() == 0:
        raise ValueError(f"counts must be a non-empty 1-D sequence (C,), got shape {tuple(n.shape)}")
    bad = (~torch.isfinite(n)) | (n <= 0)
    if bool(bad.any()):
        raise ValueError(
            f"counts must be finite and > 0; classes {bad.nonzero().flatten().tolist()} have "
            f"counts {n[bad].tolist()}"
        )
    if method == "inverse":
        w = 1.0 / n
    elif method == "inverse_sqrt":
        w = n.rsqrt()
    elif beta == 0.0:
        w = torch.ones_like(n)
    else:
        # 1 - beta^n = -expm1(n log beta): accurate when beta^n is close to 1.
        w = (1.0 - beta) / -torch.expm1(n * math.log(beta))
    return (w * (n.numel() / w.sum())).float()


def weighted_cross_entropy(
    logits: Tensor,
    target: Tensor,
    weight: Tensor,
    *,
    normalize: Literal["weight", "count"] = "weight",
    reduction: Literal["none", "mean", "sum"] = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
) -> Tensor:
    """Class-weighted cross entropy, ``w[y_i] * CE_i``, with an explicit mean.

    Args:
        logits: (C,), (N, C) or (N, C, d1, ...), as for ``F.cross_entropy``.
        target: (), (N,) or (N, d1, ...) class indices in [0, C) or ``ignore_index``.
        weight: (C,) non-negative class weights (e.g. from :func:`class_weights`).
        normalize: for ``reduction="mean"``: ``"weight"`` divides the weighted sum
            by ``sum_i w[y_i]`` (``F.cross_entropy``'s rule: a weighted average,
            whose scale does not depend on the weights); ``"count"`` divides by the
            number of non-ignored targets (a plain average of weighted losses).
        reduction: ``"none"`` (per element, 0 where ignored), ``"sum"`` or ``"mean"``.
        ignore_index, label_smoothing: as in ``F.cross_entropy``.

    Returns:
        The loss in ``logits``' dtype; 0 when every target is ignored (torch: NaN).
    """
    _check_logits(logits)
    if normalize not in ("weight", "count"):
        raise ValueError(f"normalize ({normalize!r}) must be 'weight' or 'count'")
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"reduction ({reduction!r}) must be one of ('none', 'mean', 'sum')")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing ({label_smoothing}) must be in [0, 1]")
    _check_class_targets(logits, target, ignore_index)
    n_classes = logits.shape[0] if logits.dim() == 1 else logits.shape[1]
    if not isinstance(weight, Tensor):
        raise TypeError(f"weight must be a (C,) tensor, got {type(weight).__name__}")
    if weight.dim() != 1 or weight.numel() != n_classes:
        raise ValueError(
            f"weight must have one entry per class, shape ({n_classes},); got "
            f"{tuple(weight.shape)}"
        )
    if bool((weight < 0).any()):
        raise ValueError(f"weight must be >= 0, got {weight.tolist()}")
    z = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
    w = weight.to(device=z.device, dtype=z.dtype)
    target = target.long()
    per = F.cross_entropy(z, target, weight=w, reduction="none", ignore_index=ignore_index,
                          label_smoothing=label_smoothing)
    if reduction == "none":
        return per.to(logits.dtype)
    total = per.sum()
    if reduction == "sum":
        return total.to(logits.dtype)
    valid = target != ignore_index
    if normalize == "weight":
        denom = w[target.masked_fill(~valid, 0)].masked_fill(~valid, 0).sum()
        # All targets ignored, or all weights 0: 0, not 0/0.
        denom = torch.where(denom > 0, denom, torch.ones_like(denom))
    else:
        denom = valid.sum().clamp_min(1).to(z.dtype)
    return (total / denom).to(logits.dtype)
