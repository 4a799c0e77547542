"""Property-based tests of the public API's boundary (issue 13).

Each test draws a call -- valid, edge (empty tensors, extreme values, huge rates) or
invalid in one argument -- and asserts the one promise blocklab makes for every call:

* an invalid argument raises ``ValueError``/``TypeError`` whose message names it;
* anything else returns what the fp64 oracle of ``tests/reference`` (or the fp64 model,
  or an exact-arithmetic formula) gives, to the suite's tolerance -- never a deep torch
  error, never a silent NaN or zero where the oracle has a number.

The test knows which argument it spoiled, so a valid call that raises fails as surely
as an invalid one that returns. Examples are derandomised (the same ones every run) and
few per test, so the file runs in seconds; ``HYPOTHESIS_PROFILE=deep`` draws 20x more.
"""

from __future__ import annotations

import copy
import math
import os
import re
from decimal import Decimal, getcontext

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from blocklab.attention import (
    Attention,
    KVCache,
    dilated_attention,
    dilated_attention_flops,
    scaled_dot_product_attention,
)
from blocklab.ffn import FeedForward, ffn_hidden_dim
from blocklab.losses import DistillationLoss, focal_loss, kd_loss, sigmoid_focal_loss
from blocklab.models import TransformerConfig, TransformerLM
from blocklab.norm import LayerNorm, RMSNorm
from blocklab.position import RotaryEmbedding
from blocklab.sparsity import l1_penalty
from tests.conftest import TOLERANCES
from tests.reference.attention import naive_attention
from tests.reference.dilated import naive_dilated_attention
from tests.reference.losses import focal_loss_reference, sigmoid_focal_reference
from tests.reference.rope import naive_rope

_COMMON = dict(deadline=None, database=None,
               suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.register_profile("blocklab", derandomize=True, **_COMMON)
settings.register_profile("deep", derandomize=False, **_COMMON)
DEEP = os.environ.get("HYPOTHESIS_PROFILE") == "deep"


def examples(n: int) -> settings:
    return settings(settings.get_profile("deep" if DEEP else "blocklab"),
                    max_examples=20 * n if DEEP else n)


NAN, INF = float("nan"), float("inf")
# Spoiled values by kind, each with the exception it must raise.
BAD_POSITIVE_INT = [(0, ValueError), (-3, ValueError), (True, TypeError), (2.0, TypeError),
                    ("2", TypeError)]
BAD_BOOL = [("no", TypeError), ("", TypeError), (1, TypeError), (0, TypeError),
            (None, TypeError)]
BAD_POSITIVE_FLOAT = [(0.0, ValueError), (-1.0, ValueError), (NAN, ValueError),
                      (INF, ValueError), (True, TypeError), ("1.0", TypeError)]


def expect(fn, bad: str | None, error: type[Exception] | None = None, names=()):
    """Run ``fn``. With ``bad`` (the spoiled argument) it must raise ValueError/TypeError
    (``error`` if given) naming ``bad`` or one of ``names``; otherwise it must return,
    and its result is returned."""
    if bad is None:
        return fn()
    with pytest.raises((ValueError, TypeError)) as info:
        fn()
    if error is not None:
        assert info.type is error, f"{bad}: {info.type.__name__}, not {error.__name__}: {info.value}"
    message = str(info.value)
    assert any(re.search(rf"(?<![\w]){re.escape(n)}(?![\w])", message) for n in (bad, *names)), (
        f"the error for {bad} names none of {(bad, *names)}: {message}")
    return None


def close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None,
          scale: float = 1.0) -> None:
    """assert_close with the suite's tolerance for ``dtype`` (default actual's), the
    absolute part times ``scale``; NaN must match NaN."""
    atol, rtol = TOLERANCES[dtype or actual.dtype]
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol * scale,
                               rtol=rtol, equal_nan=True)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------ scaled_dot_product_attention

@st.composite
def sdpa_calls(draw):
    B, H_kv, G = draw(st.integers(0, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 2))
    T, S, D = draw(st.integers(0, 4)), draw(st.integers(0, 5)), draw(st.integers(1, 4))
    H = H_kv * G
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    g = gen(draw(st.integers(0, 2**16)))
    q = torch.randn(B, H, T, D, generator=g, dtype=dtype)
    k = torch.randn(B, H_kv, S, D, generator=g, dtype=dtype)
    v = torch.randn(B, H_kv, S, D + draw(st.integers(0, 1)), generator=g, dtype=dtype)
    kw: dict = {"causal": draw(st.booleans()), "scale": None, "mask": None}
    if draw(st.booleans()):
        kw["scale"] = draw(st.floats(0.05, 3.0))
    kind = draw(st.sampled_from(["none", "bool", "additive"]))
    if kind != "none":
        full = (B, H, T, S)
        shape = [n if draw(st.booleans()) else 1 for n in full][4 - draw(st.integers(2, 4)):]
        m = torch.rand(*shape, generator=g) > 0.3
        kw["mask"] = m if kind == "bool" else torch.randn(*shape, generator=g, dtype=dtype) \
            .masked_fill(~m, -INF)
    bad = draw(st.sampled_from([None] * 6 + ["causal", "scale", "mask", "q"]))
    if bad == "causal":
        kw["causal"] = draw(st.sampled_from([v_ for v_, _ in BAD_BOOL]))
    elif bad == "scale":
        kw["scale"] = draw(st.sampled_from([v_ for v_, _ in BAD_POSITIVE_FLOAT]))
    elif bad == "mask":
        # A size-1 dim grown past the target (the prefill mask on a decode step), a
        # fifth dim, or an integer dtype.
        spoil = draw(st.sampled_from(["grow", "rank", "dtype"]))
        kw["mask"] = {"grow": torch.ones(1, 1, T + 2, S, dtype=torch.bool),
                      "rank": torch.ones(1, 1, 1, T, S, dtype=torch.bool),
                      "dtype": torch.ones(T, S, dtype=torch.long)}[spoil]
    elif bad == "q":
        q = draw(st.sampled_from([q.flatten(0, 1), q.long(), q.to(torch.float16 if dtype == torch.float64
                                                           else torch.float64)]))
    poison = draw(st.sampled_from([None] * 3 + ["q", "k"])) if bad is None else None
    where, value = None, draw(st.sampled_from([NAN, INF, -INF]))
    target = {"q": q, "k": k}.get(poison)
    if target is not None and target.numel():
        where = tuple(draw(st.integers(0, n - 1)) for n in target.shape)
        target[where] = value
    return q, k, v, kw, bad, poison if where else None, where, value


