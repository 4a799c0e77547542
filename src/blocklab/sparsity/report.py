"""How sparse a model is: its weights, and the activations of its ReLUs.

Weight sparsity is the share of exact zeros in the weights of the Linear/Conv
layers, as the forward pass uses them. That is not always what ``parameters()``
holds: ``torch.nn.utils.prune`` keeps the dense original in ``weight_orig`` and the
zeros only appear in ``weight_orig * weight_mask``; this module's own masks
(:mod:`blocklab.sparsity.prune`) are applied too. Counting parameters would call a
50%-pruned torch model dense.

Activation sparsity is the share of exact zeros after each ReLU on a batch,
measured with forward hooks: the outputs of ``nn.ReLU`` modules and the hidden
activations of every :class:`blocklab.ffn.FeedForward` (the input of its ``w_out``,
for a GLU the gated product). Trained ReLU transformers are very sparse there (3%
non-zero in T5-Base's MLPs, Li et al. 2023, "The Lazy Neuron Phenomenon"); dense
kernels still multiply by every one of those zeros.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from blocklab.ffn import FeedForward
from blocklab.sparsity.prune import MASK, prunable_layers

__all__ = ["SparsityReport", "sparsity_report", "effective_weight", "activation_sparsity"]


def effective_weight(module: nn.Module) -> Tensor:
    """The weight the module's forward uses, whichever way it was pruned."""
    if hasattr(module, "weight_orig") and hasattr(module, "weight_mask"):
        # torch.nn.utils.prune: ``module.weight`` is only refreshed at the next forward.
        return (module.weight_orig * module.weight_mask).detach()
    mask = getattr(module, MASK, None)
    weight = module.weight.detach()
    return weight if mask is None else weight * mask


@dataclass
class SparsityReport:
    """Weight and activation sparsity of a model.

    Attributes:
        global_sparsity: zeros / weights over all prunable (Linear/Conv) weights.
        layers: {layer name: fraction of its weights that are zero}.
        zeros, total: the counts behind ``global_sparsity``.
        activations: {module name: fraction of exact zeros in its activations},
            empty unless inputs were given.
    """

    global_sparsity: float
    layers: dict[str, float]
    zeros: int
    total: int
    activations: dict[str, float] = field(default_factory=dict)

    @property
    def density(self) -> float:
        return 1.0 - self.global_sparsity

    @property
    def compression(self) -> float:
        """Weights per non-zero weight (Han et al. 2015 report 9x and 13x)."""
        nonzero = self.total - self.zeros
        return self.total / nonzero if nonzero else float("inf")

    def __str__(self) -> str:
        lines = [f"global sparsity {self.global_sparsity:.4f} "
                 f"({self.zeros:,} of {self.total:,} weights zero, {self.compression:.2f}x)"]
        lines += [f"  {name or '<model>'}: {frac:.4f}" for name, frac in self.layers.items()]
        if self.activations:
            lines.append("activation sparsity (exact zeros):")
            lines += [f"  {name}: {frac:.4f}" for name, frac in self.activations.items()]
        return "\n".join(lines)


def activation_sparsity(model: nn.Module, *inputs: Any, **kwargs: Any) -> dict[str, float]:
    """{name: share of exact zeros} after each ``nn.ReLU`` and inside each
    ``FeedForward`` while ``model(*inputs, **kwargs)`` runs in eval mode without
    gradients (counts accumulate over repeated calls of one module)."""
    counts: dict[str, list[int]] = {}

    def count(name: str, t: Tensor) -> None:
        c = counts.setdefault(name, [0, 0])
        c[0] += int((t == 0).sum())
        c[1] += t.numel()

    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ReLU):
            handles.append(module.register_forward_hook(
                lambda m, args, out, name=name: count(name, out)))
        elif isinstance(module, FeedForward):
            handles.append(module.w_out.register_forward_pre_hook(
                lambda m, args, name=name: count(name, args[0])))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*inputs, **kwargs)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return {name: zeros / total for name, (zeros, total) in counts.items()}


def sparsity_report(
    model: nn.Module,
    *inputs: Any,
    modules: Iterable[str | nn.Module] | None = None,
) -> SparsityReport:
    """Weight sparsity of ``model``'s Linear/Conv layers (all, or ``modules``), and,
    when ``inputs`` are given, activation sparsity on ``model(*inputs)``."""
    layers: dict[str, float] = {}
    zeros = total = 0
    for name, module in prunable_layers(model, modules):
        w = effective_weight(module)
        z = int((w == 0).sum())
        layers[name] = z / w.numel()
        zeros += z
        total += w.numel()
    if total == 0:
        raise ValueError(f"model ({type(model).__name__}) has no Linear/Conv weights to report on")
    acts = activation_sparsity(model, *inputs) if inputs else {}
    return SparsityReport(global_sparsity=zeros / total, layers=layers, zeros=zeros,
                          total=total, activations=acts)
