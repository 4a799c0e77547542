"""Compiled decoding (``generate(compile=...)``) against the eager path.

The default suite traces with the "eager" / "aot_eager" backends (seconds); the
Inductor tests, real C++ code generation, are ``slow``. Sampling is Gumbel-max with
uniforms drawn outside the graph, so a seeded generator gives the same tokens both
ways; its distribution is checked against a naive top-k / top-p filter.
"""

import importlib
import math

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from blocklab.models import TransformerConfig, TransformerLM
from tests.conftest import assert_close

# The module, not the function ``blocklab.models.generate`` that shadows it.
gen = importlib.import_module("blocklab.models.generate")

CASES = {  # name: config overrides
    "mha": {"n_kv_heads": 4},
    "gqa": {"n_kv_heads": 2},
    "mqa": {"n_kv_heads": 1},
    "window": {"n_kv_heads": 2, "sliding_window": 4},
    "learned": {"position": "learned"},
}
SAMPLED = {"temperature": 0.9, "top_k": 50, "top_p": 0.9}
# The bound for compiled against eager logits in fp32.
LOGITS_TOL = {"atol": 1e-5, "rtol": 1e-5}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    # Each test counts its own compilations, none left over from another test.
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _model(**overrides) -> TransformerLM:
    config = TransformerConfig.from_name("tiny", n_layers=2, d_model=64, n_heads=4, **overrides)
    return TransformerLM(config).eval()


def _padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, 256, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, :3] = 0  # row 1: 3 pad tokens on the left
    return ids, mask


def _seeded(seed: int = 3) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("padded", [False, True], ids=["same-length", "left-padded"])
@pytest.mark.parametrize("case", CASES)
@torch.no_grad()
def test_compiled_step_logits_equal_eager(case, padded):
    model = _model(**CASES[case])
    prompt, mask = _padded_batch() if padded else (torch.randint(0, 256, (2, 5)), None)
    T, steps = prompt.shape[1], 12
    S = T + steps
    eager_cache, compiled_cache = model.make_cache(2, S), model.make_cache(2, S)
    full_mask = pos = None
    if padded:
        full_mask = torch.ones(2, S, dtype=torch.bool)
        full_mask[:, :T] = mask.bool()
        pos = mask.cumsum(-1) - 1  # real tokens count from 0
    step = gen._CompiledStep("aot_eager", gen._step_logits)
    pm = None if full_mask is None else full_mask[:, :T]
    tok = model(prompt, cache=eager_cache, padding_mask=pm, position_ids=pos.clamp(min=0)
                if padded else None)[:, -1].argmax(-1, keepdim=True)  # (B, 1)
    model(prompt, cache=compiled_cache, padding_mask=pm,
          position_ids=pos.clamp(min=0) if padded else None)
    for t in range(steps):
        p = None if pos is None else pos[:, -1:] + 1 + t  # (B, 1)
        pm = None if full_mask is None else full_mask[:, : T + t + 1]
        eager = model(tok, cache=eager_cache, padding_mask=pm, position_ids=p)[:, -1]  # (B, V)
        compiled = step(model, tok, compiled_cache, p, full_mask)
        assert_close(compiled, eager, **LOGITS_TOL)
        tok = eager.argmax(-1, keepdim=True)
    assert compiled_cache.length == eager_cache.length == S
    assert step.compiled  # it did compile, no fallback


@pytest.mark.parametrize("mode", ["greedy-left-padded", "sampled-left-padded"])
@pytest.mark.parametrize("case", CASES)
def test_compiled_generate_equals_eager_tokens(case, mode):
    model = _model(**CASES[case])
    ids, mask = _padded_batch() if "padded" in mode else (torch.randint(0, 256, (2, 5)), None)
    kw = SAMPLED if mode.startswith("sampled") else {}
    eager = model.generate(ids, 10, attention_mask=mask, generator=_seeded(), **kw)
    counter = CompileCounter()
    compiled = model.generate(ids, 10, attention_mask=mask, generator=_seeded(), **kw,
                              compile=True, backend=counter)
    assert torch.equal(compiled, eager)
    assert counter.frame_count == 1
    if kw:  # sampling did sample: another seed, other tokens
        other = model.generate(ids, 10, attention_mask=mask, generator=_seeded(4), **kw,
                               compile=True, backend=counter)
        assert not torch.equal(other, compiled)


