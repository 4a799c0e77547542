"""Rotary positional embedding, RoPE (Su et al. 2021, RoFormer).

Each pair of features (x_i, x_{i + d/2}) (half-split layout, GPT-NeoX / Hugging Face
Llama) or (x_{2i}, x_{2i+1}) (interleaved layout, GPT-J / Meta Llama) of a query or
key at position m is rotated by the angle m * theta_i, theta_i = base^(-2i/d):

    [x_i', x_j'] = [x_i cos(m theta_i) - x_j sin(m theta_i),
                    x_j cos(m theta_i) + x_i sin(m theta_i)]

so that <R_m q, R_n k> = q^T R_(n-m) k depends on the positions only through m - n.

Angles are computed in float64 from integer positions and the cos/sin tables are
used in float32 (float64 for fp64 inputs), whatever the input dtype: low-precision positions or angles
corrupt far positions (transformers PR#29285). Checked against the fp64 oracle in
``tests/reference/rope.py`` and Hugging Face's ``apply_rotary_pos_emb``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["RotaryEmbedding", "apply_rotary", "rope_angles", "inverse_frequencies"]


def inverse_frequencies(dim: int, base: float = 10000.0) -> torch.Tensor:
    """theta_i = base^(-2i/dim) for i < dim/2, in float64, shape (dim/2,)."""
    if dim <= 0 or dim % 2:
        raise ValueError(f"rotary dim ({dim}) must be a positive even number")
    if base <= 1.0:
        raise ValueError(f"rotary base ({base}) must be > 1")
    return base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)


def rope_angles(positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Angles m * theta_i in float64: positions (...,) -> (..., dim/2)."""
    return positions.to(torch.float64).unsqueeze(-1) * inv_freq.to(torch.float64)


def apply_rotary(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, interleaved: bool = False
) -> torch.Tensor:
    """Rotate the first ``2 * cos.shape[-1]`` features of x; the rest pass through.

    Args:
        x: (B, H, T, D).
        cos, sin: (T, dim/2) or (B, 1, T, dim/2), float32 (or float64).
        interleaved: pairs (2i, 2i+1) instead of (i, i + dim/2).

    Returns:
        A new tensor, x's shape and dtype.
    """
    half = cos.shape[-1]
    rot = 2 * half
    if rot > x.shape[-1]:
        raise ValueError(f"rotary dim ({rot}) is larger than the head dim ({x.shape[-1]})")
    # Compute in at least fp32: bf16/fp16 inputs are rotated in fp32 and rounded once.
    work = torch.promote_types(x.dtype, cos.dtype)
    xr = x[..., :rot].to(work)
    if interleaved:
        x1, x2 = xr[..., 0::2], xr[..., 1::2]
    else:
        x1, x2 = xr[..., :half], xr[..., half:]
    c, s = cos.to(work), sin.to(work)
    r1 = x1 * c - x2 * s
    r2 = x2 * c + x1 * s
    if interleaved:
        rotated = torch.stack((r1, r2), dim=-1).flatten(-2)
    else:
        rotated = torch.cat((r1, r2), dim=-1)
    rotated = rotated.to(x.dtype)
    if rot == x.shape[-1]:
        return rotated
    return torch.cat((rotated, x[..., rot:]), dim=-1)


