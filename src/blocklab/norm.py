"""Normalisation layers: RMSNorm (Zhang & Sennrich 2019) and LayerNorm (Ba et al. 2016).

    RMSNorm(x) = g * x / sqrt(mean(x^2) + eps)

Computed in (at least) float32 and cast back before the gain, exactly as Hugging Face Llama's
``LlamaRMSNorm``, so ported weights give the same numbers; the result is in the input's
dtype (Hugging Face's would be float32 for fp16 input and float32 weights).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from blocklab._checks import check_bool, check_float, check_int, check_tensor

__all__ = ["RMSNorm", "LayerNorm", "make_norm"]


def _check_input(x: torch.Tensor, dim: int) -> None:
    check_tensor("x", x, floating=True)
    if x.dim() == 0 or x.shape[-1] != dim:
        raise ValueError(f"x must be (..., C={dim}), got shape {tuple(x.shape)}")


class RMSNorm(nn.Module):
    def __init__(self, dim: int, *, eps: float = 1e-6) -> None:
        super().__init__()
        dim = check_int("dim", dim, min=1)
        # eps <= 0 divides a zero row by zero: NaN.
        self.eps = check_float("eps", eps, gt=0)
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., C) floating point -> (..., C), same dtype."""
        _check_input(x, self.weight.shape[0])
        dtype = x.dtype
        if dtype == self.weight.dtype and dtype in (torch.float32, torch.float64):
            # torch's fused kernel: the same numbers, one pass instead of five.
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        h = x.to(torch.promote_types(dtype, torch.float32))
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        out = self.weight * h.to(dtype)
        return out if out.dtype == dtype else out.to(dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class LayerNorm(nn.LayerNorm):
    """torch's LayerNorm with the same constructor shape as RMSNorm."""

    def __init__(self, dim: int, *, eps: float = 1e-5, bias: bool = True) -> None:
        super().__init__(check_int("dim", dim, min=1), eps=check_float("eps", eps, gt=0),
                         bias=check_bool("bias", bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., C) floating point -> (..., C), same dtype."""
        _check_input(x, self.normalized_shape[0])
        w, b = self.weight, self.bias
        half_on_fp32 = x.dtype in (torch.float16, torch.bfloat16) and w is not None \
            and w.dtype == torch.float32  # torch's kernel mixes these itself
        if w is None or x.dtype == w.dtype or half_on_fp32:
            return super().forward(x)
        # Other mixes (fp64 input, fp32 parameters) torch refuses: compute in the wider
        # dtype, as RMSNorm does, and give back x's.
        work = torch.promote_types(x.dtype, w.dtype)
        out = F.layer_norm(x.to(work), self.normalized_shape, w.to(work),
                           None if b is None else b.to(work), self.eps)
        return out.to(x.dtype)


def make_norm(kind: Literal["rmsnorm", "layernorm"], dim: int, eps: float) -> nn.Module:
    if kind == "rmsnorm":
        return RMSNorm(dim, eps=eps)
    if kind == "layernorm":
        return LayerNorm(dim, eps=eps)
    raise ValueError(f"norm ({kind!r}) must be 'rmsnorm' or 'layernorm'")