@pytest.mark.parametrize("kw", [{}, SAMPLED], ids=["greedy", "sampled"])
def test_no_recompilation_across_100_steps(kw):
    # Rotary positions, a sliding window shorter than the run and left padding: none
    # may put a Python int in the graph, so one compile serves every token.
    model = _model(n_kv_heads=2, sliding_window=8)
    ids, mask = _padded_batch()
    counter = CompileCounter()
    with torch._dynamo.config.patch(error_on_recompile=True):
        out = model.generate(ids, 100, attention_mask=mask, compile=True, backend=counter,
                             generator=_seeded(), **kw)
        again = model.generate(ids, 100, attention_mask=mask, compile=True, backend=counter,
                               generator=_seeded(), **kw)
    assert out.shape == (2, 107)
    assert torch.equal(out, again)
    assert counter.frame_count == 1  # 99 compiled steps per call, one graph for both calls
    eager = model.generate(ids, 100, attention_mask=mask, generator=_seeded(), **kw)
    assert torch.equal(out, eager)


def test_new_temperature_or_top_p_reuses_the_graph():
    # temperature and top_p are tensors in the graph; only top_k is a constant.
    model = _model(n_kv_heads=2)
    prompt = torch.randint(0, 256, (1, 4))
    counter = CompileCounter()
    outs = []
    for temperature, top_p in ((0.7, 0.8), (1.3, 0.95), (2.0, 0.5)):
        kw = dict(temperature=temperature, top_k=20, top_p=top_p)
        out = model.generate(prompt, 8, compile=True, backend=counter, generator=_seeded(), **kw)
        assert torch.equal(out, model.generate(prompt, 8, generator=_seeded(), **kw))
        outs.append(out)
    assert counter.frame_count == 1
    assert not torch.equal(outs[0], outs[1])
    model.generate(prompt, 8, compile=True, backend=counter, temperature=0.7, top_k=21)
    assert counter.frame_count == 2


def test_compiled_eos_equals_eager():
    model = _model(n_kv_heads=2)
    ids, mask = _padded_batch()
    free = model.generate(ids, 12, attention_mask=mask, generator=_seeded(), **SAMPLED)
    eos = int(free[0, 9])  # row 0 stops at its third new token (or earlier)
    kw = dict(attention_mask=mask, eos_token_id=eos, **SAMPLED)
    eager = model.generate(ids, 12, generator=_seeded(), **kw)
    compiled = model.generate(ids, 12, generator=_seeded(), compile=True,
                              backend=CompileCounter(), **kw)
    assert torch.equal(compiled, eager)
    first = int((eager[0, 7:] == eos).nonzero()[0])
    assert bool((eager[0, 7 + first:] == eos).all())  # finished rows padded with eos


def test_recompile_limit_is_raised_for_the_step():
    # Dynamo runs a function eagerly for good past its recompile limit; each generate
    # call may add its graph up to _CompiledStep.RECOMPILE_LIMIT.
    model = _model(n_kv_heads=2)
    counter = CompileCounter()
    with torch._dynamo.config.patch(recompile_limit=1):
        for B in (1, 2, 3):
            model.generate(torch.randint(0, 256, (B, 4)), 3, compile=True, backend=counter)
    assert counter.frame_count == 3


