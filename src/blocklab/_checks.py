"""Argument checks for the public boundary, one helper per concern.

Every public function and module validates what it is given with these, so that a bad
argument raises a ``TypeError`` (wrong kind of thing) or ``ValueError`` (right kind,
wrong value) that names the argument and the value seen -- never a shape error from
deep inside torch, a NaN, or a silently truthy string. The helpers return the value
normalised (a Python ``int``, ``float`` or ``bool``) so call sites can use it directly.

Checks that read tensor *values* (:func:`check_ids`) cost one reduction and one
scalar read; they are skipped while ``torch.compile`` traces (it cannot branch on
values). Everything else looks at Python objects, shapes and dtypes only.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch

__all__ = [
    "check_int",
    "check_positive",
    "check_bool",
    "check_float",
    "check_tensor",
    "check_broadcastable",
    "check_ids",
]


def _show(value: object) -> str:
    return f"{type(value).__name__} ({value!r})"


def check_int(name: str, value: object, *, min: int | None = None, max: int | None = None) -> int:
    """``value`` is an integer -- not a bool, not a float, whatever its value -- within
    [min, max]; returned as a Python int (numpy integers are accepted)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {_show(value)}")
    value = int(value)
    if min is not None and value < min:
        raise ValueError(f"{name} ({value}) must be " + ("positive" if min == 1 else f">= {min}"))
    if max is not None and value > max:
        raise ValueError(f"{name} ({value}) must be <= {max}")
    return value


def check_positive(**sizes: object) -> None:
    """Raise unless every keyword is a positive int; the error names the first bad one."""
    for name, value in sizes.items():
        if check_int(name, value) <= 0:
            raise ValueError(f"{name} ({value}) must be a positive int")


def check_bool(name: str, value: object) -> bool:
    """``value`` is a bool (or numpy bool): ``causal="no"`` or ``1`` is refused, not
    read as True."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {_show(value)}")
    return bool(value)


def check_float(
    name: str,
    value: object,
    *,
    gt: float | None = None,
    ge: float | None = None,
    le: float | None = None,
    finite: bool = True,
) -> float:
    """``value`` is a real number (int or float, not a bool or a string), finite unless
    ``finite=False``, and > gt, >= ge, <= le as given; returned as a Python float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {_show(value)}")
    given, value = value, float(value)
    bounds = ["positive" if gt == 0 else f"> {gt:g}" if gt is not None else "",
              f">= {ge:g}" if ge is not None else "", f"<= {le:g}" if le is not None else ""]
    ok = not math.isnan(value) and (not finite or math.isfinite(value))
    if not ok:
        bounds.insert(0, "finite" if finite else "a number")
    ok = ok and (gt is None or value > gt) and (ge is None or value >= ge)
    ok = ok and (le is None or value <= le)
    if not ok:
        raise ValueError(f"{name} ({given}) must be " + " and ".join(b for b in bounds if b))
    return value


def check_tensor(
    name: str,
    x: object,
    *,
    dim: int | Sequence[int] | None = None,
    layout: str = "",
    floating: bool = False,
) -> torch.Tensor:
    """``x`` is a tensor, of ``dim`` dimensions (one of them when a sequence; ``layout``
    such as "(B, H, T, D)" names them in the error), floating point if asked."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if dim is not None:
        dims = (dim,) if isinstance(dim, int) else tuple(dim)
        if x.dim() not in dims:
            want = " or ".join(str(d) for d in dims)
            raise ValueError(
                f"{name} must have {want} dimensions{' ' + layout if layout else ''}, "
                f"got shape {tuple(x.shape)}"
            )
    if floating and not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    return x


def check_broadcastable(name: str, shape: Sequence[int], target: Sequence[int],
                        layout: str = "") -> None:
    """A tensor of ``shape`` broadcasts *to* ``target`` without growing it: no more
    dimensions, and each one (aligned from the right) is 1 or equal. torch's own rule
    is symmetric -- (1, 1, 5, 5) "broadcasts" with (2, 4, 1, 5) to (2, 4, 5, 5) -- and
    such a mask fails later inside the kernel."""
    shape, target = tuple(shape), tuple(target)
    ok = len(shape) <= len(target) and all(
        s in (1, t) for s, t in zip(reversed(shape), reversed(target), strict=False))
    if not ok:
        where = f"{layout} = {target}" if layout else f"{target}"
        raise ValueError(f"{name} of shape {shape} does not broadcast to {where}")


def check_ids(name: str, ids: torch.Tensor, n: int, *, bound: str, what: str = "id",
              ignore_index: int | None = None) -> None:
    """Every entry of the integer tensor ``ids`` lies in [0, n) (or is
    ``ignore_index``); the error shows the first one that does not. One reduction and
    one scalar read; nothing while torch.compile traces or for an empty tensor."""
    if not ids.numel() or torch.compiler.is_compiling():
        return
    bad = (ids < 0) | (ids >= n)
    if ignore_index is not None:
        bad &= ids != ignore_index
    if bool(bad.any()):
        value = int(ids[bad][0])
        also = f" or be ignore_index ({ignore_index})" if ignore_index is not None else ""
        raise ValueError(f"{name} must lie in [0, {bound}={n}){also}, got {what} {value}")
