"""Compiled decoding (``generate(compile=...)``) against the eager path.

The default suite traces with the "eager" / "aot_eager" backends (seconds); the one
Inductor test, real C++ code generation, is ``slow``.
"""

import importlib

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


@pytest.mark.parametrize("case", CASES)
@torch.no_grad()
def test_compiled_step_logits_equal_eager(case):
    model = _model(**CASES[case])
    prompt, steps = torch.randint(0, 256, (2, 5)), 12
    eager_cache, compiled_cache = model.make_cache(2, 5 + steps), model.make_cache(2, 5 + steps)
    step = gen._CompiledStep("aot_eager")
    tok = model(prompt, cache=eager_cache)[:, -1].argmax(-1, keepdim=True)  # (B, 1)
    model(prompt, cache=compiled_cache)
    for _ in range(steps):
        eager = model(tok, cache=eager_cache)[:, -1]  # (B, V)
        compiled = step(model, tok, compiled_cache, None, None)
        assert_close(compiled, eager)
        tok = eager.argmax(-1, keepdim=True)
    assert compiled_cache.length == eager_cache.length == 5 + steps
    assert step.fn is not gen._step  # it did compile, no fallback


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("padded", [False, True], ids=["same-length", "left-padded"])
def test_compiled_generate_equals_eager_tokens(case, padded):
    model = _model(**CASES[case])
    ids, mask = _padded_batch() if padded else (torch.randint(0, 256, (2, 5)), None)
    eager = model.generate(ids, 10, attention_mask=mask)
    counter = CompileCounter()
    compiled = model.generate(ids, 10, attention_mask=mask, compile=True, backend=counter)
    assert torch.equal(compiled, eager)
    assert counter.frame_count == 1


def test_no_recompilation_across_100_steps():
    # Rotary positions, a sliding window shorter than the run and left padding: none
    # may put a Python int in the graph, so one compile serves every token.
    model = _model(n_kv_heads=2, sliding_window=8)
    ids, mask = _padded_batch()
    counter = CompileCounter()
    with torch._dynamo.config.patch(error_on_recompile=True):
        out = model.generate(ids, 100, attention_mask=mask, compile=True, backend=counter)
        again = model.generate(ids, 100, attention_mask=mask, compile=True, backend=counter)
    assert out.shape == (2, 107)
    assert torch.equal(out, again)
    assert counter.frame_count == 1
    assert torch.equal(out, model.generate(ids, 100, attention_mask=mask))


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


@pytest.mark.slow
@pytest.mark.skipif(not gen.compiler_available("cpu"), reason="no C++ compiler")
@pytest.mark.parametrize("n_kv_heads", [4, 1])
def test_inductor_generate_equals_eager(n_kv_heads):
    model = _model(n_kv_heads=n_kv_heads)
    prompt = torch.randint(0, 256, (2, 6))
    with torch._dynamo.config.patch(error_on_recompile=True):
        out = model.generate(prompt, 40, compile=True)
    assert torch.equal(out, model.generate(prompt, 40))


def test_nearby_lengths_share_one_graph():
    # Cache lengths round up to a power of two: 5 + 10 and 6 + 10 both get 16.
    model = _model(n_kv_heads=2)
    counter = CompileCounter()
    for T in (5, 6):
        prompt = torch.randint(0, 256, (1, T))
        out = model.generate(prompt, 10, compile=True, backend=counter)
        assert torch.equal(out, model.generate(prompt, 10))
    assert counter.frame_count == 1
