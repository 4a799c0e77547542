import pytest
import torch

from blocklab.norm import RMSNorm, make_norm
from tests.conftest import assert_close


def test_rmsnorm_formula_and_dtype():
    norm = RMSNorm(8, eps=1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 8, dtype=torch.float64)
    expected = norm.weight.double() * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    assert_close(norm.double()(x), expected)
    assert RMSNorm(8).bfloat16()(torch.randn(2, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_rmsnorm_matches_hugging_face():
    pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    theirs = LlamaRMSNorm(16, eps=1e-5)
    ours = RMSNorm(16, eps=1e-5)
    with torch.no_grad():
        theirs.weight.uniform_(0.5, 1.5)
        ours.weight.copy_(theirs.weight)
    x = torch.randn(4, 16) * 3
    assert torch.equal(ours(x), theirs(x))


def test_unknown_norm():
    with pytest.raises(ValueError, match="norm .'batch'. must be"):
        make_norm("batch", 8, 1e-5)
