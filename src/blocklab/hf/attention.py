"""The attention of a Hugging Face Llama/Mistral/Qwen2 layer, rerun with blocklab's RoPE
and grouped-head SDPA: a replacement ``forward`` for the HF attention module.

    q, k, v = W_q x, W_k x, W_v x           (B, H, T, D), (B, H_kv, T, D)
    q, k   <- R(pos) q, R(pos) k            rotated in their own storage
    out     = W_o softmax(q k^T / sqrt(D) + M) v

Hugging Face's ``apply_rotary_pos_emb`` builds ``q * cos + rotate_half(q) * sin``: four
(B, H, T, D) temporaries per tensor besides the result, and its backward keeps
``rotate_half(q)`` as well as q. Here the
rotation is :func:`blocklab.position.apply_rotary` with ``inplace=True`` (the backward
is the inverse rotation). The cos/sin come from the model's own ``rotary_emb``, so every
rope type Hugging Face computes (default, linear, dynamic, yarn, llama3, longrope) is
rotated with the same angles; its half-split layout ``cat(freqs, freqs)`` means the
first half of each table is the (T, D/2) table blocklab takes. The attention is
:func:`blocklab.attention.scaled_dot_product_attention`, which reads each K/V head once
for its whole group of query heads instead of repeating K/V ``H / H_kv`` times
(``repeat_kv``), with the mask Hugging Face built for the layer (sliding windows and
padding included) -- so sdpa's boolean masks and eager's additive ones both work. A
query that sees no key at all (a left-padding position) gives zeros, as under Hugging
Face's sdpa; eager's ``finfo.min`` masks make it a uniform average of the values there
(only such positions differ, and only when a loss reaches them).

Either half can be kept as Hugging Face's: with ``rope`` off, HF's own
``apply_rotary_pos_emb``; with ``attention`` off, HF's attention function for
``config._attn_implementation``. Checked against the unpatched module in
``tests/hf/test_patch.py`` (logits and gradients to 1e-5 in fp32, greedy tokens equal).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch

from blocklab.attention.functional import scaled_dot_product_attention
from blocklab.hf._state import STATE
from blocklab.position.rope import apply_rotary

__all__ = ["AttentionPatch", "attention_forward", "hf_attention_function", "rotate_qk"]

# The KV cache argument's name: ``cache`` (transformers 5.2x), ``past_key_values``
# (4.56+), ``past_key_value`` (4.48-4.55).
_CACHE_NAMES = ("cache", "past_key_values", "past_key_value")


@dataclass
class AttentionPatch:
    """What a patched attention module runs, and how the installed transformers
    version expects its cache to be updated and its own functions to be called."""

    attention: bool  # blocklab's grouped SDPA (else HF's attention function)
    rope: bool  # blocklab's in-place rotation (else HF's apply_rotary_pos_emb)
    hf_module: str  # the modeling module's name: HF's own functions, looked up per call
    cache_kwargs_style: bool  # transformers 5: cache.update(k, v, i, kwargs=kwargs)
    sliding_window: Callable[[torch.nn.Module], int | None] | None  # what HF passes, if any


def hf_attention_function(hf_module: ModuleType, implementation: str) -> Callable[..., Any]:
    """Hugging Face's attention function for ``config._attn_implementation``, from the
    modeling module ``hf_module``."""
    eager = hf_module.eager_attention_forward
    if implementation == "eager":
        return eager
    registry = hf_module.ALL_ATTENTION_FUNCTIONS
    get = getattr(registry, "get_interface", None)  # transformers 5; a dict before
    return get(implementation, eager) if get is not None else registry[implementation]


def rotate_qk(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q (B, H, T, D) and k (B, H_kv, T, D) in place with Hugging Face's tables.

    cos, sin: (B or 1, T, D_rot) in the half-split layout ``cat(freqs, freqs)``; the
    first halves, as (B or 1, 1, T, D_rot/2) float32 tables, are what is rotated with
    (in float32 whatever the model's dtype, rounded once).
    """
    half = cos.shape[-1] // 2
    c = cos[..., :half].unsqueeze(1).float()  # (B or 1, 1, T, D_rot/2)
    s = sin[..., :half].unsqueeze(1).float()
    return apply_rotary(q, c, s, inplace=True), apply_rotary(k, c, s, inplace=True)


