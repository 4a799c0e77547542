"""Multi-head attention with grouped key/value heads: MHA, GQA and MQA in one module.

    head_h = softmax(Q_h K_g^T / sqrt(D)) V_g,   g = h // (H / H_kv)
    out    = W_o [head_1; ...; head_H]

H_kv == H is multi-head attention (Vaswani et al. 2017), H_kv == 1 multi-query
attention (Shazeer 2019), anything between grouped-query attention (Ainslie et al.
2023). Fewer K/V heads shrink the KV cache, and the memory read per decoded token,
by H / H_kv. The q/k/v projections are one fused matrix (``wqkv``: H*D query rows,
then H_kv*D key rows, then H_kv*D value rows), so one matmul feeds all three.

Checked against the naive oracle in ``tests/reference/attention.py`` and, through
``TransformerLM.from_hf``, against Hugging Face Llama/Mistral/Qwen2 attention.
"""

from __future__ import annotations

import torch
from torch import nn

from blocklab._checks import check_bool, check_int
from blocklab.attention.functional import causal_mask, scaled_dot_product_attention
from blocklab.attention.kv_cache import KVCache

__all__ = ["Attention", "head_layout"]


def head_layout(
    d_model: int, n_heads: int, n_kv_heads: int | None, head_dim: int | None
) -> tuple[int, int]:
    """Checked (H_kv, D) for an attention layer: H_kv defaults to H and must divide
    it; D defaults to C / H, which must then be whole."""
    n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
    for name, value in (("d_model", d_model), ("n_heads", n_heads), ("n_kv_heads", n_kv_heads)):
        check_int(name, value, min=1)
    if n_heads % n_kv_heads:
        raise ValueError(f"n_heads ({n_heads}) must be divisible by n_kv_heads ({n_kv_heads})")
    if head_dim is None:
        if d_model % n_heads:
            raise ValueError(
                f"d_model ({d_model}) must be divisible by n_heads ({n_heads}) "
                "when head_dim is not given"
            )
        head_dim = d_model // n_heads
    check_int("head_dim", head_dim, min=1)
    return n_kv_heads, head_dim


