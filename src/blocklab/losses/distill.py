"""Knowledge distillation: train a student on a teacher's temperature-softened outputs.

Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network": the
teacher's soft targets ``softmax(z_t / T)`` carry how it ranks the wrong classes
("dark knowledge"); a student trained to match them at temperature T learns more
per example than from one-hot labels. The distillation term is

    L_KD = T^2 * KL( softmax(z_t / T) || softmax(z_s / T) )

The T^2 keeps its gradient, ``dL/dz_s = T (softmax(z_s/T) - softmax(z_t/T))``,
about the same size whatever T (for large T it tends to ``(z_s - z_t) / C`` for
zero-mean logits), so the weight between it and the hard-label loss need not be
retuned when T changes; forgetting it (IntelLabs/distiller#122) makes the soft
term vanish like 1/T^2. The KL is summed over classes and *averaged over
examples* ("batchmean"; ``nn.KLDivLoss``'s default "mean" divides by N*C as well,
the other classic bug). The teacher's logits are detached.

:class:`DistillationLoss` is Hinton's weighted sum,
``alpha * L_KD + (1 - alpha) * CE(z_s, y)``. Checked against an fp64 loop oracle
(``tests/reference/losses.py``) and ``F.kl_div(..., reduction="batchmean")``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from blocklab._alloc import row_spans

__all__ = ["kd_loss", "DistillationLoss"]

Direction = Literal["forward", "reverse"]


def _check_temperature(temperature: float) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a float, got {type(temperature).__name__}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature ({temperature}) must be a finite number > 0")
    return float(temperature)


def _check_pair(student_logits: Tensor, teacher_logits: Tensor) -> None:
    for name, x in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be floating point, got {x.dtype}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student_logits {tuple(student_logits.shape)} and teacher_logits "
            f"{tuple(teacher_logits.shape)} must have the same shape (..., C)"
        )
    if student_logits.dim() == 0 or student_logits.shape[-1] < 1:
        raise ValueError(
            f"logits must be (..., C) with C >= 1 classes, got {tuple(student_logits.shape)}"
        )


def _kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p || q) over the last dim; terms with p = 0 are 0 even where log q = -inf."""
    p = log_p.exp()
    # Zero out both logs where p underflows (or log p = -inf): no 0 * inf = NaN,
    # neither in the value nor in the backward pass.
    off = p == 0
    return (p * (log_p.masked_fill(off, 0.0) - log_q.masked_fill(off, 0.0))).sum(-1)


# Rows per block of the fused forward KL: at most this many logits per torch thread, so
# every pass over a block after the first runs in cache.
_KD_BLOCK_PER_THREAD = 1 << 17


class _ForwardKL(torch.autograd.Function):
    """Per-row KL(softmax(t / T) || softmax(s / T)) for (N, C) logits, in blocks of
    rows, and its gradient written out: d/ds = (q - p) / T with q, p the student's and
    teacher's softened probabilities. When a gradient is wanted (``keep``) q - p is
    kept, one (N, C) buffer, and the backward scales it into the gradient in place.
    Terms with p = 0 are 0 even where log q = -inf (no 0 * inf = NaN)."""

    @staticmethod
    def forward(ctx, s, t, temperature, keep):  # type: ignore[override]
        N, C = s.shape
        kl = torch.empty(N, dtype=s.dtype, device=s.device)
        diff = torch.empty((N, C), dtype=s.dtype, device=s.device) if keep else None
        inv_t = 1.0 / temperature
        for r0, r1 in row_spans(N, C, _KD_BLOCK_PER_THREAD):
            log_q, log_p, p = _softened(s[r0:r1], t[r0:r1], inv_t)
            terms = (log_p - log_q).mul_(p).masked_fill_(p == 0, 0.0)
            torch.sum(terms, 1, out=kl[r0:r1])
            if keep:
                torch.sub(log_q.exp_(), p, out=diff[r0:r1])
        ctx.diff, ctx.inv_t = diff, inv_t
        ctx.save_for_backward(s, t)
        return kl

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        diff, ctx.diff = ctx.diff, None  # q - p becomes the gradient
        if diff is None:  # a second backward through a retained graph: recompute
            s, t = ctx.saved_tensors
            diff = torch.empty_like(s)
            for r0, r1 in row_spans(*s.shape, _KD_BLOCK_PER_THREAD):
                log_q, _, p = _softened(s[r0:r1], t[r0:r1], ctx.inv_t)
                torch.sub(log_q.exp_(), p, out=diff[r0:r1])
        return diff.mul_(grad[:, None].to(diff.dtype) * ctx.inv_t), None, None, None


