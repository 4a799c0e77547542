"""The position-wise feed-forward block and its activations.

    FFN(x)    = W_out act(W_in x)                       (Vaswani et al. 2017)
    FFN_GLU(x) = W_out (act(W_gate x) * (W_up x))       (Shazeer 2020, "GLU Variants")

A GLU variant has three matrices instead of two, so at a matched parameter count its
hidden width is 2/3 of the plain one: with ``hidden_dim=None`` it is
``multiple_of * ceil(int(2/3 * expansion * d_model) / multiple_of)`` (LLaMA-7B:
4096 -> 11008 with multiple_of 256), otherwise ``expansion * d_model`` rounded up to
``multiple_of``. The gate and up projections are one fused matrix (``w_in``, gate
rows first) so the block runs two matmuls, not three; Hugging Face's separate
``gate_proj``/``up_proj`` map onto its halves.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from blocklab._checks import check_bool, check_float, check_int, check_tensor

__all__ = ["FeedForward", "ACTIVATIONS", "GLU_ACTIVATIONS", "ffn_hidden_dim"]

Activation = Literal["relu", "gelu", "gelu_tanh", "silu", "relu2", "reglu", "geglu", "swiglu"]


def _relu2(x: torch.Tensor) -> torch.Tensor:
    return F.relu(x).square()


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


# name -> elementwise function; a GLU variant applies it to the gate half.
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": _gelu_tanh,
    "silu": F.silu,
    "relu2": _relu2,
    "reglu": F.relu,
    "geglu": F.gelu,
    "swiglu": F.silu,
}
GLU_ACTIVATIONS = frozenset({"reglu", "geglu", "swiglu"})


def ffn_hidden_dim(
    d_model: int, *, expansion: float = 4.0, activation: str = "gelu", multiple_of: int = 1
) -> int:
    """The hidden width FeedForward uses when ``hidden_dim`` is not given."""
    width = expansion * d_model
    if activation in GLU_ACTIVATIONS:
        width = int(2 * width / 3)
    return multiple_of * math.ceil(int(width) / multiple_of)


class FeedForward(nn.Module):
    """FFN block, plain or gated.

    Args:
        d_model: model width C.
        hidden_dim: hidden width; default from ``expansion`` (see module docstring).
        expansion: hidden / C before the GLU 2/3 correction.
        activation: one of ``ACTIVATIONS``; reglu/geglu/swiglu are gated.
        multiple_of: round the default hidden width up to a multiple of this.
        bias: biases on both projections.
    """

    def __init__(
        self,
        d_model: int,
        *,
        hidden_dim: int | None = None,
        expansion: float = 4.0,
        activation: Activation = "gelu",
        multiple_of: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(activation, str) or activation not in ACTIVATIONS:
            raise ValueError(f"activation ({activation!r}) must be one of {sorted(ACTIVATIONS)}")
        check_int("d_model", d_model, min=1)
        check_float("expansion", expansion, gt=0)
        check_int("multiple_of", multiple_of, min=1)
        check_bool("bias", bias)
        if hidden_dim is None:
            hidden_dim = ffn_hidden_dim(
                d_model, expansion=expansion, activation=activation, multiple_of=multiple_of
            )
        check_int("hidden_dim", hidden_dim, min=1)
        self.d_model = d_model
        self.hidden_dim = hidden_dim
        self.activation = activation
        self.gated = activation in GLU_ACTIVATIONS
        self._act = ACTIVATIONS[activation]
        self.w_in = nn.Linear(d_model, hidden_dim * (2 if self.gated else 1), bias=bias)
        self.w_out = nn.Linear(hidden_dim, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., C) -> (..., C)."""
        check_tensor("x", x, floating=True)
        if x.dim() == 0 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must be (..., C={self.d_model}), got shape {tuple(x.shape)}")
        h = self.w_in(x)  # (..., hidden) or (..., 2 * hidden)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            h = self._act(gate) * up
        else:
            h = self._act(h)
        return self.w_out(h)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, hidden_dim={self.hidden_dim}, activation={self.activation}"
