"""A preallocated key/value cache for incremental decoding.

Autoregressive decoding recomputes nothing: the keys and values of past tokens are
kept, and each step appends one token's. The buffers are allocated once, at full
length, with a position index (``length``), so shapes stay static (gpt-fast style)
and no step reallocates or concatenates.

Memory: 2 * n_layers * n_kv_heads * head_dim * max_seq_len * batch * bytes per value
-- the reason for multi-query / grouped-query attention, which shrinks n_kv_heads.
"""

from __future__ import annotations

import torch

__all__ = ["KVCache"]


class KVCache:
    """Keys and values of every layer, (L, B, H_kv, S_max, D) each.

    Args:
        n_layers, batch, n_kv_heads, head_dim, max_seq_len: buffer sizes.
        dtype, device: of the buffers.
    """

    def __init__(
        self,
        *,
        n_layers: int,
        batch: int,
        n_kv_heads: int,
        head_dim: int,
        max_seq_len: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        sizes = dict(n_layers=n_layers, batch=batch, n_kv_heads=n_kv_heads,
                     head_dim=head_dim, max_seq_len=max_seq_len)
        for name, value in sizes.items():
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} ({value}) must be a positive int")
        shape = (n_layers, batch, n_kv_heads, max_seq_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_seq_len = max_seq_len
        self.length = 0  # tokens stored so far, the same for every layer

    @property
    def nbytes(self) -> int:
        """Bytes held by the preallocated buffers."""
        return self.k.nbytes + self.v.nbytes

    @property
    def used_bytes(self) -> int:
        """Bytes of the keys and values stored so far."""
        return self.nbytes * self.length // self.max_seq_len

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write T new keys/values of one layer after the stored ones.

        Args:
            layer: layer index.
            k, v: (B, H_kv, T, D).

        Returns:
            Views of all keys and values of that layer, (B, H_kv, length + T, D).
            ``length`` moves on only with :meth:`advance`, once every layer is written.
        """
        T = k.shape[2]
        end = self.length + T
        if end > self.max_seq_len:
            raise ValueError(
                f"KV cache full: {self.length} stored + {T} new > max_seq_len {self.max_seq_len}"
            )
        self.k[layer, :, :, self.length : end] = k
        self.v[layer, :, :, self.length : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, T: int) -> None:
        self.length += T

    def reset(self) -> None:
        self.length = 0
