"""Normalisation layers: RMSNorm (Zhang & Sennrich 2019) and LayerNorm (Ba et al. 2016).

    RMSNorm(x) = g * x / sqrt(mean(x^2) + eps)

Computed in (at least) float32 and cast back before the gain, exactly as Hugging Face Llama's
``LlamaRMSNorm``, so ported weights give the same numbers.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RMSNorm", "LayerNorm", "make_norm"]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, *, eps: float = 1e-6) -> None:
        super().__init__()
        if dim <= 0:
            raise ValueError(f"dim ({dim}) must be positive")
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., C) -> (..., C), same dtype."""
        dtype = x.dtype
        if dtype == self.weight.dtype and dtype in (torch.float32, torch.float64):
            # torch's fused kernel: the same numbers, one pass instead of five.
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        h = x.to(torch.promote_types(dtype, torch.float32))
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class LayerNorm(nn.LayerNorm):
    """torch's LayerNorm with the same constructor shape as RMSNorm."""

    def __init__(self, dim: int, *, eps: float = 1e-5, bias: bool = True) -> None:
        super().__init__(dim, eps=eps, bias=bias)


def make_norm(kind: Literal["rmsnorm", "layernorm"], dim: int, eps: float) -> nn.Module:
    if kind == "rmsnorm":
        return RMSNorm(dim, eps=eps)
    if kind == "layernorm":
        return LayerNorm(dim, eps=eps)
    raise ValueError(f"norm ({kind!r}) must be 'rmsnorm' or 'layernorm'")
