"""Turning zeros into speed: smaller dense layers, CSR weights, 2:4 kernels.

A mask leaves a dense weight full of zeros, and a dense kernel multiplies by every
one of them: masked pruning saves no time (pytorch#43552). Speed needs the zeros
out of the computation:

* Structured pruning removes whole hidden units. For two layers around an
  elementwise activation, ``y = W2 act(W1 x + b1) + b2``, hidden unit i is row i of
  W1 (and b1_i) and column i of W2; keeping the units ``keep_idx`` gives smaller
  dense layers ``W1[keep]`` and ``W2[:, keep]`` that run at dense speed on
  (1 - amount) of the FLOPs. Units are ranked by ``||W1_i|| * ||W2[:, i]||`` (for a
  GLU ``||W_gate,i|| * ||W_up,i|| * ||W2[:, i]||``): the size of the unit's path
  through the pair (for ReLU, scaling W1_i by c and W2[:, i] by 1/c changes nothing,
  so one norm alone would not do).
* :class:`CSRLinear` stores an unstructured sparse weight in compressed sparse row
  form and multiplies with ``torch.sparse.mm``: it does work per non-zero, but with
  indexed, irregular memory access, so it wins only at very high sparsity.
* 2:4 semi-structured weights run on the sparse tensor cores of NVIDIA Ampere and
  newer GPUs (``torch.sparse.to_sparse_semi_structured``, fp16/bf16): about 1.1-1.3x
  end to end for large layers, slower than dense for small shapes and decoding.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

from blocklab.ffn import ACTIVATIONS, FeedForward
from blocklab.sparsity.prune import Pruner
from blocklab.sparsity.report import effective_weight

__all__ = [
    "shrink_linear_pair",
    "neuron_scores",
    "prune_linear_pair",
    "prune_ffn_neurons",
    "CSRLinear",
    "to_csr",
    "semi_structured_available",
    "to_semi_structured",
]


def _keep_count(amount: float, n: int, what: str) -> int:
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0 <= amount <= 1:
        raise ValueError(f"amount ({amount!r}) must be a number in [0, 1]")
    keep = n - round(amount * n)
    if keep < 1:
        raise ValueError(
            f"amount ({amount}) would remove all {n} {what}; at least one must stay"
        )
    return keep


def _new_linear(weight: Tensor, bias: Tensor | None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                      device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


def shrink_linear_pair(
    first: nn.Linear,
    second: nn.Linear,
    keep_idx: Tensor,
    *,
    activation: Callable[[Tensor], Tensor] | None = None,
) -> tuple[nn.Linear, nn.Linear]:
    """New, smaller layers keeping hidden units ``keep_idx`` between ``first`` and ``second``.

    Args:
        first: (C_in -> H) layer; its rows ``keep_idx`` (and bias entries) stay.
        second: (H -> C_out) layer; its columns ``keep_idx`` stay.
        keep_idx: 1-D long tensor of hidden units to keep (any order; kept sorted).
        activation: the elementwise function between the two layers. When given,
            a removed unit's constant output ``act(b1_i)`` (its whole input when its
            row of ``first`` is zero) is folded into ``second``'s bias, so removing
            units whose rows were masked to zero changes nothing.

    Returns:
        (first', second'): (C_in -> K) and (K -> C_out), K = len(keep_idx). Masks and
        hooks of the old layers are not carried over: the new ones are plain layers.
    """
    if not isinstance(first, nn.Linear) or not isinstance(second, nn.Linear):
        raise TypeError(f"first and second must be nn.Linear, got {type(first).__name__} "
                        f"and {type(second).__name__}")
    hidden = first.out_features
    if second.in_features != hidden:
        raise ValueError(f"first.out_features ({hidden}) must equal second.in_features "
                         f"({second.in_features})")
    keep_idx = torch.as_tensor(keep_idx, dtype=torch.long).flatten().unique(sorted=True)
    if keep_idx.numel() == 0 or keep_idx.min() < 0 or keep_idx.max() >= hidden:
        raise ValueError(f"keep_idx must name 1..{hidden} distinct units in [0, {hidden}), "
                         f"got {keep_idx.tolist()[:8]}")
    keep_idx = keep_idx.to(first.weight.device)
    w1, w2 = effective_weight(first), effective_weight(second)
    b1 = None if first.bias is None else first.bias.detach()
    b2 = None if second.bias is None else second.bias.detach().clone()
    if activation is not None and b1 is not None:
        dropped = torch.ones(hidden, dtype=torch.bool, device=w1.device)
        dropped[keep_idx] = False
        constant = w2[:, dropped] @ activation(b1[dropped])  # (C_out,)
        b2 = constant if b2 is None else b2 + constant
    new_first = _new_linear(w1[keep_idx], None if b1 is None else b1[keep_idx])
    new_second = _new_linear(w2[:, keep_idx], b2)
    return new_first, new_second


def neuron_scores(first_rows: list[Tensor], second: Tensor) -> Tensor:
    """Importance of each hidden unit: the product of the L2 norms of its rows in
    every input matrix of ``first_rows`` (each (H, C_in)) and its column of
    ``second`` (C_out, H)."""
    score = second.detach().norm(dim=0)
    for w in first_rows:
        score = score * w.detach().norm(dim=1)
    return score  # (H,)


def prune_linear_pair(
    first: nn.Linear,
    second: nn.Linear,
    amount: float,
    *,
    activation: Callable[[Tensor], Tensor] | None = None,
) -> tuple[nn.Linear, nn.Linear, Tensor]:
    """Remove ``round(amount * H)`` hidden units of smallest :func:`neuron_scores`.

    Returns the new (first, second) and the kept unit indices.
    """
    keep = _keep_count(amount, first.out_features, "hidden units")
    scores = neuron_scores([effective_weight(first)], effective_weight(second))
    keep_idx = scores.topk(keep).indices.sort().values
    new_first, new_second = shrink_linear_pair(first, second, keep_idx, activation=activation)
    return new_first, new_second, keep_idx


def prune_ffn_neurons(ffn: FeedForward, amount: float) -> Tensor:
    """Physically shrink ``ffn``'s hidden width in place by ``round(amount * hidden)``
    units of smallest :func:`neuron_scores`: rows of ``w_in`` (both gate and up
    halves for a GLU) and columns of ``w_out``. The output equals that of the
    unpruned block with the removed units' ``w_in`` rows zeroed (their bias terms
    are folded into ``w_out``'s bias). Returns the kept unit indices.

    The block's parameters are new objects afterwards: build the optimizer after.
    """
    if not isinstance(ffn, FeedForward):
        raise TypeError(f"ffn must be a blocklab.ffn.FeedForward, got {type(ffn).__name__}")
    hidden = ffn.hidden_dim
    keep = _keep_count(amount, hidden, "hidden units")
    w_in, w_out = effective_weight(ffn.w_in), effective_weight(ffn.w_out)
    b_in = None if ffn.w_in.bias is None else ffn.w_in.bias.detach()
    rows = list(w_in.chunk(2, dim=0)) if ffn.gated else [w_in]  # [(H, C)] or [gate, up]
    keep_idx = neuron_scores(rows, w_out).topk(keep).indices.sort().values
    # Fused [gate; up]: unit i is row i of the gate half and row H + i of the up half.
    rows_idx = torch.cat([keep_idx, keep_idx + hidden]) if ffn.gated else keep_idx
    b_out = None if ffn.w_out.bias is None else ffn.w_out.bias.detach().clone()
    if b_in is not None:
        # A removed unit still output its bias term; fold that constant into w_out's bias.
        dropped = torch.ones(hidden, dtype=torch.bool, device=w_in.device)
        dropped[keep_idx] = False
        act = ACTIVATIONS[ffn.activation]
        if ffn.gated:
            gate_b, up_b = b_in.chunk(2)
            h = act(gate_b[dropped]) * up_b[dropped]
        else:
            h = act(b_in[dropped])
        b_out = w_out[:, dropped] @ h + (0 if b_out is None else b_out)
    ffn.w_in = _new_linear(w_in[rows_idx], None if b_in is None else b_in[rows_idx])
    ffn.w_out = _new_linear(w_out[:, keep_idx], b_out)
    ffn.hidden_dim = keep
    return keep_idx


# ------------------------------------------------------------------------- CSR

class CSRLinear(nn.Module):
    """A Linear layer whose weight is stored in CSR form (inference only).

    ``forward`` computes ``x W^T + b`` as ``(W_csr @ x^T)^T + b`` with
    ``torch.sparse.mm``, so its cost follows the non-zeros, not out * in.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None = None) -> None:
        super().__init__()
        if weight.dim() != 2:
            raise ValueError(f"weight must be 2-D (out, in), got shape {tuple(weight.shape)}")
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        with warnings.catch_warnings():
            # "Sparse CSR tensor support is in beta state": known, and tested here.
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support")
            csr = weight.detach().to_sparse_csr()
        self.register_buffer("weight", csr)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @property
    def nnz(self) -> int:
        return int(self.weight.values().numel())

    def forward(self, x: Tensor) -> Tensor:
        """x (..., in) -> (..., out)."""
        if x.shape[-1] != self.in_features:
            raise ValueError(f"x's last dim ({x.shape[-1]}) must be in_features "
                             f"({self.in_features})")
        flat = x.reshape(-1, self.in_features)  # (N, in)
        out = torch.sparse.mm(self.weight, flat.t()).t()  # (N, out)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"nnz={self.nnz}")


