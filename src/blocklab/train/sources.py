"""Loading a trained TransformerLM back from any directory blocklab writes.

Three layouts hold a model: a ``blocklab train`` run directory (its ``ckpt-*``
checkpoints, :mod:`blocklab.train.checkpoint`), one of those checkpoints, and a
directory of ``model.safetensors`` + ``config.yaml`` (:func:`blocklab.models.convert.
save_model`, as ``blocklab distill`` and ``blocklab convert`` write; a ``.safetensors``
file with ``config.yaml`` beside it too). :func:`load_model` returns the model from any
of them; :func:`load_source` also the training settings it was made with, so that
work continuing from it (uptraining after a conversion) uses the same data and
hyperparameters.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from blocklab.models.config import TransformerConfig
from blocklab.models.convert import load_model as load_saved_model
from blocklab.models.transformer import TransformerLM
from blocklab.train.checkpoint import latest_checkpoint, load_checkpoint
from blocklab.train.trainer import load_trained_model

__all__ = ["load_model", "load_source", "WEIGHTS", "CONFIG"]

WEIGHTS = "model.safetensors"
CONFIG = "config.yaml"


def load_model(path: str | Path) -> TransformerLM:
    """A TransformerLM from a directory (or a .safetensors file) written by
    :func:`blocklab.models.convert.save_model`, or from a ``blocklab train`` run
    directory or checkpoint.

    Raises:
        ValueError: a file is missing, the weights do not match the config, or the run
            holds no intact checkpoint.
    """
    path = Path(path).expanduser()
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
    ``convert.json`` beside a converted model, or {} when the directory has neither.
    """
    path = Path(source)
    if not path.is_dir():
        raise ValueError(f"CKPT {str(source)!r} is not a directory")
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
