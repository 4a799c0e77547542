"""Naive fp64 oracles for the losses, written from the papers' equations and peers' docs.

* focal loss, Lin et al. 2017 eq. (5): ``FL = -alpha_t (1 - p_t)^gamma log p_t``,
  one Python-float loop per element (softmax by hand with the max subtracted);
* torchvision's ``sigmoid_focal_loss``, transcribed from its documented definition
  (torchvision.ops.focal_loss; torchvision is not installable here), *including*
  its textbook ``(1 - p_t) ** gamma`` -- the form with the NaN gradient at
  saturated logits for 0 < gamma < 1 that blocklab avoids;
* class-balanced weights, Cui et al. 2019: ``(1 - beta) / (1 - beta^n)``;
* class-weighted cross entropy with ``F.cross_entropy``'s normalisation rule;
* Hinton et al. 2015's distillation term ``T^2 KL(softmax(t/T) || softmax(s/T))``.

Nothing here shares code with ``blocklab.losses``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _softmax_row(z: list[float]) -> list[float]:
    top = max(z)
    e = [math.exp(v - top) for v in z]
    s = sum(e)
    return [v / s for v in e]


def _log_softmax_row(z: list[float]) -> list[float]:
    top = max(z)
    lse = top + math.log(sum(math.exp(v - top) for v in z))
    return [v - lse for v in z]


def _rows(logits: Tensor, target: Tensor) -> tuple[list[list[float]], list[int], tuple[int, ...]]:
    """(N, C, d1, ...) logits and (N, d1, ...) targets as lists of C-rows and labels."""
    x = logits.detach().double()
    if x.dim() == 1:
        x, target = x[None], target[None]
    c = x.shape[1]
    x = x.movedim(1, -1).reshape(-1, c)  # (N * d1 * ..., C)
    return x.tolist(), target.reshape(-1).tolist(), tuple(target.shape)


def focal_loss_reference(
    logits: Tensor,
    target: Tensor,
    *,
    gamma: float = 2.0,
    alpha: float | Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
) -> Tensor:
    """``-sum_c alpha_c q_c (1 - p_c)^gamma log p_c`` per element, q the (smoothed) target.

    The mean divides by the number of non-ignored elements (0 if there are none).
    """
    rows, labels, shape = _rows(logits, target)
    c = len(rows[0])
    if alpha is None:
        a = [1.0] * c
    elif isinstance(alpha, Tensor) and alpha.dim() == 1:
        a = [float(v) for v in alpha]
    else:
        a = [float(alpha)] * c
    losses, count = [], 0
    for z, y in zip(rows, labels, strict=True):
        if y == ignore_index:
            losses.append(0.0)
            continue
        count += 1
        p = _softmax_row(z)
        logp = _log_softmax_row(z)
        total = 0.0
        for k in range(c):
            q = (1.0 - label_smoothing) * (k == y) + label_smoothing / c
            if q == 0.0:
                continue
            one_minus = sum(p[j] for j in range(c) if j != k)  # 1 - p_k without cancellation
            total += -a[k] * q * one_minus**gamma * logp[k]
        losses.append(total)
    out = torch.tensor(losses, dtype=torch.float64)
    if reduction == "none":
        return out.reshape(shape) if shape else out[0]
    if reduction == "sum":
        return out.sum()
    return out.sum() / max(count, 1)


def torchvision_sigmoid_focal_loss(
    inputs: Tensor,
    targets: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
) -> Tensor:
    """``torchvision.ops.sigmoid_focal_loss`` as documented (torchvision 0.15+), verbatim math."""
    p = torch.sigmoid(inputs)
    ce_loss = torch.nn.functional.binary_cross_entropy_with_logits(
        inputs, targets, reduction="none"
    )
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    if reduction == "none":
        pass
    elif reduction == "mean":
        loss = loss.mean()
    elif reduction == "sum":
        loss = loss.sum()
    else:
        raise ValueError(f"Invalid Value for arg 'reduction': '{reduction}'")
    return loss


def sigmoid_focal_reference(x: float, t: float, *, gamma: float, alpha: float) -> float:
    """One element of the sigmoid focal loss in Python floats, stable at any |x|."""
    log_p = -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))
    log_1mp = log_p - x  # log(1 - sigmoid(x)) = log sigmoid(x) - x
    ce = -(t * log_p + (1 - t) * log_1mp)
    one_minus_pt = math.exp(log_p) * (1 - t) + math.exp(log_1mp) * t
    loss = ce * one_minus_pt**gamma
    if alpha >= 0:
        loss *= alpha * t + (1 - alpha) * (1 - t)
    return loss


def class_weights_reference(counts: list[int], method: str, beta: float = 0.999) -> list[float]:
    if method == "inverse":
        w = [1.0 / n for n in counts]
    elif method == "inverse_sqrt":
        w = [1.0 / math.sqrt(n) for n in counts]
    else:
        w = [(1.0 - beta) / (1.0 - beta**n) for n in counts]
    s = sum(w)
    return [v * len(counts) / s for v in w]


def weighted_ce_reference(logits: Tensor, target: Tensor, weight: Tensor, *,
                          normalize: str = "weight", ignore_index: int = -100) -> float:
    """``sum_i w[y_i] CE_i`` divided by ``sum_i w[y_i]`` ("weight") or by N ("count")."""
    rows, labels, _ = _rows(logits, target)
    w = [float(v) for v in weight]
    total, wsum, count = 0.0, 0.0, 0
    for z, y in zip(rows, labels, strict=True):
        if y == ignore_index:
            continue
        total += -w[y] * _log_softmax_row(z)[y]
        wsum += w[y]
        count += 1
    return total / (wsum if normalize == "weight" else count)


def kd_reference(student: Tensor, teacher: Tensor, temperature: float, *,
                 mask: Tensor | None = None, reverse: bool = False) -> float:
    """Mean over positions of ``T^2 sum_c p_c log(p_c / q_c)``, p the teacher's (forward)."""
    c = student.shape[-1]
    s_rows = student.detach().double().reshape(-1, c).tolist()
    t_rows = teacher.detach().double().reshape(-1, c).tolist()
    keep = [True] * len(s_rows) if mask is None else mask.reshape(-1).tolist()
    total, count = 0.0, 0
    for zs, zt, k in zip(s_rows, t_rows, keep, strict=True):
        if not k:
            continue
        ls = _log_softmax_row([v / temperature for v in zs])
        lt = _log_softmax_row([v / temperature for v in zt])
        lp, lq = (ls, lt) if reverse else (lt, ls)
        total += sum(math.exp(a) * (a - b) for a, b in zip(lp, lq, strict=True)
                     if math.exp(a) > 0)
        count += 1
    return temperature**2 * total / max(count, 1)
