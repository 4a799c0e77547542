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

from blocklab._checks import check_int, check_positive, check_tensor

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
        check_positive(n_layers=n_layers, batch=batch, n_kv_heads=n_kv_heads,
                       head_dim=head_dim, max_seq_len=max_seq_len)
        shape = (n_layers, batch, n_kv_heads, max_seq_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.n_layers, self.batch, self.n_kv_heads, self.head_dim = (
            n_layers, batch, n_kv_heads, head_dim)
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

    def check_fits(
        self,
        *,
        batch: int,
        n_kv_heads: int,
        head_dim: int,
        new: int,
        n_layers: int | None = None,
        layer: int | None = None,
        what: str = "k and v",
    ) -> None:
        """Raise ValueError unless ``new`` more tokens of a (batch, n_kv_heads, head_dim)
        layout fit: the layout must be the cache's exactly (a batch-1 key is not spread
        over a batch-2 cache), ``layer`` one of its layers and ``n_layers`` at most its
        number of layers. For :meth:`update`, and for modules to check before they
        compute anything; ``what`` names the caller's tensors in the error."""
        ours = (self.batch, self.n_kv_heads, self.head_dim)
        if (batch, n_kv_heads, head_dim) != ours:
            raise ValueError(
                f"cache holds (batch, n_kv_heads, head_dim) = {ours}, {what} have "
                f"{(batch, n_kv_heads, head_dim)}"
            )
        if n_layers is not None and n_layers > self.n_layers:
            raise ValueError(f"cache has n_layers={self.n_layers}, fewer than the model's "
                             f"{n_layers} layers")
        if layer is not None:
            check_int("layer", layer)
            if not 0 <= layer < self.n_layers:
                raise ValueError(f"layer ({layer}) must lie in [0, n_layers={self.n_layers})")
        if self.length + new > self.max_seq_len:
            raise ValueError(
                f"KV cache full: {self.length} stored + {new} new > max_seq_len {self.max_seq_len}"
            )

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write T new keys/values of one layer after the stored ones.

        Args:
            layer: layer index in [0, n_layers).
            k, v: (B, H_kv, T, D), exactly the cache's B, H_kv and D.

        Returns:
            Views of all keys and values of that layer, (B, H_kv, length + T, D).
            ``length`` moves on only with :meth:`advance`, once every layer is written.
        """
        check_tensor("k", k, dim=4, layout="(B, H_kv, T, D)", floating=True)
        check_tensor("v", v, dim=4, layout="(B, H_kv, T, D)", floating=True)
        if k.shape != v.shape:
            raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must have one shape")
        B, H_kv, T, D = k.shape
        self.check_fits(batch=B, n_kv_heads=H_kv, head_dim=D, new=T, layer=layer)
        end = self.length + T
        self.k[layer, :, :, self.length : end] = k
        self.v[layer, :, :, self.length : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, T: int) -> None:
        """Count T more tokens as stored (after every layer's :meth:`update`)."""
        T = check_int("T", T, min=0)
        if self.length + T > self.max_seq_len:
            raise ValueError(
                f"advance({T}) would pass max_seq_len: {self.length} stored + {T} > "
                f"{self.max_seq_len}"
            )
        self.length += T

    def reset(self) -> None:
        self.length = 0
