"""Context-extension rules for RoPE: how the rotary frequencies change when a model
runs beyond the length it was trained at.

* linear (position interpolation, Chen et al. 2023): theta_i / s, i.e. positions m / s.
* ntk (NTK-aware base change, bloc97 2023): base' = base * s^(dim / (dim - 2)).
* llama3 (Meta, Llama 3.1): low frequencies divided by s, high ones kept, a smooth
  ramp between wavelengths L/low_freq_factor and L/high_freq_factor.

Each matches Hugging Face's ``ROPE_INIT_FUNCTIONS`` for the same parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

__all__ = ["RopeScaling"]

ScalingKind = Literal["linear", "ntk", "llama3"]
_KINDS = ("linear", "ntk", "llama3")


@dataclass(frozen=True)
class RopeScaling:
    """A RoPE scaling rule.

    Args:
        kind: "linear", "ntk" or "llama3".
        factor: context extension factor s >= 1.
        original_max_seq_len: the training context length L.
        low_freq_factor, high_freq_factor: llama3 ramp bounds.
    """

    kind: ScalingKind
    factor: float
    original_max_seq_len: int = 2048
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"scaling kind ({self.kind!r}) must be one of {_KINDS}")
        if not self.factor >= 1.0:
            raise ValueError(f"scaling factor ({self.factor}) must be >= 1")
        if self.original_max_seq_len <= 0:
            raise ValueError(
                f"original_max_seq_len ({self.original_max_seq_len}) must be positive"
            )
        if self.kind == "llama3" and not self.high_freq_factor > self.low_freq_factor:
            raise ValueError(
                f"high_freq_factor ({self.high_freq_factor}) must exceed "
                f"low_freq_factor ({self.low_freq_factor})"
            )

    def inverse_frequencies(self, dim: int, base: float) -> tuple[torch.Tensor, float]:
        """(theta_i in float64, attention factor) for a rotary dim and base."""
        from blocklab.position.rope import inverse_frequencies

        s = float(self.factor)
        if self.kind == "linear":
            return inverse_frequencies(dim, base) / s, 1.0
        if self.kind == "ntk":
            return inverse_frequencies(dim, base * s ** (dim / (dim - 2))), 1.0
        inv = inverse_frequencies(dim, base)
        L = self.original_max_seq_len
        low_wavelen = L / self.low_freq_factor
        high_wavelen = L / self.high_freq_factor
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > low_wavelen, inv / s, inv)
        smooth = (L / wavelen - self.low_freq_factor) / (
            self.high_freq_factor - self.low_freq_factor
        )
        smoothed = (1 - smooth) * scaled / s + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(medium, smoothed, scaled), 1.0
