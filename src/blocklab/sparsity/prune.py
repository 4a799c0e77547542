"""Magnitude pruning with masks that stay in force, and plain state_dict keys.

Magnitude pruning (Han et al. 2015, "Learning both Weights and Connections") zeroes
the weights of smallest absolute value and fine-tunes the rest:

    mask_ij = 0  for the round(amount * N) smallest |w_ij|,   w <- w * mask

Patterns (``pattern``), for a weight of shape (out, in, *kernel):

    "unstructured"  single weights, anywhere.
    "2:4"           in every group of four consecutive inputs of an output row (the
                    flattened ``in * kernel`` axis) the two largest |w| stay: NVIDIA's
                    semi-structured sparsity (Mishra et al. 2021), always 50%.
    "rows"          whole slices along dim 0: the output features of a Linear, the
                    output channels (filters) of a Conv -- "filter pruning" (Li et al.
                    2017); scored by their L2 norm.
    "channels"      whole slices along dim 1: the input features (columns) of a
                    Linear, the input channels of a Conv -- "channel pruning" (He et
                    al. 2017); scored by their L2 norm.

``scope="layer"`` prunes ``amount`` of every layer; ``scope="global"`` ranks the
weights of all layers together (Frankle & Carbin 2019), so layers lose different
shares; for rows/channels the slices are ranked by their RMS (the L2 norm over
sqrt of the slice size, so wide and narrow layers compare) and pruned until the
pruned weights come nearest ``amount`` of the total. ``amount`` is the fraction of
the weights that are zero after the call: masks of earlier calls are kept (they
only grow), so calling again with a larger amount is gradual pruning.

How the masks stay in force. ``torch.nn.utils.prune``, the reference, replaces
``weight`` by a parameter ``weight_orig`` and a buffer ``weight_mask`` and recomputes
``weight = weight_orig * weight_mask`` before every forward: the state_dict no longer
loads into an unpruned model, ``parameters()`` shows the dense originals, and every
forward pays a multiply. Here the parameter ``weight`` itself holds the zeros:

1. the mask is a non-persistent 0/1 buffer ``weight_prune_mask`` on the module
   (moved by ``.to()``, left out of the state_dict, so the keys stay plain and a
   pruned model's state_dict loads into a fresh unpruned one, zeros included);
2. a tensor hook on ``weight`` zeroes the gradient of masked entries, so plain
   SGD never moves them and Adam's moment estimates for them stop growing;
3. a forward pre-hook re-applies the mask whenever the weight changed since the
   last masking (its autograd version counter moved: an optimizer step, whose
   momentum or Adam state from before pruning, or weight decay, would otherwise
   revive pruned weights; a ``load_state_dict`` of dense weights). It costs
   nothing when nothing changed, so masked inference runs the dense kernel;
4. a state_dict pre-hook re-applies it before saving, and :func:`keep_pruned`
   registers an optimizer step post-hook that re-applies it after every step, so
   the parameters read between steps hold exact zeros too.

Writes through ``weight.data`` bypass the version counter; call
:meth:`Pruner.apply_masks` after them. Checked against ``torch.nn.utils.prune``:
for the same amount, the same weights are zeroed (tests and
``benchmarks/bench_sparsity.py``).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any, Literal

import torch
from torch import Tensor, nn

__all__ = [
    "PRUNABLE",
    "MASK",
    "Pruner",
    "magnitude_prune",
    "mask_zeros",
    "keep_pruned",
    "prunable_layers",
    "compute_mask",
]

Pattern = Literal["unstructured", "2:4", "rows", "channels"]
Scope = Literal["global", "layer"]
PATTERNS: tuple[str, ...] = ("unstructured", "2:4", "rows", "channels")
SCOPES: tuple[str, ...] = ("global", "layer")

PRUNABLE: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
MASK = "weight_prune_mask"  # the buffer's name on a pruned module


# ------------------------------------------------------------------ which layers

def prunable_layers(
    model: nn.Module, modules: Iterable[str | nn.Module] | None = None
) -> list[tuple[str, nn.Module]]:
    """(name, module) of the Linear/Conv layers of ``model`` (all, or those named).

    Args:
        modules: names as in ``model.named_modules()`` or the module objects
            themselves; None for every Linear/Conv layer.
    """
    named = [(n, m) for n, m in model.named_modules() if isinstance(m, PRUNABLE)]
    if modules is None:
        return named
    wanted = list(modules)
    by_name = dict(model.named_modules())
    by_id = {id(m): n for n, m in by_name.items()}
    out: list[tuple[str, nn.Module]] = []
    for item in wanted:
        if isinstance(item, str):
            if item not in by_name:
                raise ValueError(f"modules: {item!r} is not a submodule of the model")
            name, module = item, by_name[item]
        elif isinstance(item, nn.Module):
            if id(item) not in by_id:
                raise ValueError(f"modules: {type(item).__name__} object is not part of the model")
            name, module = by_id[id(item)], item
        else:
            raise TypeError(f"modules must hold names or nn.Modules, got {type(item).__name__}")
        if not isinstance(module, PRUNABLE):
            raise ValueError(
                f"modules: {name!r} is a {type(module).__name__}; only "
                f"{', '.join(t.__name__ for t in PRUNABLE)} layers can be pruned"
            )
        if all(name != n for n, _ in out):
            out.append((name, module))
    return out


# ------------------------------------------------------------------ masks (math)

def _check(amount: float, scope: str, pattern: str) -> None:
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0 <= amount <= 1:
        raise ValueError(f"amount ({amount!r}) must be a number in [0, 1]")
    if scope not in SCOPES:
        raise ValueError(f"scope ({scope!r}) must be one of {SCOPES}")
    if pattern not in PATTERNS:
        raise ValueError(f"pattern ({pattern!r}) must be one of {PATTERNS}")
    if pattern == "2:4" and amount != 0.5:
        raise ValueError(
            f"amount ({amount}) must be 0.5 for pattern '2:4': it keeps two of every four weights"
        )


def _slices(weight: Tensor, pattern: str) -> Tensor:
    """The weight as (n_slices, slice_size) for rows (dim 0) or channels (dim 1)."""
    w = weight if pattern == "rows" else weight.transpose(0, 1)
    return w.reshape(w.shape[0], -1)


def _expand(keep: Tensor, weight: Tensor, pattern: str) -> Tensor:
    """A per-slice keep vector broadcast to the weight's shape."""
    shape = [1] * weight.dim()
    shape[0 if pattern == "rows" else 1] = -1
    return keep.reshape(shape).expand_as(weight)


