"""Dilated attention (``dilated_attention``) vs dense causal SDPA, fp32, CPU.

The issue's shape: B=1, 4 heads, D=64, causal, segment lengths [1024, 2048, 4096, 8192]
with dilation rates [1, 2, 4, 8]; N = 16k tokens (quick) and 16k + 32k (full), forward
under ``torch.inference_mode`` and forward + backward. The peer is
``torch.nn.functional.scaled_dot_product_attention(is_causal=True)`` -- dense causal
attention, quadratic in N -- timed interleaved with ours. Each length runs with torch's
default thread count and with one thread (on a machine shared with other processes,
two threads spend much of their time waiting on each other at the many small parallel
regions of a dilated call; one thread measures the work).

fkodom's ``dilated-attention-pytorch`` is benchmarked when importable. Its 0.2.0 wheel
pins ``xformers<0.0.22`` (built for torch 2.0) and imports it at module load, so it
cannot run beside this torch; the result notes say so when it is missing.

Machine limit: the attention FLOPs a kernel that skips masked pairs must do
(``dilated_attention_flops``) per second, against fp32 matmul FLOP/s measured in the
same run. ``extra`` holds the linear-cost check: time(2N) / time(N) for ours.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

from benchmarks.harness import BenchResult, Case, machine_limits, time_interleaved
from blocklab.attention.dilated import dilated_attention, dilated_attention_flops

NAME = "dilated"

SEGMENTS = (1024, 2048, 4096, 8192)
RATES = (1, 2, 4, 8)
SHAPES = dict(batch=1, heads=4, head_dim=64, lengths=(16384, 32768))
QUICK_SHAPES = dict(batch=1, heads=4, head_dim=64, lengths=(16384,))
PEER_PACKAGE = "dilated_attention_pytorch"
LIMIT_NOTE = ("attention FLOPs of the (query, key) pairs seen / s vs fp32 matmul FLOP/s "
              "measured with {} threads (one-thread cases can reach about 1 / threads of it)")


def _fkodom(q, k, v):
    """fkodom's DilatedAttention on (B, N, H, D); None when the package is missing."""
    from dilated_attention_pytorch.dilated_attention import DilatedAttention

    attn = DilatedAttention(list(SEGMENTS), list(RATES))
    return lambda: attn(q, k, v, is_causal=True)


def _threads(n: int | None):
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    return before


