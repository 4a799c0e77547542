"""TrainConfig: everything a ``blocklab train`` run needs, typed and validated up front.

A run is described by a preset name or a YAML file, plus ``key=value`` overrides
(``model.n_layers=4``, ``lr=1e-3``). Every key is checked against the dataclass
fields, every value against its type (a float may be written in any spelling
Python's ``float()`` accepts: ``1e-3`` is a string to YAML 1.1, a float here) and
its range (``lr`` finite and > 0, ``weight_decay`` >= 0, ``model.norm_eps`` > 0
as TransformerConfig checks, ...) before any work starts, so a typo or a value that could only train on
garbage stops the run with one clear line instead of an hour later.

Fine-tuning: ``init_from=PATH`` (a Hugging Face directory, a ``blocklab train`` run
or checkpoint, a saved model directory) takes the model section from PATH's config;
a ``model.*`` key given in the YAML file or as an override must agree with it, except
those of :data:`INIT_FREE_MODEL_KEYS` (a longer context, its RoPE scaling, the name),
and a preset's model section is ignored. The ``finetune`` preset holds training
settings only, and is the default when ``blocklab train`` is given ``init_from`` and
no preset.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from blocklab._checks import check_float
from blocklab.models.config import TransformerConfig

__all__ = ["TrainConfig", "TRAIN_PRESETS", "ConfigError", "load_train_config",
           "INIT_FREE_MODEL_KEYS"]

# Model keys an init_from run may set differently from the model it starts from: they
# change no parameter shape and nothing the weights were trained to compute at the
# lengths they were trained on (context extension: a longer max_seq_len, RoPE scaling).
INIT_FREE_MODEL_KEYS = frozenset({"name", "init_std", "max_seq_len", "rope_scaling"})


class ConfigError(ValueError):
    """A bad training configuration, reported before any work starts."""


@dataclass
class TrainConfig:
    """A training run.

    The global batch (``batch_size`` sequences of ``seq_len`` tokens per optimiser
    step) is fixed whatever the number of processes: each of W processes takes
    ``batch_size / W`` rows, split into ``grad_accum`` micro-batches.
    """

    model: TransformerConfig = field(default_factory=lambda: TransformerConfig.from_name("tiny"))
    # The embedded corpus, a .txt / .jsonl file (encoded by the tokenizer), a .bin token
    # file (tail val_fraction held out) or a directory of train.bin (+ val.bin), read in
    # place (blocklab.data.tokens).
    data: str = "default"
    data_dtype: Literal["uint16", "uint32"] = "uint16"  # of .bin token files (nanoGPT: uint16)
    # "bytes", a tokenizer.json or a directory holding one; None: init_from's own
    # tokenizer when it has one, else bytes.
    tokenizer: str | None = None
    # Start from this model's weights (Hugging Face directory, blocklab run, checkpoint or
    # saved directory), at step 0 with a fresh optimiser; a resumed run ignores it.
    init_from: str | None = None
    val_fraction: float = 0.1
    seq_len: int = 128
    batch_size: int = 16
    grad_accum: int = 1
    max_steps: int = 200
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    precision: Literal["fp32", "bf16"] = "fp32"
    compile: bool = False
    fsdp: bool = False
    seed: int = 0
    log_every: int = 10
    eval_every: int = 100
    eval_batches: int = 8
    save_every: int = 100
    keep_last: int = 3
    device: str = "cpu"

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = _model_config(self.model)
        positive = ("seq_len", "batch_size", "grad_accum", "max_steps", "log_every",
                    "eval_every", "eval_batches", "save_every", "keep_last")
        for key in positive:
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{key} must be a positive int, got {value!r}")
        if (not isinstance(self.warmup_steps, int) or isinstance(self.warmup_steps, bool)
                or self.warmup_steps < 0):
            raise ConfigError(f"warmup_steps must be an int >= 0, got {self.warmup_steps!r}")
        for key, bounds in _FLOAT_RANGES.items():
            setattr(self, key, _check_range(key, getattr(self, key), **bounds))
        if self.data_dtype not in ("uint16", "uint32"):
            raise ConfigError(f"data_dtype must be 'uint16' or 'uint32', got {self.data_dtype!r}")
        for key in ("tokenizer", "init_from"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"{key} must be a non-empty path string or None, got {value!r}")
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")
        if self.batch_size % self.grad_accum:
            raise ConfigError(
                f"batch_size ({self.batch_size}) must be divisible by grad_accum ({self.grad_accum})"
            )
        if self.seq_len > self.model.max_seq_len and self.model.position == "learned":
            raise ConfigError(
                f"seq_len ({self.seq_len}) exceeds the learned position table "
                f"(model.max_seq_len {self.model.max_seq_len})"
            )

    def check_world(self, world_size: int) -> None:
        """The global batch must split evenly over processes and micro-batches."""
        if self.batch_size % (world_size * self.grad_accum):
            raise ConfigError(
                f"batch_size ({self.batch_size}) must be divisible by processes ({world_size}) "
                f"x grad_accum ({self.grad_accum})"
            )

    def check_data(self) -> None:
        """The data exists; a token file's size fits ``data_dtype`` (nothing is read)."""
        from blocklab.data.text import SHIPPED_CORPORA
        from blocklab.data.tokens import is_token_data, token_file_split

        if self.data in SHIPPED_CORPORA:
            return
        if is_token_data(self.data):
            try:
                token_file_split(self.data, self.data_dtype, self.val_fraction)
            except ValueError as err:
                raise ConfigError(f"data: {err}") from None
        elif not Path(self.data).expanduser().is_file():
            raise ConfigError(f"data file {self.data!r} does not exist")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["model"] = self.model.to_dict()
        return out

    def to_yaml_text(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml_text())


