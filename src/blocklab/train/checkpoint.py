"""Checkpoints that survive being killed at any moment.

A checkpoint is a directory ``ckpt-00000100/`` holding

* ``model.safetensors``: the model's weights (plain keys, loads into a fresh model);
* ``optimizer.safetensors``: every tensor of the optimiser state, flattened;
* ``state.json``: step, the optimiser's non-tensor state and layout, RNG states,
  data position and the config.

It is written into ``ckpt-00000100.tmp/``, every file flushed and fsynced, then the
directory is renamed (atomic on POSIX) and the parent fsynced. A crash, a full disk
or a write error leaves at most a ``.tmp`` directory, which :func:`latest_checkpoint`
never picks and the next save clears. Loading never runs code from a file: tensors
come from safetensors, everything else from JSON.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "list_checkpoints"]

_NAME = re.compile(r"^ckpt-(\d{8})$")


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``run_dir`` as (step, path), oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = []
    for path in run_dir.iterdir():
        match = _NAME.match(path.name)
        if match and path.is_dir() and (path / "state.json").is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


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
        keep_last: complete checkpoints to keep (older ones are removed).

    Returns:
        The checkpoint directory.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / f"ckpt-{step:08d}"
    tmp = run_dir / f"ckpt-{step:08d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
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
        save_file(weights, str(tmp / "model.safetensors"))
        opt_tensors, opt_meta = _flatten_optimizer(optimizer_state)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        state = {"step": step, "optimizer": opt_meta, "aliases": aliases, **extra}
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
        for f in tmp.iterdir():
            _fsync_file(f)
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(run_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for _, old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """(model state, optimizer state dict, run state) of a checkpoint directory."""
    path = Path(path)
    state = json.loads((path / "state.json").read_text())
    model_state = load_file(str(path / "model.safetensors"))
    for name, target in state.pop("aliases", {}).items():
        model_state[name] = model_state[target]
    opt_tensors = load_file(str(path / "optimizer.safetensors"))
    optimizer_state = _unflatten_optimizer(state.pop("optimizer"), opt_tensors)
    return model_state, optimizer_state, state
