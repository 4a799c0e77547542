"""TransformerLM: a pre-norm decoder-only language model built from blocklab's blocks.

    h_0 = E[x] (+ absolute positions)
    h   = h + Attention(Norm(h))      for each layer
    h   = h + FeedForward(Norm(h))
    logits = W_head Norm(h_L)

With RMSNorm, SwiGLU and RoPE this is the Llama architecture (Touvron et al. 2023),
and Hugging Face Llama, Mistral and Qwen2 checkpoints load into it with the same
logits (``models/hf.py``).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from blocklab._checks import check_ids
from blocklab.attention.kv_cache import KVCache
from blocklab.attention.multihead import Attention
from blocklab.ffn import FeedForward
from blocklab.models.config import TransformerConfig
from blocklab.norm import make_norm
from blocklab.position.rope import RotaryEmbedding
from blocklab.position.sinusoidal import LearnedPositionalEmbedding, SinusoidalPositionalEmbedding

__all__ = ["Block", "TransformerLM"]


class Block(nn.Module):
    """One pre-norm decoder layer: attention then FFN, each in a residual branch."""

    def __init__(self, config: TransformerConfig, rope: RotaryEmbedding | None) -> None:
        super().__init__()
        self.attn_norm = make_norm(config.norm, config.d_model, config.norm_eps)
        self.attn = Attention(
            config.d_model,
            config.n_heads,
            n_kv_heads=config.kv_heads,
            head_dim=config.dim_head,
            rope=rope,
            bias=config.qkv_bias,
            out_bias=config.out_bias,
            window=config.sliding_window,
        )
        self.ffn_norm = make_norm(config.norm, config.d_model, config.norm_eps)
        self.ffn = FeedForward(
            config.d_model,
            hidden_dim=config.hidden_dim,
            activation=config.activation,  # type: ignore[arg-type]
            bias=config.ffn_bias,
        )

    def forward(
        self,
        x: torch.Tensor,
        *,
        mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        cache: KVCache | None,
    ) -> torch.Tensor:
        x = x + self.attn(
            self.attn_norm(x), causal=True, mask=mask, position_ids=position_ids, cache=cache
        )
        return x + self.ffn(self.ffn_norm(x))

    def decode(
        self,
        x: torch.Tensor,
        cache: KVCache,
        *,
        mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
    ) -> torch.Tensor:
        """:meth:`forward` over a static cache (see :meth:`Attention.decode`)."""
        x = x + self.attn.decode(
            self.attn_norm(x), cache, mask=mask, position_ids=position_ids
        )
        return x + self.ffn(self.ffn_norm(x))


class TransformerLM(nn.Module):
    """Decoder-only language model.

    Args:
        config: a TransformerConfig.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        if not isinstance(config, TransformerConfig):
            raise TypeError(f"config must be a TransformerConfig, got {type(config).__name__}")
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        rope = None
        self.pos_embed: nn.Module | None = None
        if config.position == "rope":
            # One RotaryEmbedding shared by every layer: one cos/sin table.
            rope = RotaryEmbedding(
                config.rotary_dim,
                base=config.rope_base,
                interleaved=config.rope_interleaved,
                scaling=config.rope_scaling,
                max_seq_len=config.max_seq_len,
            )
        elif config.position == "sinusoidal":
            self.pos_embed = SinusoidalPositionalEmbedding(config.d_model)
        elif config.position == "learned":
            self.pos_embed = LearnedPositionalEmbedding(config.max_seq_len, config.d_model)
        self.layers = nn.ModuleList(Block(config, rope) for _ in range(config.n_layers))
        for i, layer in enumerate(self.layers):
            layer.attn.layer_idx = i
        self.norm = make_norm(config.norm, config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.reset_parameters()
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def reset_parameters(self) -> None:
        """GPT-2 initialisation: N(0, 0.02), residual outputs scaled by 1/sqrt(2L)."""
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=std)
        for layer in self.layers:
            for proj in (layer.attn.wo, layer.ffn.w_out):
                nn.init.normal_(proj.weight, std=std / math.sqrt(2 * self.config.n_layers))

    @property
    def rope(self) -> RotaryEmbedding | None:
        return self.layers[0].attn.rope if len(self.layers) else None

    def num_parameters(self, *, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.embed.weight.numel()
        return n

    def make_cache(
        self, batch: int, max_seq_len: int | None = None, *, dtype: torch.dtype | None = None
    ) -> KVCache:
        """A KVCache sized for this model."""
        ref = self.embed.weight
        return KVCache(
            n_layers=self.config.n_layers,
            batch=batch,
            n_kv_heads=self.config.kv_heads,
            head_dim=self.config.dim_head,
            max_seq_len=max_seq_len or self.config.max_seq_len,
            dtype=dtype or ref.dtype,
            device=ref.device,
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        position_ids: torch.Tensor | None = None,
        padding_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        targets: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Args:
            input_ids: (B, T) token ids.
            position_ids: (T,) or (B, T); default continues after the cache.
            padding_mask: (B, S) bool, True for real tokens, over all S = cache + T
                positions (left-padded batches).
            cache: a KVCache from :meth:`make_cache`; it is filled and advanced.
            targets: (B, T) next-token ids in [0, V) (``-100`` ignored). When given, the LM head
                and the cross entropy run fused in row chunks and the (B*T, V) logits
                are never formed (``losses.linear_cross_entropy``). It is an argument
                of ``forward`` so DDP/FSDP wrappers see the whole computation.

        Returns:
            logits (B, T, V); with ``targets``, the scalar mean cross entropy instead
            (NaN when no target counts, as ``F.cross_entropy``). Empty in, empty out:
            B = 0 or T = 0 gives (B, T, V) logits.
        """
        if targets is not None:
            self._check_targets(input_ids, targets)
        h = self.hidden_states(
            input_ids, position_ids=position_ids, padding_mask=padding_mask, cache=cache
        )
        if targets is None:
            return self.lm_head(h)
        from blocklab.losses.linear_ce import linear_cross_entropy

        return linear_cross_entropy(h, self.lm_head.weight, targets)

    def _check_targets(self, input_ids: torch.Tensor, targets: torch.Tensor) -> None:
        if not isinstance(targets, torch.Tensor) or targets.is_floating_point() \
                or targets.is_complex() or targets.dtype == torch.bool:
            got = targets.dtype if isinstance(targets, torch.Tensor) else type(targets).__name__
            raise TypeError(f"targets must be an integer tensor (B, T), got {got}")
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else None
        # (T, B) targets would flatten to the right number of rows, each the wrong one.
        if tuple(targets.shape) != shape:
            raise ValueError(
                f"targets must have input_ids' shape (B, T) = {shape}, got {tuple(targets.shape)}"
            )
        check_ids("targets", targets, self.config.vocab_size, bound="vocab_size",
                  what="token", ignore_index=-100)

    def loss(self, input_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross entropy, fused with the LM head: ``self(x, targets=y)``."""
        return self(input_ids, targets=targets)

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        *,
        position_ids: torch.Tensor | None = None,
        padding_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """The final normalised hidden states (B, T, C): :meth:`forward` before the LM head."""
        if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (
            torch.long, torch.int32, torch.int64,
        ):
            raise TypeError("input_ids must be an integer tensor (B, T)")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (B, T), got shape {tuple(input_ids.shape)}")
        B, T = input_ids.shape
        start = cache.length if cache is not None else 0
        if cache is not None:
            if not isinstance(cache, KVCache):
                raise TypeError(f"cache must be a KVCache or None, got {type(cache).__name__}")
            cfg = self.config
            cache.check_fits(batch=B, n_kv_heads=cfg.kv_heads, head_dim=cfg.dim_head, new=T,
                             n_layers=cfg.n_layers, what="input_ids and the model")
        check_ids("input_ids", input_ids, self.config.vocab_size, bound="vocab_size",
                  what="token")
        mask = None
        if padding_mask is not None:
            if padding_mask.shape != (B, start + T):
                raise ValueError(
                    f"padding_mask must be (B, S) = {(B, start + T)}, got {tuple(padding_mask.shape)}"
                )
            mask = padding_mask.bool()[:, None, None, :]  # (B, 1, 1, S)
        h = self.embed(input_ids)  # (B, T, C)
        if self.pos_embed is not None:
            pos = position_ids if position_ids is not None else torch.arange(
                start, start + T, device=h.device
            )
            h = self.pos_embed(h, pos)
        for layer in self.layers:
            h = layer(h, mask=mask, position_ids=position_ids, cache=cache)
        if cache is not None:
            cache.advance(T)
        return self.norm(h)  # (B, T, C)

    def decode_step(
        self,
        input_ids: torch.Tensor,
        cache: KVCache,
        *,
        position_ids: torch.Tensor | None = None,
        padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits of T new tokens after those in ``cache``, with shapes that do not
        change from step to step: the step ``generate`` compiles once.

        Every layer attends over the whole cache buffer, the keys not yet filled
        masked (:meth:`KVCache.key_mask`), and the position stays a tensor, so a
        compiled step is not recompiled per token or position. Eager calls check the
        fit of the cache; compiled ones trust the caller (``generate`` sized it).

        Args:
            input_ids: (B, T) token ids in [0, vocab_size), usually T = 1.
            cache: a KVCache from :meth:`make_cache`; it is filled and advanced by T.
            position_ids: (T,) or (B, T); default continues after the cache.
            padding_mask: (B, S_max) bool over the cache's whole buffer, True for real
                tokens (left-padded batches), or None.

        Returns:
            logits (B, T, V), equal to :meth:`forward` with the same cache.
        """
        B, T = input_ids.shape
        if not torch.compiler.is_compiling():
            cfg = self.config
            cache.check_fits(batch=B, n_kv_heads=cfg.kv_heads, head_dim=cfg.dim_head, new=T,
                             n_layers=cfg.n_layers, what="input_ids and the model")
            if padding_mask is not None and padding_mask.shape != (B, cache.max_seq_len):
                raise ValueError(f"padding_mask must be (B, S_max) = {(B, cache.max_seq_len)}, "
                                 f"got {tuple(padding_mask.shape)}")
        mask = None if padding_mask is None else padding_mask.bool()[:, None, None, :]
        h = self.embed(input_ids)  # (B, T, C)
        if self.pos_embed is not None:
            pos = position_ids if position_ids is not None else cache.pos + torch.arange(
                T, device=h.device)
            h = self.pos_embed(h, pos)
        for layer in self.layers:
            h = layer.decode(h, cache, mask=mask, position_ids=position_ids)
        cache.advance(T)
        return self.lm_head(self.norm(h))  # (B, T, V)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, **kwargs) -> torch.Tensor:
        """Autoregressive decoding with a KV cache; see :func:`blocklab.models.generate.generate`."""
        from blocklab.models.generate import generate

        return generate(self, input_ids, max_new_tokens, **kwargs)

    @classmethod
    def from_hf(cls, hf_model: nn.Module) -> TransformerLM:
        """Build from a Hugging Face Llama / Mistral / Qwen2 causal LM (same logits)."""
        from blocklab.models.hf import from_hf

        return from_hf(hf_model)

    def to_hf(self) -> nn.Module:
        """The equivalent Hugging Face causal LM, with these weights."""
        from blocklab.models.hf import to_hf

        return to_hf(self)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str = "cpu",
    ) -> TransformerLM:
        """Load a local Hugging Face Llama / Mistral / Qwen2 directory (config.json +
        safetensors, sharded or not), without transformers; see
        :func:`blocklab.models.hf_io.load_pretrained`."""
        from blocklab.models.hf_io import load_pretrained

        return load_pretrained(path, dtype=dtype, device=device)

    def save_pretrained(
        self,
        path: str | Path,
        *,
        family: str | None = None,
        max_shard_size: int | str = "5GB",
        dtype: torch.dtype | None = None,
    ) -> Path:
        """Write a Hugging Face directory (config.json + safetensors, sharded above
        ``max_shard_size``) that transformers loads with the same logits; see
        :func:`blocklab.models.hf_io.save_pretrained`."""
        from blocklab.models.hf_io import save_pretrained

        return save_pretrained(self, path, family=family, max_shard_size=max_shard_size,
                               dtype=dtype)