# The float keys and their ranges, as arguments of check_float. A value outside,
# NaN included, is refused up front: each of these trains on garbage (a NaN or inf
# lr) or silently does something else than asked (a negative weight decay). The
# model's own floats (norm_eps, init_std, ...) are TransformerConfig's to check.
_FLOAT_RANGES: dict[str, dict[str, Any]] = {
    "lr": {"gt": 0},
    "min_lr_ratio": {"ge": 0, "le": 1},
    "weight_decay": {"ge": 0},
    "beta1": {"ge": 0, "lt": 1},
    "beta2": {"ge": 0, "lt": 1},
    "grad_clip": {"gt": 0, "finite": False},  # inf: no clipping
    "val_fraction": {"gt": 0, "lt": 1},
}


def _check_range(key: str, value: Any, *, lt: float | None = None, **bounds: Any) -> float:
    try:
        value = check_float(key, value, **bounds)
        if lt is not None and not value < lt:
            raise ValueError(f"{key} ({value}) must be < {lt:g}")
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err)) from None
    return value


def _model_config(data: dict[str, Any]) -> TransformerConfig:
    data = dict(data)
    hints = typing.get_type_hints(TransformerConfig)
    for key, value in data.items():
        if key in hints:
            data[key] = _check_type(f"model.{key}", value, hints[key])
    preset = data.pop("preset", None)
    try:
        if preset is not None:
            return TransformerConfig.from_name(preset, **data)
        return TransformerConfig.from_dict(data)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model: {err}") from None


# Named runs. ``tiny`` trains in seconds on a CPU; the others are the lab's LMs.
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(model={"preset": "tiny", "d_model": 64, "n_layers": 2, "n_heads": 4,
                        "n_kv_heads": 2, "max_seq_len": 256},
                 seq_len=64, batch_size=8, max_steps=50, lr=3e-3, warmup_steps=5,
                 log_every=5, eval_every=25, eval_batches=4, save_every=25),
    "small": dict(model={"preset": "small"}, seq_len=256, batch_size=16, max_steps=2000,
                  lr=1e-3, warmup_steps=100, eval_every=250, save_every=250),
    "lab-lm": dict(model={"preset": "tiny", "d_model": 128, "n_layers": 4, "n_heads": 4},
                   seq_len=128, batch_size=16, max_steps=600, lr=2e-3, warmup_steps=50,
                   eval_every=100, save_every=200),
    # Training settings for init_from runs (the model comes from init_from): a low peak
    # lr and no weight decay, as fine-tuning recipes use.
    "finetune": dict(seq_len=256, batch_size=8, max_steps=200, lr=3e-5, warmup_steps=10,
                     weight_decay=0.0, log_every=10, eval_every=50, save_every=100),
}


def _coerce(key: str, raw: str, annotation: Any) -> Any:
    """Parse ``raw`` (text after ``key=``) as YAML and check it against ``annotation``."""
    return _check_type(key, yaml.safe_load(raw), annotation)


def _as_float(value: str) -> float | None:
    """``value`` read by Python's ``float()`` (``1e-3``, ``inf``, ``1_000.5``), or None."""
    try:
        return float(value)
    except ValueError:
        return None


