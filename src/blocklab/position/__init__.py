"""Position encodings: rotary (RoPE) with its scaling rules, sinusoidal, learned."""

from blocklab.position.rope import (
    RotaryEmbedding,
    apply_rotary,
    inverse_frequencies,
    permute_qk_weights,
    rope_angles,
    rotary_cos_sin,
)
from blocklab.position.scaling import SCALING_KINDS, RopeScaling
from blocklab.position.sinusoidal import (
    LearnedPositionalEmbedding,
    SinusoidalPositionalEmbedding,
    sinusoidal_embedding,
)

__all__ = [
    "RotaryEmbedding",
    "RopeScaling",
    "SCALING_KINDS",
    "apply_rotary",
    "inverse_frequencies",
    "permute_qk_weights",
    "rope_angles",
    "rotary_cos_sin",
    "sinusoidal_embedding",
    "SinusoidalPositionalEmbedding",
    "LearnedPositionalEmbedding",
]