# Sampling itself ---------------------------------------------------------------------
def _filtered_probs(logits: torch.Tensor, temperature: float, top_k: int | None,
                    top_p: float | None) -> list[float]:
    """softmax(logits / temperature) over the kept tokens of one row, written out: the
    top_k largest, then the shortest prefix (descending) whose mass reaches top_p."""
    z = [float(v) / temperature for v in logits]
    order = sorted(range(len(z)), key=lambda i: -z[i])
    keep = order[:top_k] if top_k is not None else order
    if top_p is not None:
        m = max(z[i] for i in keep)
        w = [math.exp(z[i] - m) for i in keep]
        total, mass, prefix = sum(w), 0.0, []
        for i, wi in zip(keep, w, strict=True):
            prefix.append(i)
            mass += wi / total
            if mass >= top_p:
                break
        keep = prefix
    m = max(z[i] for i in keep)
    w = {i: math.exp(z[i] - m) for i in keep}
    total = sum(w.values())
    return [w.get(i, 0.0) / total for i in range(len(z))]


@pytest.mark.parametrize("temperature, top_k, top_p", [
    (1.0, None, None), (0.5, None, None), (1.0, 3, None), (1.0, None, 0.7), (2.0, 4, 0.8),
])
def test_sample_next_draws_the_filtered_softmax(temperature, top_k, top_p):
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    want = torch.tensor(_filtered_probs(logits, temperature, top_k, top_p))
    n = 40_000
    ids = gen.sample_next(logits.expand(n, -1), temperature=temperature, top_k=top_k,
                          top_p=top_p, generator=_seeded(0))
    freq = torch.bincount(ids, minlength=logits.numel()).double() / n
    assert bool((freq[want == 0] == 0).all())  # filtered tokens never drawn
    # Within 5 binomial standard deviations of the exact probabilities.
    sd = (want * (1 - want) / n).sqrt()
    assert bool(((freq - want).abs() <= 5 * sd + 1e-12).all()), (freq, want)


def test_sample_next_greedy_and_reproducible():
    logits = torch.randn(3, 50)
    assert torch.equal(gen.sample_next(logits), logits.argmax(-1))
    a = gen.sample_next(logits, temperature=1.0, top_p=0.9, generator=_seeded(1))
    b = gen.sample_next(logits, temperature=1.0, top_p=0.9, generator=_seeded(1))
    assert torch.equal(a, b)
    # top_k=1 is greedy whatever the noise.
    assert torch.equal(gen.sample_next(logits, temperature=5.0, top_k=1), logits.argmax(-1))


# Fallback and boundaries -------------------------------------------------------------
def test_compile_failure_falls_back_to_eager_with_a_warning():
    def broken(gm, example_inputs):
        raise RuntimeError("no C++ compiler found")

    model = _model(n_kv_heads=2)
    prompt = torch.randint(0, 256, (1, 4))
    with pytest.warns(RuntimeWarning, match="torch.compile failed.*decoding eagerly"):
        out = model.generate(prompt, 6, compile=True, backend=broken)
    assert torch.equal(out, model.generate(prompt, 6))


def test_compile_auto_and_its_checks(monkeypatch):
    model = _model()
    prompt = torch.randint(0, 256, (1, 4))
    calls = []
    monkeypatch.setattr(gen, "compiler_available", lambda device: calls.append(device) or False)
    assert torch.equal(model.generate(prompt, 4, compile="auto"), model.generate(prompt, 4))
    assert len(calls) == 1
    assert gen.compiler_available("meta") is False
    with pytest.raises(ValueError, match="compile must be True, False or 'auto', got 'yes'"):
        model.generate(prompt, 4, compile="yes")


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_decode_step_equals_forward(n_kv_heads):
    model = _model(n_kv_heads=n_kv_heads)
    x = torch.randint(0, 256, (2, 9))
    full = model(x)
    cache = model.make_cache(2, 12)
    parts = [model.decode_step(x[:, :5], cache)]
    parts += [model.decode_step(x[:, t : t + 1], cache) for t in range(5, 9)]
    assert_close(torch.cat(parts, dim=1), full)
    with pytest.raises(ValueError, match="KV cache full"):
        model.decode_step(x[:, :4], cache)