def _visible(kw, B, H, T, S) -> torch.Tensor:
    """(B, H, T, S) bool: which keys each query sees (mask and causal, end-aligned)."""
    vis = torch.ones(B, H, T, S, dtype=torch.bool)
    m = kw["mask"]
    if m is not None:
        vis &= (m if m.dtype == torch.bool else ~torch.isneginf(m)).expand(B, H, T, S)
    if kw["causal"]:
        vis &= torch.arange(S)[None, :] <= torch.arange(T)[:, None] + (S - T)
    return vis


@examples(300)
@given(sdpa_calls())
def test_sdpa(call):
    q, k, v, kw, bad, poison, where, value = call
    out = expect(lambda: scaled_dot_product_attention(q, k, v, **kw), bad)
    if bad is not None:
        return
    B, H, T, _ = q.shape
    S = k.shape[2]
    assert out.shape == (B, H, T, v.shape[-1]) and out.dtype == q.dtype
    ref = naive_attention(q, k, v, **kw)
    if poison is None:
        close(out, ref)
        return
    # A non-finite value reaches the rows that see it (hit); it may spill NaN into the
    # rest of its batch row and K/V group, as torch's masked kernels add -inf to a NaN
    # score ("NaN in, NaN out"), but a row that comes out finite must be the oracle's,
    # and no NaN may cross into another batch row or group.
    G = H // k.shape[1]
    vis = _visible(kw, B, H, T, S)
    hit = torch.zeros(B, H, T, dtype=torch.bool)
    group = torch.zeros(B, H, T, dtype=torch.bool)
    b, h, i = where[:3]
    heads = slice(h, h + 1) if poison == "q" else slice(h * G, (h + 1) * G)
    group[b, heads] = True
    if poison == "q":
        hit[b, h, i] = vis[b, h, i].any()
    else:
        hit[b, heads] = vis[b, heads, :, i]  # i is the key's position here
    close(out[~group], ref[~group])
    finite = ~out.isnan().any(-1) & ~ref.isnan().any(-1) & group & ~hit
    close(out[finite], ref[finite])
    if value != value:  # NaN in -> NaN out
        assert out[hit].isnan().any(-1).all(), "a NaN input gave a number"
    # inf may give NaN or the softmax's limit; never the clean zero torch's kernel returns.
    assert not (out[hit] == 0).all(-1).any(), "a non-finite input gave a zero row"


# ---------------------------------------------------------------------------- KVCache

@st.composite
def cache_programs(draw):
    sizes = dict(n_layers=draw(st.integers(1, 2)), batch=draw(st.integers(1, 2)),
                 n_kv_heads=draw(st.integers(1, 2)), head_dim=draw(st.integers(1, 3)),
                 max_seq_len=draw(st.integers(1, 6)))
    bad = None
    if draw(st.integers(0, 5)) == 0:
        bad = draw(st.sampled_from(sorted(sizes)))
        sizes[bad] = draw(st.sampled_from([v for v, _ in BAD_POSITIVE_INT]))
    ops = []
    for _ in range(draw(st.integers(1, 6))):
        if draw(st.booleans()):
            layer = draw(st.one_of(st.integers(-1, 2), st.sampled_from([True, 0.0])))
            shape = [draw(st.integers(0, 3)) if draw(st.integers(0, 4)) == 0 else None
                     for _ in range(3)]  # None: the cache's own batch/heads/head_dim
            ops.append(("update", layer, shape, draw(st.integers(0, 3)), draw(st.booleans())))
        else:
            ops.append(("advance", draw(st.one_of(st.integers(-1, 4),
                                                  st.sampled_from([True, 1.5, "1"])))))
    return sizes, bad, ops


def _int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@examples(200)
@given(cache_programs(), st.integers(0, 2**16))
def test_kv_cache(program, seed):
    sizes, bad, ops = program
    cache = expect(lambda: KVCache(**sizes), bad)
    if bad is not None:
        return
    L, Bc, Hc, Dc, S_max = (sizes[n] for n in ("n_layers", "batch", "n_kv_heads", "head_dim",
                                                 "max_seq_len"))
    model = torch.zeros(L, Bc, Hc, S_max, Dc)  # what the keys buffer must hold
    length, g = 0, gen(seed)
    for op in ops:
        if op[0] == "advance":
            n = op[1]
            ok = _int(n) and n >= 0 and length + n <= S_max
            expect(lambda n=n: cache.advance(n), None if ok else "T", names=("max_seq_len",))
            length += n if ok else 0
            assert cache.length == length
            continue
        _, layer, shape, T, same_v = op
        b, h, d = (own if s is None else s for s, own in zip(shape, (Bc, Hc, Dc), strict=True))
        k = torch.randn(b, h, T, d, generator=g)
        v = k.clone() if same_v else torch.randn(b, h, T + 1, d, generator=g)
        reason = None
        if not _int(layer) or not 0 <= layer < L:
            reason = "layer"
        elif not same_v:
            reason = "v"
        elif (b, h, d) != (Bc, Hc, Dc):
            reason = "k"
        elif length + T > S_max:
            reason = "max_seq_len"
        got = expect(lambda k=k, v=v, layer=layer: cache.update(layer, k, v), reason,
                     names=("cache", "k"))
        if reason is None:
            model[layer, :, :, length:length + T] = k
            ks, vs = got
            assert ks.shape == (Bc, Hc, length + T, Dc)
            assert torch.equal(ks, model[layer, :, :, :length + T])
            assert torch.equal(vs[:, :, length:], k)
        assert cache.length == length  # only advance() moves it


