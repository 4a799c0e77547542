"""Context-extension rules for RoPE: how the rotary frequencies change when a model
runs beyond the length L it was trained at, by a factor s.

With theta_i = base^(-2i/d) the unscaled frequencies (d the rotary dim):

* linear -- position interpolation (Chen et al. 2023): theta_i / s, i.e. positions m / s.
* ntk -- NTK-aware base change (bloc97 2023): base' = base * s^(d / (d - 2)), so the
  highest frequency is kept and the lowest is divided by s.
* dynamic_ntk -- the same base change with s replaced by the current length l
  (emozilla 2023): base' = base * (s * l / L - (s - 1))^(d / (d - 2)) for l > L, the
  unscaled frequencies for l <= L.
* yarn -- "NTK-by-parts" (Peng et al. 2023, YaRN): frequencies that turn fewer than
  beta_slow times over L are interpolated (theta_i / s), those that turn more than
  beta_fast times are kept, a linear ramp in between; cos and sin are multiplied by
  the attention factor 0.1 ln(s) + 1, so every attention logit by its square.
* llama3 (Meta, Llama 3.1): wavelengths longer than L / low_freq_factor are
  interpolated, those shorter than L / high_freq_factor kept, a smooth ramp between.
* longrope (Ding et al. 2024, LongRoPE; Phi-3): each frequency has its own searched
  rescale, theta_i / lambda_i, with lambda = short_factor while the current length
  l = largest position + 1 is at most L and long_factor past it (so, like dynamic_ntk,
  the frequencies depend on l); cos and sin are multiplied by the attention factor
  sqrt(1 + ln(s) / ln(L)) (1 for s = 1).

Frequencies are computed in float64. Each rule equals Hugging Face's
``ROPE_INIT_FUNCTIONS`` for the same parameters ("dynamic" for dynamic_ntk, "longrope"
with ``factor`` = max_position_embeddings / original_max_position_embeddings; ntk is
Hugging Face's "default" with ``rope_theta = base'``), checked in
``tests/position/test_scaling.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

__all__ = ["RopeScaling", "SCALING_KINDS"]

ScalingKind = Literal["linear", "ntk", "dynamic_ntk", "yarn", "llama3", "longrope"]
SCALING_KINDS: tuple[str, ...] = ("linear", "ntk", "dynamic_ntk", "yarn", "llama3", "longrope")


def _base_frequencies(dim: int, base: float) -> torch.Tensor:
    """theta_i = base^(-2i/dim), float64, shape (dim/2,)."""
    return base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


@dataclass(frozen=True)
class RopeScaling:
    """A RoPE scaling rule.

    Args:
        kind: "linear", "ntk", "dynamic_ntk", "yarn", "llama3" or "longrope".
        factor: context extension factor s >= 1.
        original_max_seq_len: the training context length L.
        low_freq_factor, high_freq_factor: llama3 ramp bounds.
        beta_fast, beta_slow: yarn ramp bounds, in rotations over L.
        attention_factor: yarn's and longrope's cos/sin multiplier (yarn: default
            0.1 ln(s) + 1, or DeepSeek's mscale ratio when ``mscale`` and
            ``mscale_all_dim`` are set; longrope: sqrt(1 + ln(s) / ln(L))).
        mscale, mscale_all_dim: DeepSeek-style yarn attention factor.
        truncate: yarn rounds the ramp bounds to whole dims (Hugging Face's default).
        short_factor, long_factor: longrope's per-frequency rescales (rotary dim / 2
            numbers each), used up to and past L. For a Phi-3 config, ``factor`` is
            max_position_embeddings / original_max_position_embeddings.
    """

    kind: ScalingKind
    factor: float
    original_max_seq_len: int = 2048
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None
    truncate: bool = True
    short_factor: tuple[float, ...] | None = None
    long_factor: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in SCALING_KINDS:
            raise ValueError(f"scaling kind ({self.kind!r}) must be one of {SCALING_KINDS}")
        if isinstance(self.factor, bool) or not isinstance(self.factor, (int, float)):
            raise TypeError(f"scaling factor must be a number, got {type(self.factor).__name__}")
        if not (self.factor >= 1.0 and math.isfinite(self.factor)):
            raise ValueError(f"scaling factor ({self.factor}) must be >= 1 and finite")
        L = self.original_max_seq_len
        if isinstance(L, bool) or not isinstance(L, int) or L <= 0:
            raise ValueError(f"original_max_seq_len ({L!r}) must be a positive int")
        if self.kind == "llama3" and not self.high_freq_factor > self.low_freq_factor > 0:
            raise ValueError(
                f"llama3 needs high_freq_factor ({self.high_freq_factor}) > "
                f"low_freq_factor ({self.low_freq_factor}) > 0"
            )
        if self.kind == "yarn":
            if not self.beta_fast > self.beta_slow > 0:
                raise ValueError(
                    f"yarn needs beta_fast ({self.beta_fast}) > beta_slow ({self.beta_slow}) > 0"
                )
        if self.kind == "longrope":
            self._check_longrope_factors()
        if self.kind in ("yarn", "longrope") and self.attention_factor is not None and not (
                self.attention_factor > 0):
            raise ValueError(f"attention_factor ({self.attention_factor}) must be > 0")

    def _check_longrope_factors(self) -> None:
        for name in ("short_factor", "long_factor"):
            value = getattr(self, name)
            if value is None:
                raise ValueError(f"longrope needs {name} (one rescale per rotary frequency)")
            if isinstance(value, torch.Tensor):
                value = value.tolist()
            if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__") or any(
                    isinstance(v, bool) or not isinstance(v, (int, float)) for v in value):
                raise TypeError(f"{name} must be a sequence of numbers, got {value!r}")
            value = tuple(float(v) for v in value)
            if not value or not all(math.isfinite(v) and v > 0 for v in value):
                raise ValueError(f"{name} must be non-empty, finite and > 0, got {value}")
            object.__setattr__(self, name, value)  # frozen: tuples keep it hashable
        if len(self.short_factor) != len(self.long_factor):
            raise ValueError(f"short_factor ({len(self.short_factor)} values) and long_factor "
                             f"({len(self.long_factor)}) must have one length")

    @property
    def is_dynamic(self) -> bool:
        """True when the frequencies depend on the current sequence length."""
        return self.kind in ("dynamic_ntk", "longrope")

    def inverse_frequencies(
        self, dim: int, base: float, seq_len: int | torch.Tensor | None = None
    ) -> tuple[torch.Tensor, float]:
        """(theta_i in float64, shape (dim/2,), attention factor) for a rotary dim and base.

        ``seq_len`` is the current length (largest position + 1) and matters only for
        dynamic_ntk and longrope; it may be a 0-d tensor (traced under ``torch.compile``), else
        the frequencies are those at the original length, the unscaled ones.
        """
        if dim <= 0 or dim % 2:
            raise ValueError(f"rotary dim ({dim}) must be a positive even number")
        if base <= 1.0:
            raise ValueError(f"rotary base ({base}) must be > 1")
        s = float(self.factor)
        if self.kind in ("ntk", "dynamic_ntk") and dim <= 2:
            raise ValueError(f"{self.kind} scaling needs a rotary dim > 2, got {dim}")
        if self.kind == "linear":
            return _base_frequencies(dim, base) / s, 1.0
        if self.kind == "ntk":
            return _base_frequencies(dim, base * s ** (dim / (dim - 2))), 1.0
        if self.kind == "dynamic_ntk":
            return self._dynamic(dim, base, seq_len), 1.0
        if self.kind == "yarn":
            return self._yarn(dim, base)
        if self.kind == "longrope":
            return self._longrope(dim, base, seq_len)
        return self._llama3(dim, base), 1.0

    def _longrope(
        self, dim: int, base: float, seq_len: int | torch.Tensor | None
    ) -> tuple[torch.Tensor, float]:
        s, L = float(self.factor), self.original_max_seq_len
        short, long = self.short_factor, self.long_factor
        if len(short) != dim // 2:
            raise ValueError(f"longrope short_factor and long_factor have {len(short)} values, "
                             f"the rotary dim {dim} needs dim / 2 = {dim // 2}")
        if self.attention_factor is not None:
            attention = float(self.attention_factor)
        else:
            attention = 1.0 if s <= 1 else math.sqrt(1 + math.log(s) / math.log(L))
        theta = _base_frequencies(dim, base)
        short_freq = theta / torch.tensor(short, dtype=torch.float64)
        long_freq = theta / torch.tensor(long, dtype=torch.float64)
        if isinstance(seq_len, torch.Tensor):  # traced: no host sync
            dev = seq_len.device
            return torch.where(seq_len > L, long_freq.to(dev), short_freq.to(dev)), attention
        return (long_freq if seq_len is not None and int(seq_len) > L else short_freq), attention

    def _dynamic(self, dim: int, base: float, seq_len: int | torch.Tensor | None) -> torch.Tensor:
        s, L = float(self.factor), self.original_max_seq_len
        exponent = torch.arange(0, dim, 2, dtype=torch.float64) / dim
        if isinstance(seq_len, torch.Tensor):
            length = seq_len.to(torch.float64).clamp_min(L)
            new_base = base * (s * length / L - (s - 1)) ** (dim / (dim - 2))
            return new_base ** -exponent.to(length.device)
        length = L if seq_len is None else max(int(seq_len), L)
        return (base * (s * length / L - (s - 1)) ** (dim / (dim - 2))) ** -exponent

    def _yarn(self, dim: int, base: float) -> tuple[torch.Tensor, float]:
        s, L = float(self.factor), self.original_max_seq_len
        if self.attention_factor is not None:
            attention = float(self.attention_factor)
        elif self.mscale and self.mscale_all_dim:
            attention = _yarn_mscale(s, self.mscale) / _yarn_mscale(s, self.mscale_all_dim)
        else:
            attention = _yarn_mscale(s)

        def correction_dim(rotations: float) -> float:
            # The dim index whose frequency turns `rotations` times over L positions.
            return dim * math.log(L / (rotations * 2 * math.pi)) / (2 * math.log(base))

        low, high = correction_dim(self.beta_fast), correction_dim(self.beta_slow)
        if self.truncate:
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        if low == high:
            high += 0.001  # as Hugging Face: avoid a zero-width ramp
        ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
        theta = _base_frequencies(dim, base)
        keep = 1 - ramp  # 1: extrapolate (keep theta_i), 0: interpolate (theta_i / s)
        return theta / s * (1 - keep) + theta * keep, attention

    def _llama3(self, dim: int, base: float) -> torch.Tensor:
        s, L = float(self.factor), self.original_max_seq_len
        theta = _base_frequencies(dim, base)
        low_wavelen = L / self.low_freq_factor
        high_wavelen = L / self.high_freq_factor
        wavelen = 2 * math.pi / theta
        scaled = torch.where(wavelen > low_wavelen, theta / s, theta)
        smooth = (L / wavelen - self.low_freq_factor) / (
            self.high_freq_factor - self.low_freq_factor
        )
        smoothed = (1 - smooth) * scaled / s + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(medium, smoothed, scaled)
