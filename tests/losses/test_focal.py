"""Focal loss, class weights and weighted cross entropy against fp64 oracles and peers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from blocklab.losses import (
    FocalLoss,
    SigmoidFocalLoss,
    class_weights,
    focal_loss,
    log1m_softmax,
    prior_bias,
    sigmoid_focal_loss,
    weighted_cross_entropy,
)
from tests.conftest import assert_close
from tests.reference.losses import (
    class_weights_reference,
    focal_loss_reference,
    sigmoid_focal_reference,
    torchvision_sigmoid_focal_loss,
    weighted_ce_reference,
)


@pytest.fixture(autouse=True)
def _one_thread():
    # Tensors here are tiny: a second intra-op thread only adds synchronisation.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


GAMMAS = (0.0, 0.25, 0.5, 1.0, 2.0, 5.0)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _data(n: int = 12, c: int = 5, *extra: int, scale: float = 3.0,
          dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    logits = (scale * torch.randn(n, c, *extra, dtype=torch.float64)).to(dtype)
    target = torch.randint(c, (n, *extra))
    return logits, target


# ------------------------------------------------------------------------ softmax focal

@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 5.0])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_focal_matches_fp64_oracle(gamma: float, reduction: str) -> None:
    logits, target = _data(10, 4, 3)  # (N, C, d1)
    target[0, 0] = target[3, 2] = -100
    alpha = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    for a in (None, 0.25, alpha):
        for eps in (0.0, 0.1):
            ours = focal_loss(logits, target, gamma=gamma, alpha=a, reduction=reduction,
                              label_smoothing=eps)
            ref = focal_loss_reference(logits, target, gamma=gamma, alpha=a,
                                       reduction=reduction, label_smoothing=eps)
            assert_close(ours, ref)


@pytest.mark.parametrize("shape", [(7, 5), (4, 6, 3), (2, 3, 4, 5)])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gamma_zero_is_cross_entropy(shape: tuple[int, ...], reduction: str,
                                     dtype: torch.dtype) -> None:
    logits = torch.randn(*shape, dtype=dtype)
    target = torch.randint(shape[1], (shape[0], *shape[2:]))
    target.view(-1)[::3] = -100  # ignore_index included
    for eps in (0.0, 0.2):
        ours = focal_loss(logits, target, gamma=0.0, reduction=reduction, label_smoothing=eps)
        theirs = F.cross_entropy(logits, target, reduction=reduction, label_smoothing=eps)
        assert ours.dtype == theirs.dtype
        assert_close(ours, theirs)
    # Another ignore_index value is honoured the same way.
    target[target == -100] = 3
    assert_close(focal_loss(logits, target, gamma=0.0, ignore_index=3, reduction=reduction),
                 F.cross_entropy(logits, target, ignore_index=3, reduction=reduction))


def test_gamma_zero_gradient_is_cross_entropy_gradient() -> None:
    logits, target = _data(9, 4)
    target[2] = -100
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    focal_loss(a, target, gamma=0.0).backward()
    F.cross_entropy(b, target).backward()
    assert_close(a.grad, b.grad)


def test_unbatched_logits() -> None:
    logits = torch.randn(6, dtype=torch.float64)
    target = torch.tensor(2)
    assert_close(focal_loss(logits, target, gamma=0.0), F.cross_entropy(logits, target))
    assert focal_loss(logits, target, reduction="none").shape == ()


def test_alpha_scales_per_class_and_mean_divides_by_count() -> None:
    logits, target = _data(20, 3)
    alpha = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    per = focal_loss(logits, target, gamma=2.0, reduction="none")
    weighted = focal_loss(logits, target, gamma=2.0, alpha=alpha, reduction="none")
    assert_close(weighted, per * alpha[target])
    assert_close(focal_loss(logits, target, gamma=2.0, alpha=alpha), weighted.mean())
    # A scalar alpha is a constant factor in the softmax form.
    assert_close(focal_loss(logits, target, gamma=2.0, alpha=0.25), 0.25 * per.mean())


def test_focusing_factor_is_one_minus_pt_to_the_gamma() -> None:
    logits, target = _data(16, 4)
    ce = F.cross_entropy(logits, target, reduction="none")
    p_t = torch.exp(-ce)
    for gamma in GAMMAS:
        assert_close(focal_loss(logits, target, gamma=gamma, reduction="none"),
                     (1 - p_t) ** gamma * ce)


def test_gradcheck_fp64() -> None:
    logits, target = _data(5, 4, scale=2.0)
    target[1] = -100
    alpha = torch.tensor([0.5, 1.0, 1.5, 2.0], dtype=torch.float64)
    for gamma in (0.0, 0.5, 2.0):
        x = logits.clone().requires_grad_()
        assert torch.autograd.gradcheck(
            lambda z, g=gamma: focal_loss(z, target, gamma=g, alpha=alpha, label_smoothing=0.1),
            (x,),
        )


def test_log1m_softmax_accurate_where_naive_fails() -> None:
    z = torch.tensor([[40.0, 0.0, -3.0], [0.1, 0.2, 0.3], [-5.0, 5.0, 0.0]], dtype=torch.float64)
    expected = torch.log(1 - torch.softmax(z.double(), -1))  # fine in fp64 except row 0
    expected[0, 0] = torch.logsumexp(z[0, 1:], 0) - torch.logsumexp(z[0], 0)
    assert_close(log1m_softmax(z), expected)
    z32 = z.float()
    assert torch.isinf(torch.log(1 - torch.softmax(z32, -1))[0, 0])  # the naive form breaks
    assert_close(log1m_softmax(z32), expected.float())


def test_hard_target_path_equals_all_class_path() -> None:
    """The target-only log(1 - p_t) agrees with log1m_softmax over every class."""
    logits = torch.cat([_data(20, 6)[0], 30 * torch.randn(20, 6, dtype=torch.float64)])
    target = torch.randint(6, (40,))
    target[:6] = logits[:6].argmax(-1)  # p_t >= 1/2 and p_t < 1/2 rows both present
    logp = torch.log_softmax(logits, -1)
    for gamma in (0.5, 2.0):
        expected = -(torch.exp(gamma * log1m_softmax(logits)) * logp).gather(1, target[:, None])
        assert_close(focal_loss(logits, target, gamma=gamma, reduction="none"), expected[:, 0])


def _focal_rows_fp64(z: torch.Tensor, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Differentiable fp64 focal loss per row for logits spanning < 700, with no
    cancellation: r = sum_{j != t} exp(z_j - z_t), log p_t = -log1p(r) and
    log(1 - p_t) = log r + log p_t."""
    r = (z - z.gather(1, t[:, None])).scatter(1, t[:, None], -math.inf).exp().sum(1)
    logp_t = -torch.log1p(r)
    return -torch.exp(gamma * (torch.log(r) + logp_t)) * logp_t


