"""The decoding benchmarks (``bench_generate``, ``bench_decode``) at toy sizes.

Every case, check and note of the real runs, in seconds: tiny random models, the
"eager" torch.compile backend (Dynamo traces the step, no C++ is built) and a fixed
machine limit instead of a measured one.
"""

from __future__ import annotations

import benchmarks.bench_decode as bench_decode
import benchmarks.bench_generate as bench_generate
import pytest
from benchmarks.harness import Limits

# vocab_size 96 is no other matmul's width here, so the LM head is told apart.
TINY = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
            num_key_value_heads=2, intermediate_size=64, vocab_size=96)
LIMITS = Limits(copy_gbps=10.0, matmul_gflops=100.0, copy_bytes=1, matmul_n=1, threads=1)


@pytest.fixture(autouse=True)
def _one_thread():
    # Toy matmuls: a second OpenMP thread only adds wake-ups (milliseconds each on a
    # busy machine).
    from blocklab.lab.base import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture
def tiny_generate(monkeypatch):
    for name, value in dict(ISSUE_SHAPES=TINY, QUICK_LM_SHAPES=dict(TINY, num_hidden_layers=2),
                            QUICK_SHAPES=TINY, TINY_SHAPES=TINY, QUICK_ISSUE_NEW=6,
                            QUICK_LM_NEW=4, BACKEND="eager").items():
        monkeypatch.setattr(bench_generate, name, value)
    monkeypatch.setattr(bench_generate, "machine_limits", lambda **kw: LIMITS)
    return bench_generate


def test_bench_generate_cases_at_toy_size(tiny_generate):
    result = tiny_generate.run(quick=True)
    names = [c.name for c in result.cases]
    assert names[:4] == [f"d32 L1 4/2 heads v96 {mode} {which}"
                         for mode in ("greedy", "sampled") for which in ("compiled", "eager")]
    lm = [c for c in result.cases if "compiled b1" in c.name]
    assert [c.extra["dtype"] for c in lm] == ["float32", "bfloat16"]
    for case in result.cases:
        assert case.ratio > 0 and case.limit_frac > 0
    for case in result.cases[:4:2] + lm:
        # The compile time is reported apart from the medians, and is not negative
        # beyond timing noise.
        assert case.extra["compile_s"] is not None
        assert case.extra["first_call_s"] >= case.ours.median_s / 2
    issue = result.cases[0]
    assert issue.extra["threads"] == tiny_generate.ISSUE_THREADS
    assert lm[1].extra["bytes_per_step"] < lm[0].extra["bytes_per_step"]  # bf16 halves it
    profiles = [n for n in result.notes if n.startswith("profile,")]
    assert len(profiles) == 3  # the issue case and the two dtypes of the larger model
    for note in profiles:
        assert "LM head matmul" in note and "attention over the cache" in note
    assert any("target >= 3x" in n for n in result.notes)
    assert any("of the roofline (target >= 50%)" in n for n in result.notes)


def test_profile_step_splits_a_compiled_step(tiny_generate):
    import torch

    ours, _ = tiny_generate.make_models(TINY)
    prompt = torch.randint(0, TINY["vocab_size"], (1, 4))

    def call():
        with torch.inference_mode():
            return ours.generate(prompt, 6, compile=True, backend="eager")

    torch._dynamo.reset()
    call()
    prof = tiny_generate.profile_step(call, TINY["vocab_size"])
    assert prof["steps"] == 5  # the first new token comes from the eager prefill
    assert prof["lm_head"] > 0 and prof["matmul"] > 0 and prof["attention"] > 0
    parts = sum(prof[k] for k in ("lm_head", "matmul", "attention", "inductor",
                                  "ops_other", "guards", "loop"))
    assert parts == pytest.approx(prof["step"], rel=0.35)
    with pytest.raises(RuntimeError, match="no compiled step"):
        tiny_generate.profile_step(lambda: ours.generate(prompt, 3), TINY["vocab_size"])


def test_bench_decode_cases_at_toy_size(monkeypatch):
    shapes = {k: v for k, v in TINY.items() if k != "num_key_value_heads"}
    for name, value in dict(SHAPES=shapes, KV_HEADS=(4, 2, 1), QUICK_CONTEXTS=(16, 48),
                            BACKEND="eager").items():
        monkeypatch.setattr(bench_decode, name, value)
    monkeypatch.setattr(bench_decode, "machine_limits", lambda **kw: LIMITS)
    result = bench_decode.run(quick=True)
    assert [c.name for c in result.cases] == [
        "MHA n16", "MHA n48", "GQA-2 n16", "GQA-2 n48", "MQA n16", "MQA n48"]
    for case in result.cases:
        assert case.ratio > 0 and case.extra["eager"].median_s > 0
        # Fewer K/V heads, fewer bytes per step: the prediction is > 1 below MHA.
        want = 1.0 if case.name.startswith("MHA") else 1.0 + 1e-9
        assert case.extra["predicted_speedup_vs_mha"] >= want
    speedups = [n for n in result.notes if n.startswith("n=")]
    assert len(speedups) == 2 and all("measured /" in n and "predicted" in n for n in speedups)
    assert sum(n.startswith("profile,") for n in result.notes) == 3  # one per kind at n=48
    assert any(n.startswith("attention over the cache at n=48") for n in result.notes)