def _two_of_four(weight: Tensor, name: str) -> Tensor:
    flat = weight.reshape(weight.shape[0], -1)  # (out, in * kernel)
    if flat.shape[1] % 4:
        raise ValueError(
            f"pattern '2:4' needs the input width of {name!r} divisible by 4, got "
            f"{flat.shape[1]} (weight shape {tuple(weight.shape)})"
        )
    groups = flat.reshape(flat.shape[0], -1, 4)  # (out, in / 4, 4)
    top = groups.topk(2, dim=-1).indices
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top, True)
    return keep.reshape(weight.shape)


def _smallest(scores: Tensor, k: int) -> Tensor:
    """Bool vector: True (keep) everywhere but the k smallest scores."""
    keep = torch.ones_like(scores, dtype=torch.bool)
    if k > 0:
        keep[torch.topk(scores, k, largest=False).indices] = False
    return keep


def _masks_from_scores(
    scores: dict[str, Tensor], amount: float, scope: str, pattern: str
) -> dict[str, Tensor]:
    """Keep-masks from |w|-like scores; an entry scoring -1 (already masked) ranks
    below every real weight."""
    if pattern == "2:4":
        return {n: _two_of_four(s, n) for n, s in scores.items()}
    if pattern == "unstructured":
        if scope == "layer":
            return {n: _smallest(s.flatten(), round(amount * s.numel())).reshape(s.shape)
                    for n, s in scores.items()}
        flat = torch.cat([s.flatten() for s in scores.values()])
        keep = _smallest(flat, round(amount * flat.numel()))
        out, start = {}, 0
        for n, s in scores.items():
            out[n] = keep[start : start + s.numel()].reshape(s.shape)
            start += s.numel()
        return out
    # rows / channels: a slice scores its L2 norm (masked entries count as zeros).
    if scope == "layer":
        out = {}
        for n, s in scores.items():
            norms = _slices(s.clamp_min(0), pattern).norm(dim=1)
            out[n] = _expand(_smallest(norms, round(amount * norms.numel())), s, pattern)
        return out
    rms, sizes, owners = [], [], []
    for i, s in enumerate(scores.values()):
        sl = _slices(s.clamp_min(0), pattern)  # (n_slices, slice_size)
        rms.append((sl.norm(dim=1) / sl.shape[1] ** 0.5).cpu())  # comparable across widths
        sizes.append(torch.full((sl.shape[0],), sl.shape[1], dtype=torch.long))
        owners.append(torch.full((sl.shape[0],), i, dtype=torch.long))
    score, size, owner = torch.cat(rms), torch.cat(sizes), torch.cat(owners)
    target = round(amount * int(size.sum()))
    order = score.argsort(stable=True)
    cum = torch.cat([torch.zeros(1, dtype=torch.long), size[order].cumsum(0)])
    n_pruned = int((cum - target).abs().argmin())  # the prefix nearest the target count
    keep = torch.ones_like(score, dtype=torch.bool)
    keep[order[:n_pruned]] = False
    return {n: _expand(keep[owner == i].to(s.device), s, pattern)
            for i, (n, s) in enumerate(scores.items())}


