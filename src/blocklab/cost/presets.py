"""Published shapes of real models, for the cost model.

:data:`MODEL_PRESETS` holds every ``TransformerConfig`` preset of
:mod:`blocklab.models.config` (Llama-2, Llama-3, Mistral, Qwen2 and the toy ones) plus
models blocklab cannot load but whose cost is the same shape-wise: Falcon (parallel
attention and MLP: the same matmuls, one LayerNorm per layer where our sequential
block has two), GPT-2 and GPT-3 (learned positions, biases, tied embeddings) and
Gemma (head_dim 256 with H D != C). :data:`PUBLISHED_PARAMS` holds the parameter
counts their authors report, where exact, and ``tests/cost`` checks the count of
:func:`blocklab.cost.count_parameters` against them.
"""

from __future__ import annotations

from typing import Any

from blocklab.models.config import PRESETS, TransformerConfig

__all__ = ["MODEL_PRESETS", "REAL_MODELS", "PUBLISHED_PARAMS", "PRESET_NOTES", "model_config"]

_GPT = dict(activation="gelu", norm="layernorm", position="learned", qkv_bias=True,
            out_bias=True, ffn_bias=True, tie_embeddings=True)
_FALCON = dict(activation="gelu", norm="layernorm", position="rope", tie_embeddings=True)

# Sources: config.json of each released checkpoint; GPT-2: Radford et al. 2019;
# GPT-3: Brown et al. 2020, table 2.1; Falcon: Almazrouei et al. 2023; Gemma: Gemma
# team 2024.
EXTRA_PRESETS: dict[str, dict[str, Any]] = {
    "gpt2": dict(vocab_size=50257, d_model=768, n_layers=12, n_heads=12,
                 ffn_hidden_dim=3072, max_seq_len=1024, **_GPT),
    "gpt-3-175b": dict(vocab_size=50257, d_model=12288, n_layers=96, n_heads=96,
                       ffn_hidden_dim=49152, max_seq_len=2048, **_GPT),
    "falcon-7b": dict(vocab_size=65024, d_model=4544, n_layers=32, n_heads=71, n_kv_heads=1,
                      head_dim=64, ffn_hidden_dim=18176, max_seq_len=2048, **_FALCON),
    "falcon-40b": dict(vocab_size=65024, d_model=8192, n_layers=60, n_heads=128, n_kv_heads=8,
                       head_dim=64, ffn_hidden_dim=32768, max_seq_len=2048, **_FALCON),
    "gemma-7b": dict(vocab_size=256000, d_model=3072, n_layers=28, n_heads=16, head_dim=256,
                     ffn_hidden_dim=24576, activation="geglu", norm="rmsnorm", position="rope",
                     max_seq_len=8192, tie_embeddings=True),
}

MODEL_PRESETS: dict[str, dict[str, Any]] = {**PRESETS, **EXTRA_PRESETS}

# The table of real models the lab and the CLI show, smallest first.
REAL_MODELS: tuple[str, ...] = (
    "gpt2", "qwen2-0.5b", "llama-2-7b", "mistral-7b", "falcon-7b", "qwen2-7b",
    "llama-3-8b", "gemma-7b", "llama-2-13b", "falcon-40b", "llama-2-70b", "llama-3-70b",
    "gpt-3-175b",
)

# Exact counts reported for the released checkpoints.
PUBLISHED_PARAMS: dict[str, int] = {
    "gpt2": 124_439_808,
    "qwen2-0.5b": 494_032_768,
    "llama-2-7b": 6_738_415_616,
    "llama-2-13b": 13_015_864_320,
    "llama-2-70b": 68_976_648_192,
    "llama-3-8b": 8_030_261_248,
    "llama-3-70b": 70_553_706_496,
    "mistral-7b": 7_241_732_096,
    "qwen2-7b": 7_615_616_512,
    "gemma-7b": 8_537_680_896,
    # One shared LayerNorm per layer (parallel attention): 32 x 2 x 4544 fewer than
    # our two-norm block.
    "falcon-7b": 6_921_720_704,
}

PRESET_NOTES: dict[str, str] = {
    "falcon-7b": "parallel attention/MLP with one LayerNorm; multi-query (1 K/V head)",
    "falcon-40b": "parallel attention/MLP (two LayerNorms); 8 K/V heads",
    "mistral-7b": "sliding window 4096: causal pairs capped at 4096 keys per query",
    "gpt-3-175b": "dense layers only (GPT-3 alternates dense and locally banded attention)",
    "gemma-7b": "head_dim 256: H D = 4096 > C = 3072",
}


def model_config(name: str, **overrides: Any) -> TransformerConfig:
    """The TransformerConfig of a preset of :data:`MODEL_PRESETS`, fields overridden."""
    if name not in MODEL_PRESETS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(MODEL_PRESETS))}")
    fields = {**MODEL_PRESETS[name], **overrides}
    fields.setdefault("name", name)
    return TransformerConfig(**fields)
