"""The losses trace whole under torch.compile(fullgraph=True): their eager fast paths
(fused autograd functions, value checks) step aside for plain ops while tracing."""

from __future__ import annotations

import pytest
import torch

from blocklab.losses import focal_loss, kd_loss, sigmoid_focal_loss
from tests.conftest import assert_close


def _cases():
    torch.manual_seed(0)
    t = torch.randint(5, (8,))
    t[2] = -100
    onehot = (t[:, None] == torch.arange(5)).float()
    teacher = 3 * torch.randn(8, 5)
    return {
        "focal": lambda z: focal_loss(z, t, gamma=2.0),
        "focal gamma 0.5, (N, C, d)": lambda z: focal_loss(
            z.view(4, 5, 2), t.view(4, 2), gamma=0.5, reduction="sum"),
        "sigmoid": lambda z: sigmoid_focal_loss(z, onehot, reduction="sum"),
        "kd": lambda z: kd_loss(z, teacher, temperature=2.0),
        "kd reverse": lambda z: kd_loss(z, teacher, direction="reverse"),
    }


CASES = ["focal", "focal gamma 0.5, (N, C, d)", "sigmoid", "kd", "kd reverse"]


def _check(case: str, backend: str) -> None:
    fn = _cases()[case]
    z = (4 * torch.randn(8, 5)).requires_grad_()
    got = torch.compile(fn, fullgraph=True, backend=backend)(z)
    (g_got,) = torch.autograd.grad(got, z)
    want = fn(z)
    (g_want,) = torch.autograd.grad(want, z)
    assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert_close(g_got, g_want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("case", CASES)
def test_losses_trace_fullgraph(case: str):
    _check(case, "eager")


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_losses_compile_fullgraph_inductor(case: str):
    _check(case, "inductor")
