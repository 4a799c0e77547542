"""Attention: functional SDPA with grouped heads, the Attention module, KV cache,
additive, dilated (LongNet) and hierarchical attention."""

from blocklab.attention.additive import AdditiveAttention, additive_scores
from blocklab.attention.dilated import (
    DilatedAttention,
    dilated_attention,
    dilated_attention_flops,
    dilated_pattern_mask,
    pattern_attention,
)
from blocklab.attention.functional import (
    attention_weights,
    causal_mask,
    scaled_dot_product_attention,
)
from blocklab.attention.hierarchical import (
    AttentionPooling,
    HANEncoder,
    HierarchicalOutput,
    HierarchicalTransformerEncoder,
    segment_tokens,
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
    "dilated_attention",
    "DilatedAttention",
    "pattern_attention",
    "dilated_pattern_mask",
    "dilated_attention_flops",
    "HANEncoder",
    "HierarchicalTransformerEncoder",
    "AttentionPooling",
    "HierarchicalOutput",
    "segment_tokens",
]