@pytest.mark.parametrize("gamma", [0.0, 0.25, 1.0, 2.0])
@pytest.mark.parametrize("block", [None, 1, 7])
def test_fused_hard_target_loss_and_gradient(gamma: float, block: int | None,
                                             monkeypatch) -> None:
    """The fused kernel (in blocks of rows, shrunk here to one and seven elements)
    against fp64 autograd, fp32 logits with 1 - p_t far below fp32's resolution."""
    if block is not None:
        import blocklab.losses.focal as focal_module

        monkeypatch.setattr(focal_module, "_FOCAL_BLOCK_PER_THREAD", block)
    torch.manual_seed(0)
    z = 4 * torch.randn(30, 6, dtype=torch.float64)
    t = torch.randint(6, (30,))
    z[:10].scatter_(1, t[:10, None], 40.0)  # p_t = 1 - 1e-17: saturated, right
    z[10:13, :] = 0.0
    z[10:13].scatter_(1, t[10:13, None], -40.0)  # certain and wrong
    z = z.float().double()  # the same values in both precisions
    g = torch.rand(30, dtype=torch.float64)
    ref_x = z.clone().requires_grad_()
    ref = _focal_rows_fp64(ref_x, t, gamma)
    (ref_grad,) = torch.autograd.grad(ref, ref_x, g)
    x = z.float().requires_grad_()
    ours = focal_loss(x, t, gamma=gamma, reduction="none")
    (grad,) = torch.autograd.grad(ours, x, g.float())
    assert_close(ours.double(), ref, rtol=1e-5, atol=1e-30)
    assert torch.isfinite(grad).all()
    assert_close(grad.double(), ref_grad, rtol=1e-4, atol=1e-6)


def test_fused_hard_target_gradcheck_fp64() -> None:
    logits, target = _data(6, 4, 3, scale=2.0)  # (N, C, d1): rows are (N * d1, C)
    target[1, 0] = -100
    alpha = torch.tensor([0.5, 1.0, 1.5, 2.0], dtype=torch.float64)
    for gamma in (0.0, 0.5, 2.0):
        x = logits.clone().requires_grad_()
        assert torch.autograd.gradcheck(
            lambda z, g=gamma: focal_loss(z, target, gamma=g, alpha=alpha, reduction="sum"),
            (x,),
        )


