"""RMSNorm and the gated MLP of a Hugging Face Llama/Mistral/Qwen2 model, as
replacement ``forward`` functions that keep the modules' own parameters.

RMSNorm (Zhang & Sennrich 2019), as Hugging Face's ``LlamaRMSNorm`` computes it:

    y = g * (x / sqrt(mean(x^2) + eps))      in float32, rounded to x's dtype before g

Hugging Face runs it as six elementwise ops; here the normalisation is torch's
``F.rms_norm`` (one fused kernel where torch has one -- on CPU for the forward; under
autograd torch differentiates its own decomposition), with the gain folded in when x
and g are both float32: the same numbers up to the order of the mean's sum, as
:class:`blocklab.norm.RMSNorm`.

The gated MLP (Shazeer 2020, SwiGLU), ``down(silu(gate(x)) * up(x))``: autograd would
keep gate(x), silu(gate(x)) and up(x) for the backward; :class:`SiLUMul` keeps gate(x)
and up(x) and recomputes the SiLU (Liger-Kernel's ``LigerSiLUMulFunction`` trade), one
(B, T, I) activation less per layer. The gate and up projections stay two matmuls:
fusing them as :class:`blocklab.ffn.FeedForward` does (one ``w_in``) would change the
model's parameters and state_dict, which a drop-in patch must keep.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = ["rms_norm_forward", "mlp_forward", "silu_mul", "SiLUMul"]


def rms_norm_forward(self: torch.nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    """Replacement for ``LlamaRMSNorm.forward``: (..., C) -> (..., C), Hugging Face's
    numbers (float32 math, rounded to the input dtype, then times the gain)."""
    weight, eps = self.weight, self.variance_epsilon
    x = hidden_states
    if x.dtype == weight.dtype == torch.float32:
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    # Hugging Face normalises in float32 (also for float64 input) and rounds back
    # before the gain: one fused pass for the first part.
    return weight * F.rms_norm(x.to(torch.float32), (x.shape[-1],), None, eps).to(x.dtype)


class SiLUMul(torch.autograd.Function):
    """silu(a) * b, keeping a and b (not silu(a)) for the backward:

        d/da = g * b * silu'(a),   d/db = g * silu(a)
    """

    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(gate, up)
        return F.silu(gate).mul_(up)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        gate, up = ctx.saved_tensors
        grad_gate = torch.ops.aten.silu_backward(grad * up, gate)
        grad_up = F.silu(gate).mul_(grad)
        return grad_gate, grad_up


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up, (..., I) each; through :class:`SiLUMul` when a gradient is needed."""
    if torch.is_grad_enabled() and (gate.requires_grad or up.requires_grad):
        return SiLUMul.apply(gate, up)
    return F.silu(gate).mul_(up)


def mlp_forward(self: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Replacement for ``LlamaMLP.forward`` with a SiLU gate: (..., C) -> (..., C)."""
    return self.down_proj(silu_mul(self.gate_proj(x), self.up_proj(x)))  # (..., I) inside
