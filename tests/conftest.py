"""Shared test helpers: one tolerance table keyed by dtype, seeded RNG."""

from __future__ import annotations

import pytest
import torch

# One tolerance table for the whole suite: (atol, rtol) by dtype.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-8),
    torch.float32: (1e-5, 1e-4),
    torch.bfloat16: (2e-2, 2e-2),
    torch.float16: (2e-3, 2e-3),
}


def tol(dtype: torch.dtype) -> dict[str, float]:
    atol, rtol = TOLERANCES[dtype]
    return {"atol": atol, "rtol": rtol}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None,
                 **override: float) -> None:
    """Compare with the suite's tolerance for ``dtype`` (default: ``actual``'s dtype)."""
    kw = tol(dtype or actual.dtype)
    kw.update(override)
    torch.testing.assert_close(actual, expected.to(actual.dtype), **kw)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