class Attention(nn.Module):
    """Self-attention over (B, T, C) inputs.

    Args:
        d_model: model width C.
        n_heads: query heads H.
        n_kv_heads: key/value heads H_kv (default H); must divide H.
        head_dim: D (default C / H, which must then divide evenly).
        rope: a ``RotaryEmbedding`` applied to q and k, or None.
        bias: biases on the q/k/v projection.
        out_bias: bias on the output projection (default: ``bias``; Qwen2 has
            q/k/v biases but none on the output).
        window: sliding-window size for causal attention (Mistral), or None.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        n_kv_heads: int | None = None,
        head_dim: int | None = None,
        rope: nn.Module | None = None,
        bias: bool = False,
        out_bias: bool | None = None,
        window: int | None = None,
    ) -> None:
        super().__init__()
        n_kv_heads, head_dim = head_layout(d_model, n_heads, n_kv_heads, head_dim)
        if window is not None:
            check_int("window", window, min=1)
        check_bool("bias", bias)
        if out_bias is not None:
            check_bool("out_bias", out_bias)
        self.d_model = d_model
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.head_dim = head_dim
        self.window = window
        self.layer_idx = 0  # which slice of a shared KVCache this layer uses
        self.rope = rope
        self.wqkv = nn.Linear(d_model, (n_heads + 2 * n_kv_heads) * head_dim, bias=bias)
        self.wo = nn.Linear(n_heads * head_dim, d_model, bias=bias if out_bias is None else out_bias)

    def forward(
        self,
        x: torch.Tensor,
        *,
        causal: bool = False,
        mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Args:
            x: (B, T, C).
            causal: hide future keys (aligned to the end when a cache holds the past).
            mask: bool (True = attend) or additive, broadcastable to (B, H, T, S) with
                S the number of keys (cache length + T).
            position_ids: (T,) or (B, T) positions for RoPE; default continues the cache.
            cache: a KVCache; this layer's keys/values are appended to it.

        Returns:
            (B, T, C).
        """
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must be (B, T, C={self.d_model}), got {_shape(x)}")
        causal = check_bool("causal", causal)
        B, T, _ = x.shape
        H, H_kv, D = self.n_heads, self.n_kv_heads, self.head_dim
        if cache is not None:
            cache.check_fits(batch=B, n_kv_heads=H_kv, head_dim=D, new=T, layer=self.layer_idx,
                             what="x and this layer")
        q, k, v = self._project(x, position_ids, cache.length if cache is not None else 0)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)  # (B, H_kv, start + T, D)
        S = k.shape[2]
        if causal and self.window is not None and S > self.window:
            window_mask = causal_mask(T, S, device=x.device, window=self.window)
            mask = window_mask if mask is None else mask & window_mask
            causal = False
        out = scaled_dot_product_attention(q, k, v, mask=mask, causal=causal)  # (B, H, T, D)
        out = out.transpose(1, 2).reshape(B, T, H * D)
        return self.wo(out)

    def decode(
        self,
        x: torch.Tensor,
        cache: KVCache,
        *,
        mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Causal attention of T new tokens over a static cache, shapes fixed from
        step to step (what ``torch.compile`` needs to compile one decoding step once).

        The keys go in at ``cache.pos`` (:meth:`KVCache.write`) and the queries attend
        over the whole buffer, the keys not yet filled hidden by :meth:`KVCache.key_mask`;
        no host read of the position. The cache is not advanced.

        Args:
            x: (B, T, C).
            cache: a KVCache; this layer's keys/values are written to it.
            mask: bool, True = attend, broadcastable to (B, H, T, S_max) (left padding
                over the whole buffer), or None.
            position_ids: (T,) or (B, T) positions for RoPE; default ``cache.pos + t``.

        Returns:
            (B, T, C), equal to :meth:`forward` with ``causal=True`` on the same cache.
        """
        B, T, _ = x.shape
        q, k, v = self._project(x, position_ids, cache.pos.reshape(1))
        k, v = cache.write(self.layer_idx, k, v)  # (B, H_kv, S_max, D)
        keys = cache.key_mask(T)  # (T, S_max)
        if self.window is not None:
            q_pos = cache.pos + torch.arange(T, device=x.device)  # (T,)
            k_pos = torch.arange(cache.max_seq_len, device=x.device)  # (S_max,)
            keys = keys & ((q_pos[:, None] - k_pos) < self.window)
        mask = keys if mask is None else mask & keys  # (B or 1, 1, T, S_max)
        out = scaled_dot_product_attention(q, k, v, mask=mask)  # (B, H, T, D)
        return self.wo(out.transpose(1, 2).reshape(B, T, -1))

    def _project(self, x: torch.Tensor, position_ids: torch.Tensor | None,
                 offset: int | torch.Tensor) -> tuple[torch.Tensor, ...]:
        """q (B, H, T, D), k and v (B, H_kv, T, D) of ``x`` (B, T, C), q and k rotated
        from ``offset``."""
        B, T, _ = x.shape
        H, H_kv, D = self.n_heads, self.n_kv_heads, self.head_dim
        qkv = self.wqkv(x).view(B, T, H + 2 * H_kv, D)  # query, key, value heads
        qk = qkv[:, :, : H + H_kv].transpose(1, 2)  # (B, H + H_kv, T, D)
        v = qkv[:, :, H + H_kv :].transpose(1, 2)  # (B, H_kv, T, D)
        if self.rope is not None:
            # Queries and keys rotate together, in place: one pass over fresh projections.
            # (Slicing, not split(): autograd allows in-place changes to plain views.)
            qk = self.rope.rotate(qk, position_ids, offset=offset, inplace=True)
        return qk[:, :H], qk[:, H:], v

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, "
            f"head_dim={self.head_dim}"
        )


def _shape(x: object) -> object:
    return tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
