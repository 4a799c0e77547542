"""Focal loss: cross entropy that down-weights the examples a model already gets right.

Lin et al. 2017, "Focal Loss for Dense Object Detection" (RetinaNet), eq. (5):

    FL(p_t) = -alpha_t (1 - p_t)^gamma log(p_t)

where ``p_t`` is the probability the model gives the true class. With ``gamma = 0``
and no ``alpha`` it is plain cross entropy; ``gamma > 0`` shrinks the loss of
well-classified examples (p_t near 1) so the many easy ones (background anchors)
no longer swamp the few hard ones.

Two forms:

* :func:`focal_loss` -- softmax over C classes, the multi-class form, with the
  interface of ``F.cross_entropy`` (logits (N, C) or (N, C, d1, ...), integer
  targets, ``ignore_index``, ``label_smoothing``); ``alpha`` is a scalar or a
  per-class tensor, ``loss_i = -alpha[y_i] (1 - p_t)^gamma log p_t``.
* :func:`sigmoid_focal_loss` -- one independent sigmoid per logit (binary and
  multi-label, RetinaNet's own form) with the semantics and numbers of
  ``torchvision.ops.sigmoid_focal_loss``: ``alpha_t = alpha t + (1 - alpha)(1 - t)``,
  ``alpha < 0`` turns the weighting off, default reduction ``"none"``. The
  detection normaliser -- the summed loss divided by the number of positive
  targets, as RetinaNet divides by the anchors assigned to a ground-truth box -- is
  ``reduction="positives"``.

Numerics. The textbook ``(1 - p).pow(gamma)`` is 0 when ``p`` rounds to 1, and its
derivative ``gamma (1 - p)^(gamma - 1)`` is then infinite for ``0 < gamma < 1``:
0 * inf = NaN in the backward pass (kornia#918, keras-retinanet#706), and in fp16
``log(sigmoid(x))`` underflows (pytorch#40497). Here the modulating factor is
``exp(gamma * log(1 - p_t))`` with ``log(1 - p_t)`` computed without forming
``1 - p_t``: for the softmax with hard targets, the log of the other classes'
summed ``exp(z - max)`` minus the log of the whole sum (finite, about minus the logit
gap, when p_t rounds to 1; with smoothed targets, :func:`log1m_softmax`); for the
sigmoid, ``log(1 - p_t) = logsigmoid(-x)`` or ``logsigmoid(x)``.

Speed. Hard targets (the common case of both forms) go through fused autograd
functions with the gradient written out: the softmax form in blocks of rows, three
passes over the logits forward and two backward, faster than ``F.cross_entropy``
plus the textbook factor (``benchmarks/bench_losses.py``).

Half-precision inputs are computed in fp32. Per-element losses (``reduction="none"``)
come back in the input dtype, as ``F.cross_entropy``'s; a reduced loss stays in fp32
(as ``kd_loss`` and ``linear_cross_entropy`` return theirs): four fp16 losses of 6e4
sum past fp16's largest value, 65504, and rounding the sum back would give inf. Checked against fp64 loop oracles in
``tests/reference/losses.py`` and against torchvision's formula.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from blocklab._alloc import row_spans, scratch
from blocklab._checks import check_float, check_ids, check_int

__all__ = [
    "focal_loss",
    "sigmoid_focal_loss",
    "log1m_softmax",
    "prior_bias",
    "FocalLoss",
    "SigmoidFocalLoss",
]

Reduction = Literal["none", "mean", "sum"]
SigmoidReduction = Literal["none", "mean", "sum", "positives"]


# ------------------------------------------------------------------------------ checks

def _check_gamma(gamma: float) -> float:
    return check_float("gamma", gamma, ge=0)


def _check_reduction(reduction: str, allowed: tuple[str, ...]) -> None:
    if reduction not in allowed:
        raise ValueError(f"reduction ({reduction!r}) must be one of {allowed}")


def _compute_dtype(x: Tensor) -> torch.dtype:
    # fp16/bf16 lack the range and resolution for log-probabilities of saturated logits.
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32


def _check_logits(logits: Tensor, name: str = "logits") -> None:
    if not isinstance(logits, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {logits.dtype}")


def _check_class_targets(logits: Tensor, target: Tensor, ignore_index: int) -> None:
    """``target`` holds class indices in [0, C) (or ``ignore_index``) of the right shape."""
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a tensor, got {type(target).__name__}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(
            f"target must hold integer class indices, got dtype {target.dtype} "
            "(class probabilities are not supported)"
        )
    if logits.dim() == 0:
        raise ValueError("logits must be (C,), (N, C) or (N, C, d1, ...), got a scalar")
    expected = () if logits.dim() == 1 else (logits.shape[0], *logits.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(
            f"target shape {tuple(target.shape)} must be {expected} for logits of shape "
            f"{tuple(logits.shape)} (logits (N, C, d1, ...) take targets (N, d1, ...))"
        )
    n_classes = logits.shape[0] if logits.dim() == 1 else logits.shape[1]
    if n_classes < 1:
        raise ValueError(f"logits must have at least one class, got C = {n_classes}")
    # Reads the data: skipped while torch.compile traces; eager calls check every time.
    check_ids("target", target, n_classes, bound="C", what="class", ignore_index=ignore_index)


def _class_alpha(alpha: float | Tensor | None, n_classes: int, ref: Tensor) -> Tensor | None:
    """``alpha`` as a (C,) tensor on ``ref``'s device and dtype, or None."""
    if alpha is None:
        return None
    if isinstance(alpha, Tensor):
        if alpha.dim() == 0:
            alpha = float(alpha)
        else:
            if alpha.dim() != 1 or alpha.numel() != n_classes:
                raise ValueError(
                    f"alpha must be a scalar or have one weight per class, shape "
                    f"({n_classes},); got shape {tuple(alpha.shape)}"
                )
            if not alpha.is_floating_point():
                alpha = alpha.float()
            if bool((alpha < 0).any()) or not bool(torch.isfinite(alpha).all()):
                raise ValueError(f"alpha must be finite and >= 0, got {alpha.tolist()}")
            return alpha.to(device=ref.device, dtype=ref.dtype)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(
            f"alpha must be None, a float or a (C,) tensor, got {type(alpha).__name__}"
        )
    if not (math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"alpha ({alpha}) must be finite and >= 0")
    return torch.full((n_classes,), float(alpha), device=ref.device, dtype=ref.dtype)