def test_fused_loss_backward_twice_and_without_grad() -> None:
    """The kept exp(z - max) becomes the first gradient; a retained graph's second
    backward recomputes it, no_grad keeps nothing, and double backward is refused."""
    z, t = _data(8, 5, dtype=torch.float32)
    x = z.clone().requires_grad_()
    loss = focal_loss(x, t, gamma=2.0)
    (g1,) = torch.autograd.grad(loss, x, retain_graph=True)
    (g2,) = torch.autograd.grad(loss, x)
    assert torch.equal(g1, g2)
    with torch.no_grad():
        assert torch.equal(focal_loss(x, t, gamma=2.0), loss.detach())
    with pytest.raises(RuntimeError, match="differentiate|does not require grad"):
        (g,) = torch.autograd.grad(focal_loss(x, t, gamma=2.0), x, create_graph=True)
        g.sum().backward()


def test_masked_classes_and_a_masked_target() -> None:
    """-inf logits (a masked vocabulary) are classes of probability 0; a target whose
    logit is -inf has loss inf, as in F.cross_entropy, and a finite gradient."""
    z = torch.randn(3, 4, dtype=torch.float64)
    z[0, 2] = z[1, 1] = -math.inf
    t = torch.tensor([1, 1, 3])
    for gamma in (0.0, 0.5, 2.0):
        x = z.clone().requires_grad_()
        loss = focal_loss(x, t, gamma=gamma, reduction="none")
        loss.sum().backward()
        ref = focal_loss_reference(z[[0, 2]], t[[0, 2]], gamma=gamma, reduction="none")
        assert_close(loss[[0, 2]], ref)
        assert loss[1] == math.inf and torch.isfinite(x.grad).all()
        assert x.grad[0, 2] == 0
        if gamma == 0:
            y = z.clone().requires_grad_()
            F.cross_entropy(y, t, reduction="sum").backward()
            assert_close(x.grad, y.grad)


def test_all_ignored_gives_zero_not_nan() -> None:
    logits = torch.randn(4, 3, requires_grad=True)
    target = torch.full((4,), -100)
    loss = focal_loss(logits, target)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_single_class() -> None:
    logits = torch.randn(3, 1, requires_grad=True)
    target = torch.zeros(3, dtype=torch.long)
    for gamma in (0.0, 0.5, 2.0):
        loss = focal_loss(logits, target, gamma=gamma)
        loss.backward()
        assert loss.item() == 0.0 and torch.isfinite(logits.grad).all()


# -------------------------------------------------------------------------- finiteness

def _extreme_softmax(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.tensor([[1e4, -1e4, 0.0],  # right and certain
                           [-1e4, 1e4, -1e4],  # wrong and certain
                           [1e4, 1e4, -1e4],  # a tie at the top
                           [0.0, 0.0, 1e4]], dtype=dtype)
    return logits, torch.tensor([0, 0, 1, 2])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gamma", GAMMAS)
def test_focal_finite_at_extreme_logits(dtype: torch.dtype, gamma: float) -> None:
    logits, target = _extreme_softmax(dtype)
    x = logits.clone().requires_grad_()
    loss = focal_loss(x, target, gamma=gamma, alpha=torch.tensor([0.25, 0.5, 1.0]))
    loss.backward()
    assert loss.dtype == torch.promote_types(dtype, torch.float32)  # reduced: at least fp32
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    ref = focal_loss_reference(logits, target, gamma=gamma,
                               alpha=torch.tensor([0.25, 0.5, 1.0]))
    assert_close(loss.double(), ref, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gamma", GAMMAS)
def test_sigmoid_focal_finite_at_extreme_logits(dtype: torch.dtype, gamma: float) -> None:
    logits = torch.tensor([1e4, -1e4, 1e4, -1e4, 0.0], dtype=dtype)
    targets = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0], dtype=dtype)
    x = logits.clone().requires_grad_()
    loss = sigmoid_focal_loss(x, targets, gamma=gamma, reduction="sum")
    loss.backward()
    assert loss.dtype == torch.promote_types(dtype, torch.float32)  # reduced: at least fp32
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    ref = sum(sigmoid_focal_reference(float(a), float(b), gamma=gamma, alpha=0.25)
              for a, b in zip(logits.double(), targets.double(), strict=True))
    assert_close(loss.double(), torch.tensor(ref, dtype=torch.float64), dtype=dtype)