def test_nearby_lengths_share_one_graph():
    # Cache lengths round up to a power of two: 5 + 10 and 6 + 10 both get 16.
    model = _model(n_kv_heads=2)
    counter = CompileCounter()
    for T in (5, 6):
        prompt = torch.randint(0, 256, (1, T))
        out = model.generate(prompt, 10, compile=True, backend=counter)
        assert torch.equal(out, model.generate(prompt, 10))
    assert counter.frame_count == 1


# Inductor: generated C++ --------------------------------------------------------------
needs_compiler = pytest.mark.skipif(not gen.compiler_available("cpu"), reason="no C++ compiler")


@pytest.mark.slow
@needs_compiler
@pytest.mark.parametrize("case", ["mha", "mqa", "window"])
def test_inductor_generate_equals_eager(case, recwarn):
    model = _model(**CASES[case])
    ids, mask = _padded_batch()
    one = ids[:1, 3:]  # batch 1: the one-row matmuls become Inductor's reductions
    greedy = model.generate(ids, 40, attention_mask=mask, compile=True)
    sampled = model.generate(ids, 40, attention_mask=mask, compile=True,
                             generator=_seeded(), **SAMPLED)
    single = model.generate(one, 40, compile=True, generator=_seeded(), **SAMPLED)
    assert not [w for w in recwarn if "torch.compile failed" in str(w.message)]
    assert torch.equal(greedy, model.generate(ids, 40, attention_mask=mask))
    assert torch.equal(sampled, model.generate(ids, 40, attention_mask=mask,
                                               generator=_seeded(), **SAMPLED))
    assert torch.equal(single, model.generate(one, 40, generator=_seeded(), **SAMPLED))


@pytest.mark.slow
@needs_compiler
@pytest.mark.parametrize("batch", [1, 2])
@torch.no_grad()
def test_inductor_step_logits_within_1e5(batch):
    model = _model(n_kv_heads=2)
    prompt, steps = torch.randint(0, 256, (batch, 5)), 8
    eager_cache = model.make_cache(batch, 5 + steps)
    compiled_cache = model.make_cache(batch, 5 + steps)
    step = gen._CompiledStep("inductor", gen._step_logits)
    tok = model(prompt, cache=eager_cache)[:, -1].argmax(-1, keepdim=True)
    model(prompt, cache=compiled_cache)
    for _ in range(steps):
        eager = model(tok, cache=eager_cache)[:, -1]
        assert_close(step(model, tok, compiled_cache, None, None), eager, **LOGITS_TOL)
        tok = eager.argmax(-1, keepdim=True)
    assert step.compiled


@pytest.mark.slow
@needs_compiler
@torch.no_grad()
def test_inductor_step_code_at_batch_1():
    # The generated step calls no ATen matmul (one-row matmuls are Inductor's own
    # reductions) and allocates no buffer of a cache layer's size: the K/V write goes
    # into the cache in place, not through a copy of the layer per token.
    from torch._inductor.utils import run_and_get_code

    model = _model(n_kv_heads=2)
    cache = model.make_cache(1, 64)
    tok = model(torch.randint(0, 256, (1, 5)), cache=cache)[:, -1].argmax(-1, keepdim=True)
    step = gen._CompiledStep("inductor")
    with torch._inductor.config.patch(fx_graph_cache=False):
        _, codes = run_and_get_code(step, model, tok, cache, None, None, None, 0.0, None,
                                    None)
    code = "\n".join(codes)
    assert "extern_kernels.mm(" not in code and "extern_kernels.addmm(" not in code
    layer = "(1, 2, 64, 16)"  # (B, H_kv, S_max, D)
    assert not [line for line in code.splitlines() if "empty_strided" in line and layer in line]
    assert cache.length == 6