# ---------------------------------------------------------------------------- softmax



# Rows of logits per block of the fused hard-target loss: at most this many elements
# per torch thread, so exp(z - max) is made and used while it is in cache (1 MiB per
# thread was the fastest measured on a 2-core Xeon, from 16k x 256 to 4k x 32k).
_FOCAL_BLOCK_PER_THREAD = 1 << 18


class _HardFocal(torch.autograd.Function):
    """Per-row focal loss ``-(1 - p_t)^gamma log p_t`` for (N, C) logits and hard
    targets, in blocks of rows; (N,) losses.

    Forward, per row: m = max z, e = exp(z - m) with the target's entry zeroed, R =
    sum e (the other classes: summed, never ``1 - p_t`` by subtraction, so it stays
    right when p_t rounds to 1), S = R + e_t (log S = log1p(R) when t is the max),
    log p_t = z_t - m - log S and log(1 - p_t) = log R - log S. Backward, with
    a = log p_t, f = (1 - p_t)^gamma and g the incoming gradient:
    dz_j = g f (p_j - gamma a p_t e_j / R) for j != t, dz_t = -g f (R / S - gamma a p_t).

    When a gradient is wanted (``keep``) e is kept, one (N, C) buffer, and the backward
    scales it into the gradient in place: one allocation and one pass, where
    ``F.cross_entropy`` allocates its log-probabilities and then its gradient. A second
    backward through the same graph (``retain_graph``) recomputes e from the logits.
    """

    @staticmethod
    def forward(ctx, z, target, gamma, keep):  # type: ignore[override]
        N, C = z.shape
        t = target[:, None]
        m, log_r, e_t = (torch.empty(N, 1, dtype=z.dtype, device=z.device) for _ in range(3))
        e_all = torch.empty((N, C), dtype=z.dtype, device=z.device) if keep else None
        for r0, r1 in row_spans(N, C, _FOCAL_BLOCK_PER_THREAD):
            zb, tb = z[r0:r1], t[r0:r1]
            e = e_all[r0:r1] if keep else scratch("focal", zb.shape, z.dtype, z.device)
            torch.amax(zb, 1, keepdim=True, out=m[r0:r1])
            torch.sub(zb, m[r0:r1], out=e).exp_()
            torch.gather(e, 1, tb, out=e_t[r0:r1])
            torch.sum(e.scatter_(1, tb, 0.0), 1, keepdim=True, out=log_r[r0:r1])
        # log S = log1p(R) where the target is the max (e_t = 1): log p_t stays right
        # down to -1e-38 instead of rounding to 0.
        log_s = torch.where(e_t == 1, torch.log1p(log_r), torch.log(log_r + e_t))
        log_r.log_()
        log_pt = z.gather(1, t).sub_(m).sub_(log_s)  # (N, 1)
        log_1m = log_r - log_s
        f = torch.exp(gamma * log_1m) if gamma != 0 else torch.ones_like(log_1m)
        ctx.save_for_backward(z, target, m, log_s, log_1m, log_pt, f)
        ctx.gamma, ctx.e = gamma, e_all
        return (-f * log_pt)[:, 0]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        z, target, m, log_s, log_1m, log_pt, f = ctx.saved_tensors
        gamma = ctx.gamma
        t = target[:, None]
        g = grad[:, None].to(z.dtype) * f  # g f, (N, 1)
        p_t = log_pt.exp()
        one_m = log_1m.exp()  # R / S = 1 - p_t, exactly as far as R is
        # Coefficient of e_j for j != t: g f / S - g f gamma a p_t / R; a row with R = 0
        # has p_t = 1 and a = 0, and every other class's e_j is 0: its term is 0.
        coef = g * torch.exp(-log_s)
        # a p_t -> 0 as p_t -> 0 (a target logit of -inf: loss inf, gradient finite, as
        # F.cross_entropy's).
        ap = gamma * torch.where(p_t > 0, log_pt * p_t, 0.0)
        if gamma != 0:
            per_r = torch.where(one_m > 0, torch.exp(-(log_1m + log_s)), 0.0)  # 1 / R
            coef = coef - g * ap * per_r
        dz_t = -g * (one_m - ap)
        dz, ctx.e = ctx.e, None  # e becomes the gradient; a later backward recomputes it
        if dz is None:
            dz = torch.sub(z, m).exp_()
        dz.mul_(coef).scatter_(1, t, dz_t)
        return dz, None, None, None