def test_sigmoid_focal_infinite_logits_give_finite_gradients() -> None:
    x = torch.tensor([math.inf, -math.inf, math.inf, -math.inf], requires_grad=True)
    t = torch.tensor([1.0, 0.0, 0.0, 1.0])  # right and certain, then wrong and certain
    for gamma in (0.0, 0.5, 2.0):
        x.grad = None
        loss = sigmoid_focal_loss(x, t, gamma=gamma, alpha=-1)
        loss.sum().backward()
        assert loss[:2].tolist() == [0.0, 0.0] and loss[2:].tolist() == [math.inf] * 2
        assert x.grad.tolist() == [0.0, 0.0, 1.0, -1.0]


def test_textbook_formula_has_the_nan_trap() -> None:
    """The reason for the log-space factor: torchvision's pow gives a NaN gradient."""
    x = torch.tensor([1e4, -1e4], requires_grad=True)
    t = torch.tensor([1.0, 0.0])
    torchvision_sigmoid_focal_loss(x, t, gamma=0.5, reduction="sum").backward()
    assert torch.isnan(x.grad).any()
    y = x.detach().clone().requires_grad_()
    sigmoid_focal_loss(y, t, gamma=0.5, reduction="sum").backward()
    assert torch.isfinite(y.grad).all()


# ----------------------------------------------------------------------- sigmoid focal

@pytest.mark.parametrize("alpha", [0.25, 0.5, -1.0])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_sigmoid_matches_torchvision_formula(alpha: float, gamma: float, reduction: str) -> None:
    logits = 4 * torch.randn(6, 7, dtype=torch.float64)
    hard = (torch.rand(6, 7) < 0.3).double()
    soft = torch.rand(6, 7, dtype=torch.float64)
    for targets in (hard, soft):
        ours = sigmoid_focal_loss(logits, targets, gamma=gamma, alpha=alpha, reduction=reduction)
        theirs = torchvision_sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma,
                                                reduction=reduction)
        assert_close(ours, theirs)
        # The same in fp32 (where the textbook form is still fine at moderate logits).
        assert_close(sigmoid_focal_loss(logits.float(), targets.float(), gamma=gamma,
                                        alpha=alpha, reduction=reduction),
                     theirs.float())


def test_sigmoid_gradient_matches_torchvision_formula() -> None:
    logits = 3 * torch.randn(5, 4, dtype=torch.float64)
    targets = (torch.rand(5, 4) < 0.5).double()
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    sigmoid_focal_loss(a, targets, reduction="sum").backward()
    torchvision_sigmoid_focal_loss(b, targets, reduction="sum").backward()
    assert_close(a.grad, b.grad)
    for gamma in (0.0, 0.5, 2.0):  # 0/1 targets take the fused path, soft ones do not
        for t in (targets, targets.clamp(0.1, 0.8)):
            assert torch.autograd.gradcheck(
                lambda z, g=gamma, t=t: sigmoid_focal_loss(z, t, gamma=g, reduction="sum"),
                (logits.clone().requires_grad_(),))


def test_sigmoid_positives_normaliser() -> None:
    logits = torch.randn(3, 10, 4)
    targets = torch.zeros(3, 10, 4)
    targets[0, 1, 2] = targets[1, 5, 0] = targets[2, 9, 3] = 1.0
    total = sigmoid_focal_loss(logits, targets, reduction="sum")
    assert_close(sigmoid_focal_loss(logits, targets, reduction="positives"), total / 3)
    module = SigmoidFocalLoss()  # RetinaNet's defaults: gamma 2, alpha 0.25, / positives
    assert_close(module(logits, targets), total / 3)
    # No positive at all: divide by 1, not 0.
    none = torch.zeros_like(targets)
    assert_close(sigmoid_focal_loss(logits, none, reduction="positives"),
                 sigmoid_focal_loss(logits, none, reduction="sum"))


def test_sigmoid_accepts_bool_targets() -> None:
    logits = torch.randn(8)
    targets = torch.rand(8) < 0.5
    assert_close(sigmoid_focal_loss(logits, targets),
                 sigmoid_focal_loss(logits, targets.float()))


def test_prior_bias() -> None:
    assert prior_bias(0.01) == pytest.approx(-math.log(99))
    assert torch.sigmoid(torch.tensor(prior_bias(0.01))).item() == pytest.approx(0.01)


# ------------------------------------------------------------------------------ module

