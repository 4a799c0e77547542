"""TransformerConfig: one typed, validated description of a decoder-only LM.

Named presets carry the published shapes of real models
(``TransformerConfig.from_name("llama-2-7b", n_layers=2)``); YAML round-trips.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from blocklab._checks import check_bool, check_float, check_int
from blocklab.ffn import ACTIVATIONS, ffn_hidden_dim
from blocklab.position.scaling import RopeScaling

__all__ = ["TransformerConfig", "PRESETS"]

Position = Literal["rope", "sinusoidal", "learned", "none"]


@dataclass
class TransformerConfig:
    """Shape and options of a TransformerLM (pre-norm decoder)."""

    vocab_size: int = 256
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None
    head_dim: int | None = None
    ffn_hidden_dim: int | None = None
    ffn_expansion: float = 4.0
    activation: str = "swiglu"
    multiple_of: int = 1
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    norm_eps: float = 1e-5
    position: Position = "rope"
    rope_base: float = 10000.0
    rope_dim: int | None = None
    rope_interleaved: bool = False
    rope_scaling: RopeScaling | None = None
    max_seq_len: int = 2048
    sliding_window: int | None = None
    tie_embeddings: bool = False
    qkv_bias: bool = False
    out_bias: bool = False
    ffn_bias: bool = False
    init_std: float = 0.02
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.rope_scaling, dict):
            self.rope_scaling = RopeScaling(**self.rope_scaling)
        for key in ("vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len", "multiple_of"):
            check_int(key, getattr(self, key), min=1)
        for key in ("n_kv_heads", "head_dim", "ffn_hidden_dim", "rope_dim", "sliding_window"):
            if getattr(self, key) is not None:
                check_int(key, getattr(self, key), min=1)
        for key in ("rope_interleaved", "tie_embeddings", "qkv_bias", "out_bias", "ffn_bias"):
            check_bool(key, getattr(self, key))
        for key in ("ffn_expansion", "norm_eps", "init_std"):
            check_float(key, getattr(self, key), gt=0)
        check_float("rope_base", self.rope_base, gt=1)
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, RopeScaling):
            raise TypeError("rope_scaling must be a RopeScaling, a dict of its fields or None, "
                            f"got {type(self.rope_scaling).__name__}")
        if self.n_heads % self.kv_heads:
            raise ValueError(
                f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.kv_heads})"
            )
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads}) "
                "when head_dim is not given"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation ({self.activation!r}) must be one of {sorted(ACTIVATIONS)}")
        if self.norm not in ("rmsnorm", "layernorm"):
            raise ValueError(f"norm ({self.norm!r}) must be 'rmsnorm' or 'layernorm'")
        if self.position not in ("rope", "sinusoidal", "learned", "none"):
            raise ValueError(
                f"position ({self.position!r}) must be one of rope, sinusoidal, learned, none"
            )
        if self.position == "rope" and (self.rotary_dim % 2 or self.rotary_dim > self.dim_head):
            raise ValueError(
                f"rope_dim ({self.rotary_dim}) must be even and <= head_dim ({self.dim_head})"
            )
        if self.position == "sinusoidal" and self.d_model % 2:
            raise ValueError(f"sinusoidal positions need an even d_model, got {self.d_model}")

    # Derived sizes --------------------------------------------------------------
    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def dim_head(self) -> int:
        return self.head_dim if self.head_dim is not None else self.d_model // self.n_heads

    @property
    def rotary_dim(self) -> int:
        return self.rope_dim if self.rope_dim is not None else self.dim_head

    @property
    def hidden_dim(self) -> int:
        if self.ffn_hidden_dim is not None:
            return self.ffn_hidden_dim
        return ffn_hidden_dim(
            self.d_model,
            expansion=self.ffn_expansion,
            activation=self.activation,
            multiple_of=self.multiple_of,
        )

    # Presets and files ---------------------------------------------------------
    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> TransformerConfig:
        """A named preset (see ``PRESETS``), with fields overridden by keyword."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
        fields = {**PRESETS[name], **overrides}
        fields.setdefault("name", name)
        return cls(**fields)

    def replace(self, **changes: Any) -> TransformerConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if self.rope_scaling is not None:
            out["rope_scaling"] = dataclasses.asdict(self.rope_scaling)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TransformerConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TransformerConfig keys {unknown}; known: {sorted(known)}")
        return cls(**data)

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_yaml(cls, path: str | Path) -> TransformerConfig:
        data = yaml.safe_load(Path(path).read_text())
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
        return cls.from_dict(data)


_LLAMA = dict(activation="swiglu", norm="rmsnorm", position="rope", ffn_bias=False)

# Published shapes. Llama-2: Touvron et al. 2023; Llama-3: Meta 2024; Mistral: Jiang
# et al. 2023; Qwen2: Qwen team 2024 (config.json of each released checkpoint).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(vocab_size=256, d_model=128, n_layers=2, n_heads=4, n_kv_heads=2,
                 max_seq_len=512, **_LLAMA),
    "small": dict(vocab_size=256, d_model=256, n_layers=4, n_heads=8, n_kv_heads=2,
                  max_seq_len=1024, **_LLAMA),
    "llama-2-7b": dict(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32,
                       multiple_of=256, norm_eps=1e-5, max_seq_len=4096, **_LLAMA),
    "llama-2-13b": dict(vocab_size=32000, d_model=5120, n_layers=40, n_heads=40,
                        ffn_hidden_dim=13824, norm_eps=1e-5, max_seq_len=4096, **_LLAMA),
    "llama-2-70b": dict(vocab_size=32000, d_model=8192, n_layers=80, n_heads=64, n_kv_heads=8,
                        ffn_hidden_dim=28672, norm_eps=1e-5, max_seq_len=4096, **_LLAMA),
    "llama-3-8b": dict(vocab_size=128256, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8,
                       ffn_hidden_dim=14336, rope_base=500000.0, max_seq_len=8192, **_LLAMA),
    "llama-3-70b": dict(vocab_size=128256, d_model=8192, n_layers=80, n_heads=64, n_kv_heads=8,
                        ffn_hidden_dim=28672, rope_base=500000.0, max_seq_len=8192, **_LLAMA),
    "mistral-7b": dict(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8,
                       ffn_hidden_dim=14336, max_seq_len=32768, sliding_window=4096, **_LLAMA),
    "qwen2-0.5b": dict(vocab_size=151936, d_model=896, n_layers=24, n_heads=14, n_kv_heads=2,
                       ffn_hidden_dim=4864, rope_base=1000000.0, norm_eps=1e-6,
                       max_seq_len=32768, tie_embeddings=True, qkv_bias=True, **_LLAMA),
    "qwen2-7b": dict(vocab_size=152064, d_model=3584, n_layers=28, n_heads=28, n_kv_heads=4,
                     ffn_hidden_dim=18944, rope_base=1000000.0, norm_eps=1e-6,
                     max_seq_len=32768, qkv_bias=True, **_LLAMA),
}