def _hard_focal_formula(z: Tensor, target: Tensor, gamma: float) -> Tensor:
    """What :class:`_HardFocal` computes, as plain differentiable ops (for tracing):
    z (N, C, ...), target (N, 1, ...) -> (N, ...). log(1 - p_t) is the log-sum-exp of
    the other classes (the target's logit set to the lowest float, not -inf, so one
    class alone stays finite) minus that of all."""
    lse = z.logsumexp(1, keepdim=True)
    log_pt = z.gather(1, target) - lse
    if gamma == 0:
        return -log_pt[:, 0]
    rest = z.scatter(1, target, torch.finfo(z.dtype).min).logsumexp(1, keepdim=True) - lse
    return -(torch.exp(gamma * rest) * log_pt)[:, 0]


def log1m_softmax(logits: Tensor, dim: int = -1) -> Tensor:
    """``log(1 - softmax(logits))`` along ``dim``, accurate and with finite gradients.

    Every class but the most likely one has p <= 1/2, where ``log1p(-p)`` is
    accurate; the most likely one gets ``log(sum of the other p)`` =
    ``logsumexp(other logits) - logsumexp(all logits)``, which stays finite (about
    minus the logit gap) when ``p`` rounds to 1.
    """
    lse = torch.logsumexp(logits, dim, keepdim=True)
    logp = logits - lse
    is_top = torch.zeros_like(logits, dtype=torch.bool).scatter_(
        dim, logits.argmax(dim, keepdim=True), True
    )
    # The lowest finite value, not -inf, masks the top class: a row with no other
    # finite logit (C = 1) then gets a very negative log(1 - p), not a NaN gradient.
    lowest = torch.finfo(logits.dtype).min
    rest = logits.masked_fill(is_top, lowest).logsumexp(dim, keepdim=True) - lse
    # The top class's entry is replaced before log1p so the unused branch of the
    # where() has a finite derivative (0 * inf would be NaN in the backward pass).
    direct = torch.log1p(-logp.masked_fill(is_top, -1.0).exp())
    return torch.where(is_top, rest, direct)