def test_focal_module_matches_function_and_moves_alpha() -> None:
    logits, target = _data(8, 3, dtype=torch.float32)
    alpha = torch.tensor([0.2, 0.3, 0.5])
    module = FocalLoss(gamma=1.5, alpha=alpha, label_smoothing=0.05)
    assert "alpha_weights" in dict(module.named_buffers())
    assert_close(module(logits, target),
                 focal_loss(logits, target, gamma=1.5, alpha=alpha, label_smoothing=0.05))
    assert_close(FocalLoss(gamma=2.0, alpha=0.5)(logits, target),
                 focal_loss(logits, target, gamma=2.0, alpha=0.5))
    assert module.double().alpha_weights.dtype == torch.float64
    assert "gamma=1.5" in repr(module)


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"target": torch.zeros(4, 2, dtype=torch.long)}, ValueError, "target shape"),
        ({"target": torch.tensor([0, 1, 3, 1])}, ValueError, "class 3"),
        ({"target": torch.tensor([0, -1, 1, 1])}, ValueError, "class -1"),
        ({"target": torch.zeros(4)}, TypeError, "integer class indices"),
        ({"alpha": torch.ones(4)}, ValueError, r"shape \(3,\)"),
        ({"alpha": -0.5}, ValueError, "alpha"),
        ({"alpha": "0.25"}, TypeError, "alpha"),
        ({"gamma": -1.0}, ValueError, "gamma"),
        ({"gamma": float("nan")}, ValueError, "gamma"),
        ({"reduction": "avg"}, ValueError, "reduction"),
        ({"label_smoothing": 1.5}, ValueError, "label_smoothing"),
        ({"logits": torch.zeros(4, 3, dtype=torch.long)}, TypeError, "floating-point"),
    ],
)
def test_focal_bad_input(kwargs: dict, error: type, match: str) -> None:
    args = {"logits": torch.randn(4, 3), "target": torch.tensor([0, 1, 2, 1])}
    args.update(kwargs)
    logits, target = args.pop("logits"), args.pop("target")
    with pytest.raises(error, match=match):
        focal_loss(logits, target, **args)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"targets": torch.zeros(4, 2)}, ValueError, "targets shape"),
        ({"targets": torch.full((4, 3), 2.0)}, ValueError, r"\[0, 1\]"),
        ({"alpha": 1.5}, ValueError, "alpha"),
        ({"gamma": -0.1}, ValueError, "gamma"),
        ({"reduction": "batchmean"}, ValueError, "reduction"),
    ],
)
def test_sigmoid_focal_bad_input(kwargs: dict, error: type, match: str) -> None:
    args = {"targets": torch.zeros(4, 3)}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        sigmoid_focal_loss(torch.randn(4, 3), **args)


# ------------------------------------------------------------------------ class weights

@pytest.mark.parametrize("method", ["inverse", "inverse_sqrt", "effective_number"])
def test_class_weights_match_reference(method: str) -> None:
    counts = [5000, 800, 120, 9, 1]
    w = class_weights(counts, method)
    assert w.dtype == torch.float32
    assert w.sum().item() == pytest.approx(len(counts), rel=1e-6)
    assert_close(w.double(), torch.tensor(class_weights_reference(counts, method)),
                 dtype=torch.float32)
    assert (w.diff() > 0).all()  # rarer class, larger weight
    assert_close(class_weights([7, 7, 7], method), torch.ones(3))


def test_effective_number_interpolates_between_equal_and_inverse() -> None:
    counts = torch.tensor([1000, 100, 10])
    assert_close(class_weights(counts, "effective_number", beta=0.0), torch.ones(3))
    assert_close(class_weights(counts, "effective_number", beta=1 - 1e-9),
                 class_weights(counts, "inverse"), rtol=1e-5, atol=1e-5)
    # Cui et al.'s saturation: with beta = 0.9 a count of 1000 is worth no more than 100.
    w = class_weights(counts, "effective_number", beta=0.9)
    assert w[0].item() == pytest.approx(w[1].item(), rel=1e-4)


