"""Checkpoints that survive being killed at any moment, and are verified when read.

A checkpoint is a directory ``ckpt-00000100/`` holding

* ``model.safetensors``: the model's weights (plain keys, loads into a fresh model);
* ``optimizer.safetensors``: every tensor of the optimiser state, flattened;
* ``state.json``: step, the optimiser's non-tensor state and layout, RNG states,
  data position and the config; the size and SHA-256 of both tensor files; and
  the SHA-256 of its own content (canonical JSON, without that field).

It is written into ``ckpt-00000100.tmp/``, every file flushed and fsynced, then the
directory is renamed (atomic on POSIX) and the parent fsynced. A crash, a full disk
or a write error leaves at most a ``.tmp`` directory, which is never read and the
next save clears. Loading never runs code from a file: tensors come from
safetensors, everything else from JSON.

What renaming cannot protect against (a disk that loses or flips bytes, a file
truncated or deleted by hand, a stray ``ckpt-*`` directory) :func:`load_checkpoint`
detects: sizes and checksums are compared with those recorded at save time, and
a tensor holding NaN or inf is refused, each with a :class:`CheckpointError`
saying which file and why. :func:`load_latest` walks back from the newest
checkpoint to the newest intact one and says what it skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

__all__ = [
    "CheckpointError",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_latest",
    "save_checkpoint",
]

_NAME = re.compile(r"^ckpt-(\d{8})$")
MODEL, OPTIMIZER, STATE = "model.safetensors", "optimizer.safetensors", "state.json"
_RESERVED = ("step", "optimizer", "aliases", "files", "sha256")

Loaded = tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]


class CheckpointError(ValueError):
    """A checkpoint that is incomplete, damaged or holds non-finite tensors."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _file_digest(path: Path) -> dict[str, Any]:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return {"bytes": path.stat().st_size, "sha256": sha.hexdigest()}


