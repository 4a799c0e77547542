"""``blocklab.hf.patch``: a Hugging Face ``LlamaForCausalLM`` patched vs the same model
unpatched, in the same process, same weights.

Three cases, fp32:

* training step -- forward + backward of ``model(ids, labels=ids).loss`` (Hugging Face's
  shifted next-token loss), rate = tokens per second;
* loss -- the part the patch fuses: from the final hidden states to the loss and its
  gradients (``lm_head`` + ``loss_function`` vs ``blocklab.hf.causal_lm_loss``);
* greedy ``generate`` (batch 1), rate = new tokens per second; the tokens must be equal.

Peak memory, of the loss and of the whole training step: the largest amount of memory
allocated at once above what was allocated when the call began, from the allocation
and free events of ``torch.profiler(profile_memory=True)`` (on CUDA,
``torch.cuda.max_memory_allocated``). The loss's is also given analytically: Hugging
Face's keeps the (N, V) fp32 logits, their log-softmax, and in the backward their
gradient and the log-softmax's, about 4 N V 4 bytes; the fused one three chunk-sized
buffers (a chunk's logits and log-softmax, and the previous chunk's softmax, still
referenced when they are formed: 3 n V 4), the weight's fp32 gradient (V C 4) and the
hidden states' (N C 4). Targets (issue 14): the step at least 1.2x faster, the loss's peak memory at
least 40% lower.

Machine limit: the training step's FLOPs (``FlopCounterMode``) per second vs the fp32
matmul FLOP/s measured in the same run, as ``bench_train``; generation: weights + KV
bytes read per decode step vs the copy bandwidth, as ``bench_generate``.
"""

from __future__ import annotations

import copy

import torch

from benchmarks.bench_generate import SHAPES  # the Llama d 256 of the generate/train benchmarks
from benchmarks.bench_train import count_flops
from benchmarks.harness import BenchResult, Case, machine_limits, time_interleaved

NAME = "hf_patch"

QUICK_SHAPES = dict(SHAPES, num_hidden_layers=2, vocab_size=8192)
TARGET_SPEEDUP = 1.2
TARGET_LOSS_MEMORY_CUT = 0.40


def make_models(shapes: dict[str, int], seed: int = 0):
    """(patched, unpatched): a random-init Llama and a deep copy of it, patched."""
    import transformers

    import blocklab.hf

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(**shapes, max_position_embeddings=2048,
                                      eos_token_id=None, bos_token_id=None, pad_token_id=0)
    peer = transformers.LlamaForCausalLM(config).eval()
    peer.generation_config.eos_token_id = None  # no early stop: every step compared
    peer.generation_config.pad_token_id = 0
    ours = blocklab.hf.patch(copy.deepcopy(peer))
    return ours, peer


def peak_bytes(fn) -> int | None:
    """Most bytes allocated at once during ``fn()`` above the level when it began."""
    if torch.cuda.is_available() and torch.cuda.memory_allocated():
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    results = getattr(prof.profiler, "kineto_results", None)
    if results is None:  # a torch without the raw event list
        return None
    events = sorted(((e.start_ns(), e.nbytes()) for e in results.events()
                     if e.name() == "[memory]"), key=lambda t: (t[0], t[1]))  # frees first
    level = peak = 0
    for _, nbytes in events:
        level += nbytes
        peak = max(peak, level)
    return peak


def _mb(nbytes: float | None) -> str:
    return "n/a" if nbytes is None else f"{nbytes / 2**20:.0f} MiB"


def _check_close(what: str, a: torch.Tensor, b: torch.Tensor) -> None:
    if not torch.allclose(a, b, rtol=1e-4, atol=1e-5):
        raise AssertionError(f"{what} differs: patched {a.item()}, unpatched {b.item()}")


