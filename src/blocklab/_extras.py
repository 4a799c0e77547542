"""Optional dependencies: which extra a feature needs, and a clear message when it is
missing. ``pip install blocklab`` holds the blocks (torch, numpy, safetensors, PyYAML,
tqdm); the lab's figures and data sets need the ``lab`` extra (matplotlib, scikit-learn)."""

from __future__ import annotations

import importlib.util

__all__ = ["EXTRAS", "missing_extra"]

# extra -> the modules it provides (import names)
EXTRAS: dict[str, tuple[str, ...]] = {
    "lab": ("matplotlib", "sklearn"),
    "hf": ("tokenizers",),
}


def missing_extra(extra: str, what: str) -> str | None:
    """None when every module of ``extra`` can be imported, else the message to show:
    ``what`` needs them and how to install them."""
    if extra not in EXTRAS:
        raise ValueError(f"extra ({extra!r}) must be one of {sorted(EXTRAS)}")
    missing = []
    for name in EXTRAS[extra]:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a module set to None in sys.modules
            found = False
        if not found:
            missing.append(name)
    if not missing:
        return None
    return (f"{what} needs {', '.join(missing)} (the '{extra}' extra): "
            f"pip install 'blocklab[{extra}]'")
