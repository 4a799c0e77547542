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

Large temperatures. ``log p - log q`` is a difference of two O(log C) numbers whose
true size is O(1/T), so in fp32 the plain formula loses about T^2 ulps: 1% at T = 1e3,
garbage (a negative KL) at 1e6. Above ``T = 32`` the loss is computed from the
centred logit difference instead: with u = z_a - z_b, c = u - E_p[u] and e = c / T,

    T^2 KL(p || q) = T^2 log1p(E_p[phi(e)]),   phi(e) = expm1(-e) + e = e^2 g(e),

so T^2 E_p[phi] = E_p[c^2 g(e)] is formed without cancellation (g from its series
near 0) and tends to Var_p(u) / 2 as T grows. Below T = 32 the fused path (the
fastest, and what the lab's temperatures use) is within about 1e-5 relative in fp32.

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
from blocklab._checks import check_float, check_ids, check_int

__all__ = ["kd_loss", "DistillationLoss"]

Direction = Literal["forward", "reverse"]


def _check_temperature(temperature: float) -> float:
    return check_float("temperature", temperature, gt=0)


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


# Above this temperature kd_loss uses the centred formula (see the module docstring).
_CENTRED_ABOVE = 32.0
# Coefficients of g(e) = (expm1(-e) + e) / e^2 = sum_k (-e)^k / (k + 2)!. At |e| < 1/2,
# 8 terms leave a truncation below 1e-9 relative (fp32's eps is 1.2e-7), 16 below 1e-18.
_G_SERIES = tuple((-1) ** k / math.factorial(k + 2) for k in range(16))


def _g(e: Tensor) -> Tensor:
    """(expm1(-e) + e) / e^2 for every e, finite gradients included (its series near 0,
    where the direct form cancels)."""
    small = e.abs() < 0.5
    es = torch.where(small, torch.ones_like(e), e)  # keeps 0/0 out of the unused branch
    direct = (torch.expm1(-es) + es) / (es * es)
    coefs = _G_SERIES if e.dtype == torch.float64 else _G_SERIES[:8]
    series = torch.full_like(e, coefs[-1])
    for coef in reversed(coefs[:-1]):  # Horner
        series = series * e + coef
    return torch.where(small, series, direct)


def _kl_centred(za: Tensor, zb: Tensor, inv_t: float) -> Tensor:
    """T^2 KL(softmax(za / T) || softmax(zb / T)) over the last dim, without the
    cancellation of log p - log q at large T; differentiable in both arguments."""
    p = torch.softmax(za * inv_t, dim=-1)
    u = za - zb
    c = u - (p * u).sum(-1, keepdim=True)  # centred under p
    m = (p * c * c * _g(c * inv_t)).sum(-1)  # T^2 E_p[phi(e)]
    x = m * (inv_t * inv_t)  # E_p[phi(e)]
    # T^2 log1p(x) = m * log1p(x) / x; below 1e-8 the ratio from its series (truncated
    # below 1e-24), which also keeps 1/x out of the gradient where x underflows.
    tiny = x < 1e-8
    ratio = torch.where(tiny, 1 - x / 2 + x * x / 3,
                        torch.log1p(x) / torch.where(tiny, torch.ones_like(x), x))
    return m * ratio


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
        temperature: T > 0, finite (above 32 computed by the centred formula, see
            the module docstring).
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
    scaled = t > _CENTRED_ABOVE  # kl below already holds the factor T^2
    if scaled:
        s_, t_ = student_logits.to(dtype), teacher_logits.detach().to(dtype)
        kl = _kl_centred(t_, s_, 1.0 / t) if direction == "forward" else _kl_centred(s_, t_, 1.0 / t)
    elif direction == "forward" and not torch.compiler.is_compiling():  # fused, (positions, C)
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
    return per_position if scaled else per_position * (t * t)


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
        self.alpha = check_float("alpha", alpha, ge=0, le=1)
        self.temperature = _check_temperature(temperature)
        if direction not in ("forward", "reverse"):
            raise ValueError(f"direction ({direction!r}) must be 'forward' or 'reverse'")
        self.direction: Direction = direction
        self.ignore_index = check_int("ignore_index", ignore_index)

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
        check_ids("target", target, n_classes, bound="C", what="class",
                  ignore_index=self.ignore_index)
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