def _grouped_attention(module: torch.nn.Module, q: torch.Tensor, k: torch.Tensor,
                       v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """blocklab's SDPA with HF's mask conventions; (B, H, T, D) -> (B, T, H, D)."""
    T, S = q.shape[2], k.shape[2]
    if mask is None:
        # Hugging Face leaves the mask out exactly when a causal flag (or, for one
        # query, nothing) is enough; like its sdpa path, a prefill into an empty
        # static cache (S > T, no mask) attends to the first T keys only.
        causal = T > 1 and bool(getattr(module, "is_causal", True))
        if causal and S > T:
            k, v = k[:, :, :T], v[:, :, :T]
        out = scaled_dot_product_attention(q, k, v, causal=causal, scale=module.scaling)
    else:
        if not isinstance(mask, torch.Tensor) or mask.dim() != 4:
            raise ValueError(
                "blocklab's attention takes Hugging Face's 4-d sdpa or eager masks, got "
                f"{type(mask).__name__}{tuple(mask.shape) if isinstance(mask, torch.Tensor) else ''}"
                f" (attn_implementation {module.config._attn_implementation!r}); use "
                "attn_implementation='sdpa' or patch with attention=False")
        mask = mask[..., :S]
        if mask.is_floating_point():
            # eager's masks hide keys with finfo.min, not -inf: a row with no key left
            # (a left-padding position) is then a uniform average, and torch's fused
            # kernels get its gradient wrong (the log-sum-exp absorbs the scores). As
            # -inf, such a row gives zeros, as Hugging Face's sdpa path does.
            mask = mask.masked_fill(mask <= torch.finfo(mask.dtype).min / 2, float("-inf"))
        out = scaled_dot_product_attention(q, k, v, mask=mask, scale=module.scaling)
    return out.transpose(1, 2)  # (B, T, H, D)


def attention_forward(self: torch.nn.Module, hidden_states: torch.Tensor,
                      position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
                      attention_mask: torch.Tensor | None = None, *args: Any, **kwargs: Any
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Replacement for ``LlamaAttention.forward`` (and Mistral's, Qwen2's).

    Args:
        hidden_states: (B, T, C).
        position_embeddings: HF's (cos, sin), each (B or 1, T, D).
        attention_mask: HF's mask for this layer: None, bool (B, 1, T, S) with True =
            attend (sdpa) or additive float (eager).
        args, kwargs: the KV cache (positionally or under its version's name) and
            HF's other keyword arguments, passed on to the cache update.

    Returns:
        (output (B, T, C), attention weights or None).
    """
    patch: AttentionPatch = self.__dict__[STATE].parts
    cache = args[0] if args else None
    for name in _CACHE_NAMES:
        value = kwargs.pop(name, None)
        cache = value if value is not None else cache
    if patch.attention and kwargs.get("output_attentions",
                                      getattr(self.config, "output_attentions", False)):
        raise ValueError("output_attentions=True is not supported by blocklab's attention "
                         "(it never forms the weights); patch with attention=False")
    if position_embeddings is None:
        raise ValueError(f"{type(self).__name__} needs position_embeddings (cos, sin) from the "
                         "model's rotary_emb")
    input_shape = hidden_states.shape[:-1]
    hidden_shape = (*input_shape, -1, self.head_dim)
    q = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)  # (B, H, T, D)
    k = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)  # (B, H_kv, T, D)
    v = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)  # (B, H_kv, T, D)

    cos, sin = position_embeddings
    if patch.rope:
        q, k = rotate_qk(q, k, cos, sin)
    else:
        q, k = sys.modules[patch.hf_module].apply_rotary_pos_emb(q, k, cos, sin)
    if cache is not None:
        if patch.cache_kwargs_style:
            k, v = cache.update(k, v, self.layer_idx, kwargs=kwargs)
        else:
            extra = {"sin": sin, "cos": cos, "cache_position": kwargs.get("cache_position")}
            k, v = cache.update(k, v, self.layer_idx, extra)  # (B, H_kv, S, D)

    weights = None
    if patch.attention:
        out = _grouped_attention(self, q, k, v, attention_mask)  # (B, T, H, D)
    else:
        hf_attention = hf_attention_function(sys.modules[patch.hf_module],
                                             self.config._attn_implementation)
        if patch.sliding_window is not None:
            kwargs["sliding_window"] = patch.sliding_window(self)
        out, weights = hf_attention(
            self, q, k, v, attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling, **kwargs)
    out = out.reshape(*input_shape, -1).contiguous()  # (B, T, H * D)
    return self.o_proj(out), weights
