"""The causal-LM loss of a Hugging Face model computed from its final hidden states,
fused with the LM head, so the (B*T, V) logits are never formed.

Hugging Face's ``ForCausalLMLoss`` shifts the labels by one (position t predicts token
t + 1; the last position gets ``ignore_index``) and takes

    loss = sum_i CE(h_i W^T, y_i) / n

over the positions whose shifted label is not ``ignore_index`` (-100), with n their
count -- or ``num_items_in_batch`` when the caller passes it (gradient accumulation
over several micro-batches). :func:`causal_lm_loss` computes the same number with
:func:`blocklab.losses.linear_cross_entropy`, which forms the logits ``chunk_size``
rows at a time and turns each chunk into its gradients at once.

The patched ``ForCausalLM.forward`` (:func:`causal_lm_forward`) runs the model's own
forward with the LM head swapped for a stand-in that records the hidden states it is
given and returns an empty (B, T, 0) tensor, then computes the loss from them. So every
argument, cache and return convention of the installed transformers version is its
own; only the head and the loss change (the stand-in is switched per call, so one
model object should not run fused forwards in two threads at once). The result has
``logits=None`` (as Liger-Kernel's): pass ``skip_logits=False`` to get Hugging Face's
own path, logits and all. Checked against Hugging Face's loss and gradients in
``tests/hf/test_loss.py`` and ``tests/hf/test_patch.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from blocklab._checks import check_bool, check_int
from blocklab.hf._state import STATE
from blocklab.losses.linear_ce import linear_cross_entropy

__all__ = ["causal_lm_loss", "default_chunk_size", "HeadPatch", "LossPatch", "head_forward",
           "causal_lm_forward"]


def default_chunk_size(d_model: int) -> int:
    """Rows per loss chunk: about the hidden width C (a power of two, 128 to 1024), so
    a chunk's logits take about as much memory as the LM head's weight (Liger-Kernel's
    rule, bounded)."""
    return min(1024, max(128, 1 << max(0, d_model - 1).bit_length()))


def causal_lm_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor | None,
    *,
    shift_labels: torch.Tensor | None = None,
    ignore_index: int = -100,
    num_items_in_batch: int | torch.Tensor | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Hugging Face's ``ForCausalLMLoss`` of the logits ``hidden @ weight.T``, fused.

    Args:
        hidden: (B, T, C) final hidden states (after the last norm), or (N, C).
        weight: (V, C) LM head weight (no bias).
        labels: (B, T) token ids, ``ignore_index`` where no loss is wanted; shifted
            by one here. Unused when ``shift_labels`` is given.
        shift_labels: (B, T) labels already aligned with ``hidden`` (Hugging Face's
            ``shift_labels`` argument, e.g. for sequence parallelism).
        ignore_index: label value that contributes nothing.
        num_items_in_batch: divide the summed loss by this instead of by the number
            of counted positions.
        chunk_size: rows per chunk (default :func:`default_chunk_size` of C).

    Returns:
        The scalar loss in float32 (float64 for fp64 inputs); NaN when no position
        counts and ``num_items_in_batch`` is None, as Hugging Face's.
    """
    check_int("ignore_index", ignore_index)
    if shift_labels is None:
        if labels is None:
            raise ValueError("causal_lm_loss needs labels or shift_labels")
        # Position t predicts token t + 1; the last position has nothing to predict.
        shift_labels = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    target = shift_labels.reshape(-1).to(hidden.device)
    h = hidden.reshape(-1, hidden.shape[-1])  # (N, C)
    if target.shape[0] != h.shape[0]:
        raise ValueError(f"labels give {target.shape[0]} positions but the hidden states "
                         f"{tuple(hidden.shape)} have {h.shape[0]}")
    chunk = default_chunk_size(h.shape[-1]) if chunk_size is None else check_int(
        "chunk_size", chunk_size, min=1)
    mean = linear_cross_entropy(h, weight, target, chunk_size=chunk, ignore_index=ignore_index)
    if num_items_in_batch is None:
        return mean
    count = (target != ignore_index).sum()
    # Sum over the counted positions; 0 (not NaN * 0) when none counts.
    total = torch.where(count > 0, mean * count, torch.zeros_like(mean))
    if isinstance(num_items_in_batch, torch.Tensor):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


@dataclass
class HeadPatch:
    """The LM head's stand-in state: while ``capture`` is a list, the head records its
    input there instead of computing logits."""

    capture: list[torch.Tensor] | None = None


@dataclass
class LossPatch:
    head: torch.nn.Module
    labels_position: int | None  # index of ``labels`` among forward's positional args
    chunk_size: int


def head_forward(self: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The LM head: logits as usual, or, during a fused-loss forward, a (..., 0)
    placeholder after recording ``hidden``."""
    state = self.__dict__[STATE]
    head: HeadPatch = state.parts
    if head.capture is not None:
        head.capture.append(hidden)
        return hidden.new_empty((*hidden.shape[:-1], 0))
    return state.original(self)(hidden)


def causal_lm_forward(self: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
    """Replacement for ``LlamaForCausalLM.forward`` (and Mistral's, Qwen2's).

    With ``labels`` and the model in training mode (or ``skip_logits=True``), the loss
    is :func:`causal_lm_loss` of the final hidden states and the output's logits are
    None; otherwise (or with ``skip_logits=False``) this is Hugging Face's forward.
    ``shift_labels``, ``ignore_index`` and ``num_items_in_batch`` keyword arguments
    mean what they mean to Hugging Face's loss.
    """
    state = self.__dict__[STATE]
    patch: LossPatch = state.parts
    original = state.original(self)
    skip_logits = kwargs.pop("skip_logits", None)
    if skip_logits is not None:
        skip_logits = check_bool("skip_logits", skip_logits)
    pos = patch.labels_position
    positional = "labels" not in kwargs and pos is not None and len(args) > pos
    labels = args[pos] if positional else kwargs.get("labels")
    fused = labels is not None and (self.training if skip_logits is None else skip_logits)
    if not fused:
        return original(*args, **kwargs)

    if positional:
        args = (*args[:pos], None, *args[pos + 1:])
    else:
        kwargs["labels"] = None
    return_dict = kwargs.pop("return_dict", None)
    if return_dict is None:
        return_dict = getattr(self.config, "return_dict", True)
    head: HeadPatch = patch.head.__dict__[STATE].parts
    head.capture = captured = []
    try:
        out = original(*args, return_dict=True, **kwargs)
    finally:
        head.capture = None
    if len(captured) != 1:
        raise RuntimeError(f"the LM head ran {len(captured)} times in one forward; "
                           "blocklab's fused loss expects once")
    loss = causal_lm_loss(
        captured[0], patch.head.weight, labels,
        shift_labels=kwargs.get("shift_labels"),
        ignore_index=kwargs.get("ignore_index", -100),
        num_items_in_batch=kwargs.get("num_items_in_batch"),
        chunk_size=patch.chunk_size,
    )
    rest = {key: value for key, value in out.items() if key not in ("loss", "logits")}
    out = type(out)(loss=loss, logits=None, **rest)
    return out if return_dict else out.to_tuple()
