"""The boundary checks every public function uses: one helper per concern."""

import math

import numpy as np
import pytest
import torch

from blocklab._checks import (
    check_bool,
    check_broadcastable,
    check_float,
    check_ids,
    check_int,
    check_positive,
    check_tensor,
)


def test_check_int():
    assert check_int("n", np.int64(3), min=1) == 3 and type(check_int("n", np.int64(3))) is int
    for value in (True, 2.0, "2", None):
        with pytest.raises(TypeError, match=r"n must be an int, got"):
            check_int("n", value)
    with pytest.raises(ValueError, match=r"n \(0\) must be positive"):
        check_int("n", 0, min=1)
    with pytest.raises(ValueError, match=r"n \(-1\) must be >= 0"):
        check_int("n", -1, min=0)
    with pytest.raises(ValueError, match=r"n \(9\) must be <= 8"):
        check_int("n", 9, max=8)
    with pytest.raises(ValueError, match=r"seq_len \(0\) must be a positive int"):
        check_positive(batch=1, seq_len=0)


def test_check_bool():
    assert check_bool("causal", np.bool_(True)) is True
    for value in ("no", "False", 1, 0, None):
        with pytest.raises(TypeError, match=r"causal must be a bool, got"):
            check_bool("causal", value)


def test_check_float():
    assert check_float("t", 2) == 2.0 and check_float("t", np.float32(0.5), gt=0) == 0.5
    assert check_float("t", math.inf, finite=False) == math.inf
    for value, match in ((math.nan, r"t \(nan\) must be finite and positive"),
                         (math.inf, r"t \(inf\) must be finite and positive"),
                         (0, r"t \(0\) must be positive"), (-1e-9, r"t \(-1e-09\) must be")):
        with pytest.raises(ValueError, match=match):
            check_float("t", value, gt=0)
    with pytest.raises(ValueError, match=r"p \(1.5\) must be >= 0 and <= 1"):
        check_float("p", 1.5, ge=0, le=1)
    for value in (True, "1.0", None, torch.tensor(1.0)):
        with pytest.raises(TypeError, match="t must be a number"):
            check_float("t", value)


def test_check_tensor_and_broadcast():
    x = torch.zeros(2, 3)
    assert check_tensor("x", x, dim=(2, 3), floating=True) is x
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got list"):
        check_tensor("x", [1.0])
    with pytest.raises(ValueError, match=r"x must have 4 dimensions \(B, H, T, D\), got shape"):
        check_tensor("x", x, dim=4, layout="(B, H, T, D)")
    with pytest.raises(TypeError, match="x must be a floating-point tensor, got torch.int64"):
        check_tensor("x", x.long(), floating=True)
    check_broadcastable("mask", (5,), (2, 4, 3, 5))
    check_broadcastable("mask", (1, 1, 3, 1), (2, 4, 3, 5))
    # torch would broadcast (1, 1, 5, 5) with (2, 4, 1, 5); as a mask it grows the target
    for shape in ((1, 1, 5, 5), (1, 2, 4, 3, 5), (3, 5, 1)):
        with pytest.raises(ValueError, match="mask of shape .* does not broadcast to"):
            check_broadcastable("mask", shape, (2, 4, 1, 5))


def test_check_ids():
    ids = torch.tensor([[0, 4, -100]])
    check_ids("t", ids, 5, bound="C", ignore_index=-100)
    check_ids("t", torch.zeros(0, dtype=torch.long), 0, bound="C")  # empty: nothing to read
    with pytest.raises(ValueError, match=r"t must lie in \[0, C=4\) or be ignore_index \(-100\), "
                                         r"got class 4"):
        check_ids("t", ids, 4, bound="C", what="class", ignore_index=-100)
    with pytest.raises(ValueError, match=r"got token -100"):
        check_ids("t", ids, 5, bound="vocab_size", what="token")
