"""Loading a TransformerLM (and its tokenizer) back from any directory that holds one.

Four layouts hold a model: a Hugging Face directory (``config.json`` + safetensors,
:mod:`blocklab.models.hf_io`), a ``blocklab train`` run directory (its ``ckpt-*``
checkpoints, :mod:`blocklab.train.checkpoint`), one of those checkpoints, and a
directory of ``model.safetensors`` + ``config.yaml`` (:func:`blocklab.models.convert.
save_model`, as ``blocklab distill`` and ``blocklab convert`` write; a ``.safetensors``
file with ``config.yaml`` beside it too). :func:`load_model` returns the model from any
of them; :func:`load_source` also the training settings it was made with, so that
work continuing from it (uptraining after a conversion) uses the same data and
hyperparameters; :func:`model_config` reads only the config.

The tokenizer sits at the root of a Hugging Face directory and in a ``tokenizer/``
subdirectory of the directories blocklab writes (a checkpoint's is its run's);
:func:`find_model_tokenizer` looks there, and None means the byte tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from blocklab.data.tokenizer import Tokenizer, find_tokenizer, is_plain_bytes
from blocklab.models.config import TransformerConfig
from blocklab.models.convert import load_model as load_saved_model
from blocklab.models.hf_io import is_hf_dir, read_config
from blocklab.models.transformer import TransformerLM
from blocklab.train.checkpoint import STATE, latest_checkpoint, load_checkpoint
from blocklab.train.rundir import INIT_FILE, TOKENIZER_DIR
from blocklab.train.trainer import load_trained_model

__all__ = ["load_model", "load_source", "model_config", "find_model_tokenizer",
           "save_model_tokenizer", "hf_family", "WEIGHTS", "CONFIG"]

WEIGHTS = "model.safetensors"
CONFIG = "config.yaml"


def _is_checkpoint(path: Path) -> bool:
    return path.is_dir() and (path / STATE).is_file()


def model_config(path: str | Path) -> TransformerConfig:
    """The TransformerConfig of the model at ``path`` (any layout :func:`load_model`
    reads), from its config file alone: no weights are read.

    Raises:
        ValueError: ``path`` does not exist or holds no model.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ValueError(f"{str(path)!r} does not exist")
    if is_hf_dir(path):
        return read_config(path)
    if path.is_file() or (path / WEIGHTS).is_file():
        config = path.with_name(CONFIG) if path.is_file() else path / CONFIG
        if not config.is_file():
            raise ValueError(f"{path}: {config} not found")
        return TransformerConfig.from_yaml(config)
    checkpoint = path if _is_checkpoint(path) else latest_checkpoint(path)
    if checkpoint is None:
        raise ValueError(f"{path} holds no model: no config.json (Hugging Face), "
                         "model.safetensors + config.yaml, or ckpt-*/state.json")
    try:
        model = json.loads((checkpoint / STATE).read_text())["config"]["model"]
        return TransformerConfig.from_dict(model)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{checkpoint / STATE}: no readable model config ({err})") from None


def _tokenizer_dirs(path: Path) -> list[Path]:
    """Where the tokenizer of the model at ``path`` may be, in order."""
    base = path.parent if path.is_file() else path
    dirs = [base, base / TOKENIZER_DIR]
    if _is_checkpoint(base):  # a checkpoint's tokenizer is its run's
        dirs.append(base.parent / TOKENIZER_DIR)
    return dirs


def find_model_tokenizer(path: str | Path) -> Tokenizer | None:
    """The tokenizer stored with the model at ``path`` (see the module docstring);
    None when there is none (the byte tokenizer)."""
    path = Path(path).expanduser()
    for directory in _tokenizer_dirs(path):
        found = find_tokenizer(directory)
        if found is not None:
            return found
    return None


def save_model_tokenizer(tokenizer: Tokenizer, directory: str | Path) -> list[Path]:
    """Save ``tokenizer`` into ``directory/tokenizer/`` (where :func:`find_model_tokenizer`
    looks); nothing for the plain byte tokenizer."""
    if is_plain_bytes(tokenizer):
        return []
    return tokenizer.save(Path(directory) / TOKENIZER_DIR)


