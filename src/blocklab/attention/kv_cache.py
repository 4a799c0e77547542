"""A preallocated key/value cache for incremental decoding.

Autoregressive decoding recomputes nothing: the keys and values of past tokens are
kept, and each step appends one token's. The buffers are allocated once, at full
length, with a position index, so shapes stay static (gpt-fast style) and no step
reallocates or concatenates.

The position is a 0-d integer tensor (``pos``), not a Python int: ``torch.compile``
guards on Python ints, so a cache counting in one recompiles at every step (torchtune's
compile test), while a tensor is graph data. :meth:`write` and :meth:`advance` are
compile-stable: ``write`` copies at ``pos + arange(T)`` and returns the whole buffers with
:meth:`key_mask` saying which keys are filled. Eager callers keep ``length`` (an int,
mirrored on the host so reading it costs no device sync) and :meth:`update`, which
returns views of the filled part.

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
        # Tokens stored so far, the same for every layer: the tensor is the truth, the
        # int a host mirror valid while the tensor's version counter has not moved
        # (a compiled advance() bumps it, and the next read syncs once).
        with torch.inference_mode(False):  # keep a version counter under inference_mode
            self.pos = torch.zeros((), dtype=torch.long, device=device)
        self._host = (0, self.pos._version)

    @property
    def length(self) -> int:
        """Tokens stored so far (a Python int)."""
        value, version = self._host
        if version != self.pos._version:
            value = int(self.pos)
            self._host = (value, self.pos._version)
        return value

    @length.setter
    def length(self, value: int) -> None:
        """Rewind or move to ``value`` >= 0 tokens stored (past max_seq_len, every later
        write is refused as not fitting)."""
        value = check_int("length", value, min=0)
        self.pos.fill_(value)
        self._host = (value, self.pos._version)

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
        if batch > self.batch:
            raise ValueError(f"{what} have batch {batch}, larger than the cache's batch "
                             f"{self.batch}: make the cache with batch >= {batch}")
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

    def _check_kv(self, k: torch.Tensor, v: torch.Tensor) -> tuple[int, int, int, int]:
        check_tensor("k", k, dim=4, layout="(B, H_kv, T, D)", floating=True)
        check_tensor("v", v, dim=4, layout="(B, H_kv, T, D)", floating=True)
        if k.shape != v.shape:
            raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must have one shape")
        return tuple(k.shape)  # type: ignore[return-value]

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
        B, H_kv, T, D = self._check_kv(k, v)
        self.check_fits(batch=B, n_kv_heads=H_kv, head_dim=D, new=T, layer=layer)
        start = self.length
        end = start + T
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def write(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write T new keys/values of one layer at positions ``pos .. pos + T - 1``,
        static shapes only (compile-stable: no recompilation from step to step).

        Args:
            layer: layer index in [0, n_layers).
            k, v: (B, H_kv, T, D), exactly the cache's B, H_kv and D.

        Returns:
            The layer's whole buffers, (B, H_kv, max_seq_len, D); keys past the filled
            ones are stale or zero, so mask them with :meth:`key_mask`. Eager calls are
            checked as :meth:`update`; compiled ones cannot read ``pos`` on the host.
        """
        B, H_kv, T, D = self._check_kv(k, v)
        if not torch.compiler.is_compiling():
            self.check_fits(batch=B, n_kv_heads=H_kv, head_dim=D, new=T, layer=layer)
        idx = self.pos + torch.arange(T, device=self.pos.device)  # (T,)
        # One index_put_ on the whole buffer, the layer an index tensor too: Inductor
        # writes it in place. A write into the view self.k[layer] is functionalized
        # into a copy of the layer's whole buffer per step, O(max_seq_len) per token.
        at = (torch.full((1,), layer, device=idx.device), slice(None), slice(None), idx)
        self.k[at] = k.to(self.k.dtype).permute(2, 0, 1, 3)  # (T, B, H_kv, D)
        self.v[at] = v.to(self.v.dtype).permute(2, 0, 1, 3)
        return self.k[layer], self.v[layer]

    def key_mask(self, T: int) -> torch.Tensor:
        """Bool (T, max_seq_len), True where query t (at ``pos + t``) may see key j:
        j <= pos + t, causal over the filled keys and the T being written."""
        T = check_int("T", T, min=0)
        q_pos = self.pos + torch.arange(T, device=self.pos.device)  # (T,)
        return torch.arange(self.max_seq_len, device=self.pos.device) <= q_pos.unsqueeze(-1)

    def advance(self, T: int) -> None:
        """Count T more tokens as stored (after every layer's :meth:`update`)."""
        T = check_int("T", T, min=0)
        if torch.compiler.is_compiling():  # no host read: the tensor alone moves
            self.pos.add_(T)
            return
        length = self.length
        if length + T > self.max_seq_len:
            raise ValueError(
                f"advance({T}) would pass max_seq_len: {length} stored + {T} > "
                f"{self.max_seq_len}"
            )
        self.pos.add_(T)
        self._host = (length + T, self.pos._version)

    def reset(self) -> None:
        self.length = 0
