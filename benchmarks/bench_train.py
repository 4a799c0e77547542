"""Training step: TransformerLM vs Hugging Face ``LlamaForCausalLM``, same weights.

One step = forward, next-token cross-entropy (the same ``F.cross_entropy`` on both
models' logits), backward, ``torch.optim.AdamW`` step with its defaults. Rate =
tokens (batch x sequence) per second, fp32.

Machine limit: the step's FLOPs, counted once with
``torch.utils.flop_counter.FlopCounterMode`` (matmuls and attention, forward and
backward; the optimizer's elementwise work is not counted), divided by the step
time and set against the fp32 matmul FLOP/s measured in the same run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.bench_generate import QUICK_SHAPES, SHAPES, make_models
from benchmarks.harness import BenchResult, Case, machine_limits, time_interleaved

NAME = "train"



def make_step(model: torch.nn.Module, input_ids: torch.Tensor, targets: torch.Tensor, loss_of):
    """A closure running one optimizer step of ``model`` on a fixed batch;
    ``loss_of(input_ids, targets)`` is each library's idiomatic training loss."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = loss_of(input_ids, targets)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def count_flops(step) -> int:
    """FLOPs of one call of ``step`` as torch's flop counter sees them."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def run(quick: bool = False) -> BenchResult:
    shapes = QUICK_SHAPES if quick else SHAPES
    batch, seq = (2, 64) if quick else (8, 256)
    repeats = 3 if quick else 5
    limits = machine_limits(copy_mib=64 if quick else 256, matmul_n=1024 if quick else 2048)
    ours, peer = make_models(shapes)
    # A random sequence and its shift by one: next-token targets.
    tokens = torch.randint(0, shapes["vocab_size"], (batch, seq + 1))
    input_ids, targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()

    # Same weights, same batch: the first losses must agree before anything is timed.
    with torch.no_grad():
        a = F.cross_entropy(ours(input_ids).flatten(0, 1), targets.flatten())
        b = F.cross_entropy(peer(input_ids).logits.flatten(0, 1), targets.flatten())
    if not torch.allclose(a, b, rtol=1e-4, atol=1e-5):
        raise AssertionError(f"losses differ before training: ours {a.item()}, peer {b.item()}")

    # Ours: the LM head fused with the loss (forward(..., targets=)); the peer: logits,
    # then cross entropy, as Hugging Face's own loss does.
    step_ours = make_step(ours, input_ids, targets, lambda x, y: ours(x, targets=y))
    step_peer = make_step(
        peer, input_ids, targets,
        lambda x, y: F.cross_entropy(peer(x).logits.flatten(0, 1), y.flatten()),
    )
    flops = count_flops(step_ours)
    flops_peer = count_flops(step_peer)
    t = time_interleaved({"ours": step_ours, "peer": step_peer}, warmup=1, repeats=repeats)
    achieved = flops / t["ours"].median_s / 1e9  # GFLOP/s
    n_params = ours.num_parameters()
    case = Case(
        name=f"b{batch} seq{seq} fwd+bwd+adamw",
        ours=t["ours"],
        peer=t["peer"],
        work=batch * seq,
        unit="tok/s",
        limit_frac=achieved / limits.matmul_gflops,
        limit_note="counted FLOPs per step (FlopCounterMode) / step time vs fp32 matmul FLOP/s",
        extra=dict(
            flops_per_step=flops,
            flops_per_step_peer=flops_peer,
            six_n_tokens=6 * (n_params - ours.embed.weight.numel()) * batch * seq,
            achieved_gflops=achieved,
        ),
    )
    return BenchResult(
        name=NAME,
        peer="transformers LlamaForCausalLM (forward + backward + AdamW)",
        dtype="float32",
        shapes=dict(shapes, batch=batch, seq_len=seq, params=n_params),
        cases=[case],
        limits=limits,
        notes=["losses checked equal to the peer's before timing"],
    )


if __name__ == "__main__":
    from benchmarks.harness import print_result

    print_result(run())