class RotaryEmbedding(nn.Module):
    """RoPE applied to queries and keys.

    Args:
        dim: number of rotated features per head (even); ``dim < D`` rotates the
            first ``dim`` features only (partial rotary, GPT-NeoX ``rotary_pct``).
        base: the frequency base (``rope_theta``).
        interleaved: Meta / GPT-J pair layout instead of the half split.
        scaling: a context-extension rule (see ``RopeScaling``), or None.
        max_seq_len: size of the precomputed cos/sin table; it grows on demand.
    """

    def __init__(
        self,
        dim: int,
        *,
        base: float = 10000.0,
        interleaved: bool = False,
        scaling: object | None = None,
        max_seq_len: int = 2048,
    ) -> None:
        super().__init__()
        if not isinstance(dim, int) or isinstance(dim, bool):
            raise TypeError(f"dim must be an int, got {type(dim).__name__}")
        if max_seq_len <= 0:
            raise ValueError(f"max_seq_len ({max_seq_len}) must be positive")
        self.dim = dim
        self.base = float(base)
        self.interleaved = interleaved
        self.scaling = scaling
        self.max_seq_len = max_seq_len
        self.inv_freq64 = inverse_frequencies(dim, base)
        self.attention_factor = 1.0
        if scaling is not None:
            self.inv_freq64, self.attention_factor = scaling.inverse_frequencies(dim, base)
        self._cos: torch.Tensor | None = None
        self._sin: torch.Tensor | None = None

    def _table(
        self, length: int, device: torch.device, dtype: torch.dtype = torch.float32
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin tables of at least ``length`` rows: float32, or float64 for fp64 inputs."""
        cos = self._cos
        if cos is None or cos.shape[0] < length or cos.device != device:
            size = max(length, self.max_seq_len)
            ang = rope_angles(torch.arange(size), self.inv_freq64)  # (size, dim/2) fp64
            self._cos64 = (ang.cos() * self.attention_factor).to(device)
            self._sin64 = (ang.sin() * self.attention_factor).to(device)
            self._cos, self._sin = self._cos64.float(), self._sin64.float()
        if dtype == torch.float64:
            return self._cos64, self._sin64
        return self._cos, self._sin

    def cos_sin(
        self,
        position_ids: torch.Tensor | None,
        T: int,
        device: torch.device,
        offset: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin for positions: (T, dim/2) when position_ids is None (positions
        offset..offset+T-1) or (T,), (B, 1, T, dim/2) for per-row (B, T) positions."""
        if position_ids is None:
            if offset < 0:
                raise ValueError(f"offset ({offset}) must be >= 0")
            cos, sin = self._table(offset + T, device, dtype)
            return cos[offset : offset + T], sin[offset : offset + T]
        if not isinstance(position_ids, torch.Tensor) or position_ids.dtype.is_floating_point:
            raise TypeError("position_ids must be an integer tensor of shape (T,) or (B, T)")
        if position_ids.dim() not in (1, 2) or position_ids.shape[-1] != T:
            raise ValueError(
                f"position_ids must have shape (T,) or (B, T) with T = {T}, "
                f"got {tuple(position_ids.shape)}"
            )
        if position_ids.numel() and int(position_ids.min()) < 0:
            raise ValueError(f"position_ids must be >= 0, got min {int(position_ids.min())}")
        top = int(position_ids.max()) + 1 if position_ids.numel() else 1
        cos, sin = self._table(top, device, dtype)
        pid = position_ids.to(device)
        cos, sin = cos[pid], sin[pid]  # (T, dim/2) or (B, T, dim/2)
        if pid.dim() == 2:
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, T, dim/2)
        return cos, sin

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        *,
        offset: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate q and k.

        Args:
            q: (B, H, T, D).
            k: (B, H_kv, T, D).
            position_ids: None (positions offset..offset+T-1), (T,) or (B, T) integers.
            offset: first position when position_ids is None (decoding with a cache).

        Returns:
            (q, k) rotated, same shapes and dtypes.
        """
        if q.dim() != 4 or k.dim() != 4:
            raise ValueError(
                f"q and k must be (B, H, T, D), got {tuple(q.shape)} and {tuple(k.shape)}"
            )
        if q.shape[-2] != k.shape[-2] or q.shape[-1] != k.shape[-1]:
            raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} differ in T or D")
        if self.dim > q.shape[-1]:
            raise ValueError(f"rotary dim ({self.dim}) is larger than the head dim ({q.shape[-1]})")
        cos, sin = self.cos_sin(position_ids, q.shape[-2], q.device, offset, q.dtype)
        return (
            apply_rotary(q, cos, sin, interleaved=self.interleaved),
            apply_rotary(k, cos, sin, interleaved=self.interleaved),
        )

    def extra_repr(self) -> str:
        return f"dim={self.dim}, base={self.base}, interleaved={self.interleaved}"
