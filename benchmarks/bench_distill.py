"""Distillation loss: ``kd_loss`` vs the textbook ``F.kl_div`` forms, forward + backward.

``blocklab.losses.kd_loss(s, t, temperature=T)`` is ``T^2 * KL(softmax(t/T) ||
softmax(s/T))`` summed over classes and averaged over rows (its default: the mean
over positions, which for (N, C) logits is ``kl_div``'s "batchmean"). Peers, the
forms everyone writes, same quantity:

* textbook: ``F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1),
  reduction="batchmean") * T * T``;
* log-target: the same with ``F.log_softmax(t / T, -1)`` and ``log_target=True``.

Cases: forward + backward w.r.t. the student logits (the teacher's are a plain
tensor, no gradient), fp32, T = 2, (N, C) = (16384, 10) classification,
(8192, 256) byte-vocabulary LM and (2048, 32000) LM vocabulary (quick: (4096, 10),
(2048, 256)). Losses and student gradients are checked against the textbook
peer's before timing. Rate = rows per second.

Machine limit: memory bound. The least traffic of a fused forward + backward reads
the student and teacher logits once and writes the gradient once,
``3 * N * C * 4`` bytes (fp32), set against the copy bandwidth measured in the same run.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from benchmarks.harness import BenchResult, Case, machine_limits, time_interleaved
from blocklab.losses import kd_loss

NAME = "distill"

# (N, C): classification, byte-vocabulary LM over B*T tokens, LLaMA-sized vocabulary.
SHAPES = {"cls": (16384, 10), "lm": (8192, 256), "lm-32k": (2048, 32000)}
QUICK_SHAPES = {"cls": (4096, 10), "lm": (2048, 256)}
TEMPERATURE = 2.0


def textbook_kd(s: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's KD term as usually written: soft targets as probabilities."""
    return F.kl_div(F.log_softmax(s / temperature, -1), F.softmax(t / temperature, -1),
                    reduction="batchmean") * temperature * temperature


def log_target_kd(s: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
    """The same with the teacher as log-probabilities (``log_target=True``)."""
    return F.kl_div(F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1),
                    reduction="batchmean", log_target=True) * temperature * temperature


def _fwd_bwd(fn: Callable[[torch.Tensor], torch.Tensor], s: torch.Tensor) -> Callable[[], None]:
    def call() -> None:
        s.grad = None
        fn(s).backward()

    return call


def _loss_and_grad(fn: Callable[[torch.Tensor], torch.Tensor], s: torch.Tensor):
    s.grad = None
    loss = fn(s)
    loss.backward()
    grad, s.grad = s.grad, None
    return loss.detach(), grad


def run(quick: bool = False) -> BenchResult:
    shapes = QUICK_SHAPES if quick else SHAPES
    repeats = 3 if quick else 9
    limits = machine_limits(copy_mib=64 if quick else 256, matmul_n=1024 if quick else 2048)
    g = torch.Generator().manual_seed(0)
    T = TEMPERATURE
    note = ("3 x N x C x 4 bytes (read student and teacher logits, write grad once) "
            "vs copy bandwidth")
    cases: list[Case] = []
    for name, (n, c) in shapes.items():
        student = (3 * torch.randn(n, c, generator=g)).requires_grad_()
        teacher = 3 * torch.randn(n, c, generator=g)
        fns = {
            "ours": lambda z, t=teacher: kd_loss(z, t, temperature=T),
            "textbook": lambda z, t=teacher: textbook_kd(z, t, T),
            "log_target": lambda z, t=teacher: log_target_kd(z, t, T),
        }
        # Same loss and student gradient before timing (fp32 defaults of assert_close).
        want = _loss_and_grad(fns["textbook"], student)
        for peer in ("ours", "log_target"):
            got = _loss_and_grad(fns[peer], student)
            for what, a, b in zip(("loss", "grad"), got, want, strict=True):
                try:
                    torch.testing.assert_close(a, b)
                except AssertionError as e:
                    raise AssertionError(
                        f"{name} N={n} C={c}: {peer} {what} differs from the textbook's\n{e}"
                    ) from None

        # The 32k-vocabulary case takes seconds per call: fewer rounds keep the run short.
        reps = min(repeats, 3) if n * c >= 2**25 else repeats
        t = time_interleaved({k: _fwd_bwd(f, student) for k, f in fns.items()},
                             warmup=1, repeats=reps)
        gbps = 3 * n * c * 4 / t["ours"].median_s / 1e9
        for peer in ("textbook", "log_target"):
            cases.append(Case(
                name=f"{name} N={n} C={c} vs {peer}", ours=t["ours"], peer=t[peer], work=n,
                unit="rows/s", limit_frac=gbps / limits.copy_gbps, limit_note=note,
                extra=dict(effective_gbps=gbps, repeats=reps),
            ))
    return BenchResult(
        name=NAME,
        peer='F.kl_div(log_softmax(s/T), softmax(t/T), "batchmean") * T^2, '
             "and the same with log_target=True",
        dtype="float32",
        shapes=dict(logits={k: list(v) for k, v in shapes.items()}, temperature=T),
        cases=cases,
        limits=limits,
        notes=[
            "forward + backward w.r.t. the student logits; the teacher's need no gradient",
            "kd_loss averages over rows like kl_div's 'batchmean'; losses and gradients "
            "checked (torch.testing.assert_close, fp32 defaults) before timing",
            f"torch threads: {torch.get_num_threads()}",
            "every contestant is a chain of whole-tensor ops; a large fresh temporary (8 MiB "
            "at (8192, 256), 250 MiB at (2048, 32000)) is page-faulted in anew on each call "
            "(glibc hands large blocks back to the OS when freed), so time follows the number "
            "of full-size temporaries; (2048, 32000) is timed over 3 rounds (seconds a call)",
        ],
    )


if __name__ == "__main__":
    from benchmarks.harness import print_result

    print_result(run())
