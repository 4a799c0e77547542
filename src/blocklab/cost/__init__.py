"""The cost model: FLOPs, bytes and parameters of attention and of whole transformers.

``attention_cost`` for one attention layer, ``transformer_cost`` for a TransformerLM
(or a preset of a real model), ``kv_cache_bytes`` for the KV cache; see
:mod:`blocklab.cost.flops` for the counting conventions.

Names are imported on first use, so ``blocklab --help`` (which imports
:mod:`blocklab.cli.cost`) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "AttentionCost": "flops",
    "ModelCost": "flops",
    "attention_cost": "flops",
    "attention_pairs": "flops",
    "count_parameters": "flops",
    "crossover_seq_len": "flops",
    "transformer_cost": "flops",
    "kv_cache_bytes": "memory",
    "decode_step_bytes": "memory",
    "dtype_bytes": "memory",
    "parse_dtype": "memory",
    "MODEL_PRESETS": "presets",
    "PUBLISHED_PARAMS": "presets",
    "REAL_MODELS": "presets",
    "model_config": "presets",
    "format_report": "report",
    "plot_cost": "report",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