def _softened(s: Tensor, t: Tensor, inv_t: float) -> tuple[Tensor, Tensor, Tensor]:
    """log q = log_softmax(s / T), log p = log_softmax(t / T) and p, for a block."""
    log_p = torch.log_softmax(t * inv_t, dim=1)
    return torch.log_softmax(s * inv_t, dim=1), log_p, log_p.exp()


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 2.0,
    mask: Tensor | None = None,
    direction: Direction = "forward",
) -> Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over positions.

    Args:
        student_logits: (..., C): (B, C) for a classifier, (B, T, V) for an LM.
        teacher_logits: same shape; detached (the teacher gets no gradient).
        temperature: T > 0.
        mask: optional bool tensor of shape ``student_logits.shape[:-1]`` (e.g.
            (B, T)), True where a position counts; the mean is over those positions
            (0 if there are none).
        direction: ``"forward"``, KL(teacher || student) (Hinton's, mass-covering)
            or ``"reverse"``, KL(student || teacher) (mode-seeking, as in MiniLLM).

    Returns:
        A scalar in fp32 (fp64 for fp64 inputs): the mean over positions of the
        per-position KL summed over classes, times T^2. 0 for a student that
        equals its teacher.
    """
    _check_pair(student_logits, teacher_logits)
    t = _check_temperature(temperature)
    if direction not in ("forward", "reverse"):
        raise ValueError(f"direction ({direction!r}) must be 'forward' or 'reverse'")
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.shape != student_logits.shape[:-1]:
            got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
            raise ValueError(
                f"mask must be a tensor of shape {tuple(student_logits.shape[:-1])} "
                f"(the logits without their class dim), got {got}"
            )
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor, got {mask.dtype}")
    dtype = torch.float64 if student_logits.dtype == torch.float64 else torch.float32
    if direction == "forward" and not torch.compiler.is_compiling():  # fused, (positions, C)
        s = student_logits.to(dtype)
        rows = s.reshape(-1, s.shape[-1])
        keep = torch.is_grad_enabled() and rows.requires_grad
        kl = _ForwardKL.apply(rows, teacher_logits.detach().to(dtype).reshape(rows.shape), t,
                              keep).view(s.shape[:-1])
    else:
        # Reverse KL, or traced by torch.compile: plain ops, which Inductor fuses.
        log_s = F.log_softmax(student_logits.to(dtype) / t, dim=-1)  # (..., C)
        log_t = F.log_softmax(teacher_logits.detach().to(dtype) / t, dim=-1)  # (..., C)
        kl = _kl(log_t, log_s) if direction == "forward" else _kl(log_s, log_t)  # (...)
    if mask is None:
        per_position = kl.mean() if kl.numel() else kl.sum()
    else:
        mask = mask.to(kl.device)
        per_position = kl.masked_fill(~mask, 0.0).sum() / mask.sum().clamp_min(1)
    return per_position * (t * t)


class DistillationLoss(nn.Module):
    """``alpha * kd_loss(student, teacher, T) + (1 - alpha) * cross_entropy(student, target)``.

    Args:
        alpha: weight of the distillation term in [0, 1]; 1 is pure distillation,
            0 is plain training on the labels.
        temperature: T > 0 of the distillation term (the cross entropy uses T = 1).
        ignore_index: target value left out of both terms (for padded LM batches).
        direction: ``"forward"`` or ``"reverse"`` KL, see :func:`kd_loss`.
    """

    def __init__(self, alpha: float = 0.5, temperature: float = 2.0, *,
                 ignore_index: int = -100, direction: Direction = "forward") -> None:
        super().__init__()
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) \
                or not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha ({alpha!r}) must be a float in [0, 1]")
        self.alpha = float(alpha)
        self.temperature = _check_temperature(temperature)
        if direction not in ("forward", "reverse"):
            raise ValueError(f"direction ({direction!r}) must be 'forward' or 'reverse'")
        self.direction: Direction = direction
        self.ignore_index = ignore_index

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, target: Tensor) -> Tensor:
        """Args:
            student_logits, teacher_logits: (..., C), e.g. (B, C) or (B, T, V).
            target: (...) integer labels, e.g. (B,) or (B, T).

        Returns:
            The scalar loss (fp32, or fp64 for fp64 logits).
        """
        _check_pair(student_logits, teacher_logits)
        if not isinstance(target, Tensor) or target.shape != student_logits.shape[:-1]:
            got = tuple(target.shape) if isinstance(target, Tensor) else type(target).__name__
            raise ValueError(
                f"target must have shape {tuple(student_logits.shape[:-1])} (the logits "
                f"without their class dim), got {got}"
            )
        if target.is_floating_point() or target.dtype == torch.bool:
            raise TypeError(f"target must hold integer class indices, got {target.dtype}")
        n_classes = student_logits.shape[-1]
        target = target.long()
        valid = target != self.ignore_index
        bad = valid & ((target < 0) | (target >= n_classes))
        if bool(bad.any()):
            raise ValueError(
                f"target holds class {int(target[bad][0])}, outside [0, C = {n_classes}) "
                f"and not ignore_index ({self.ignore_index})"
            )
        dtype = torch.float64 if student_logits.dtype == torch.float64 else torch.float32
        kd = kd_loss(student_logits, teacher_logits, temperature=self.temperature,
                     mask=valid, direction=self.direction)
        flat = student_logits.to(dtype).reshape(-1, n_classes)  # (positions, C)
        if valid.any():
            ce = F.cross_entropy(flat, target.reshape(-1), ignore_index=self.ignore_index)
        else:
            ce = flat.sum() * 0.0
        return self.alpha * kd + (1.0 - self.alpha) * ce

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, temperature={self.temperature}, direction={self.direction!r}"