@pytest.mark.parametrize(
    ("counts", "kwargs", "match"),
    [
        ([10, 0, 3], {}, r"classes \[1\]"),
        ([10, -2], {}, "counts"),
        ([], {}, "non-empty"),
        ([[1, 2]], {}, "1-D"),
        ([1, 2], {"method": "log"}, "method"),
        ([1, 2], {"method": "effective_number", "beta": 1.0}, "beta"),
    ],
)
def test_class_weights_bad_input(counts: list, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        class_weights(counts, **kwargs)


# ---------------------------------------------------------------- weighted cross entropy

def test_weighted_ce_normalisations() -> None:
    logits, target = _data(30, 4, 2)
    target[0, 0] = -100
    w = torch.tensor([0.1, 1.0, 2.0, 0.9], dtype=torch.float64)
    ours = weighted_cross_entropy(logits, target, w)  # default: torch's rule
    assert_close(ours, F.cross_entropy(logits, target, weight=w))
    assert_close(ours, torch.tensor(weighted_ce_reference(logits, target, w), dtype=torch.float64))
    count = weighted_cross_entropy(logits, target, w, normalize="count")
    ref = weighted_ce_reference(logits, target, w, normalize="count")
    assert_close(count, torch.tensor(ref, dtype=torch.float64))
    assert_close(count, F.cross_entropy(logits, target, weight=w, reduction="sum")
                 / (target != -100).sum())
    # "count" equals focal loss with gamma 0 and the weights as alpha.
    assert_close(count, focal_loss(logits, target, gamma=0.0, alpha=w))
    assert_close(weighted_cross_entropy(logits, target, w, reduction="none"),
                 F.cross_entropy(logits, target, weight=w, reduction="none"))
    smooth = weighted_cross_entropy(logits, target, w, label_smoothing=0.1)
    assert_close(smooth, F.cross_entropy(logits, target, weight=w, label_smoothing=0.1))


def test_weighted_ce_half_precision_and_all_ignored() -> None:
    logits, target = _data(16, 3, dtype=torch.float16)
    w = class_weights([100, 10, 1])
    out = weighted_cross_entropy(logits, target, w)
    assert out.dtype == torch.float16
    assert_close(out, F.cross_entropy(logits.float(), target, weight=w).half())
    assert weighted_cross_entropy(logits, torch.full_like(target, -100), w).item() == 0.0


@pytest.mark.parametrize(
    ("weight", "kwargs", "error", "match"),
    [
        (torch.ones(4), {}, ValueError, r"shape \(3,\)"),
        ([1.0, 1.0, 1.0], {}, TypeError, "weight"),
        (torch.tensor([1.0, -1.0, 1.0]), {}, ValueError, ">= 0"),
        (torch.ones(3), {"normalize": "batch"}, ValueError, "normalize"),
        (torch.ones(3), {"reduction": "avg"}, ValueError, "reduction"),
    ],
)
def test_weighted_ce_bad_input(weight, kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        weighted_cross_entropy(torch.randn(5, 3), torch.tensor([0, 1, 2, 1, 0]), weight,
                               **kwargs)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_focal_cuda_matches_cpu() -> None:
    logits, target = _data(64, 10, 8, dtype=torch.float32)
    alpha = torch.rand(10)
    for dtype in DTYPES:
        x = logits.to(dtype)
        cpu = focal_loss(x, target, gamma=0.5, alpha=alpha)
        gpu = focal_loss(x.cuda(), target.cuda(), gamma=0.5, alpha=alpha.cuda())
        assert_close(gpu.cpu(), cpu)
    xs = logits.flatten().cuda() * 1e3
    ts = (torch.rand(xs.shape, device="cuda") < 0.1).float()
    for dtype in DTYPES:
        z = xs.to(dtype).requires_grad_()
        sigmoid_focal_loss(z, ts, gamma=0.25, reduction="positives").backward()
        assert torch.isfinite(z.grad).all()


# ------------------------------------------------------- half precision sums (#13)

@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_fp16_reduced_losses_do_not_overflow(reduction):
    logits = torch.tensor([[6e4, -6e4]] * 4, dtype=torch.float16)  # each loss 1.2e5 > 65504
    loss = focal_loss(logits, torch.ones(4, dtype=torch.long), gamma=0.0, reduction=reduction)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    per = float(logits[0].double().logsumexp(0) - logits[0, 1].double())
    assert_close(loss, torch.tensor(per * (4 if reduction == "sum" else 1)))
    x = torch.full((4,), -6e4, dtype=torch.float16)
    s = sigmoid_focal_loss(x, torch.ones(4), gamma=0.0, alpha=-1.0, reduction="sum")
    assert s.dtype == torch.float32 and float(s) == pytest.approx(4 * 6e4, rel=1e-3)
    # per-element losses keep the input dtype, as F.cross_entropy's do
    assert focal_loss(logits, torch.ones(4, dtype=torch.long), reduction="none").dtype == \
        torch.float16
