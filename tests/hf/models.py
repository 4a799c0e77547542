"""Tiny random Hugging Face Llama, Mistral and Qwen2 models for the patch tests."""

from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

VOCAB = 120
SEQ = 24  # longer than Mistral's window of 8

# name -> (config class, model class, config overrides); all GQA: 4 query heads, 2 K/V.
FAMILIES = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {}),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM,
                dict(sliding_window=8)),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, {}),  # q/k/v biases
}


def hf_model(family: str = "llama", *, model_cls=None, attn_implementation: str | None = None,
             **overrides) -> torch.nn.Module:
    """A random fp32 model in eval mode; every parameter (biases too) ~ N(0, 0.1^2), so a
    dropped term shows."""
    config_cls, causal_cls, extra = FAMILIES[family]
    kwargs = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                  num_hidden_layers=2, intermediate_size=96, vocab_size=VOCAB,
                  max_position_embeddings=64, rope_theta=1000.0, pad_token_id=0)
    kwargs.update(extra)
    kwargs.update(overrides)
    config = config_cls(**kwargs)
    cls = model_cls or causal_cls
    torch.manual_seed(0)
    if attn_implementation is None:
        model = cls(config)
    else:
        model = cls._from_config(config, attn_implementation=attn_implementation)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.1)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.eos_token_id = None  # compare every step, no early stop
        model.generation_config.pad_token_id = 0
    return model.eval()


def twin(model: torch.nn.Module) -> torch.nn.Module:
    """An independent copy with the same weights."""
    return copy.deepcopy(model)


def batch(seed: int = 1, *, pad: int = 5, first_label: bool = False
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, labels) of two rows; row 1 left-padded by ``pad``
    tokens, its labels -100 there.

    The first real token of row 1 is predicted from the last padding position, a query
    that sees no token at all: transformers 5's sdpa (and blocklab) give it zeros, 4.x's
    sdpa lets it attend everywhere and eager averages all values uniformly. Its label
    is -100 too unless ``first_label``.
    """
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (2, SEQ), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :pad] = 0
    ids[1, :pad] = 0
    labels = ids.masked_fill(mask == 0, -100)
    if not first_label:
        labels[1, pad] = -100
    return ids, mask, labels


TRANSFORMERS_5 = int(transformers.__version__.split(".")[0]) >= 5
