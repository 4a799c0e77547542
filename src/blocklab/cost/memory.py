"""Bytes: the KV cache, the weights, and what one decoding step has to read.

    KV cache = 2 * n_layers * n_kv_heads * head_dim * seq_len * batch * bytes per value

(keys and values, every layer, every cached position). It grows linearly with the
context and with the number of key/value heads, which is why multi-query attention
(Shazeer 2019; one K/V head) and grouped-query attention (Ainslie et al. 2023;
H_kv heads) exist: they divide it by H / H_kv. Reference values (bf16, per token):
Llama-2-7B 512 KiB, Llama-2-70B 320 KiB, Mistral-7B 128 KiB, Falcon-7B 8 KiB.

A decoding step reads every weight once (the embedding table only its B rows) and
every cached key and value once -- :func:`decode_step_bytes`. At long contexts
the cache dominates, and a step's time is that many bytes over the memory bandwidth.

Checked against ``KVCache(...).nbytes`` and the published numbers above in
``tests/cost/test_flops.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from blocklab._checks import check_positive

if TYPE_CHECKING:
    from blocklab.models.config import TransformerConfig

__all__ = ["DTYPES", "parse_dtype", "dtype_bytes", "kv_cache_bytes", "decode_step_bytes",
           "check_positive"]

# Names accepted wherever a dtype is given as text (the CLI's --dtype).
DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32, "float32": torch.float32,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp8": torch.float8_e4m3fn, "float8": torch.float8_e4m3fn,
    "int8": torch.int8,
}


def parse_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """A torch dtype from a dtype or one of the names in :data:`DTYPES`."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype.lower() in DTYPES:
        return DTYPES[dtype.lower()]
    raise ValueError(f"dtype ({dtype!r}) must be a torch.dtype or one of {sorted(DTYPES)}")


def dtype_bytes(dtype: torch.dtype | str) -> int:
    """Bytes per value of ``dtype``."""
    return torch.empty((), dtype=parse_dtype(dtype)).element_size()


def kv_cache_bytes(
    *,
    n_layers: int,
    n_kv_heads: int,
    head_dim: int,
    seq_len: int,
    batch: int = 1,
    dtype: torch.dtype | str = torch.float16,
) -> int:
    """Bytes of the keys and values of ``seq_len`` positions of ``batch`` sequences.

    2 * n_layers * n_kv_heads * head_dim * seq_len * batch * bytes per value.
    """
    check_positive(n_layers=n_layers, n_kv_heads=n_kv_heads, head_dim=head_dim,
                   seq_len=seq_len, batch=batch)
    return 2 * n_layers * n_kv_heads * head_dim * seq_len * batch * dtype_bytes(dtype)


def decode_step_bytes(
    config: TransformerConfig,
    *,
    context: int,
    batch: int = 1,
    dtype: torch.dtype | str = torch.float16,
) -> dict[str, int]:
    """Bytes one decoding step reads with ``context`` positions already cached.

    Returns ``{"weights": ..., "kv_cache": ..., "total": ...}``: every weight once except
    the embedding table, of which only the ``batch`` looked-up rows (a tied table is read
    whole, as the output head); then every cached key and value once. Activations (a
    few vectors of width C per row) are left out.
    """
    from blocklab.cost.flops import count_parameters

    check_positive(context=context, batch=batch)
    elt = dtype_bytes(dtype)
    params = count_parameters(config)
    embed = config.vocab_size * config.d_model
    weights = params - (0 if config.tie_embeddings else embed) + batch * config.d_model
    kv = kv_cache_bytes(n_layers=config.n_layers, n_kv_heads=config.kv_heads,
                        head_dim=config.dim_head, seq_len=context, batch=batch, dtype=dtype)
    return {"weights": weights * elt, "kv_cache": kv, "total": weights * elt + kv}