def _check_type(key: str, value: Any, annotation: Any) -> Any:
    """``value`` checked against ``annotation``; returned converted where a float
    field got a string that Python reads as a float (YAML 1.1 reads ``1e-3`` as text)."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        choices = typing.get_args(annotation)
        if value not in choices:
            raise ConfigError(f"{key} must be one of {list(choices)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return value
        for arg in args:
            if arg is not type(None):
                try:
                    return _check_type(key, value, arg)
                except ConfigError:
                    continue
        raise ConfigError(f"{key} has the wrong type: {value!r} is not {annotation}")
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str) and _as_float(value) is not None:
        return _as_float(value)
    if annotation in (int, float, str, bool) and (
        not isinstance(value, annotation) or (annotation is int and isinstance(value, bool))
    ):
        raise ConfigError(
            f"{key} must be {annotation.__name__}, got {type(value).__name__} ({value!r})"
        )
    return value


def _apply_override(data: dict[str, Any], item: str, explicit_model: dict[str, Any]) -> None:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key=value")
    key, raw = item.split("=", 1)
    train_fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    hints = typing.get_type_hints(TrainConfig)
    if key.startswith("model."):
        sub = key[len("model."):]
        model_hints = typing.get_type_hints(TransformerConfig)
        if sub not in model_hints and sub != "preset":
            raise ConfigError(f"unknown model key {sub!r}; known: {sorted(model_hints)}")
        model = data.setdefault("model", {})
        if isinstance(model, TransformerConfig):
            model = data["model"] = model.to_dict()
        model[sub] = explicit_model[sub] = _coerce(key, raw, model_hints.get(sub, str))
        return
    if key not in train_fields or key == "model":
        raise ConfigError(f"unknown config key {key!r}; known: {sorted(train_fields)}")
    data[key] = _coerce(key, raw, hints[key])


def load_train_config(source: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """A TrainConfig from a preset name or a YAML file, with ``key=value`` overrides."""
    source = str(source)
    if source in TRAIN_PRESETS:
        data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in TRAIN_PRESETS[source].items()}
    elif Path(source).is_file():
        loaded = yaml.safe_load(Path(source).read_text())
        if not isinstance(loaded, dict):
            raise ConfigError(f"{source}: expected a mapping of config keys")
        data = loaded
    else:
        raise ConfigError(
            f"{source!r} is neither a preset ({', '.join(TRAIN_PRESETS)}) nor a YAML file"
        )
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown config keys {unknown}; known: {sorted(known)}")
    hints = typing.get_type_hints(TrainConfig)
    data = {key: value if key == "model" else _check_type(key, value, hints[key])
            for key, value in data.items()}
    # Model keys the user gave (a YAML file's model section, model.* overrides), as
    # opposed to a preset's: with init_from these must agree with the source model.
    explicit_model: dict[str, Any] = {}
    if source not in TRAIN_PRESETS and isinstance(data.get("model"), dict):
        explicit_model.update(data["model"])
    for item in overrides or []:
        _apply_override(data, item, explicit_model)
    if data.get("init_from"):
        data["model"] = _model_from_init(data["init_from"], explicit_model)
    try:
        return TrainConfig(**data)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err)) from None


def _model_from_init(init_from: str, explicit: dict[str, Any]) -> dict[str, Any]:
    """The model section of an init_from run: init_from's config, with the explicit
    keys of :data:`INIT_FREE_MODEL_KEYS` applied and every other one checked to agree."""
    from blocklab.train.sources import model_config

    try:
        source = model_config(init_from)
    except (OSError, TypeError, ValueError) as err:
        raise ConfigError(f"init_from {init_from!r}: {err}") from None
    merged = source.to_dict()
    hints = typing.get_type_hints(TransformerConfig)
    for key, value in explicit.items():
        if key == "preset":
            raise ConfigError(f"model.preset ({value!r}) cannot be combined with init_from "
                              f"{init_from!r}: the model comes from init_from")
        if key not in hints:
            raise ConfigError(f"unknown model key {key!r}; known: {sorted(hints)}")
        value = _check_type(f"model.{key}", value, hints[key])
        if key in INIT_FREE_MODEL_KEYS:
            merged[key] = value
        elif value != merged[key]:
            raise ConfigError(
                f"model.{key}={value!r} contradicts init_from {init_from!r}, whose {key} is "
                f"{merged[key]!r}: the model comes from init_from (only "
                f"{', '.join(sorted(INIT_FREE_MODEL_KEYS))} may differ); drop the key"
            )
    return merged