# --------------------------------------------------------------------- RotaryEmbedding

@st.composite
def rope_calls(draw):
    dim = 2 * draw(st.integers(1, 3))
    D = dim + draw(st.integers(0, 2))
    ctor = dict(dim=dim, base=draw(st.sampled_from([10000.0, 500.0, 3])),
                interleaved=draw(st.booleans()), max_seq_len=draw(st.integers(1, 8)))
    B, H, H_kv, T = (draw(st.integers(0, 2)), draw(st.integers(1, 2)),
                     draw(st.integers(1, 2)), draw(st.integers(0, 4)))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    call = dict(position_ids=None, offset=draw(st.integers(0, 100)), inplace=draw(st.booleans()))
    if draw(st.booleans()):
        shape = (T,) if draw(st.booleans()) else (B, T)
        call["position_ids"] = torch.randint(-50, 5000, shape)
    bad = draw(st.sampled_from([None] * 5 + ["dim", "base", "interleaved", "max_seq_len", "q",
                                             "offset", "position_ids", "inplace"]))
    error = None
    if bad == "dim":
        ctor["dim"], error = draw(st.sampled_from([(3, ValueError), (0, ValueError),
                                                   (True, TypeError), (2.0, TypeError)]))
        bad = "rotary dim" if error is ValueError else "dim"
    elif bad == "base":
        ctor["base"], error = draw(st.sampled_from([(1.0, ValueError), (0.5, ValueError),
                                                    (NAN, ValueError), (INF, ValueError),
                                                    ("1e4", TypeError), (True, TypeError)]))
        bad = "rotary base"
    elif bad == "interleaved":
        ctor["interleaved"], error = draw(st.sampled_from(BAD_BOOL))
    elif bad == "max_seq_len":
        ctor["max_seq_len"], error = draw(st.sampled_from(BAD_POSITIVE_INT[:-1]))
    elif bad == "offset":
        call["offset"] = draw(st.sampled_from([-1, True, 1.5]))
        call["position_ids"] = None
    elif bad == "position_ids":
        call["position_ids"] = draw(st.sampled_from([torch.zeros(T + 1, dtype=torch.long),
                                                     torch.zeros(T).float()]))
    elif bad == "inplace":
        call["inplace"], error = draw(st.sampled_from(BAD_BOOL))
    g = gen(draw(st.integers(0, 2**16)))
    q = torch.randn(B, H, T, D, generator=g, dtype=dtype)
    k = torch.randn(B, H_kv, T, D, generator=g, dtype=dtype)
    if bad == "q":
        q, error = draw(st.sampled_from([(q.long(), TypeError), (q.flatten(0, 1), ValueError),
                                         (q[..., :dim - 1], ValueError)]))
    return ctor, q, k, call, bad, error


@examples(200)
@given(rope_calls())
def test_rotary_embedding(call):
    ctor, q, k, kw, bad, error = call
    if bad in ("dim", "rotary dim", "rotary base", "interleaved", "max_seq_len"):
        expect(lambda: RotaryEmbedding(ctor.pop("dim"), **ctor), bad, error)
        return
    rope = RotaryEmbedding(ctor.pop("dim"), **ctor)
    q0, k0 = q.clone(), k.clone()
    got = expect(lambda: rope(q, k, kw["position_ids"], inplace=kw["inplace"],
                              offset=kw["offset"]), bad, error)
    if got is None:
        return
    T = q.shape[2]
    pos = kw["position_ids"]
    pos = torch.arange(kw["offset"], kw["offset"] + T) if pos is None else pos
    for x, x0 in zip(got, (q0, k0), strict=True):
        assert x.shape == x0.shape and x.dtype == x0.dtype
        close(x, naive_rope(x0, pos, dim=rope.dim, base=rope.base, interleaved=rope.interleaved))


# ----------------------------------------------------------------------- RMSNorm, LayerNorm

@examples(120)
@given(st.sampled_from(["rms", "layer"]), st.integers(1, 6), st.integers(0, 3),
       st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64]),
       st.sampled_from([None, "dim", "eps", "x_dtype", "x_shape"]), st.integers(0, 2**16))
def test_norms(kind, dim, rows, dtype, bad, seed):
    cls = RMSNorm if kind == "rms" else LayerNorm
    eps, error = 1e-5, None
    if bad == "dim":
        dim, error = BAD_POSITIVE_INT[seed % len(BAD_POSITIVE_INT)]
    elif bad == "eps":
        eps, error = BAD_POSITIVE_FLOAT[seed % len(BAD_POSITIVE_FLOAT)]
    norm = expect(lambda: cls(dim, eps=eps), bad if bad in ("dim", "eps") else None, error)
    if norm is None:
        return
    x = torch.randn(rows, dim, generator=gen(seed)).to(dtype) * 3
    if bad == "x_dtype":
        x = x.long()
    elif bad == "x_shape":
        x = torch.randn(rows, dim + 1).to(dtype)
    out = expect(lambda: norm(x), "x" if bad in ("x_dtype", "x_shape") else None)
    if out is None:
        return
    assert out.dtype == dtype  # the docstring's "same dtype", fp32 weights or not
    x64 = x.double()
    if kind == "rms":
        ref = x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + eps)
    else:
        ref = F.layer_norm(x64, (dim,), eps=eps)
    close(out, ref, scale=10.0)  # values up to ~3 sqrt(dim): the absolute part scales