def focal_loss(
    logits: Tensor,
    target: Tensor,
    *,
    gamma: float = 2.0,
    alpha: float | Tensor | None = None,
    reduction: Reduction = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
) -> Tensor:
    """Softmax focal loss, ``-alpha[y] (1 - p_y)^gamma log p_y`` per element.

    Args:
        logits: (C,), (N, C) or (N, C, d1, ...) unnormalised scores, as for
            ``F.cross_entropy`` (an LM's (B, T, V) logits go in as (B, V, T), or
            flattened to (B*T, V)).
        target: () , (N,) or (N, d1, ...) integer class indices in [0, C), or
            ``ignore_index``.
        gamma: focusing parameter >= 0; 0 gives cross entropy.
        alpha: None, a scalar factor, or a (C,) tensor of per-class weights
            ``alpha[y_i]``.
        reduction: ``"none"`` (a loss per element, 0 where ignored, shaped like
            ``target``), ``"sum"``, or ``"mean"`` -- the sum divided by the number of
            non-ignored elements, *not* by the sum of the ``alpha`` weights (which is
            what ``F.cross_entropy(weight=...)`` does; see
            :func:`blocklab.losses.weighted_cross_entropy`). When every element is
            ignored the mean is 0 (``F.cross_entropy`` gives NaN).
        ignore_index: target value that contributes neither loss nor gradient.
        label_smoothing: eps in [0, 1]: the target distribution is
            ``(1 - eps) one_hot(y) + eps / C`` and the loss
            ``-sum_c alpha_c q_c (1 - p_c)^gamma log p_c``, which for ``gamma = 0``
            is ``F.cross_entropy(..., label_smoothing=eps)``.

    Returns:
        A scalar, or a tensor shaped like ``target`` for ``reduction="none"``, in
        ``logits``' dtype -- except a reduced loss of fp16/bf16 logits, which is fp32
        (summed in fp32 and kept there: the sum can exceed fp16's range). With
        ``gamma=0`` and ``alpha=None`` it equals ``F.cross_entropy`` (up to summation
        order).
    """
    _check_logits(logits)
    gamma = _check_gamma(gamma)
    _check_reduction(reduction, ("none", "mean", "sum"))
    check_int("ignore_index", ignore_index)
    check_float("label_smoothing", label_smoothing, ge=0, le=1)
    _check_class_targets(logits, target, ignore_index)
    if logits.dim() == 1:  # one unbatched example: (C,) with a () target
        logits, target = logits[None], target[None]
        unbatched = True
    else:
        unbatched = False

    n_classes = logits.shape[1]
    z = logits.to(_compute_dtype(logits))  # (N, C, ...)
    weights = _class_alpha(alpha, n_classes, z)
    target = target.long()
    valid = target != ignore_index  # (N, ...)
    safe_target = target.masked_fill(~valid, 0)[:, None]  # (N, 1, ...)

    if label_smoothing == 0:
        # Hard targets: only the target class's (1 - p_t)^gamma is needed; one fused
        # kernel over (rows, C).
        if torch.compiler.is_compiling():  # traced: the plain formula, which Inductor fuses
            loss = _hard_focal_formula(z, safe_target, gamma)
        else:
            rows = z if z.dim() == 2 else z.movedim(1, -1).reshape(-1, n_classes)
            keep = torch.is_grad_enabled() and rows.requires_grad
            loss = _HardFocal.apply(rows, safe_target.reshape(-1), gamma, keep)
            loss = loss.view(target.shape)
        if weights is not None:
            loss = loss * weights[safe_target[:, 0]]  # alpha[y_i]
    else:
        logp = F.log_softmax(z, dim=1)  # (N, C, ...)
        # Smoothed targets put mass on every class: (1 - p_c)^gamma log p_c for all c.
        modulated = logp
        if gamma != 0:
            modulated = logp * torch.exp(gamma * log1m_softmax(z, dim=1))
        if weights is not None:
            shape = (1, n_classes) + (1,) * (z.dim() - 2)
            modulated = modulated * weights.view(shape)  # alpha_c over (N, C, ...)
        hard = -modulated.gather(1, safe_target)[:, 0]  # (N, ...)
        smooth = -modulated.sum(dim=1) / n_classes  # uniform part: eps / C on every class
        loss = (1.0 - label_smoothing) * hard + label_smoothing * smooth
    loss = loss.masked_fill(~valid, 0.0)

    if reduction == "none":
        return (loss[0] if unbatched else loss).to(logits.dtype)
    if reduction == "sum":
        return loss.sum()  # in the compute dtype: fp32 for half-precision logits
    return loss.sum() / valid.sum().clamp_min(1)


