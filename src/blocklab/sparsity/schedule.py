"""Pruning over training: Zhu & Gupta's gradual schedule and lottery-ticket rewinding.

Gradual pruning (Zhu & Gupta 2017, "To prune, or not to prune") raises the sparsity
from s_i to s_f over n pruning steps spaced dt apart from step t0,

    s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3,    t0 <= t <= t0 + n dt,

pruning fast while the network has many redundant weights and slowly near the end,
with training in between so the remaining weights take over the work of the pruned
ones. One-shot pruning to s_f removes them all at once.

Lottery tickets (Frankle & Carbin 2019): train, prune, then *rewind* the surviving
weights to their values at initialisation (or, for deeper nets, at an early step:
Frankle et al. 2020, "Linear mode connectivity and the lottery ticket hypothesis")
and retrain the sparse network from there.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from blocklab.sparsity.prune import Pattern, Pruner, Scope, magnitude_prune

__all__ = ["cubic_sparsity", "GradualPruner", "snapshot_weights", "rewind"]


def _fraction(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{name} ({value!r}) must be a number in [0, 1]")


def cubic_sparsity(step: int, *, final: float, start: int, end: int,
                   initial: float = 0.0) -> float:
    """Zhu & Gupta's target sparsity at ``step``: ``initial`` up to ``start``,
    ``final`` from ``end`` on, the cubic in between (``end = t0 + n dt``)."""
    _fraction("final", final)
    _fraction("initial", initial)
    if end < start:
        raise ValueError(f"end ({end}) must be >= start ({start})")
    if step <= start:
        return float(initial)
    if step >= end:
        return float(final)
    frac = (step - start) / (end - start)
    return final + (initial - final) * (1.0 - frac) ** 3


class GradualPruner:
    """Prune ``model`` to ``final`` sparsity along the cubic schedule while it trains.

    Call it after every optimizer step, ``pruner(step)`` with the 1-based step (it
    also takes the trainers' callback arguments ``(step, loss, model)``): at
    ``start``, every ``every`` steps after it, and at ``end`` it prunes to
    :func:`cubic_sparsity`; between those it re-applies the masks.

    Args:
        model: the model being trained.
        final, initial: target sparsities in [0, 1].
        start, end: the first and last pruning step (``end >= start >= 0``).
        every: steps between pruning events (dt).
        scope, pattern, modules: as in :func:`magnitude_prune` (not "2:4", which is
            fixed at 50%).
    """

    def __init__(
        self,
        model: nn.Module,
        final: float,
        *,
        start: int,
        end: int,
        every: int = 1,
        initial: float = 0.0,
        scope: Scope = "global",
        pattern: Pattern = "unstructured",
        modules: Iterable[str | nn.Module] | None = None,
    ) -> None:
        _fraction("final", final)
        _fraction("initial", initial)
        if start < 0 or end < start:
            raise ValueError(f"start ({start}) and end ({end}) must satisfy 0 <= start <= end")
        if every < 1:
            raise ValueError(f"every ({every}) must be >= 1")
        if pattern == "2:4":
            raise ValueError("pattern ('2:4') is fixed at 50% sparsity: prune it one-shot")
        self.model = model
        self.final, self.initial = final, initial
        self.start, self.end, self.every = start, end, every
        self.scope, self.pattern = scope, pattern
        self.modules = list(modules) if modules is not None else None
        self.pruner = Pruner(model)
        self.history: list[tuple[int, float]] = []  # (step, sparsity) at each pruning event

    def is_pruning_step(self, step: int) -> bool:
        return step == self.end or (self.start <= step < self.end
                                    and (step - self.start) % self.every == 0)

    def target(self, step: int) -> float:
        return cubic_sparsity(step, final=self.final, start=self.start, end=self.end,
                              initial=self.initial)

    def step(self, step: int) -> None:
        if self.is_pruning_step(step):
            amount = self.target(step)
            self.pruner = magnitude_prune(self.model, amount, scope=self.scope,
                                          pattern=self.pattern, modules=self.modules)
            self.history.append((step, amount))
        else:
            self.pruner.apply_masks()

    def __call__(self, step: int, *args: Any) -> None:
        self.step(step)


def snapshot_weights(model: nn.Module) -> dict[str, Tensor]:
    """A detached copy of the model's state_dict (its weights at, say, init or step k)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def rewind(model: nn.Module, snapshot: dict[str, Tensor]) -> Pruner:
    """Reset ``model`` to ``snapshot`` while keeping its pruning masks: the winning
    ticket is the early weights under the final mask. Returns the model's Pruner."""
    with torch.no_grad():
        model.load_state_dict(snapshot)
    pruner = Pruner(model)
    pruner.apply_masks()
    return pruner