# -------------------------------------------------------------------------- FeedForward

@examples(100)
@given(st.sampled_from([None, "d_model", "hidden_dim", "expansion", "multiple_of", "bias",
                        "activation", "x"]),
       st.sampled_from(["gelu", "swiglu", "relu2"]), st.integers(0, 2**16))
def test_feed_forward(bad, activation, seed):
    kw = dict(hidden_dim=None, expansion=2.0, activation=activation, multiple_of=4, bias=True)
    d_model, error = 6, None
    pick = seed % 5
    if bad == "d_model":
        d_model, error = BAD_POSITIVE_INT[pick]
    elif bad == "hidden_dim":
        kw["hidden_dim"], error = BAD_POSITIVE_INT[pick]
    elif bad == "multiple_of":
        kw["multiple_of"], error = BAD_POSITIVE_INT[pick]
    elif bad == "expansion":
        kw["expansion"], error = BAD_POSITIVE_FLOAT[pick]
    elif bad == "bias":
        kw["bias"], error = BAD_BOOL[pick]
    elif bad == "activation":
        kw["activation"], error = "tanh", ValueError
    ffn = expect(lambda: FeedForward(d_model, **kw), None if bad == "x" else bad, error)
    if ffn is None:
        return
    assert ffn.hidden_dim == ffn_hidden_dim(6, expansion=2.0, activation=activation,
                                            multiple_of=4)
    x = torch.randn(2, 3, 6, generator=gen(seed))
    if bad == "x":
        x = [x.long(), x[..., :5], torch.tensor(1.0)][pick % 3]
    out = expect(lambda: ffn(x), bad)
    if out is not None:
        assert out.shape == x.shape
        with torch.no_grad():
            ref = copy.deepcopy(ffn).double()(x.double())
        close(out, ref)


# ------------------------------------------------------------------- TransformerConfig

INT_FIELDS = ("vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len", "multiple_of",
              "n_kv_heads", "head_dim", "ffn_hidden_dim", "rope_dim", "sliding_window")
BOOL_FIELDS = ("rope_interleaved", "tie_embeddings", "qkv_bias", "out_bias", "ffn_bias")
FLOAT_FIELDS = ("ffn_expansion", "norm_eps", "init_std")
SMALL = dict(vocab_size=11, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32)


@examples(100)
@given(st.sampled_from(INT_FIELDS + BOOL_FIELDS + FLOAT_FIELDS + ("rope_base",)),
       st.integers(0, 29))
def test_transformer_config(field, pick):
    if field in INT_FIELDS:
        value, error = BAD_POSITIVE_INT[pick % len(BAD_POSITIVE_INT)]
    elif field in BOOL_FIELDS:
        value, error = BAD_BOOL[pick % len(BAD_BOOL)]
    elif field == "rope_base":
        value, error = [(1.0, ValueError), (NAN, ValueError), ("1e4", TypeError)][pick % 3]
    else:
        value, error = BAD_POSITIVE_FLOAT[pick % len(BAD_POSITIVE_FLOAT)]
    expect(lambda: TransformerConfig(**{**SMALL, field: value}), field, error)


# --------------------------------------------------------------------- TransformerLM

_LM: dict[str, TransformerLM] = {}


def small_lm() -> tuple[TransformerLM, TransformerLM]:
    """One tiny model and its fp64 copy, built once."""
    if not _LM:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = TransformerLM(TransformerConfig(**SMALL)).eval()
        _LM["f32"], _LM["f64"] = model, copy.deepcopy(model).double()
    return _LM["f32"], _LM["f64"]


@st.composite
def lm_calls(draw):
    V = SMALL["vocab_size"]
    B, T = draw(st.integers(0, 2)), draw(st.integers(0, 4))
    g = gen(draw(st.integers(0, 2**16)))
    ids = torch.randint(0, V, (B, T), generator=g)
    targets = torch.randint(0, V, (B, T), generator=g) if draw(st.booleans()) else None
    if targets is not None and targets.numel() and draw(st.booleans()):
        targets.view(-1)[0] = -100  # ignored
    cache = draw(st.sampled_from([None, "fits"]))
    bad = draw(st.sampled_from([None] * 4 + ["input_ids", "targets", "cache"]))
    error = None
    if bad == "input_ids":
        spoil = draw(st.sampled_from(["oov", "negative", "float", "1d"]))
        error = TypeError if spoil == "float" else ValueError
        if spoil in ("oov", "negative"):
            if not ids.numel():
                ids, B, T = torch.zeros(1, 1, dtype=torch.long), 1, 1
                targets = None
            ids.view(-1)[-1] = V if spoil == "oov" else -1
        else:
            ids = ids.float() if spoil == "float" else ids.view(-1)
    elif bad == "targets":
        spoil = draw(st.sampled_from(["transposed", "oov", "float"]))
        if spoil == "transposed":
            assume(B != T)
            targets, error = torch.zeros(T, B, dtype=torch.long), ValueError
        elif spoil == "oov":
            assume(B * T > 0)
            targets = torch.zeros(B, T, dtype=torch.long)
            targets.view(-1)[-1], error = V + draw(st.integers(0, 5)), ValueError
        else:
            targets, error = torch.zeros(B, T), TypeError
    elif bad == "cache":
        cache, error = draw(st.sampled_from(["batch", "head_dim", "n_layers", "full"])), ValueError
    return ids, targets, cache, bad, error


