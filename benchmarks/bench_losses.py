"""Losses: ``focal_loss`` vs the textbook focal loss and vs ``F.cross_entropy``, forward + backward.

The textbook form (as in torchvision's sigmoid version and most softmax ports)
is ``ce * (1 - exp(-ce)) ** gamma`` after ``F.cross_entropy``: NaN in the backward
pass at saturated logits for 0 < gamma < 1, and 0 instead of the true tiny loss
where p_t rounds to 1. blocklab's ``focal_loss`` (hard targets) is one fused
autograd function over blocks of rows, ``log(1 - p_t)`` from the other classes'
sum (no cancellation) and its gradient written out: three passes over the logits
forward, two backward. ``F.cross_entropy`` (gamma = 0) is the reference floor.
``sigmoid_focal_loss`` (0/1 targets, also fused) is set against torchvision's formula.

Machine limit: the least memory traffic of a fused forward + backward reads the
logits twice and writes their gradient once, ``3 * N * C * 4`` bytes (fp32), set
against the copy bandwidth measured in the same run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmarks.harness import BenchResult, Case, machine_limits, time_interleaved
from blocklab.losses import focal_loss, sigmoid_focal_loss

NAME = "losses"

# (N, C): classification, LM-sized byte vocabulary over B*T tokens, dense detection.
SHAPES = {"cls": (16384, 10), "lm": (16384, 256), "lm-32k": (4096, 32000)}
QUICK_SHAPES = {"cls": (4096, 10), "lm": (4096, 256)}
GAMMA = 2.0


def textbook_focal(logits: torch.Tensor, target: torch.Tensor, gamma: float) -> torch.Tensor:
    """``-(1 - p_t)^gamma log p_t`` the usual way: from the per-example cross entropy."""
    ce = F.cross_entropy(logits, target, reduction="none")
    return (ce * (1 - torch.exp(-ce)) ** gamma).mean()


def torchvision_sigmoid_focal(x: torch.Tensor, t: torch.Tensor, gamma: float,
                              alpha: float = 0.25) -> torch.Tensor:
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t) ** gamma
    return ((alpha * t + (1 - alpha) * (1 - t)) * loss).sum()


def _fwd_bwd(fn, x: torch.Tensor):
    def call() -> None:
        x.grad = None
        fn(x).backward()
    return call


def run(quick: bool = False) -> BenchResult:
    shapes = QUICK_SHAPES if quick else SHAPES
    repeats = 5 if quick else 15
    limits = machine_limits(copy_mib=64 if quick else 256, matmul_n=1024 if quick else 2048)
    g = torch.Generator().manual_seed(0)
    cases: list[Case] = []
    note = "3 x N x C x 4 bytes (read logits twice, write grad once) vs copy bandwidth"
    for name, (n, c) in shapes.items():
        logits = (3 * torch.randn(n, c, generator=g)).requires_grad_()
        target = torch.randint(c, (n,), generator=g)
        fns = {
            "ours": _fwd_bwd(lambda z, t=target: focal_loss(z, t, gamma=GAMMA), logits),
            "textbook": _fwd_bwd(lambda z, t=target: textbook_focal(z, t, GAMMA), logits),
            "cross_entropy": _fwd_bwd(lambda z, t=target: F.cross_entropy(z, t), logits),
        }
        t = time_interleaved(fns, warmup=2, repeats=repeats)
        gbps = 3 * n * c * 4 / t["ours"].median_s / 1e9
        for peer in ("textbook", "cross_entropy"):
            cases.append(Case(
                name=f"{name} N={n} C={c} vs {peer}", ours=t["ours"], peer=t[peer], work=n,
                unit="examples/s", limit_frac=gbps / limits.copy_gbps, limit_note=note,
                extra=dict(effective_gbps=gbps),
            ))

    # Sigmoid form: dense detection-like, many logits per example, 1% positives.
    n = 2**18 if quick else 2**21
    x = (4 * torch.randn(n, generator=g)).requires_grad_()
    t_pos = (torch.rand(n, generator=g) < 0.01).float()
    fns = {
        "ours": _fwd_bwd(lambda z: sigmoid_focal_loss(z, t_pos, gamma=GAMMA, reduction="sum"), x),
        "torchvision": _fwd_bwd(lambda z: torchvision_sigmoid_focal(z, t_pos, GAMMA), x),
    }
    t = time_interleaved(fns, warmup=2, repeats=repeats)
    gbps = 3 * n * 4 / t["ours"].median_s / 1e9
    cases.append(Case(name=f"sigmoid N={n} vs torchvision formula", ours=t["ours"],
                      peer=t["torchvision"], work=n, unit="logits/s",
                      limit_frac=gbps / limits.copy_gbps, limit_note=note,
                      extra=dict(effective_gbps=gbps)))
    return BenchResult(
        name=NAME,
        peer="textbook focal loss (ce * (1 - exp(-ce))**gamma), F.cross_entropy, "
             "torchvision's sigmoid_focal_loss formula",
        dtype="float32",
        shapes=dict(softmax={k: list(v) for k, v in shapes.items()}, sigmoid_n=n, gamma=GAMMA),
        cases=cases,
        limits=limits,
        notes=[
            "forward + backward of a mean (softmax) or sum (sigmoid) loss, fp32",
            "ratio > 1: ours is faster; the textbook form has NaN gradients at saturated "
            "logits for 0 < gamma < 1, ours does not",
        ],
    )


if __name__ == "__main__":
    from benchmarks.harness import print_result

    print_result(run())