def compute_mask(
    weights: dict[str, Tensor],
    amount: float,
    *,
    scope: Scope = "global",
    pattern: Pattern = "unstructured",
) -> dict[str, Tensor]:
    """Keep-masks (True = keep) for ``weights`` {name: weight}: the pure math of
    :func:`magnitude_prune` (same arguments), without touching any module."""
    _check(amount, scope, pattern)
    if not weights:
        raise ValueError("weights is empty: nothing to prune")
    return _masks_from_scores({n: w.detach().abs() for n, w in weights.items()},
                              amount, scope, pattern)


# ----------------------------------------------------------- masks on modules

class _State:
    """Per-module bookkeeping: which parameter carries the grad hook, and the
    (identity, version, storage) of the weight when it was last masked."""

    def __init__(self) -> None:
        self.param_id: int | None = None
        self.grad_handle: Any = None
        self.seen: tuple[int, int, int] | None = None

    # A copy (deepcopy, pickle) of the model gets fresh bookkeeping: the next
    # forward or apply_masks re-registers the grad hook on the copy's weight.
    def __deepcopy__(self, memo: dict) -> _State:
        return _State()

    def __getstate__(self) -> dict:
        return {"fresh": True}  # a falsy state would skip __setstate__

    def __setstate__(self, state: dict) -> None:
        self.__init__()


STATE = "_blocklab_prune_state"


def _stamp(weight: Tensor) -> tuple[int, int, int]:
    return id(weight), weight._version, weight.data_ptr()


def _grad_hook(ref: weakref.ReferenceType) -> Any:
    def hook(grad: Tensor) -> Tensor:
        module = ref()
        mask = getattr(module, MASK, None) if module is not None else None
        return grad if mask is None else grad * mask
    return hook


def _sync(module: nn.Module, *, force: bool = False) -> None:
    """Mask the weight if it changed since last time; hook its gradient if new."""
    state: _State = module.__dict__[STATE]
    weight = module.weight
    if state.param_id != id(weight):
        if state.grad_handle is not None:
            state.grad_handle.remove()
        state.grad_handle = (weight.register_hook(_grad_hook(weakref.ref(module)))
                             if weight.requires_grad else None)
        state.param_id = id(weight)
        force = True
    if force or state.seen != _stamp(weight):
        with torch.no_grad():
            weight.mul_(getattr(module, MASK))
        state.seen = _stamp(weight)


def _forward_pre_hook(module: nn.Module, args: Any) -> None:
    _sync(module)


def _state_dict_pre_hook(module: nn.Module, prefix: str, keep_vars: bool) -> None:
    _sync(module)


def _attach(module: nn.Module, keep: Tensor) -> None:
    """Install (or tighten) the mask of one module."""
    # Stored as 0/1 in the weight's dtype, as torch.nn.utils.prune does: multiplying by
    # it is several times faster on the CPU than masked_fill or a bool operand.
    keep = keep.to(device=module.weight.device, dtype=module.weight.dtype).contiguous()
    if STATE not in module.__dict__:
        module.register_buffer(MASK, keep, persistent=False)
        module.__dict__[STATE] = _State()
        module.register_forward_pre_hook(_forward_pre_hook)
        module.register_state_dict_pre_hook(_state_dict_pre_hook)
    else:
        setattr(module, MASK, getattr(module, MASK) * keep)
    _sync(module, force=True)