@examples(100)
@given(lm_calls())
def test_transformer_lm(call):
    ids, targets, cache_kind, bad, error = call
    model, model64 = small_lm()
    cfg = model.config
    cache = None
    B = ids.shape[0] if ids.dim() else 0
    if cache_kind is not None and (B >= 1 or bad == "cache"):
        sizes = dict(n_layers=cfg.n_layers, batch=max(B, 1), n_kv_heads=cfg.kv_heads,
                     head_dim=cfg.dim_head, max_seq_len=8)
        if cache_kind == "batch":
            sizes["batch"] = B + 1
        elif cache_kind == "head_dim":
            sizes["head_dim"] += 1
        elif cache_kind == "n_layers":
            sizes["n_layers"] = 1
        cache = KVCache(**sizes)
        if cache_kind == "full":
            cache.length = 8 - (ids.shape[1] if ids.dim() == 2 else 0) + 1
    got = expect(lambda: model(ids, targets=targets, cache=cache), bad, error,
                 names=("vocab_size", "max_seq_len"))
    if got is None:
        return
    with torch.no_grad():
        logits64 = model64(ids)
    if targets is None:
        assert got.shape == (*ids.shape, cfg.vocab_size)
        close(got, logits64, scale=10.0)  # two layers of fp32 rounding on O(1) logits
    else:
        ref = F.cross_entropy(logits64.reshape(-1, cfg.vocab_size), targets.reshape(-1),
                              ignore_index=-100)
        close(got, ref, scale=10.0)  # NaN (nothing counted) only where torch gives NaN


@st.composite
def generate_calls(draw):
    V = SMALL["vocab_size"]
    B, T = draw(st.integers(0, 2)), draw(st.integers(1, 3))
    prompt = torch.randint(0, V, (B, T), generator=gen(draw(st.integers(0, 2**16))))
    kw = dict(max_new_tokens=draw(st.integers(0, 3)), temperature=0.0,
              eos_token_id=draw(st.sampled_from([None, 0, 3, V - 1])))
    if draw(st.booleans()):
        kw.update(temperature=draw(st.sampled_from([0.5, 1.0])),
                  top_k=draw(st.sampled_from([None, 1, 3])),
                  top_p=draw(st.sampled_from([None, 0.5, 1.0])))
    bad = draw(st.sampled_from([None] * 4 + ["max_new_tokens", "temperature", "top_k", "top_p",
                                             "eos_token_id", "input_ids"]))
    error = None
    if bad == "max_new_tokens":
        kw[bad], error = draw(st.sampled_from([(-1, ValueError), (True, TypeError),
                                               (1.5, TypeError)]))
    elif bad == "temperature":
        kw[bad], error = draw(st.sampled_from([(NAN, ValueError), (-1.0, ValueError),
                                               (INF, ValueError), ("hot", TypeError)]))
    elif bad == "top_k":
        kw[bad], error = draw(st.sampled_from(BAD_POSITIVE_INT))
    elif bad == "top_p":
        kw[bad], error = draw(st.sampled_from([(0.0, ValueError), (1.5, ValueError),
                                               (NAN, ValueError), ("0.9", TypeError)]))
    elif bad == "eos_token_id":
        kw[bad], error = draw(st.sampled_from([(V, ValueError), (-1, ValueError),
                                               (True, TypeError), (1.0, TypeError)]))
    elif bad == "input_ids":
        prompt, error = draw(st.sampled_from([(prompt[:, :0], ValueError),
                                              (prompt.float(), TypeError),
                                              (prompt.view(-1), ValueError)]))
    return prompt, kw, bad, error


def _greedy_oracle(model64, prompt, max_new_tokens, eos):
    """Greedy decoding by full forwards in fp64, no cache."""
    out = prompt.clone()
    finished = torch.zeros(prompt.shape[0], dtype=torch.bool)
    for _ in range(max_new_tokens):
        with torch.no_grad():
            nxt = model64(out)[:, -1].argmax(-1)
        if eos is not None:
            nxt = torch.where(finished, torch.full_like(nxt, eos), nxt)
            finished |= nxt == eos
        out = torch.cat([out, nxt[:, None]], 1)
        if eos is not None and bool(finished.all()):
            break
    return out


@examples(80)
@given(generate_calls(), st.integers(0, 2**16))
def test_generate(call, seed):
    prompt, kw, bad, error = call
    model, model64 = small_lm()
    V = model.config.vocab_size
    out = expect(lambda: model.generate(prompt, generator=gen(seed), **kw), bad, error,
                 names=("vocab_size",))
    if out is None:
        return
    B, T = prompt.shape
    assert out.shape[0] == B and torch.equal(out[:, :T], prompt)
    assert T <= out.shape[1] <= T + kw["max_new_tokens"]
    assert bool(((out >= 0) & (out < V)).all())
    if B and kw["temperature"] == 0.0:
        want = _greedy_oracle(model64, prompt, kw["max_new_tokens"], kw["eos_token_id"])
        assert torch.equal(out, want)


# --------------------------------------------------------------------- dilated attention