def to_csr(linear: nn.Linear) -> CSRLinear:
    """A :class:`CSRLinear` computing what ``linear`` computes (masks applied)."""
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
    return CSRLinear(effective_weight(linear),
                     None if linear.bias is None else linear.bias.detach())


# ------------------------------------------------------------------- 2:4 (CUDA)

def semi_structured_available(device: torch.device | str | None = None) -> bool:
    """True when 2:4 sparse kernels can run: CUDA, compute capability >= 8.0."""
    if not torch.cuda.is_available():
        return False
    device = torch.device(device if device is not None else "cuda")
    if device.type != "cuda":
        return False
    return torch.cuda.get_device_capability(device) >= (8, 0)


def to_semi_structured(linear: nn.Linear) -> nn.Linear:
    """Swap ``linear``'s 2:4-pruned fp16/bf16 CUDA weight for a
    ``SparseSemiStructuredTensor`` in place (inference only); returns ``linear``."""
    from torch.sparse import to_sparse_semi_structured

    if not isinstance(linear, nn.Linear):
        raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
    weight = effective_weight(linear)
    if not semi_structured_available(weight.device):
        raise ValueError(f"2:4 kernels need a CUDA GPU of compute capability >= 8.0; "
                         f"the weight is on {weight.device}")
    if weight.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"2:4 kernels need a float16 or bfloat16 weight, got {weight.dtype}")
    groups = (weight != 0).reshape(weight.shape[0], -1, 4).sum(-1)
    if weight.shape[1] % 4 or bool((groups > 2).any()):
        raise ValueError("weight is not 2:4 sparse: prune it with pattern='2:4' first")
    sparse = to_sparse_semi_structured(weight.contiguous())
    # The masks' hooks would multiply the compressed weight in place: finalise first.
    Pruner(linear).remove()
    linear.weight = nn.Parameter(sparse, requires_grad=False)
    return linear