def run(quick: bool = False) -> BenchResult:
    shapes = QUICK_SHAPES if quick else SHAPES
    repeats = 3 if quick else 5
    limits = machine_limits(copy_mib=64 if quick else 256, matmul_n=1024 if quick else 2048)
    g = torch.Generator().manual_seed(0)
    B, H, D = shapes["batch"], shapes["heads"], shapes["head_dim"]
    kw = dict(segment_lengths=SEGMENTS, dilation_rates=RATES, causal=True)
    have_peer = importlib.util.find_spec(PEER_PACKAGE) is not None
    cases: list[Case] = []
    default_threads = torch.get_num_threads()
    for n in shapes["lengths"]:
        q, k, v = (torch.randn(B, H, n, D, generator=g) for _ in range(3))
        ours_flops = dilated_attention_flops(n, n_heads=H, head_dim=D, batch=B, **kw)
        dense_flops = dilated_attention_flops(n, segment_lengths=[n], dilation_rates=[1],
                                              n_heads=H, head_dim=D, batch=B, causal=True)
        # Same inputs, same answer at rate 1 over one segment: a cheap sanity check.
        small = [x[:, :, :512] for x in (q, k, v)]
        torch.testing.assert_close(
            dilated_attention(*small, segment_lengths=[512], dilation_rates=[1], causal=True),
            F.scaled_dot_product_attention(*small, is_causal=True), atol=1e-5, rtol=1e-4)
        for threads in (None, 1):
            label = f"{default_threads}t" if threads is None else "1t"
            before = _threads(threads)
            try:
                with torch.inference_mode():
                    fns = {
                        "ours": lambda q=q, k=k, v=v: dilated_attention(q, k, v, **kw),
                        "dense": lambda q=q, k=k, v=v: F.scaled_dot_product_attention(
                            q, k, v, is_causal=True),
                    }
                    t = time_interleaved(fns, warmup=1, repeats=repeats)
                gflops = ours_flops / t["ours"].median_s / 1e9
                cases.append(Case(
                    name=f"fwd N={n} {label} vs dense SDPA", ours=t["ours"], peer=t["dense"],
                    work=B * n, limit_frac=gflops / limits.matmul_gflops,
                    limit_note=LIMIT_NOTE.format(limits.threads),
                    extra=dict(ours_gflops=gflops, flops_ours=ours_flops,
                               flops_dense=dense_flops, threads=torch.get_num_threads()),
                ))
                if have_peer and n % max(SEGMENTS) == 0:
                    qb, kb, vb = (x.transpose(1, 2).contiguous() for x in (q, k, v))
                    with torch.inference_mode():
                        t = time_interleaved({"ours": fns["ours"], "peer": _fkodom(qb, kb, vb)},
                                             warmup=1, repeats=repeats)
                    cases.append(Case(name=f"fwd N={n} {label} vs fkodom", ours=t["ours"],
                                      peer=t["peer"], work=B * n))

                qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))

                def train_ours(q=qg, k=kg, v=vg):
                    dilated_attention(q, k, v, **kw).sum().backward()

                def train_dense(q=qg, k=kg, v=vg):
                    F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()

                t = time_interleaved({"ours": train_ours, "dense": train_dense}, warmup=1,
                                     repeats=max(2, repeats - 2))
                gflops = 3 * ours_flops / t["ours"].median_s / 1e9  # backward ~ 2x forward
                cases.append(Case(
                    name=f"fwd+bwd N={n} {label} vs dense SDPA", ours=t["ours"],
                    peer=t["dense"], work=B * n, limit_frac=gflops / limits.matmul_gflops,
                    limit_note=LIMIT_NOTE.format(limits.threads),
                    extra=dict(ours_gflops=gflops, threads=torch.get_num_threads()),
                ))
            finally:
                torch.set_num_threads(before)
    notes = [
        "ours is LongNet's dilated attention (patterns mixed by softmax denominators); the "
        "peer is dense causal attention: ratio > 1 means dilated is faster",
        "a rate-1, one-segment call was checked equal to SDPA before timing",
    ]
    lengths = shapes["lengths"]
    if len(lengths) > 1:
        # Linear cost: ours at every length, one thread, interleaved (the machine's load
        # drifts between the per-length cases above).
        before = _threads(1)
        try:
            inputs = {n: [torch.randn(B, H, n, D, generator=g) for _ in range(3)] for n in lengths}
            with torch.inference_mode():
                t = time_interleaved(
                    {n: (lambda x=x: dilated_attention(*x, **kw)) for n, x in inputs.items()},
                    warmup=1, repeats=repeats + 2)
        finally:
            torch.set_num_threads(before)
        for a, b in zip(lengths, lengths[1:], strict=False):
            growth = t[b].median_s / t[a].median_s
            notes.append(f"linear cost: time({b}) / time({a}) = {growth:.2f} for length "
                         f"x{b / a:g} (one thread, interleaved, medians of {t[a].n})")
            cases[-1].extra[f"growth_{a}_to_{b}"] = growth
    if not have_peer:
        notes.append(
            "dilated-attention-pytorch (fkodom) not benchmarked: its wheel needs "
            "xformers<0.0.22, built for torch 2.0, and cannot be installed beside this torch"
        )
    return BenchResult(
        name=NAME,
        peer="torch SDPA dense causal" + (" and dilated-attention-pytorch" if have_peer else ""),
        dtype="float32",
        shapes=dict(shapes, lengths=list(lengths), segment_lengths=list(SEGMENTS),
                    dilation_rates=list(RATES), causal=True),
        cases=cases,
        limits=limits,
        notes=notes,
    )


if __name__ == "__main__":
    from benchmarks.harness import print_result

    print_result(run())