@st.composite
def dilated_calls(draw):
    B, H_kv, G = draw(st.integers(0, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 2))
    T, D = draw(st.integers(0, 10)), draw(st.integers(1, 4))
    H = H_kv * G
    g = gen(draw(st.integers(0, 2**16)))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    q, k = (torch.randn(B, h, T, D, generator=g, dtype=dtype) for h in (H, H_kv))
    v = torch.randn(B, H_kv, T, D + draw(st.integers(0, 1)), generator=g, dtype=dtype)
    rs = [draw(st.sampled_from([1, 2, 3, 10**9])) for _ in range(draw(st.integers(1, 2)))]
    ws = [r if r > 100 else r * draw(st.integers(1, 4)) for r in rs]  # huge rates: w = r
    kw = dict(segment_lengths=ws, dilation_rates=rs, causal=draw(st.booleans()),
              key_padding_mask=torch.rand(B, T, generator=g) > 0.3 if draw(st.booleans())
              else None)
    bad = draw(st.sampled_from([None] * 5 + ["segment_lengths", "dilation_rates", "causal",
                                             "key_padding_mask", "k"]))
    error = None
    if bad == "segment_lengths":
        # zero, no pattern, one length too many, not divisible by its rate, bool, float
        kw[bad], error = draw(st.sampled_from([([0] * len(rs), ValueError), ([], ValueError),
                                               (ws + ws[:1], ValueError),
                                               ([2 * r + 1 for r in rs], ValueError),
                                               ([True] * len(rs), TypeError),
                                               ([2.0] * len(rs), TypeError)]))
        if kw[bad] == [2 * r + 1 for r in rs] and rs == [1] * len(rs):
            kw[bad] = [0] * len(rs)  # every length divides by 1: spoil it another way
    elif bad == "dilation_rates":
        kw[bad], error = draw(st.sampled_from([([0] * len(rs), ValueError),
                                               ([True] * len(rs), TypeError)]))
    elif bad == "causal":
        kw[bad], error = draw(st.sampled_from(BAD_BOOL))
    elif bad == "key_padding_mask":
        kw[bad], error = draw(st.sampled_from([(torch.ones(B, T + 1, dtype=torch.bool),
                                                ValueError),
                                               (torch.ones(B, T), TypeError)]))
    elif bad == "k":
        k, error = k[:, :, : max(T - 1, 0)], ValueError
        if T == 0:
            k = torch.randn(B, H_kv, 1, D, dtype=dtype)
        v = v[:, :, : k.shape[2]] if v.shape[2] >= k.shape[2] else torch.randn(
            B, H_kv, k.shape[2], v.shape[-1], dtype=dtype)
    return q, k, v, kw, bad, error


@examples(150)
@given(dilated_calls())
def test_dilated_attention(call):
    q, k, v, kw, bad, error = call
    out = expect(lambda: dilated_attention(q, k, v, **kw), bad, error,
                 names=("segment_lengths", "dilation_rates", "T"))
    if out is None:
        return
    assert out.shape == (*q.shape[:3], v.shape[-1]) and out.dtype == q.dtype
    if out.numel():
        close(out, naive_dilated_attention(q, k, v, **kw))


def _flops_loop(seq_len, ws, rs, n_heads, head_dim, causal, batch):
    """The per-position loop dilated_attention_flops once was: the oracle of its closed form."""
    pairs = 0
    for h in range(n_heads):
        for w, r in zip(ws, rs, strict=True):
            for start in range(0, seq_len, w):
                m = len(range(start + h % r, min(start + w, seq_len), r))
                pairs += m * (m + 1) // 2 if causal else m * m
    return 4 * head_dim * pairs * batch


@examples(200)
@given(st.integers(0, 200), st.lists(st.tuples(st.integers(1, 6), st.integers(1, 40)),
                                     min_size=1, max_size=3),
       st.integers(1, 20), st.booleans(), st.integers(1, 3),
       st.sampled_from([None, "seq_len", "n_heads", "head_dim", "batch", "causal"]),
       st.integers(0, 4))
def test_dilated_flops(seq_len, patterns, n_heads, causal, batch, bad, pick):
    rs = [r for r, _ in patterns]
    ws = [r * m for r, m in patterns]
    kw = dict(segment_lengths=ws, dilation_rates=rs, n_heads=n_heads, head_dim=3,
              causal=causal, batch=batch)
    if bad == "seq_len":
        seq_len = [-1, -100, True, 2.0, "8"][pick]
    elif bad == "causal":
        kw["causal"] = BAD_BOOL[pick][0]
    elif bad is not None:
        kw[bad] = BAD_POSITIVE_INT[pick][0]
    got = expect(lambda: dilated_attention_flops(seq_len, **kw), bad)
    if got is not None:
        assert got == _flops_loop(seq_len, ws, rs, n_heads, 3, causal, batch)


