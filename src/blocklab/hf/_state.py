"""What a patched module carries: its patch record and its replacement ``forward``.

Both survive ``copy.deepcopy`` and pickling (``torch.save(model)``): the forward is a
:class:`PatchedForward` that pickles as (function, module) rather than as a bound
method, which pickle would rebuild as ``getattr(module, "forward")`` -- the class's
forward, silently unpatched.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

__all__ = ["STATE", "ModulePatch", "PatchedForward"]

STATE = "_blocklab_patch"  # the attribute holding a patched module's ModulePatch


@dataclass
class ModulePatch:
    """What a patched module's ``forward`` replaced."""

    kind: str  # "attention", "rms_norm", "mlp", "head" or "loss"
    slot: str  # "forward", or accelerate's "_old_forward"
    previous: Any  # the instance attribute that was there, None if none was
    parts: Any  # the kind's own state (AttentionPatch, HeadPatch, LossPatch or None)

    def original(self, module: nn.Module) -> Callable[..., Any]:
        """What ran before the patch: the replaced instance attribute, or the class's
        forward bound to ``module``."""
        return self.previous if self.previous is not None else type(module).forward.__get__(
            module)


class PatchedForward:
    """``fn(module, ...)`` as ``module.forward``, with the name and signature of the
    class's forward (``generate`` reads forward's parameters, e.g. ``logits_to_keep``)."""

    def __init__(self, fn: Callable[..., Any], module: nn.Module) -> None:
        self.fn = fn
        self.module = module
        like = type(module).forward
        self.__name__ = like.__name__
        self.__qualname__ = like.__qualname__
        self.__doc__ = fn.__doc__
        self.__signature__ = inspect.signature(like.__get__(module))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(self.module, *args, **kwargs)

    def __reduce__(self) -> tuple[type, tuple[Callable[..., Any], nn.Module]]:
        return PatchedForward, (self.fn, self.module)