def _detach(module: nn.Module) -> None:
    if STATE not in module.__dict__:
        return
    _sync(module, force=True)
    state: _State = module.__dict__.pop(STATE)
    if state.grad_handle is not None:
        state.grad_handle.remove()
    delattr(module, MASK)
    # Hooks are found by function rather than kept as handles: a handle would not
    # survive a deepcopy of the model pointing at the right hook dict.
    for hooks, fn in ((module._forward_pre_hooks, _forward_pre_hook),
                      (module._state_dict_pre_hooks, _state_dict_pre_hook)):
        for key in [k for k, f in hooks.items() if f is fn]:
            del hooks[key]


def _effective(module: nn.Module) -> Tensor:
    """The weight a forward would use (our mask applied if present)."""
    mask = getattr(module, MASK, None)
    return module.weight.detach() if mask is None else module.weight.detach() * mask


class Pruner:
    """Handle on the masks of a model's layers (the state lives on the modules, so
    ``Pruner(model)`` may be rebuilt at any time, e.g. after a deepcopy)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def layers(self) -> list[tuple[str, nn.Module]]:
        """(name, module) of the layers that carry a mask."""
        return [(n, m) for n, m in self.model.named_modules() if STATE in m.__dict__]

    @property
    def masks(self) -> dict[str, Tensor]:
        """{layer name: bool keep-mask of its weight's shape}."""
        return {n: getattr(m, MASK) != 0 for n, m in self.layers()}

    def apply_masks(self) -> None:
        """Zero the masked weights now (after writes through ``.data``, say)."""
        for _, module in self.layers():
            _sync(module, force=True)

    def sparsity(self) -> float:
        """Fraction of the masked layers' weights that are pruned."""
        masks = list(self.masks.values())
        total = sum(m.numel() for m in masks)
        return sum(int((~m).sum()) for m in masks) / total if total else 0.0

    def remove(self) -> None:
        """Drop masks and hooks; the weights keep their zeros but may move again."""
        for _, module in self.layers():
            _detach(module)

    def __call__(self, *args: Any) -> None:
        """Re-apply the masks; usable as a training callback ``(step, loss, model)``."""
        self.apply_masks()

    def __repr__(self) -> str:
        return f"Pruner({len(self.layers())} layers, sparsity={self.sparsity():.3f})"


def magnitude_prune(
    model: nn.Module,
    amount: float,
    *,
    scope: Scope = "global",
    pattern: Pattern = "unstructured",
    modules: Iterable[str | nn.Module] | None = None,
) -> Pruner:
    """Zero the smallest-magnitude weights of the Linear/Conv layers of ``model``.

    Args:
        model: pruned in place; the masks stay in force through optimizer steps
            (see the module docstring) until :meth:`Pruner.remove`.
        amount: fraction of the weights zero after the call, in [0, 1] (exactly
            ``round(amount * N)`` of the N weights in scope for unstructured
            pruning; whole slices for rows/channels; 0.5 for 2:4).
        scope: "global" ranks all layers together, "layer" prunes each alike (2:4
            works per group of four either way).
        pattern: "unstructured", "2:4", "rows" (dim 0: output features/filters) or
            "channels" (dim 1: input features/channels).
        modules: the layers to prune (names or modules); default all Linear/Conv.

    Returns:
        A :class:`Pruner` handle on the model's masks.
    """
    _check(amount, scope, pattern)
    layers = prunable_layers(model, modules)
    if not layers:
        raise ValueError(
            f"model ({type(model).__name__}) has no Linear/Conv layers to prune"
        )
    # Already-masked entries score -1, below every |w|: they are pruned first.
    scores = {}
    for name, module in layers:
        mask = getattr(module, MASK, None)
        w = _effective(module).abs()
        scores[name] = w if mask is None else torch.where(mask != 0, w, -1.0)
    masks = _masks_from_scores(scores, amount, scope, pattern)
    for name, module in layers:
        _attach(module, masks[name])
    return Pruner(model)


def mask_zeros(model: nn.Module, modules: Iterable[str | nn.Module] | None = None) -> Pruner:
    """Mask the weights that are exactly zero now, e.g. in a sparse checkpoint just
    loaded into a fresh model, so fine-tuning keeps them at zero."""
    for _, module in prunable_layers(model, modules):
        _attach(module, _effective(module) != 0)
    return Pruner(model)


def keep_pruned(optimizer: torch.optim.Optimizer, model: nn.Module | Pruner) -> Any:
    """Re-apply the masks after every ``optimizer.step()``; returns the hook's handle."""
    pruner = model if isinstance(model, Pruner) else Pruner(model)
    return optimizer.register_step_post_hook(lambda opt, args, kwargs: pruner.apply_masks())
