"""Attention: functional SDPA with grouped heads, the Attention module, KV cache,
additive attention."""

from blocklab.attention.additive import AdditiveAttention, additive_scores
from blocklab.attention.functional import (
    attention_weights,
    causal_mask,
    scaled_dot_product_attention,
)
from blocklab.attention.kv_cache import KVCache
from blocklab.attention.multihead import Attention

__all__ = [
    "scaled_dot_product_attention",
    "attention_weights",
    "causal_mask",
    "Attention",
    "KVCache",
    "AdditiveAttention",
    "additive_scores",
]
