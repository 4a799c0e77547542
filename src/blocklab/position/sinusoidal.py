"""Fixed sinusoidal and learned absolute position embeddings (Vaswani et al. 2017).

    PE(m, 2i) = sin(m / base^(2i/d)),  PE(m, 2i+1) = cos(m / base^(2i/d))

The baselines RoPE is compared against. Angles are computed in float64.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["sinusoidal_embedding", "SinusoidalPositionalEmbedding", "LearnedPositionalEmbedding"]


def sinusoidal_embedding(positions: torch.Tensor, dim: int, base: float = 10000.0) -> torch.Tensor:
    """positions (...,) integer -> (..., dim) float32 embeddings, sin/cos interleaved."""
    if dim <= 0 or dim % 2:
        raise ValueError(f"dim ({dim}) must be a positive even number")
    inv = base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    ang = positions.to(torch.float64).unsqueeze(-1) * inv.to(positions.device)  # (..., dim/2)
    return torch.stack((ang.sin(), ang.cos()), dim=-1).flatten(-2).float()


class SinusoidalPositionalEmbedding(nn.Module):
    """Adds fixed sinusoidal position vectors to (B, T, C) inputs."""

    def __init__(self, dim: int, *, base: float = 10000.0) -> None:
        super().__init__()
        if dim <= 0 or dim % 2:
            raise ValueError(f"dim ({dim}) must be a positive even number")
        self.dim = dim
        self.base = base

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, C) -> x + PE, positions 0..T-1 or position_ids (T,)/(B, T)."""
        if position_ids is None:
            position_ids = torch.arange(x.shape[1], device=x.device)
        return x + sinusoidal_embedding(position_ids, self.dim, self.base).to(x.dtype)


class LearnedPositionalEmbedding(nn.Module):
    """A learned table of ``max_seq_len`` position vectors (GPT-2); cannot go past it."""

    def __init__(self, max_seq_len: int, dim: int) -> None:
        super().__init__()
        self.max_seq_len = max_seq_len
        self.table = nn.Embedding(max_seq_len, dim)
        nn.init.normal_(self.table.weight, std=0.02)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        T = x.shape[1]
        if position_ids is None:
            position_ids = torch.arange(T, device=x.device)
        # No host read in a compiled decoding step (the caller sized the positions).
        top = 0 if torch.compiler.is_compiling() or not position_ids.numel() else int(
            position_ids.max()) + 1
        if top > self.max_seq_len:
            raise ValueError(
                f"position {top - 1} is past the learned table (max_seq_len {self.max_seq_len})"
            )
        return x + self.table(position_ids)