def hf_family(path: str | Path) -> str | None:
    """The Hugging Face family (model_type) the model at ``path`` came from: its own
    ``config.json``'s, or for a run started with ``init_from`` a Hugging Face
    directory, that directory's (recorded in the run's ``init_from.json``); else None."""
    path = Path(path).expanduser()
    files = [path / "config.json"]
    base = path.parent if _is_checkpoint(path) else path
    files.append(base / INIT_FILE)
    for file in files:
        if file.is_file():
            try:
                data = json.loads(file.read_text())
            except (OSError, ValueError):
                continue
            family = data.get("model_type", data.get("family")) if isinstance(data, dict) else None
            if isinstance(family, str):
                return family
    return None


def load_model(path: str | Path) -> TransformerLM:
    """A TransformerLM from a Hugging Face directory (stored dtype, eval mode), a
    directory (or a .safetensors file) written by
    :func:`blocklab.models.convert.save_model`, or a ``blocklab train`` run
    directory or checkpoint.

    Raises:
        ValueError: a file is missing, the weights do not match the config, or the run
            holds no intact checkpoint.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ValueError(f"model {str(path)!r} not found (no such file or directory)")
    if is_hf_dir(path):
        return TransformerLM.from_pretrained(path)
    if path.is_dir() and ((path / "state.json").is_file() or not (path / WEIGHTS).is_file()):
        # a blocklab train checkpoint, or a run directory of them
        return load_trained_model(path)[0]
    weights, config = (path / WEIGHTS, path / CONFIG) if path.is_dir() else \
        (path, path.with_name(CONFIG))
    for f in (weights, config):
        if not f.is_file():
            raise ValueError(f"checkpoint {str(path)!r}: {f} not found")
    model = TransformerLM(TransformerConfig.from_yaml(config))
    missing, unexpected = model.load_state_dict(load_file(str(weights)), strict=False)
    allowed = {"lm_head.weight"} if model.config.tie_embeddings else set()
    if set(missing) - allowed or unexpected:
        raise ValueError(f"checkpoint {str(path)!r} does not match its config: missing "
                         f"{sorted(set(missing) - allowed)}, unexpected {sorted(unexpected)}")
    return model


def load_source(source: str | Path) -> tuple[TransformerLM, dict[str, Any]]:
    """(TransformerLM, training settings) from a run, checkpoint or converted directory.

    The settings are the ``TrainConfig`` dict saved with the checkpoint (data, seq_len,
    batch_size, lr, ...) without its ``model`` section, the ``train`` section of the
    ``convert.json`` beside a converted model, or {} when the directory has neither
    (a Hugging Face directory).
    """
    path = Path(source)
    if not path.is_dir():
        raise ValueError(f"CKPT {str(source)!r} is not a directory")
    if is_hf_dir(path):
        return TransformerLM.from_pretrained(path, dtype=torch.float32), {}
    if (path / WEIGHTS).is_file() and (path / CONFIG).is_file():
        settings: dict[str, Any] = {}
        report = path / "convert.json"
        if report.is_file():
            settings = json.loads(report.read_text()).get("train", {})
        return load_saved_model(path), settings
    if not (path / "state.json").is_file():
        newest = latest_checkpoint(path)
        if newest is None:
            raise ValueError(f"{path} holds no checkpoint (ckpt-*/state.json), nor "
                             "model.safetensors + config.yaml")
        path = newest
    model_state, _, state = load_checkpoint(path)
    train = state.get("config")
    if not isinstance(train, dict) or not isinstance(train.get("model"), dict):
        raise ValueError(f"{path}/state.json has no config.model: not written by blocklab train")
    model = TransformerLM(TransformerConfig.from_dict(train["model"]))
    model.load_state_dict(model_state)
    settings = {k: v for k, v in train.items() if k != "model"}
    return model, settings