def test_dilated_flops_of_a_long_sequence_is_instant():
    import time

    start = time.perf_counter()
    n = dilated_attention_flops(2**40, segment_lengths=[2048, 8192], dilation_rates=[1, 4],
                                n_heads=32, head_dim=128)
    assert time.perf_counter() - start < 0.1
    # Whole segments only (2^40 divides by both): 2 N w D / r^2 per product, per head.
    assert n == 32 * 2 * 2 * 2**40 * 128 * (2048 + 8192 // 16)


# ------------------------------------------------------------------------- focal losses

@st.composite
def focal_calls(draw):
    N, C = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dtype = draw(st.sampled_from([torch.float16, torch.bfloat16, torch.float32,
                                  torch.float64]))
    g = gen(draw(st.integers(0, 2**16)))
    spread = draw(st.sampled_from([1.0, 30.0, 6e4]))  # 6e4: near fp16's largest value
    logits = ((torch.rand(N, C, generator=g) * 2 - 1) * spread).to(dtype)
    target = torch.randint(0, C, (N,), generator=g)
    if draw(st.booleans()):
        target[0] = -100
    kw = dict(gamma=draw(st.sampled_from([0.0, 0.5, 2.0])),
              alpha=draw(st.sampled_from([None, 0.25, "per-class"])),
              reduction=draw(st.sampled_from(["none", "mean", "sum"])),
              label_smoothing=draw(st.sampled_from([0.0, 0.1])))
    if kw["alpha"] == "per-class":
        kw["alpha"] = torch.rand(C, generator=g) + 0.1
    bad = draw(st.sampled_from([None] * 5 + ["gamma", "reduction", "ignore_index",
                                             "label_smoothing", "target", "logits"]))
    error = None
    if bad == "gamma":
        kw[bad], error = draw(st.sampled_from([(-1.0, ValueError), (NAN, ValueError),
                                               ("2", TypeError), (True, TypeError)]))
    elif bad == "reduction":
        kw[bad], error = "avg", ValueError
    elif bad == "ignore_index":
        kw[bad], error = draw(st.sampled_from([("x", TypeError), (True, TypeError)]))
    elif bad == "label_smoothing":
        kw[bad], error = draw(st.sampled_from([(1.5, ValueError), (NAN, ValueError),
                                               ("0.1", TypeError)]))
    elif bad == "target":
        target, error = draw(st.sampled_from([(torch.full((N,), C), ValueError),
                                              (target.float(), TypeError),
                                              (torch.zeros(N + 1, dtype=torch.long),
                                               ValueError)]))
    elif bad == "logits":
        logits, error = logits.long(), TypeError
    return logits, target, kw, bad, error


@examples(200)
@given(focal_calls())
def test_focal_loss(call):
    logits, target, kw, bad, error = call
    loss = expect(lambda: focal_loss(logits, target, **kw), bad, error)
    if loss is None:
        return
    reduced = kw["reduction"] != "none"
    # Reduced losses stay in the fp32 they are summed in; per-element ones come back in
    # the logits' dtype. Both are computed from the (rounded) logits in fp32 or better,
    # so the oracle, rounded once to the result's dtype, is what must come back: a
    # per-element fp16 loss past 65504 is inf there too, a summed one never is.
    want_dtype = torch.promote_types(logits.dtype, torch.float32) if reduced else logits.dtype
    assert loss.dtype == want_dtype
    ref = focal_loss_reference(logits.double(), target, **kw).to(want_dtype).double()
    assert torch.equal(torch.isfinite(loss), torch.isfinite(ref))
    atol, rtol = TOLERANCES[want_dtype]
    # A 6e4 logit gap is a 6e4 loss: the tolerance is relative, the absolute part scaled.
    finite = ref[ref.isfinite()]
    size = float(finite.abs().max()) if finite.numel() else 1.0
    torch.testing.assert_close(loss.double(), ref, rtol=max(rtol, 1e-4),
                               atol=atol * max(1.0, size), equal_nan=True)


@examples(150)
@given(st.integers(1, 6), st.sampled_from([torch.float16, torch.bfloat16, torch.float32,
                                           torch.float64]),
       st.sampled_from([1.0, 30.0, 6e4]), st.sampled_from(["none", "mean", "sum", "positives"]),
       st.sampled_from([0.0, 0.5, 2.0]), st.sampled_from([0.25, -1.0]),
       st.sampled_from([None, "gamma", "alpha", "reduction", "targets"]), st.integers(0, 2**16))
def test_sigmoid_focal_loss(n, dtype, spread, reduction, gamma, alpha, bad, seed):
    g = gen(seed)
    logits = ((torch.rand(n, generator=g) * 2 - 1) * spread).to(dtype)
    targets = (torch.rand(n, generator=g) > 0.5).float()
    error = None
    if bad == "gamma":
        gamma, error = [(-0.5, ValueError), (NAN, ValueError), ("1", TypeError)][seed % 3]
    elif bad == "alpha":
        alpha, error = [(1.5, ValueError), (NAN, TypeError), ("0.25", TypeError)][seed % 3]
    elif bad == "reduction":
        reduction, error = "batchmean", ValueError
    elif bad == "targets":
        targets, error = [(torch.full((n,), 2.0), ValueError),
                          (torch.zeros(n + 1), ValueError)][seed % 2]
    loss = expect(lambda: sigmoid_focal_loss(logits, targets, gamma=gamma, alpha=alpha,
                                             reduction=reduction), bad, error)
    if loss is None:
        return
    per = torch.tensor([sigmoid_focal_reference(float(x), float(t), gamma=gamma, alpha=alpha)
                        for x, t in zip(logits.double(), targets, strict=True)],
                       dtype=torch.float64)
    ref = {"none": per, "mean": per.mean(), "sum": per.sum(),
           "positives": per.sum() / max(1.0, float(targets.sum()))}[reduction]
    want_dtype = logits.dtype if reduction == "none" else torch.promote_types(logits.dtype,
                                                                             torch.float32)
    assert loss.dtype == want_dtype and torch.isfinite(loss).all()
    ref = ref.to(want_dtype).double()  # the oracle rounded once to the result's dtype
    atol, rtol = TOLERANCES[want_dtype]
    torch.testing.assert_close(loss.double(), ref, rtol=max(rtol, 1e-4),
                               atol=atol * max(1.0, float(ref.abs().max())))


# ----------------------------------------------------------------- knowledge distillation

getcontext().prec = 60


def kd_exact(student: torch.Tensor, teacher: torch.Tensor, temperature: float,
             reverse: bool = False) -> float:
    """T^2 KL(softmax(teacher/T) || softmax(student/T)), mean over rows, in 60-digit
    decimal arithmetic: no cancellation at any temperature (fp64 itself loses T^2 ulps)."""
    T = Decimal(temperature)
    rows = []
    for zs, zt in zip(student.double().tolist(), teacher.double().tolist(), strict=True):
        a = [Decimal(x) / T for x in (zs if reverse else zt)]
        b = [Decimal(x) / T for x in (zt if reverse else zs)]
        la = max(a) + sum((x - max(a)).exp() for x in a).ln()
        lb = max(b) + sum((x - max(b)).exp() for x in b).ln()
        rows.append(sum((x - la).exp() * ((x - la) - (y - lb)) for x, y in zip(a, b,
                                                                              strict=True)))
    return float(sum(rows) / len(rows) * T * T)


@examples(200)
@given(st.integers(1, 3), st.integers(1, 6), st.sampled_from([torch.float32, torch.float64]),
       st.floats(-1.0, 8.0), st.sampled_from(["far", "near"]), st.booleans(),
       st.sampled_from([None, "temperature", "direction", "mask", "teacher_logits"]),
       st.integers(0, 2**16))
def test_kd_loss(n, c, dtype, log_t, how, reverse, bad, seed):
    g = gen(seed)
    teacher = torch.randn(n, c, generator=g, dtype=dtype) * 3
    noise = torch.randn(n, c, generator=g, dtype=dtype)
    student = teacher + (noise * 3 if how == "far" else noise * 1e-2)
    temperature, error = 10.0 ** log_t, None
    kw = dict(direction="reverse" if reverse else "forward", mask=None)
    if bad == "temperature":
        temperature, error = BAD_POSITIVE_FLOAT[seed % len(BAD_POSITIVE_FLOAT)]
    elif bad == "direction":
        kw["direction"], error = "both", ValueError
    elif bad == "mask":
        kw["mask"], error = [(torch.ones(n + 1, dtype=torch.bool), ValueError),
                             (torch.ones(n), TypeError)][seed % 2]
    elif bad == "teacher_logits":
        teacher, error = teacher[:, :0] if c > 1 else teacher[:0], ValueError
    loss = expect(lambda: kd_loss(student, teacher, temperature=temperature, **kw), bad, error,
                  names=("student_logits", "logits"))
    if loss is None:
        return
    ref = kd_exact(student, teacher, temperature, reverse)
    assert loss.dtype == dtype and loss.dim() == 0
    eps = torch.finfo(dtype).eps
    if temperature > 32:
        # The centred formula: a few ulps of the result, whatever the temperature.
        tol = 64 * eps * abs(ref) + 1e-30
    else:
        # The fused path forms log p - log q: about eps (log C + |z| / T) per term,
        # times T^2 -- the cancellation that stays below the centred path's switch.
        zmax = float(max(teacher.abs().max(), student.abs().max()))
        tol = 8 * eps * temperature**2 * (math.log(c) + 1 + zmax / temperature) + 1e-6 * abs(ref)
    assert abs(float(loss) - ref) <= tol, (float(loss), ref, temperature)
    assert float(loss) >= -tol  # never a (really) negative KL


@examples(60)
@given(st.sampled_from([None, "alpha", "temperature", "ignore_index", "target"]),
       st.integers(0, 2**16))
def test_distillation_loss(bad, seed):
    g = gen(seed)
    s, t = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    target = torch.randint(0, 5, (4,), generator=g)
    kw = dict(alpha=0.5, temperature=2.0, ignore_index=-100)
    error = None
    if bad == "alpha":
        kw["alpha"], error = [(1.5, ValueError), (NAN, ValueError), ("0.5", TypeError)][seed % 3]
    elif bad == "temperature":
        kw["temperature"], error = BAD_POSITIVE_FLOAT[seed % len(BAD_POSITIVE_FLOAT)]
    elif bad == "ignore_index":
        kw["ignore_index"], error = [("x", TypeError), (True, TypeError),
                                     (1.5, TypeError)][seed % 3]
    elif bad == "target":
        target, error = [(torch.tensor([0, 1, 5, 1]), ValueError),
                         (torch.zeros(4), TypeError)][seed % 2]
    loss = expect(lambda: DistillationLoss(**kw)(s, t, target), bad, error)
    if loss is not None:
        ce = F.cross_entropy(s.double(), target)
        close(loss, 0.5 * kd_exact(s, t, 2.0) + 0.5 * ce)


# ------------------------------------------------------------- Attention, l1_penalty

@examples(80)
@given(st.sampled_from([None, "d_model", "n_heads", "n_kv_heads", "head_dim", "window", "bias",
                        "causal", "cache"]),
       st.integers(0, 4), st.integers(0, 2**16))
def test_attention_module(bad, pick, seed):
    kw = dict(n_kv_heads=2, head_dim=None, window=None, bias=False)
    d_model, n_heads, error = 16, 4, None
    if bad == "d_model":
        d_model, error = BAD_POSITIVE_INT[pick]
    elif bad == "n_heads":
        n_heads, error = BAD_POSITIVE_INT[pick]
    elif bad in ("n_kv_heads", "head_dim", "window"):
        kw[bad], error = BAD_POSITIVE_INT[pick]
    elif bad == "bias":
        kw["bias"], error = BAD_BOOL[pick]
    ctor_bad = None if bad in ("causal", "cache") else bad
    attn = expect(lambda: Attention(d_model, n_heads, **kw), ctor_bad, error,
                  names=("n_heads",))
    if attn is None:
        return
    x = torch.randn(2, 3, 16, generator=gen(seed))
    cache, causal = None, True
    if bad == "causal":
        causal = BAD_BOOL[pick][0]
    elif bad == "cache":
        sizes = dict(n_layers=1, batch=2, n_kv_heads=2, head_dim=4, max_seq_len=4)
        key = ["batch", "n_kv_heads", "head_dim", "max_seq_len", "n_layers"][pick]
        sizes[key] = {"max_seq_len": 2, "n_layers": 1}.get(key, sizes[key] + 1)
        if key == "n_layers":
            attn.layer_idx = 1  # a second layer's slice of a one-layer cache
        cache = KVCache(**sizes)
    out = expect(lambda: attn(x, causal=causal, cache=cache),
                 {"causal": "causal", "cache": "cache"}.get(bad), names=("layer", "max_seq_len"))
    if out is not None:
        with torch.no_grad():
            ref = copy.deepcopy(attn).double()(x.double(), causal=True)
        close(out, ref)


@pytest.mark.parametrize(("modules", "error", "name"), [
    ([], ValueError, "modules"),
    (["nope"], ValueError, "modules"),
    ([3], TypeError, "modules"),
])
def test_l1_penalty_modules(modules, error, name):
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    expect(lambda: l1_penalty(model, modules=modules), name, error)