def run(quick: bool = False) -> BenchResult:
    import blocklab.hf

    shapes = QUICK_SHAPES if quick else SHAPES
    batch, seq = (2, 128) if quick else (2, 512)
    prompt_len, new_tokens = (16, 16) if quick else (32, 64)
    repeats = 3 if quick else 5
    limits = machine_limits(copy_mib=64 if quick else 256, matmul_n=1024 if quick else 2048)
    ours, peer = make_models(shapes)
    V, C = shapes["vocab_size"], shapes["hidden_size"]
    N = batch * seq
    ids = torch.randint(0, V, (batch, seq))

    # -- training step ----------------------------------------------------------------
    def step(model):
        def call() -> None:
            model.zero_grad(set_to_none=True)
            model(ids, labels=ids).loss.backward()
        return call

    ours.train()
    peer.train()
    with torch.no_grad():
        _check_close("training loss", ours(ids, labels=ids).loss, peer(ids, labels=ids).loss)
    flops = count_flops(step(ours))
    t = time_interleaved({"ours": step(ours), "peer": step(peer)}, warmup=1, repeats=repeats)
    step_mem = {}
    for name, model in (("ours", ours), ("peer", peer)):
        # No gradients left from timing: a free of memory allocated before profiling
        # began is not reported, and would count as still held.
        ours.zero_grad(set_to_none=True)
        peer.zero_grad(set_to_none=True)
        step_mem[name] = peak_bytes(step(model))
    ours.zero_grad(set_to_none=True)
    peer.zero_grad(set_to_none=True)
    achieved = flops / t["ours"].median_s / 1e9
    cases = [Case(
        name=f"train step b{batch} seq{seq} V{V} fwd+bwd",
        ours=t["ours"], peer=t["peer"], work=N, unit="tok/s",
        limit_frac=achieved / limits.matmul_gflops,
        limit_note="counted FLOPs per step (FlopCounterMode) / step time vs fp32 matmul FLOP/s",
        extra=dict(flops_per_step=flops, achieved_gflops=achieved,
                   peak_bytes_ours=step_mem["ours"], peak_bytes_peer=step_mem["peer"]),
    )]

    # -- the loss alone, from the final hidden states -----------------------------------
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(batch, seq, C, generator=g).requires_grad_()
    weight = peer.lm_head.weight

    def loss_peer() -> None:
        hidden.grad = weight.grad = None
        logits = peer.lm_head(hidden)
        peer.loss_function(logits=logits, labels=ids, vocab_size=V).backward()

    def loss_ours() -> None:
        hidden.grad = weight.grad = None
        blocklab.hf.causal_lm_loss(hidden, weight, ids).backward()

    with torch.no_grad():
        _check_close("loss", blocklab.hf.causal_lm_loss(hidden, weight, ids),
                     peer.loss_function(logits=peer.lm_head(hidden), labels=ids, vocab_size=V))
    t = time_interleaved({"ours": loss_ours, "peer": loss_peer}, warmup=1, repeats=repeats)
    loss_mem = {}
    for name, fn in (("ours", loss_ours), ("peer", loss_peer)):
        hidden.grad = weight.grad = None
        loss_mem[name] = peak_bytes(fn)
    hidden.grad = weight.grad = None
    chunk = ours.__dict__["_blocklab_patch"].parts.chunk_size
    analytic = {"peer": 4 * N * V * 4,
                "ours": 3 * min(chunk, N) * V * 4 + V * C * 4 + N * C * 4}
    loss_flops = 3 * 2 * N * C * V  # logits, d hidden, d weight
    cases.append(Case(
        name=f"loss N={N} C={C} V={V} fwd+bwd",
        ours=t["ours"], peer=t["peer"], work=N, unit="tok/s",
        limit_frac=loss_flops / t["ours"].median_s / 1e9 / limits.matmul_gflops,
        limit_note="loss matmul FLOPs (3 x 2NCV) / time vs fp32 matmul FLOP/s",
        extra=dict(peak_bytes_ours=loss_mem["ours"], peak_bytes_peer=loss_mem["peer"],
                   analytic_bytes_ours=analytic["ours"], analytic_bytes_peer=analytic["peer"],
                   chunk_rows=chunk),
    ))

    # -- greedy generation ----------------------------------------------------------------
    ours.eval()
    peer.eval()
    prompt = torch.randint(0, V, (1, prompt_len))
    mask = torch.ones_like(prompt)

    def generate(model):
        @torch.inference_mode()
        def call():
            return model.generate(prompt, attention_mask=mask, max_new_tokens=new_tokens,
                                  do_sample=False)
        return call

    got, want = generate(ours)(), generate(peer)()
    if not torch.equal(got, want):
        raise AssertionError("patched generate() gave different tokens than unpatched")
    t = time_interleaved({"ours": generate(ours), "peer": generate(peer)}, warmup=1,
                         repeats=repeats)
    weights = sum(p.numel() for p in peer.parameters()) - peer.model.embed_tokens.weight.numel()
    kv = (2 * shapes["num_hidden_layers"] * shapes["num_key_value_heads"]
          * (C // shapes["num_attention_heads"]) * (prompt_len + new_tokens / 2))
    step_bytes = (weights + kv) * 4
    gbps = step_bytes * new_tokens / t["ours"].median_s / 1e9
    cases.append(Case(
        name=f"generate b1 prompt{prompt_len} new{new_tokens}",
        ours=t["ours"], peer=t["peer"], work=new_tokens, unit="new tok/s",
        limit_frac=gbps / limits.copy_gbps,
        limit_note="(weights + KV bytes read per decode step) x steps/s vs copy bandwidth",
        extra=dict(bytes_per_step=step_bytes, effective_gbps=gbps),
    ))

    speedup = cases[0].ratio
    cut = {k: (None if loss_mem["peer"] in (None, 0) or loss_mem[k] is None else
               1 - loss_mem[k] / loss_mem["peer"]) for k in ("ours",)}["ours"]
    step_cut = (None if not step_mem["peer"] or step_mem["ours"] is None
                else 1 - step_mem["ours"] / step_mem["peer"])
    analytic_cut = 1 - analytic["ours"] / analytic["peer"]
    notes = [
        f"training step: {speedup:.2f}x the unpatched step (target >= {TARGET_SPEEDUP}x: "
        f"{'met' if speedup >= TARGET_SPEEDUP else 'NOT met'})",
        f"loss peak memory: patched {_mb(loss_mem['ours'])} vs unpatched "
        f"{_mb(loss_mem['peer'])} measured"
        + ("" if cut is None else f" ({100 * cut:.0f}% less; target >= "
           f"{100 * TARGET_LOSS_MEMORY_CUT:.0f}%: "
           f"{'met' if cut >= TARGET_LOSS_MEMORY_CUT else 'NOT met'})")
        + f"; analytic {_mb(analytic['ours'])} vs {_mb(analytic['peer'])} "
        f"({100 * analytic_cut:.0f}% less)",
        f"training step peak memory: patched {_mb(step_mem['ours'])} vs unpatched "
        f"{_mb(step_mem['peer'])}" + ("" if step_cut is None else f" ({100 * step_cut:.0f}% less)"),
        "losses and generated tokens checked equal to the unpatched model's before timing",
        "peak memory: most bytes allocated at once above the level at the call's start "
        "(torch.profiler memory events on CPU)",
    ]
    return BenchResult(
        name=NAME,
        peer="the same transformers LlamaForCausalLM unpatched (sdpa attention)",
        dtype="float32",
        shapes=dict(shapes, batch=batch, seq_len=seq, prompt_len=prompt_len,
                    new_tokens=new_tokens, loss_chunk_rows=chunk),
        cases=cases,
        limits=limits,
        notes=notes,
    )


if __name__ == "__main__":
    from benchmarks.harness import print_result

    print_result(run())