# ---------------------------------------------------------------------------- sigmoid

class _HardSigmoidFocal(torch.autograd.Function):
    """Per-element ``alpha_t BCE(x, t) (1 - p_t)^gamma`` for 0/1 targets (``pos``:
    t == 1), with its gradient written out instead of an autograd graph of a dozen
    elementwise ops.

    With u = x for t = 0 and -x for t = 1: BCE = softplus(u), 1 - p_t = sigmoid(u),
    p_t = exp(-softplus(u)), so loss = softplus(u) sigmoid(u)^gamma and
    dloss/du = sigmoid(u)^gamma (sigmoid(u) + gamma softplus(u) p_t): finite for every
    gamma >= 0, with no (1 - p_t)^(gamma - 1).
    """

    @staticmethod
    def forward(ctx, x, pos, gamma, alpha):  # type: ignore[override]
        u = torch.where(pos, -x, x)
        ce = F.softplus(u)
        log_q = F.logsigmoid(u)  # log(1 - p_t)
        w = None if alpha < 0 else torch.where(pos, alpha, 1.0 - alpha).to(x.dtype)
        loss = ce * torch.exp(gamma * log_q) if gamma != 0 else ce.clone()
        if w is not None:
            loss.mul_(w)
        ctx.save_for_backward(pos, ce, log_q, w)
        ctx.gamma = gamma
        return loss

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        pos, ce, log_q, w = ctx.saved_tensors
        gamma = ctx.gamma
        du = torch.exp(log_q)  # sigmoid(u)
        if gamma != 0:
            # softplus(u) p_t -> 0 as u -> inf; the clamp keeps inf * 0 out of it.
            du.addcmul_(ce.clamp(max=1e3), torch.exp(-ce), value=gamma)
            du.mul_(torch.exp(gamma * log_q))
        du.mul_(grad)
        if w is not None:
            du.mul_(w)
        return torch.where(pos, -du, du), None, None, None


def sigmoid_focal_loss(
    logits: Tensor,
    targets: Tensor,
    *,
    gamma: float = 2.0,
    alpha: float = 0.25,
    reduction: SigmoidReduction = "none",
) -> Tensor:
    """Sigmoid focal loss (binary / multi-label), as ``torchvision.ops.sigmoid_focal_loss``.

    Per element, with ``p = sigmoid(x)`` and ``p_t = p t + (1 - p)(1 - t)``:

        loss = alpha_t * BCE(x, t) * (1 - p_t)^gamma,  alpha_t = alpha t + (1 - alpha)(1 - t)

    Args:
        logits: any shape, unnormalised scores, one independent sigmoid each.
        targets: same shape, in [0, 1] (hard 0/1 labels or soft ones; bool and
            integer tensors are converted). Treated as constants: no gradient flows
            to them.
        gamma: focusing parameter >= 0.
        alpha: weight of the positives in [0, 1]; negatives get ``1 - alpha``.
            ``alpha < 0`` turns the weighting off (torchvision's convention).
        reduction: ``"none"`` (default, torchvision's), ``"mean"`` over all
            elements, ``"sum"``, or ``"positives"``: the sum divided by
            ``max(1, targets.sum())`` -- RetinaNet's normaliser, the number of
            positive targets (anchors assigned to an object), so that the loss does
            not shrink as the number of easy negatives grows.

    Returns:
        A tensor shaped like ``logits`` for ``"none"``, in ``logits``' dtype, else a
        scalar, in ``logits``' dtype or fp32 for fp16/bf16 logits (summed in fp32 and
        kept there: the sum can exceed fp16's range).
    """
    _check_logits(logits)
    if not isinstance(targets, Tensor):
        raise TypeError(f"targets must be a tensor, got {type(targets).__name__}")
    if targets.shape != logits.shape:
        raise ValueError(
            f"targets shape {tuple(targets.shape)} must equal logits shape {tuple(logits.shape)}"
        )
    gamma = _check_gamma(gamma)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or math.isnan(alpha):
        raise TypeError(f"alpha must be a float, got {type(alpha).__name__} ({alpha!r})")
    if alpha > 1:
        raise ValueError(f"alpha ({alpha}) must be <= 1 (or < 0 to turn weighting off)")
    _check_reduction(reduction, ("none", "mean", "sum", "positives"))

    x = logits.to(_compute_dtype(logits))
    t = targets.detach().to(x.dtype)
    pos = t == 1
    # Both tests read the data: while torch.compile traces, the general formula (right
    # for 0/1 targets too) and no range check.
    tracing = torch.compiler.is_compiling()
    if not tracing and t.numel() and bool((pos | (t == 0)).all()):  # 0/1: the fused form
        loss = _HardSigmoidFocal.apply(x, pos, gamma, float(alpha))
    else:
        if not tracing and t.numel() and bool(((t < 0) | (t > 1)).any()):
            raise ValueError(
                f"targets must lie in [0, 1], got values in [{float(t.min())}, {float(t.max())}]"
            )
        log_p = F.logsigmoid(x)  # log p
        log_1mp = F.logsigmoid(-x)  # log (1 - p)
        ce = -(t * log_p + (1 - t) * log_1mp)  # = BCE with logits, stably
        # 1 - p_t = p (1 - t) + (1 - p) t, in log space. t carries no gradient, so
        # log(0) = -inf is harmless: logaddexp then just drops that term.
        log_1m_pt = torch.logaddexp(log_p + torch.log1p(-t), log_1mp + torch.log(t))
        loss = ce * torch.exp(gamma * log_1m_pt)
        if alpha >= 0:
            loss = (alpha * t + (1 - alpha) * (1 - t)) * loss

    if reduction == "mean":
        return loss.mean()  # reductions stay in the compute dtype (fp32 for half)
    if reduction == "sum":
        return loss.sum()
    if reduction == "positives":
        return loss.sum() / t.sum().clamp_min(1.0)
    return loss.to(logits.dtype)


