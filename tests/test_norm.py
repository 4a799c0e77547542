import pytest
import torch
import torch.nn.functional as F

from blocklab.norm import LayerNorm, RMSNorm, make_norm
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


# ------------------------------------------------------- bad input at the boundary (#13)

@pytest.mark.parametrize("cls", [RMSNorm, LayerNorm])
@pytest.mark.parametrize(("eps", "error"), [(0.0, ValueError), (-1.0, ValueError),
                                            (float("nan"), ValueError), ("1e-5", TypeError)])
def test_eps_must_be_finite_and_positive(cls, eps, error):
    with pytest.raises(error, match="eps"):
        cls(8, eps=eps)


@pytest.mark.parametrize("cls", [RMSNorm, LayerNorm])
def test_integer_input_and_wrong_width_are_refused(cls):
    with pytest.raises(TypeError, match="x must be a floating-point tensor, got torch.int64"):
        cls(4)(torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"x must be \(..., C=4\), got shape \(2, 5\)"):
        cls(4)(torch.ones(2, 5))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_output_dtype_is_the_input_dtype_with_fp32_weights(dtype):
    x = torch.randn(3, 8).to(dtype)
    for norm in (RMSNorm(8), LayerNorm(8)):
        out = norm(x)
        assert out.dtype == dtype
        ref = F.layer_norm(x.double(), (8,)) if isinstance(norm, LayerNorm) else \
            x.double() * torch.rsqrt(x.double().pow(2).mean(-1, keepdim=True) + norm.eps)
        assert_close(out, ref)
