"""The Hugging Face model directory format, read and written without transformers.

A directory holds ``config.json`` and the weights, either one ``model.safetensors`` or
shards ``model-0000i-of-0000n.safetensors`` listed in ``model.safetensors.index.json``
(``{"metadata": {"total_size": ...}, "weight_map": {tensor: file}}``). The config and
weight mapping are those of :mod:`blocklab.models.hf` (one mapping for both the
in-memory and the on-disk route); this module only moves bytes.

Reading is lazy: the model is built on the meta device (no memory), and each parameter
is allocated once, in its final dtype and device, and filled tensor by tensor from
``safetensors.safe_open``; q/k/v and gate/up are copied into row slices of the fused
parameter, so at most one checkpoint tensor is held beside the model. Writing splits
the fused parameters back into views and writes one shard at a time. Checked against
transformers' own ``save_pretrained``/``from_pretrained`` (tests/models/test_hf_io.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from blocklab.models.config import TransformerConfig
from blocklab.models.hf import (
    FAMILIES,
    config_from_hf,
    family_of,
    hf_config_dict,
    split_sizes,
    weight_map,
)
from blocklab.models.transformer import TransformerLM
from blocklab.position.rope import RotaryEmbedding

__all__ = ["load_pretrained", "save_pretrained", "read_config", "is_hf_dir"]

CONFIG, SINGLE, INDEX = "config.json", "model.safetensors", "model.safetensors.index.json"
_REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
             "intermediate_size")
# transformers' class defaults, for keys a hand-written config.json may leave out.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {"rms_norm_eps": 1e-6, "max_position_embeddings": 2048},
    "mistral": {"rms_norm_eps": 1e-6, "max_position_embeddings": 4096 * 32,
                "sliding_window": 4096},
    "qwen2": {"rms_norm_eps": 1e-6, "max_position_embeddings": 32768},
}
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def is_hf_dir(path: str | Path) -> bool:
    """Whether ``path`` is a directory with a ``config.json`` (a Hugging Face model)."""
    return (Path(path) / CONFIG).is_file()


def read_config(path: str | Path) -> TransformerConfig:
    """The TransformerConfig of a Hugging Face directory's ``config.json`` (transformers 4
    ``rope_theta``/``rope_scaling`` or transformers 5 ``rope_parameters`` keys)."""
    return _read_config(Path(path))[0]


def _read_config(path: Path) -> tuple[TransformerConfig, dict[str, Any]]:
    file = path / CONFIG
    if not path.is_dir():
        raise ValueError(f"{path} is not a directory")
    if not file.is_file():
        raise ValueError(f"{file} is missing: not a Hugging Face model directory")
    try:
        raw = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"{file} is not readable JSON ({err})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{file} holds a {type(raw).__name__}, not an object")
    family = raw.get("model_type")
    if family not in FAMILIES:
        raise ValueError(f"{file}: model_type {family!r} is not supported; supported: {FAMILIES}")
    missing = [key for key in _REQUIRED if raw.get(key) is None]
    if missing:
        raise ValueError(f"{file} lacks the keys {missing}")
    keys = {**_DEFAULTS[family], **{k: v for k, v in raw.items() if v is not None}}
    if "sliding_window" in raw and raw["sliding_window"] is None:
        keys["sliding_window"] = None  # an explicit null means no window
    try:
        return config_from_hf(SimpleNamespace(**keys)), raw
    except (TypeError, ValueError) as err:
        raise ValueError(f"{file}: {err}") from None


def _tensor_files(path: Path) -> dict[str, Path]:
    """Which file holds each Hugging Face tensor."""
    index = path / INDEX
    if index.is_file():
        try:
            weight_files = json.loads(index.read_text())["weight_map"]
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{index} is not a safetensors index ({err!r})") from None
        files = {key: path / name for key, name in weight_files.items()}
        for file in sorted(set(files.values())):
            if not file.is_file():
                raise ValueError(f"{file.name}, listed in {index}, is missing")
        return files
    single = path / SINGLE
    if not single.is_file():
        raise ValueError(f"{path} holds neither {SINGLE} nor {INDEX}")
    from safetensors import safe_open

    with safe_open(str(single), framework="pt") as f:
        return {key: single for key in f.keys()}


def _set_parameter(model: nn.Module, name: str, value: torch.Tensor) -> None:
    owner, _, leaf = name.rpartition(".")
    module = model.get_submodule(owner)
    module._parameters[leaf] = nn.Parameter(value, requires_grad=True)


@torch.no_grad()
def load_pretrained(
    path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
) -> TransformerLM:
    """A TransformerLM from a local Hugging Face Llama/Mistral/Qwen2 directory.

    Args:
        path: the directory (``config.json`` + ``model.safetensors`` or a sharded
            ``model.safetensors.index.json``).
        dtype: of the parameters; None keeps the stored dtype.
        device: where the parameters are allocated (filled there directly).

    Returns:
        The model in eval mode, with the same logits as transformers' model.

    Raises:
        ValueError: naming the file and key: no config.json, an unsupported
            model_type or option, a missing tensor, a shape that does not fit.
    """
    from safetensors import safe_open

    path = Path(path).expanduser()
    config, _ = _read_config(path)
    files = _tensor_files(path)
    with torch.device("meta"):
        model = TransformerLM(config)
    # The rotary module holds plain fp64 frequency tensors (not parameters): rebuild it
    # off the meta device and share it across layers, as TransformerLM does.
    rope = RotaryEmbedding(config.rotary_dim, base=config.rope_base,
                           interleaved=config.rope_interleaved, scaling=config.rope_scaling,
                           max_seq_len=config.max_seq_len)
    for layer in model.layers:
        layer.attn.rope = rope
    expected = dict(model.named_parameters())
    # HF tensor -> (our parameter, first row, rows): q/k/v and gate/up fill row slices.
    slots: dict[str, tuple[str, int, int]] = {}
    for name, sources in weight_map(config):
        if name in expected:
            sizes = split_sizes(config, name) or [expected[name].shape[0]]
            starts = [sum(sizes[:i]) for i in range(len(sizes))]
            for source, start, rows in zip(sources, starts, sizes, strict=True):
                slots[source] = (name, start, rows)
    missing = sorted(set(slots) - set(files))
    if missing:
        where = INDEX if (path / INDEX).is_file() else SINGLE
        raise ValueError(f"{path / where} lacks the tensor(s) {missing}")
    filled: dict[str, torch.Tensor] = {}
    # File by file, so only one shard is mapped at a time; keys we do not use (a stored
    # lm_head of a tied model, rotary buffers of old checkpoints) are skipped.
    for file in sorted(set(files.values())):
        with safe_open(str(file), framework="pt") as f:
            for source in f.keys():
                if source not in slots or files[source] != file:
                    continue
                name, start, rows = slots[source]
                shape = expected[name].shape
                stored = tuple(f.get_slice(source).get_shape())
                want = (rows, *shape[1:])
                if stored != want:
                    raise ValueError(f"{file.name}: tensor {source!r} has shape {stored}, "
                                     f"{CONFIG} implies {want}")
                tensor = f.get_tensor(source)
                if name not in filled:
                    filled[name] = torch.empty(shape, dtype=dtype or tensor.dtype, device=device)
                filled[name][start:start + rows].copy_(tensor)
                del tensor
    for name, value in filled.items():
        _set_parameter(model, name, value)
    if config.tie_embeddings:
        model.lm_head.weight = model.embed.weight
    left = [n for n, p in model.named_parameters() if p.is_meta]
    if left:  # weight_map and TransformerLM disagree: a bug here, not in the file
        raise RuntimeError(f"parameters not filled from {path}: {left}")
    return model.eval()


def _parse_size(size: int | str) -> int:
    if isinstance(size, bool):
        raise TypeError("max_shard_size must be an int (bytes) or a string like '5GB'")
    if isinstance(size, int):
        value = size
    elif isinstance(size, str) and (m := _SIZE.match(size)):
        value = int(float(m.group(1)) * _UNITS[(m.group(2) or "").upper()])
    else:
        raise ValueError(f"max_shard_size ({size!r}) must be bytes or a string like '5GB'")
    if value < 1:
        raise ValueError(f"max_shard_size ({size!r}) must be at least 1 byte")
    return value


def _hf_tensors(model: TransformerLM, dtype: torch.dtype | None) -> list[tuple[str, torch.Tensor]]:
    """(Hugging Face name, tensor) in file order; fused parameters split into row views."""
    config = model.config
    ours = dict(model.named_parameters(remove_duplicate=False))
    out = []
    for name, sources in weight_map(config):
        if name not in ours:
            continue
        param = ours[name].detach()
        if dtype is not None:
            param = param.to(dtype)
        sizes = split_sizes(config, name) or [param.shape[0]]
        out += list(zip(sources, torch.split(param, sizes, dim=0), strict=True))
    return out


@torch.no_grad()
def save_pretrained(
    model: TransformerLM,
    path: str | Path,
    *,
    family: str | None = None,
    max_shard_size: int | str = "5GB",
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``model`` as a Hugging Face directory transformers loads with equal logits.

    Args:
        model: a TransformerLM whose config maps to Llama, Mistral or Qwen2.
        path: the directory (created; existing weight files in it are replaced).
        family: "llama", "mistral" or "qwen2"; None picks from the config (q/k/v-only
            biases: qwen2, a sliding window: mistral, else llama).
        max_shard_size: bytes (or "500MB", "5GB"); more weights than this are split
            into shards with a ``model.safetensors.index.json``.
        dtype: of the written tensors; None keeps the model's.

    Returns:
        The directory.
    """
    from safetensors.torch import save_file

    if not isinstance(model, TransformerLM):
        raise TypeError(f"model must be a TransformerLM, got {type(model).__name__}")
    limit = _parse_size(max_shard_size)
    config = model.config
    family = family or family_of(config)
    hf_config = hf_config_dict(config, family)
    tensors = _hf_tensors(model, dtype)
    stored = {t.dtype for _, t in tensors}
    hf_config["torch_dtype"] = str(next(iter(stored))).removeprefix("torch.") if len(stored) == 1 \
        else "float32"
    shards: list[list[tuple[str, torch.Tensor]]] = [[]]
    used = 0
    for key, tensor in tensors:
        size = tensor.numel() * tensor.element_size()
        if shards[-1] and used + size > limit:
            shards.append([])
            used = 0
        shards[-1].append((key, tensor))
        used += size
    path = Path(path).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    for old in [path / SINGLE, path / INDEX, *path.glob("model-*-of-*.safetensors")]:
        old.unlink(missing_ok=True)
    n = len(shards)
    names = [SINGLE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    for name, shard in zip(names, shards, strict=True):
        # One shard at a time: only its tensors are made contiguous / moved to the CPU.
        save_file({k: t.contiguous().cpu() for k, t in shard}, str(path / name),
                  metadata={"format": "pt"})
    if n > 1:
        total = sum(t.numel() * t.element_size() for _, t in tensors)
        index = {"metadata": {"total_size": total},
                 "weight_map": {k: name for name, shard in zip(names, shards, strict=True)
                                for k, _ in shard}}
        (path / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    (path / CONFIG).write_text(json.dumps(hf_config, indent=2) + "\n")
    return path
