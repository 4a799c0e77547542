"""Additive attention (Bahdanau, Cho and Bengio, 2015).

Idea: score how well a query matches each key with a one-hidden-layer network
instead of a dot product, turn the scores into weights with a softmax over the
keys, and return the weighted average of the values::

    e[b, t, s] = v^T tanh(W_q q[b, t] + W_k k[b, s])          # (B, T, S)
    a[b, t, :] = softmax_s(e[b, t, :])                       # masked keys get weight 0
    c[b, t]    = sum_s a[b, t, s] * values[b, s]             # (B, T, Dv)

"Neural Machine Translation by Jointly Learning to Align and Translate",
ICLR 2015, https://arxiv.org/abs/1409.0473, eq. (6) of appendix A.1.2 (the paper
omits bias terms "to make the equations less cluttered"; so do we). Unlike the
dot product, the score needs the (B, T, S, hidden) tensor of all query/key sums,
which is why scaled dot-product attention (one matrix multiply) replaced it in
the Transformer (Vaswani et al. 2017, section 3.2.1).

Checked against ``tests/reference/additive.py``, a loop-over-(b, t, s) fp64
implementation of the equation above, and with ``torch.autograd.gradcheck``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _check_tensor(name: str, x: object, rank: int) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != rank:
        raise ValueError(f"{name} must have rank {rank}, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return x


def additive_scores(q_proj: Tensor, k_proj: Tensor, v: Tensor) -> Tensor:
    """Additive attention scores ``v^T tanh(q_proj[b, t] + k_proj[b, s])``.

    Broadcasting ``(B, T, 1, H) + (B, 1, S, H)`` materialises the sum once (no
    repeated copies of q or k) and the contraction with ``v`` is a single matmul.
    The (B, T, S, H) intermediate is inherent to additive attention: it is the
    memory and time cost the dot product avoids.

    Args:
        q_proj: projected queries ``W_q q``, shape (B, T, H).
        k_proj: projected keys ``W_k k``, shape (B, S, H).
        v: the score vector, shape (H,).

    Returns:
        Scores of shape (B, T, S).
    """
    _check_tensor("q_proj", q_proj, 3)
    _check_tensor("k_proj", k_proj, 3)
    _check_tensor("v", v, 1)
    if q_proj.shape[0] != k_proj.shape[0]:
        raise ValueError(
            f"q_proj batch ({q_proj.shape[0]}) must equal k_proj batch ({k_proj.shape[0]})"
        )
    if not q_proj.shape[-1] == k_proj.shape[-1] == v.shape[0]:
        raise ValueError(
            f"hidden sizes must match: q_proj ({q_proj.shape[-1]}), "
            f"k_proj ({k_proj.shape[-1]}), v ({v.shape[0]})"
        )
    hidden = torch.tanh(q_proj.unsqueeze(2) + k_proj.unsqueeze(1))  # (B, T, S, H)
    return torch.matmul(hidden, v)  # (B, T, S)


def masked_softmax(scores: Tensor, mask: Tensor | None) -> Tensor:
    """Softmax over the last dim of ``scores`` (B, T, S) keeping only ``mask`` True.

    A row with no True entry gets all-zero weights (not NaN, not uniform): it
    attends to nothing, so its context is the zero vector.
    """
    if mask is None:
        return torch.softmax(scores, dim=-1)
    has_key = mask.any(dim=-1, keepdim=True)  # (B, T, 1)
    # Rows without any key are filled with 0 before the softmax so that no
    # all -inf row reaches it (that would give NaN in forward and backward).
    scores = scores.masked_fill(~mask, float("-inf")).masked_fill(~has_key, 0.0)
    return torch.softmax(scores, dim=-1) * has_key


class AdditiveAttention(nn.Module):
    """Bahdanau's additive attention: ``softmax_s(v^T tanh(W_q q + W_k k_s))``.

    Args:
        query_dim: Dq, width of the queries.
        key_dim: Dk, width of the keys.
        hidden_dim: H, width of the tanh layer.
        value_dim: Dv, width of the values (default: ``key_dim``, values = keys).
    """

    def __init__(
        self, query_dim: int, key_dim: int, hidden_dim: int, *, value_dim: int | None = None
    ) -> None:
        super().__init__()
        for name, value in (("query_dim", query_dim), ("key_dim", key_dim),
                            ("hidden_dim", hidden_dim), ("value_dim", value_dim)):
            if value is None and name == "value_dim":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.query_dim = query_dim
        self.key_dim = key_dim
        self.hidden_dim = hidden_dim
        self.value_dim = key_dim if value_dim is None else value_dim
        self.w_q = nn.Linear(query_dim, hidden_dim, bias=False)
        self.w_k = nn.Linear(key_dim, hidden_dim, bias=False)
        # Scaled like a Linear(hidden_dim, 1) weight so scores start O(1).
        bound = hidden_dim**-0.5
        self.v = nn.Parameter(torch.empty(hidden_dim).uniform_(-bound, bound))

    def forward(
        self,
        query: Tensor,
        keys: Tensor,
        values: Tensor | None = None,
        *,
        mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Attend from each query to the keys and average the values.

        Args:
            query: (B, T, Dq).
            keys: (B, S, Dk).
            values: (B, S, Dv); ``None`` uses ``keys`` (then Dv = Dk).
            mask: bool, True = attend; (B, S) for padding or (B, T, S) per query.

        Returns:
            context (B, T, Dv) and weights (B, T, S); a query whose mask row is
            all False gets zero weights and a zero context.
        """
        _check_tensor("query", query, 3)
        _check_tensor("keys", keys, 3)
        if values is None:
            values = keys
        _check_tensor("values", values, 3)
        b, t, dq = query.shape
        s = keys.shape[1]
        if dq != self.query_dim:
            raise ValueError(f"query last dim ({dq}) must equal query_dim ({self.query_dim})")
        if keys.shape[-1] != self.key_dim:
            raise ValueError(
                f"keys last dim ({keys.shape[-1]}) must equal key_dim ({self.key_dim})"
            )
        if values.shape[-1] != self.value_dim:
            raise ValueError(
                f"values last dim ({values.shape[-1]}) must equal value_dim ({self.value_dim})"
            )
        if keys.shape[0] != b or values.shape[0] != b:
            raise ValueError(
                f"batch sizes must match: query ({b}), keys ({keys.shape[0]}), "
                f"values ({values.shape[0]})"
            )
        if values.shape[1] != s:
            raise ValueError(
                f"keys length ({s}) must equal values length ({values.shape[1]})"
            )
        if mask is not None:
            mask = self._check_mask(mask, b, t, s)

        scores = additive_scores(self.w_q(query), self.w_k(keys), self.v)  # (B, T, S)
        weights = masked_softmax(scores, mask)  # (B, T, S)
        context = torch.matmul(weights, values)  # (B, T, Dv)
        return context, weights

    @staticmethod
    def _check_mask(mask: object, b: int, t: int, s: int) -> Tensor:
        if not isinstance(mask, Tensor):
            raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor (True = attend), got dtype {mask.dtype}")
        if mask.dim() == 2 and tuple(mask.shape) == (b, s):
            return mask[:, None, :]  # (B, 1, S): the same keys for every query
        if mask.dim() == 3 and tuple(mask.shape) == (b, t, s):
            return mask
        raise ValueError(
            f"mask must have shape (B, S) = {(b, s)} or (B, T, S) = {(b, t, s)}, "
            f"got {tuple(mask.shape)}"
        )

    def extra_repr(self) -> str:
        return (f"query_dim={self.query_dim}, key_dim={self.key_dim}, "
                f"hidden_dim={self.hidden_dim}, value_dim={self.value_dim}")