def _json_digest(body: dict[str, Any]) -> str:
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (for safetensors) and JSON."""
    tensors: dict[str, torch.Tensor] = {}
    per_param: dict[str, dict[str, Any]] = {}
    for pid, slots in state["state"].items():
        meta: dict[str, Any] = {}
        for name, value in slots.items():
            if isinstance(value, torch.Tensor):
                key = f"{pid}.{name}"
                tensors[key] = value.detach().contiguous().cpu()
                meta[name] = {"tensor": key}
            else:
                meta[name] = value
        per_param[str(pid)] = meta
    return tensors, {"state": per_param, "param_groups": state["param_groups"]}


def _unflatten_optimizer(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    state: dict[int | str, dict[str, Any]] = {}
    for pid, slots in meta["state"].items():
        key: int | str = int(pid) if pid.isdigit() else pid  # ids, or FQNs from get_state_dict
        state[key] = {
            name: tensors[v["tensor"]] if isinstance(v, dict) and "tensor" in v else v
            for name, v in slots.items()
        }
    return {"state": state, "param_groups": meta["param_groups"]}


def _scan(run_dir: Path) -> tuple[list[tuple[int, Path]], list[Path]]:
    """(checkpoint directories by name, oldest first; stray ``ckpt-*`` entries)."""
    if not run_dir.is_dir():
        return [], []
    found, strays = [], []
    for path in run_dir.iterdir():
        if not path.name.startswith("ckpt-") or path.name.endswith(".tmp"):
            continue  # not ours, or the debris of a killed save
        match = _NAME.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
        else:
            strays.append(path)
    return sorted(found), sorted(strays)


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Every ``ckpt-NNNNNNNN`` directory in ``run_dir`` as (step, path), oldest first,
    intact or not (see :func:`load_checkpoint`)."""
    return _scan(Path(run_dir))[0]


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    extra: dict[str, Any],
    keep_last: int = 3,
) -> Path:
    """Write checkpoint ``step`` atomically and keep the newest ``keep_last``.

    Args:
        run_dir: the run directory.
        step: optimiser steps completed.
        model_state: full (unsharded) model state dict.
        optimizer_state: ``optimizer.state_dict()`` (unsharded).
        extra: JSON-serialisable run state (RNG states, data position, config...).
        keep_last: checkpoints up to ``step`` to keep (older ones are removed; one
            of a later step, left by a run this one resumed before, is left alone).

    Returns:
        The checkpoint directory.

    Raises:
        OSError: the write failed (full disk, no permission); its ``filename`` is the
            checkpoint being written, and the checkpoints already there are intact.
    """
    reserved = sorted(set(extra) & set(_RESERVED))
    if reserved:
        raise ValueError(f"extra must not hold the keys {reserved}: the checkpoint's own")
    run_dir = Path(run_dir)
    final = run_dir / f"ckpt-{step:08d}"
    tmp = run_dir / f"ckpt-{step:08d}.tmp"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        # safetensors refuses shared storage (tied embeddings): store each tensor once.
        seen: dict[int, str] = {}
        weights: dict[str, torch.Tensor] = {}
        aliases: dict[str, str] = {}
        for name, tensor in model_state.items():
            ptr = tensor.data_ptr()
            if ptr in seen and tensor.numel():
                aliases[name] = seen[ptr]
                continue
            seen[ptr] = name
            weights[name] = tensor.detach().contiguous().cpu()
        save_file(weights, str(tmp / MODEL))
        opt_tensors, opt_meta = _flatten_optimizer(optimizer_state)
        save_file(opt_tensors, str(tmp / OPTIMIZER))
        files = {name: _file_digest(tmp / name) for name in (MODEL, OPTIMIZER)}
        body = {"step": step, "optimizer": opt_meta, "aliases": aliases, "files": files, **extra}
        (tmp / STATE).write_text(json.dumps({**body, "sha256": _json_digest(body)}, indent=1))
        for f in tmp.iterdir():
            _fsync_file(f)
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(run_dir)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError) and err.filename is None:
            raise OSError(err.errno, err.strerror or str(err), str(tmp)) from err
        raise
    older = [path for s, path in list_checkpoints(run_dir) if s <= step]
    for old in older[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _read_state(path: Path) -> dict[str, Any]:
    file = path / STATE
    if not file.is_file():
        raise CheckpointError(path, f"{STATE} is missing")
    try:
        state = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(path, f"{STATE} is not readable JSON ({err})") from None
    if not isinstance(state, dict):
        raise CheckpointError(path, f"{STATE} holds a {type(state).__name__}, not an object")
    missing = [k for k in ("step", "optimizer", "files", "sha256") if k not in state]
    if missing:
        raise CheckpointError(path, f"{STATE} lacks {missing} (damaged, or written by an "
                                    "older blocklab without checksums)")
    recorded = state.pop("sha256")
    if recorded != _json_digest(state):
        raise CheckpointError(path, f"{STATE} does not match its checksum (damaged)")
    match = _NAME.match(path.name)
    if match and int(match.group(1)) != state["step"]:
        raise CheckpointError(path, f"{STATE} is for step {state['step']!r}, not "
                                    f"{int(match.group(1))}")
    return state


def _read_tensors(path: Path, name: str, recorded: Any) -> dict[str, torch.Tensor]:
    file = path / name
    if not file.is_file():
        raise CheckpointError(path, f"{name} is missing")
    if not isinstance(recorded, dict) or {"bytes", "sha256"} - set(recorded):
        raise CheckpointError(path, f"{STATE} records no size and checksum of {name}")
    size = file.stat().st_size
    if size != recorded["bytes"]:
        what = "truncated" if size < recorded["bytes"] else "longer than written"
        raise CheckpointError(path, f"{name} is {what} ({size} bytes, {recorded['bytes']} "
                                    "written)")
    if _file_digest(file)["sha256"] != recorded["sha256"]:
        raise CheckpointError(path, f"{name} does not match its SHA-256 (damaged)")
    try:
        tensors = load_file(str(file))
    except Exception as err:  # safetensors raises its own error types
        raise CheckpointError(path, f"{name} cannot be read ({err})") from None
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(path, f"{name}: tensor {key!r} holds NaN or inf")
    return tensors


def load_checkpoint(path: str | Path) -> Loaded:
    """(model state, optimizer state dict, run state) of a checkpoint directory.

    Raises:
        CheckpointError: a file is missing, truncated, damaged (its size or SHA-256
            differs from those recorded at save time) or holds NaN/inf, or
            ``state.json`` is not the one written with it.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(path, "not a directory")
    state = _read_state(path)
    files = state.pop("files")
    if not isinstance(files, dict):
        raise CheckpointError(path, f"{STATE} records no file sizes and checksums")
    model_state = _read_tensors(path, MODEL, files.get(MODEL))
    opt_tensors = _read_tensors(path, OPTIMIZER, files.get(OPTIMIZER))
    try:
        for name, target in state.pop("aliases", {}).items():
            model_state[name] = model_state[target]
        optimizer_state = _unflatten_optimizer(state.pop("optimizer"), opt_tensors)
    except (AttributeError, KeyError, TypeError) as err:
        raise CheckpointError(path, f"{STATE} does not describe the tensors saved beside "
                                    f"it ({type(err).__name__}: {err})") from None
    return model_state, optimizer_state, state


def load_latest(
    run_dir: str | Path, *, check: Callable[[Path, dict[str, Any]], None] | None = None
) -> tuple[Path | None, Loaded | None, list[tuple[Path, str]]]:
    """The newest intact checkpoint of ``run_dir``, loaded, and what was skipped.

    Args:
        run_dir: a run directory.
        check: called with (path, run state) of each loaded checkpoint; raising
            :class:`CheckpointError` skips that one too (e.g. a key the caller needs).

    Returns:
        (path, (model state, optimizer state, run state), skipped), where skipped
        lists (path, reason) for every stray ``ckpt-*`` entry and every checkpoint
        newer than the one returned; (None, None, skipped) when none is intact.
    """
    found, strays = _scan(Path(run_dir))
    skipped = [(p, "not a checkpoint directory (ckpt-NNNNNNNN)") for p in strays]
    for _, path in reversed(found):
        try:
            loaded = load_checkpoint(path)
            if check is not None:
                check(path, loaded[2])
        except CheckpointError as err:
            skipped.append((path, err.reason))
            continue
        return path, loaded, skipped
    return None, None, skipped


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest intact checkpoint (verified as by :func:`load_checkpoint`), or None."""
    return load_latest(run_dir)[0]