def prior_bias(prior: float = 0.01) -> float:
    """RetinaNet's initial bias ``-log((1 - pi) / pi)`` for the final sigmoid layer.

    Every logit then starts at probability ``pi``, so the loss of the (many)
    negatives does not dominate -- and destabilise -- the first steps of training.
    """
    if not 0.0 < prior < 1.0:
        raise ValueError(f"prior ({prior}) must be in (0, 1)")
    return -math.log((1.0 - prior) / prior)


# ---------------------------------------------------------------------------- modules

class FocalLoss(nn.Module):
    """Softmax focal loss as a module; see :func:`focal_loss`.

    A per-class ``alpha`` tensor is a buffer, so it follows the module's ``.to()``.
    For detection-style training with one sigmoid per class and the
    number-of-positives normaliser, use :class:`SigmoidFocalLoss`.
    """

    alpha_weights: Tensor | None

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: float | Tensor | None = None,
        *,
        reduction: Reduction = "mean",
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.gamma = _check_gamma(gamma)
        _check_reduction(reduction, ("none", "mean", "sum"))
        self.reduction = reduction
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.alpha_scalar: float | None = None
        if isinstance(alpha, Tensor) and alpha.dim() > 0:
            self.register_buffer("alpha_weights", alpha.detach().clone().float())
        else:
            self.alpha_weights = None
            self.alpha_scalar = None if alpha is None else float(alpha)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Args: logits (N, C, ...), target (N, ...). Returns the reduced loss."""
        alpha = self.alpha_weights if self.alpha_weights is not None else self.alpha_scalar
        return focal_loss(logits, target, gamma=self.gamma, alpha=alpha,
                          reduction=self.reduction, ignore_index=self.ignore_index,
                          label_smoothing=self.label_smoothing)

    def extra_repr(self) -> str:
        alpha = "per-class" if self.alpha_weights is not None else self.alpha_scalar
        return f"gamma={self.gamma}, alpha={alpha}, reduction={self.reduction!r}"


class SigmoidFocalLoss(nn.Module):
    """Sigmoid focal loss as a module; see :func:`sigmoid_focal_loss`.

    ``reduction="positives"`` is RetinaNet's normaliser (sum / number of positives).
    """

    def __init__(self, gamma: float = 2.0, alpha: float = 0.25, *,
                 reduction: SigmoidReduction = "positives") -> None:
        super().__init__()
        self.gamma = _check_gamma(gamma)
        _check_reduction(reduction, ("none", "mean", "sum", "positives"))
        self.alpha = alpha
        self.reduction = reduction

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Args: logits and targets of one shape. Returns the reduced loss."""
        return sigmoid_focal_loss(logits, targets, gamma=self.gamma, alpha=self.alpha,
                                  reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, alpha={self.alpha}, reduction={self.reduction!r}"
