import pytest
import torch
import torch.nn.functional as F

from blocklab.losses.linear_ce import linear_cross_entropy
from tests.conftest import assert_close


@pytest.mark.parametrize("chunk_size", [1, 8, 1000])
def test_matches_cross_entropy_of_full_logits_fp64(chunk_size):
    h = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 50, (37,))
    y[3] = -100
    loss = linear_cross_entropy(h, w, y, chunk_size=chunk_size)
    (loss * 3).backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    ref = F.cross_entropy(h @ w.T, y)
    (ref * 3).backward()
    assert_close(loss.detach(), ref.detach())
    assert_close(gh, h.grad)
    assert_close(gw, w.grad)


def test_no_grad_path_and_all_ignored():
    h, w = torch.randn(5, 4), torch.randn(7, 4)
    y = torch.randint(0, 7, (5,))
    with torch.no_grad():
        assert_close(linear_cross_entropy(h, w, y, chunk_size=2), F.cross_entropy(h @ w.T, y))
    assert torch.isnan(linear_cross_entropy(h, w, torch.full((5,), -100)))


def test_bad_shapes():
    with pytest.raises(ValueError, match=r"hidden width \(4\) must equal"):
        linear_cross_entropy(torch.randn(3, 4), torch.randn(5, 6), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="target has 2 entries"):
        linear_cross_entropy(torch.randn(3, 4), torch.randn(5, 4), torch.zeros(2, dtype=torch.long))
