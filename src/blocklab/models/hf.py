"""Hugging Face interop: Llama, Mistral and Qwen2 causal LMs to and from TransformerLM.

The three families share one architecture (pre-norm RMSNorm, SwiGLU, RoPE in the
half-split layout, grouped K/V heads) and differ in options: Qwen2 has q/k/v biases
and often tied embeddings, Mistral a sliding window, Llama optional attention/MLP
biases. The weight map fuses q/k/v into ``wqkv`` and gate/up into ``w_in``. Reads the
rotary settings from ``config.rope_parameters`` (transformers 5) or
``rope_theta``/``rope_scaling`` (transformers 4). ``transformers`` is imported only
here, and only when called; :mod:`blocklab.models.hf_io` reads and writes the same
mapping as a model directory (config.json + safetensors) without it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from blocklab.models.config import TransformerConfig
from blocklab.models.transformer import TransformerLM
from blocklab.position.scaling import RopeScaling

__all__ = ["config_from_hf", "from_hf", "to_hf", "hf_config_dict", "weight_map", "FAMILIES"]

FAMILIES = ("llama", "mistral", "qwen2")
_ACT_TO_GLU = {"silu": "swiglu", "swish": "swiglu", "gelu": "geglu", "relu": "reglu"}
_GLU_TO_ACT = {"swiglu": "silu", "geglu": "gelu", "reglu": "relu"}


def _rope_settings(hf_config: Any) -> tuple[float, dict[str, Any] | None]:
    params = getattr(hf_config, "rope_parameters", None)
    if isinstance(params, dict) and params:
        theta = params.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
        kind = params.get("rope_type", params.get("type", "default"))
        return float(theta), (None if kind == "default" else params)
    theta = float(getattr(hf_config, "rope_theta", 10000.0))
    scaling = getattr(hf_config, "rope_scaling", None)
    if scaling and scaling.get("rope_type", scaling.get("type", "default")) == "default":
        scaling = None
    return theta, scaling


def _scaling_from_hf(params: dict[str, Any], max_pos: int) -> RopeScaling:
    """Our RopeScaling for Hugging Face rope parameters (transformers 5 ``rope_parameters``
    or transformers 4 ``rope_scaling``)."""
    kind = params.get("rope_type", params.get("type"))
    original = int(params.get("original_max_position_embeddings") or max_pos)
    factor = params.get("factor")
    if kind == "linear":
        return RopeScaling("linear", float(factor), original)
    if kind == "dynamic":
        # Hugging Face's dynamic NTK takes the original length from max_position_embeddings.
        return RopeScaling("dynamic_ntk", float(factor), max_pos)
    if kind == "yarn":
        if factor is None:  # DeepSeek-style configs: the ratio of the two lengths
            factor = max_pos / original
        optional = {key: float(params[key]) for key in ("attention_factor", "mscale",
                                                        "mscale_all_dim")
                    if params.get(key) is not None}
        return RopeScaling(
            "yarn",
            float(factor),
            original,
            beta_fast=float(params.get("beta_fast") or 32.0),
            beta_slow=float(params.get("beta_slow") or 1.0),
            truncate=bool(params.get("truncate", True)),
            **optional,
        )
    if kind == "llama3":
        return RopeScaling(
            "llama3",
            float(factor),
            original,
            low_freq_factor=float(params.get("low_freq_factor", 1.0)),
            high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        )
    raise ValueError(
        f"rope scaling type {kind!r} is not supported (supported: linear, dynamic, yarn, llama3)"
    )


def _rope_to_hf(config: TransformerConfig) -> tuple[dict[str, Any], int]:
    """(Hugging Face rope parameters, max_position_embeddings) for our rotary settings.

    ntk has no Hugging Face type of its own: it is the default rope with the scaled base.
    dynamic reads its original length from max_position_embeddings."""
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": config.rope_base}
    max_pos = config.max_seq_len
    s = config.rope_scaling
    if s is None:
        return rope, max_pos
    d = config.rotary_dim
    if s.kind == "ntk":
        rope["rope_theta"] = config.rope_base * s.factor ** (d / (d - 2))
    elif s.kind == "dynamic_ntk":
        rope.update(rope_type="dynamic", factor=s.factor)
        max_pos = s.original_max_seq_len
    elif s.kind == "linear":
        rope.update(rope_type="linear", factor=s.factor)
    elif s.kind == "yarn":
        rope.update(rope_type="yarn", factor=s.factor,
                    original_max_position_embeddings=s.original_max_seq_len,
                    beta_fast=s.beta_fast, beta_slow=s.beta_slow, truncate=s.truncate)
        for key in ("attention_factor", "mscale", "mscale_all_dim"):
            if getattr(s, key) is not None:
                rope[key] = getattr(s, key)
    elif s.kind == "llama3":
        rope.update(rope_type="llama3", factor=s.factor,
                    original_max_position_embeddings=s.original_max_seq_len,
                    low_freq_factor=s.low_freq_factor, high_freq_factor=s.high_freq_factor)
    else:
        # longrope (Phi-3) has no parity test against the Llama/Mistral/Qwen2 classes yet:
        # refused rather than written as something transformers would read differently.
        raise ValueError(f"rope scaling kind {s.kind!r} cannot be exported to a Hugging Face "
                         "Llama/Mistral/Qwen2 config (supported: linear, ntk, dynamic_ntk, "
                         "yarn, llama3)")
    return rope, max_pos


def config_from_hf(hf_config: Any) -> TransformerConfig:
    """TransformerConfig equivalent to a Hugging Face Llama/Mistral/Qwen2 config."""
    family = getattr(hf_config, "model_type", None)
    if family not in FAMILIES:
        raise ValueError(f"model_type {family!r} is not supported; supported: {FAMILIES}")
    act = getattr(hf_config, "hidden_act", "silu")
    if act not in _ACT_TO_GLU:
        raise ValueError(f"hidden_act {act!r} is not supported; supported: {sorted(_ACT_TO_GLU)}")
    theta, scaling = _rope_settings(hf_config)
    n_heads = hf_config.num_attention_heads
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // n_heads
    partial = getattr(hf_config, "partial_rotary_factor", 1.0) or 1.0
    max_pos = int(hf_config.max_position_embeddings)
    if family == "qwen2":
        if getattr(hf_config, "use_sliding_window", False):
            raise ValueError("Qwen2 with use_sliding_window=True is not supported")
        window, qkv_bias, out_bias, ffn_bias = None, True, False, False
    else:
        window = getattr(hf_config, "sliding_window", None) if family == "mistral" else None
        qkv_bias = out_bias = bool(getattr(hf_config, "attention_bias", False))
        ffn_bias = bool(getattr(hf_config, "mlp_bias", False))
    return TransformerConfig(
        vocab_size=hf_config.vocab_size,
        d_model=hf_config.hidden_size,
        n_layers=hf_config.num_hidden_layers,
        n_heads=n_heads,
        n_kv_heads=getattr(hf_config, "num_key_value_heads", None) or n_heads,
        head_dim=head_dim,
        ffn_hidden_dim=hf_config.intermediate_size,
        activation=_ACT_TO_GLU[act],
        norm="rmsnorm",
        norm_eps=float(hf_config.rms_norm_eps),
        position="rope",
        rope_base=theta,
        rope_dim=int(head_dim * partial),
        rope_scaling=_scaling_from_hf(scaling, max_pos) if scaling else None,
        max_seq_len=max_pos,
        sliding_window=window,
        tie_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)),
        qkv_bias=qkv_bias,
        out_bias=out_bias,
        ffn_bias=ffn_bias,
        name=f"hf-{family}",
    )


def _linear_pairs(i: int) -> list[tuple[str, list[str]]]:
    """(our parameter, the HF parameters concatenated into it) for layer i."""
    hf = f"model.layers.{i}."
    ours = f"layers.{i}."
    return [
        (ours + "attn_norm.weight", [hf + "input_layernorm.weight"]),
        (ours + "attn.wqkv.weight", [hf + f"self_attn.{p}_proj.weight" for p in "qkv"]),
        (ours + "attn.wqkv.bias", [hf + f"self_attn.{p}_proj.bias" for p in "qkv"]),
        (ours + "attn.wo.weight", [hf + "self_attn.o_proj.weight"]),
        (ours + "attn.wo.bias", [hf + "self_attn.o_proj.bias"]),
        (ours + "ffn_norm.weight", [hf + "post_attention_layernorm.weight"]),
        (ours + "ffn.w_in.weight", [hf + "mlp.gate_proj.weight", hf + "mlp.up_proj.weight"]),
        (ours + "ffn.w_in.bias", [hf + "mlp.gate_proj.bias", hf + "mlp.up_proj.bias"]),
        (ours + "ffn.w_out.weight", [hf + "mlp.down_proj.weight"]),
        (ours + "ffn.w_out.bias", [hf + "mlp.down_proj.bias"]),
    ]


def weight_map(config: TransformerConfig) -> list[tuple[str, list[str]]]:
    """(our parameter, the Hugging Face tensors concatenated along dim 0 into it); biases
    and ``lm_head`` appear whether or not the model has them."""
    pairs = [("embed.weight", ["model.embed_tokens.weight"]), ("norm.weight", ["model.norm.weight"])]
    if not config.tie_embeddings:
        pairs.append(("lm_head.weight", ["lm_head.weight"]))
    for i in range(config.n_layers):
        pairs += _linear_pairs(i)
    return pairs


@torch.no_grad()
def from_hf(hf_model: nn.Module) -> TransformerLM:
    """A TransformerLM with the weights of a Hugging Face causal LM (same logits)."""
    config = config_from_hf(hf_model.config)
    ref = next(hf_model.parameters())
    model = TransformerLM(config).to(device=ref.device, dtype=ref.dtype)
    theirs = hf_model.state_dict()
    ours = model.state_dict()
    for name, sources in weight_map(config):
        if name not in ours:
            continue
        missing = [s for s in sources if s not in theirs]
        if missing:
            raise ValueError(f"Hugging Face checkpoint lacks {missing} needed for {name}")
        ours[name].copy_(torch.cat([theirs[s] for s in sources], dim=0))
    return model.eval() if not hf_model.training else model


_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                  "qwen2": "Qwen2ForCausalLM"}


def hf_config_dict(config: TransformerConfig, family: str, *, rope_style: str = "both"
                   ) -> dict[str, Any]:
    """The Hugging Face ``config.json`` content (a plain dict) for a Llama/Mistral/Qwen2
    family model with this config; needs no transformers.

    rope_style: "v5" writes ``rope_parameters`` (transformers 5), "v4" writes
    ``rope_theta`` + ``rope_scaling`` (transformers 4, which transformers 5 also reads),
    "both" writes both, equal, so either version reads the file.
    """
    if family not in FAMILIES:
        raise ValueError(f"family ({family!r}) must be one of {FAMILIES}")
    if config.position != "rope" or config.norm != "rmsnorm" or config.activation not in _GLU_TO_ACT:
        raise ValueError(
            "only RoPE + RMSNorm + GLU-FFN models map to Llama/Mistral/Qwen2, got "
            f"position={config.position!r}, norm={config.norm!r}, activation={config.activation!r}"
        )
    if config.rope_interleaved:
        raise ValueError(
            "Hugging Face Llama-family models use the half-split rotary layout; convert the "
            "q/k rows with blocklab.position.permute_qk_weights(..., to='half') first"
        )
    if config.rotary_dim != config.dim_head:
        raise ValueError(
            f"Hugging Face Llama-family models rotate the whole head: rope_dim "
            f"({config.rotary_dim}) must equal head_dim ({config.dim_head})"
        )
    rope, max_pos = _rope_to_hf(config)
    out: dict[str, Any] = dict(
        architectures=[_ARCHITECTURES[family]],
        model_type=family,
        vocab_size=config.vocab_size,
        hidden_size=config.d_model,
        intermediate_size=config.hidden_dim,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        num_key_value_heads=config.kv_heads,
        head_dim=config.dim_head,
        hidden_act=_GLU_TO_ACT[config.activation],
        max_position_embeddings=max_pos,
        rms_norm_eps=config.norm_eps,
        tie_word_embeddings=config.tie_embeddings,
    )
    if rope_style not in ("v4", "v5", "both"):
        raise ValueError(f"rope_style ({rope_style!r}) must be 'v4', 'v5' or 'both'")
    if rope_style in ("v5", "both"):
        out["rope_parameters"] = dict(rope)
    if rope_style in ("v4", "both"):
        out["rope_theta"] = rope["rope_theta"]
        if rope["rope_type"] != "default":
            out["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    if family == "qwen2":
        if not (config.qkv_bias and not config.out_bias and not config.ffn_bias):
            raise ValueError("Qwen2 has q/k/v biases only; this config's biases differ")
        out.update(use_sliding_window=False, sliding_window=None)
    elif family == "mistral":
        if config.qkv_bias or config.out_bias or config.ffn_bias:
            raise ValueError("Mistral has no biases; this config has some")
        out["sliding_window"] = config.sliding_window
    else:
        if config.qkv_bias != config.out_bias:
            raise ValueError("Llama's attention_bias covers q/k/v and output together")
        out.update(attention_bias=config.qkv_bias, mlp_bias=config.ffn_bias)
    return out


def _hf_config(config: TransformerConfig, family: str) -> Any:
    import transformers

    style = "v5" if int(transformers.__version__.split(".")[0]) >= 5 else "v4"
    kwargs = hf_config_dict(config, family, rope_style=style)
    del kwargs["architectures"], kwargs["model_type"]
    cls = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
           "qwen2": transformers.Qwen2Config}[family]
    return cls(**kwargs)


def split_sizes(config: TransformerConfig, name: str) -> list[int]:
    """Rows of each Hugging Face tensor concatenated into our parameter ``name``
    (in the order of the weight map)."""
    if ".attn.wqkv." in name:
        q, kv = config.n_heads * config.dim_head, config.kv_heads * config.dim_head
        return [q, kv, kv]
    if ".ffn.w_in." in name:
        return [config.hidden_dim, config.hidden_dim]
    return []  # one source: the whole parameter


def family_of(config: TransformerConfig) -> str:
    """The Hugging Face family a config maps to (biases and window decide)."""
    if config.qkv_bias and not config.out_bias:
        return "qwen2"
    if config.sliding_window is not None:
        return "mistral"
    return "llama"


@torch.no_grad()
def to_hf(model: TransformerLM, family: str | None = None) -> nn.Module:
    """The Hugging Face causal LM (Llama, Mistral or Qwen2) with this model's weights."""
    import transformers

    config = model.config
    family = family or family_of(config)
    if family not in FAMILIES:
        raise ValueError(f"family ({family!r}) must be one of {FAMILIES}")
    hf_config = _hf_config(config, family)
    cls = {
        "llama": transformers.LlamaForCausalLM,
        "mistral": transformers.MistralForCausalLM,
        "qwen2": transformers.Qwen2ForCausalLM,
    }[family]
    ref = next(model.parameters())
    hf_model = cls(hf_config).to(device=ref.device, dtype=ref.dtype)
    theirs = hf_model.state_dict()
    ours = model.state_dict()
    for name, sources in weight_map(config):
        if name not in ours:
            continue
        sizes = [theirs[s].shape[0] for s in sources]
        for s, part in zip(sources, torch.split(ours[name], sizes, dim=0), strict=True):
            theirs[s].copy_(part)
    if config.tie_embeddings:
        hf_model.tie_weights()
    return hf_model.train(model.training)
