"""Converting a trained multi-head model to grouped-query or multi-query attention.

Ainslie et al. 2023 ("GQA: Training Generalized Multi-Query Transformer Models from
Multi-Head Checkpoints", section 2.1): to go from H_kv key/value heads to G, split the
heads into G consecutive groups and replace each group's key and value projection
matrices by their mean,

    W_k'[g] = mean(W_k[g r], ..., W_k[g r + r - 1]),   r = H_kv / G   (same for W_v)

then *uptrain* the converted model for a small fraction of the original steps (5% in
the paper) to recover most of the quality. Mean-pooling beat keeping the first head of
each group and random initialisation. Query head h then reads key/value head
h // (H / G), which keeps the query heads whose old K/V heads were pooled together.
RoPE rotates keys after the projection and is linear and the same for every head,
so pooling the weights pools the rotated keys.

Nothing else changes: the query projection, output projection, FFN, norms and
embeddings are copied. Converting to the current number of heads is the identity;
when the K/V heads of every group are already equal, the conversion is exact.

:func:`save_model` / :func:`load_model` store a model as ``model.safetensors`` (each
tensor once, tied embeddings too) and ``config.yaml`` (TransformerConfig fields).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from blocklab.models.config import TransformerConfig
from blocklab.models.transformer import TransformerLM

__all__ = ["convert_kv_heads", "pool_kv_weight", "save_model", "load_model"]


def pool_kv_weight(w: torch.Tensor, n_kv_heads: int, head_dim: int, groups: int) -> torch.Tensor:
    """Mean-pool the rows of a key (or value) projection from ``n_kv_heads`` heads to
    ``groups``: (n_kv_heads * D, ...) -> (groups * D, ...), weights or biases."""
    r = n_kv_heads // groups
    heads = w.reshape(groups, r, head_dim, *w.shape[1:])  # (G, r, D, ...)
    return heads.mean(dim=1).reshape(groups * head_dim, *w.shape[1:])


@torch.no_grad()
def convert_kv_heads(model: TransformerLM, n_kv_heads: int) -> TransformerLM:
    """A copy of ``model`` with ``n_kv_heads`` key/value heads, mean-pooled per group.

    Args:
        model: a TransformerLM with H query and H_kv key/value heads.
        n_kv_heads: G, dividing H_kv (and so H); 1 gives multi-query attention.

    Returns:
        A new TransformerLM (config with ``n_kv_heads = G``) on the model's device and
        dtype, in the model's train/eval mode; ``model`` is left untouched.
    """
    if not isinstance(model, TransformerLM):
        raise TypeError(f"model must be a TransformerLM, got {type(model).__name__}")
    cfg = model.config
    old = cfg.kv_heads
    if not isinstance(n_kv_heads, int) or isinstance(n_kv_heads, bool):
        raise TypeError(f"n_kv_heads must be an int, got {type(n_kv_heads).__name__}")
    if n_kv_heads <= 0:
        raise ValueError(f"n_kv_heads ({n_kv_heads}) must be positive")
    if old % n_kv_heads:
        raise ValueError(
            f"n_kv_heads ({n_kv_heads}) must divide the model's key/value heads ({old}): "
            "each new head is the mean of a group of old ones"
        )
    new_cfg = cfg.replace(n_kv_heads=n_kv_heads)
    ref = model.embed.weight
    with torch.random.fork_rng(devices=[]):  # its random init is overwritten below
        converted = TransformerLM(new_cfg).to(device=ref.device, dtype=ref.dtype)
    H, D = cfg.n_heads, cfg.dim_head
    state = {}
    for name, tensor in model.state_dict().items():
        if name.endswith("attn.wqkv.weight") or name.endswith("attn.wqkv.bias"):
            q, k, v = tensor.split((H * D, old * D, old * D), dim=0)
            tensor = torch.cat([q, pool_kv_weight(k, old, D, n_kv_heads),
                                pool_kv_weight(v, old, D, n_kv_heads)], dim=0)
        state[name] = tensor
    converted.load_state_dict(state)
    converted.train(model.training)
    return converted


def save_model(model: TransformerLM, out_dir: str | Path) -> Path:
    """Write ``out_dir/model.safetensors`` and ``out_dir/config.yaml``; return ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)  # the same storage as embed.weight
    save_file(state, str(out / "model.safetensors"))
    model.config.to_yaml(out / "config.yaml")
    return out


def load_model(path: str | Path, *, device: str | torch.device = "cpu") -> TransformerLM:
    """A TransformerLM from a directory written by :func:`save_model`."""
    path = Path(path)
    for f in ("model.safetensors", "config.yaml"):
        if not (path / f).is_file():
            raise ValueError(f"{path} holds no {f}: not a directory written by save_model")
    config = TransformerConfig.from_yaml(path / "config.yaml")
    state = load_file(str(path / "model.safetensors"))
    if config.tie_embeddings:
        state["lm_head.weight"] = state["embed.weight"]
    model = TransformerLM(config)
    model.load_state_dict(state)
    return model.to(device)
