"""Position encodings: rotary (RoPE) with its scaling rules, sinusoidal, learned."""

from blocklab.position.rope import RotaryEmbedding, apply_rotary, inverse_frequencies, rope_angles
from blocklab.position.scaling import RopeScaling
from blocklab.position.sinusoidal import (
    LearnedPositionalEmbedding,
    SinusoidalPositionalEmbedding,
    sinusoidal_embedding,
)

__all__ = [
    "RotaryEmbedding",
    "RopeScaling",
    "apply_rotary",
    "inverse_frequencies",
    "rope_angles",
    "sinusoidal_embedding",
    "SinusoidalPositionalEmbedding",
    "LearnedPositionalEmbedding",
]
