"""L1 weight penalty: the convex surrogate of counting non-zero weights.

    L = L_task + lambda * sum_i |w_i|

The subgradient lambda * sign(w) pulls every weight towards zero at the same rate
whatever its size, unlike L2's 2 lambda w, which fades as w shrinks; weights whose
task gradient is weaker than lambda end up at zero (Tibshirani 1996, the lasso).
With (sub)gradient steps they oscillate around zero within about one step size
rather than landing exactly on it, so the lab counts "near-zero" weights and
prunes them. With Adam, whose steps are normalised per weight, even a tiny lambda
drives weights that get no task gradient (pixels that are always 0) to zero.

Only the weights of Linear/Conv layers are summed by default: biases are offsets,
and normalisation gains are scales whose L1 would shrink the signal rather than
the connections. ``l1_penalty`` is differentiable and plugs into the trainers'
``regularizer=`` argument, e.g. ``regularizer=functools.partial(l1_penalty,
strength=1e-4)``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from blocklab.sparsity.prune import prunable_layers

__all__ = ["l1_penalty"]


def l1_penalty(
    model: nn.Module,
    strength: float = 1.0,
    *,
    modules: Iterable[str | nn.Module] | None = None,
    include_bias: bool = False,
) -> Tensor:
    """``strength * sum |w|`` over the weights of the Linear/Conv layers of ``model``.

    Args:
        model: any module; its Linear/Conv layers (or those in ``modules``) count.
        strength: lambda, >= 0.
        modules: names or module objects to restrict the sum to.
        include_bias: add the layers' biases to the sum.

    Returns:
        A scalar tensor on the weights' device, differentiable in the weights.
    """
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or strength < 0:
        raise ValueError(f"strength ({strength!r}) must be a number >= 0")
    if modules is not None:
        modules = list(modules)
        if not modules:
            raise ValueError("modules is empty: name at least one Linear/Conv layer, or pass "
                             "None to penalise all of them")
    layers = prunable_layers(model, modules)
    if not layers:
        raise ValueError(f"model ({type(model).__name__}) has no Linear/Conv layers to penalise")
    terms = [m.weight.abs().sum() for _, m in layers]
    if include_bias:
        terms += [m.bias.abs().sum() for _, m in layers if m.bias is not None]
    return strength * torch.stack(terms).sum()
