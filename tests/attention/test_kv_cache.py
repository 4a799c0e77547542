"""KVCache: a tensor position, compile-stable across decode steps (issue 16), and the
layout checks torchtune's KV-cache tests expect."""

import pytest
import torch

from blocklab.attention import KVCache

SIZES = dict(n_layers=2, batch=2, n_kv_heads=2, head_dim=8, max_seq_len=16)


def _step(cache: KVCache, k: torch.Tensor, v: torch.Tensor):
    ks, vs = cache.write(0, k, v)
    mask = cache.key_mask(k.shape[2])
    cache.advance(k.shape[2])
    return ks, vs, mask


def test_position_is_a_tensor_and_length_follows_it():
    cache = KVCache(**SIZES)
    assert isinstance(cache.pos, torch.Tensor) and cache.pos.dim() == 0
    cache.advance(3)
    assert cache.length == 3 and int(cache.pos) == 3
    cache.pos.add_(2)  # moved without the host mirror (as a compiled advance does)
    assert cache.length == 5
    cache.length = 1  # rewind (benchmarks, the mqa experiment)
    assert int(cache.pos) == 1 and cache.length == 1
    cache.reset()
    assert cache.length == 0 and int(cache.pos) == 0
    with pytest.raises(ValueError, match=r"length \(-1\) must be >= 0"):
        cache.length = -1


def test_write_matches_update():
    a, b = KVCache(**SIZES), KVCache(**SIZES)
    g = torch.Generator().manual_seed(0)
    for T in (3, 1, 1, 4):
        k, v = torch.randn(2, 2, T, 8, generator=g), torch.randn(2, 2, T, 8, generator=g)
        ku, vu = a.update(0, k, v)
        kw, vw, mask = _step(b, k, v)
        n = a.length + T
        a.advance(T)
        assert kw.shape == (2, 2, 16, 8)
        assert torch.equal(kw[:, :, :n], ku) and torch.equal(vw[:, :, :n], vu)
        assert mask.shape == (T, 16)
        expected = torch.arange(16) <= torch.arange(n - T, n).unsqueeze(-1)
        assert torch.equal(mask, expected)
    assert a.length == b.length == 9


def test_batch_larger_than_the_cache_names_both_sizes():
    cache = KVCache(**SIZES)
    k = torch.zeros(3, 2, 1, 8)
    with pytest.raises(ValueError, match=r"batch 3, larger than the cache's batch 2"):
        cache.update(0, k, k)
    with pytest.raises(ValueError, match=r"batch 3, larger than the cache's batch 2"):
        cache.write(0, k, k)


def test_write_checks_room_eagerly():
    cache = KVCache(**SIZES)
    cache.advance(15)
    k = torch.zeros(2, 2, 2, 8)
    with pytest.raises(ValueError, match=r"KV cache full: 15 stored \+ 2 new > max_seq_len 16"):
        cache.write(0, k, k)


def _compiled_loop(backend, steps: int = 6):
    import torch._dynamo
    from torch._dynamo.testing import CompileCounterWithBackend
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    counter = CompileCounterWithBackend(backend)
    cache, ref = KVCache(**SIZES), KVCache(**SIZES)
    step = torch.compile(_step, backend=counter, fullgraph=True)
    g = torch.Generator().manual_seed(1)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(steps):
            k, v = torch.randn(2, 2, 1, 8, generator=g), torch.randn(2, 2, 1, 8, generator=g)
            got = step(cache, k, v)
            want = _step(ref, k, v)
            for x, y in zip(got, want, strict=True):
                assert torch.equal(x, y)
    assert cache.length == ref.length == steps  # the host mirror resyncs after compiled steps
    return counter, counters


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compiled_update_loop_does_not_recompile(backend):
    counter, counters = _compiled_loop(backend)
    assert counter.frame_count == 1
    assert counters["stats"]["unique_graphs"] == 1
    assert sum(counters["recompiles"].values()) == 0


@pytest.mark.slow
def test_compiled_update_loop_inductor():
    counter, _ = _compiled_loop("inductor")
    assert counter.frame_count == 1


@pytest.mark.parametrize("made_in_inference_mode", [False, True])
def test_position_moves_under_inference_mode(made_in_inference_mode):
    with torch.inference_mode(made_in_inference_mode):
        cache = KVCache(**SIZES)
    k = torch.ones(2, 2, 2, 8)
    with torch.inference_mode():
        cache.update(0, k, k)
        cache.advance(2)
        _step(cache, k, k)
    assert cache.length == int(cache.pos) == 4
    cache.length = 1  # rewinding afterwards, outside inference mode
    assert cache.length == 1
