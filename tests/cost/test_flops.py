"""The cost model against counted FLOPs, real parameter counts and real KV caches.

What is cross-checked, and how:

* projections (q, k, v, output; ``aten.mm``/``addmm``): FlopCounterMode on blocklab's
  own ``Attention`` and ``TransformerLM`` as they run;
* scores and weighted sum: FlopCounterMode does not count torch's CPU SDPA kernel
  (pytorch#195460), so SDPA is replaced by an explicit ``matmul -> softmax -> matmul``
  path on the same grouped (B, H_kv, G T, D) tensors blocklab passes it; that path
  computes every (query, key) pair, so it is compared with ``causal=False`` counts;
* the causal pair count, against ``causal_mask(T, S, window=...).sum()``, the mask the
  library itself applies;
* backward: the counter over forward + backward equals ``training_flops`` (3x);
* parameters: ``TransformerLM(config).num_parameters()`` on the meta device for every
  preset, and the counts published for the released checkpoints;
* KV cache: ``KVCache(...).nbytes`` and the per-token numbers in REFERENCES.md.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from blocklab.attention import Attention, KVCache, causal_mask
from blocklab.cost import (
    MODEL_PRESETS,
    PUBLISHED_PARAMS,
    REAL_MODELS,
    attention_cost,
    attention_pairs,
    count_parameters,
    crossover_seq_len,
    decode_step_bytes,
    kv_cache_bytes,
    model_config,
    parse_dtype,
    transformer_cost,
)
from blocklab.cost.flops import PROJECTIONS, human
from blocklab.models import TransformerConfig, TransformerLM

KiB = 1024


def explicit_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                  enable_gqa=False):
    """torch's SDPA written as two matmuls, so FlopCounterMode sees them (every pair).

    With ``enable_gqa`` the G query heads of a group share one K/V head by broadcasting,
    (B, H_kv, G, T, D) against (B, H_kv, 1, S, D): nothing is copied or counted twice.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    B, H, T, D = q.shape
    H_kv, S = k.shape[1], k.shape[2]
    G = H // H_kv if enable_gqa else 1
    qg = q.reshape(B, H_kv, G, T, D) if G > 1 else q
    kg, vg = (k.unsqueeze(2), v.unsqueeze(2)) if G > 1 else (k, v)
    s = torch.matmul(qg, kg.transpose(-1, -2)) * scale  # (..., T, S)
    if is_causal:
        attn_mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril()
    if attn_mask is not None:
        s = s.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool \
            else s + attn_mask
    out = torch.matmul(torch.softmax(s, dim=-1), vg)
    return out.reshape(B, H, T, v.shape[-1])


@pytest.fixture
def counted_sdpa(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(F, "scaled_dot_product_attention", explicit_sdpa)


def count(fn) -> tuple[int, dict[str, int]]:
    with FlopCounterMode(display=False) as counter:
        fn()
    by_op = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    return counter.get_total_flops(), by_op


# ------------------------------------------------------------------ attention layer

HEADS = [(64, 8, 8), (64, 8, 2), (64, 8, 1), (48, 4, 1), (96, 6, 3)]


@pytest.mark.parametrize("d_model,n_heads,n_kv_heads", HEADS)
@pytest.mark.parametrize("batch,seq_len", [(1, 7), (3, 16)])
def test_attention_matches_flop_counter(counted_sdpa, d_model, n_heads, n_kv_heads, batch,
                                        seq_len) -> None:
    attn = Attention(d_model, n_heads, n_kv_heads=n_kv_heads)
    x = torch.randn(batch, seq_len, d_model, requires_grad=True)
    total, by_op = count(lambda: attn(x))
    cost = attention_cost(seq_len=seq_len, d_model=d_model, n_heads=n_heads,
                          n_kv_heads=n_kv_heads, batch=batch)
    assert total == cost.flops
    assert by_op["aten.mm"] == cost.projection_flops  # the four projections
    assert by_op["aten.bmm"] == cost.score_flops  # Q K^T and A V on grouped heads

    total, _ = count(lambda: attn(x).sum().backward())
    assert total == cost.training_flops == 3 * cost.flops


def test_projections_counted_without_patching() -> None:
    """As it runs on CPU the counter sees the projections and, depending on the kernel
    torch picks, either nothing or the whole rectangle of the attention core."""
    attn = Attention(64, 8, n_kv_heads=2)
    total, _ = count(lambda: attn(torch.randn(2, 16, 64), causal=True))
    cost = attention_cost(seq_len=16, d_model=64, n_heads=8, n_kv_heads=2, batch=2)
    assert total in (cost.projection_flops, cost.flops)


def test_decode_step_matches_flop_counter(counted_sdpa) -> None:
    """One new token against a cache: the projections see T = 1, the core S keys."""
    attn = Attention(64, 8, n_kv_heads=2)
    cache = KVCache(n_layers=1, batch=2, n_kv_heads=2, head_dim=8, max_seq_len=32)
    attn(torch.randn(2, 20, 64), causal=True, cache=cache)
    cache.advance(20)
    total, _ = count(lambda: attn(torch.randn(2, 1, 64), causal=True, cache=cache))
    cost = attention_cost(seq_len=1, kv_len=21, d_model=64, n_heads=8, n_kv_heads=2, batch=2,
                          causal=True)
    assert cost.pairs == 21  # the last query sees every key
    assert total == cost.flops


def test_real_shapes_on_meta(counted_sdpa) -> None:
    """Llama-2-70B's attention layer at 4096 tokens, counted without allocating it."""
    cfg = model_config("llama-2-70b")
    with torch.device("meta"):
        attn = Attention(cfg.d_model, cfg.n_heads, n_kv_heads=cfg.kv_heads)
        x = torch.empty(1, 4096, cfg.d_model)
    total, _ = count(lambda: attn(x))
    cost = attention_cost(seq_len=4096, d_model=cfg.d_model, n_heads=cfg.n_heads,
                          n_kv_heads=cfg.kv_heads)
    assert total == cost.flops
    assert cost.flops == 1_786_706_395_136


@pytest.mark.parametrize("T,S,window", [(1, 1, None), (8, 8, None), (5, 8, None), (1, 9, None),
                                        (12, 12, 4), (3, 12, 4), (16, 40, 7), (6, 6, 10)])
def test_causal_pairs_equal_the_library_mask(T, S, window) -> None:
    expected = int(causal_mask(T, S, window=window).sum())
    assert attention_pairs(T, S, causal=True, window=window) == expected
    if window is None:
        assert expected == T * (S - T) + T * (T + 1) // 2
    cost = attention_cost(seq_len=T, kv_len=S, d_model=32, n_heads=4, n_kv_heads=2,
                          causal=True, window=window)
    assert cost.breakdown["scores"] == cost.breakdown["av"] == 2 * 4 * expected * 8


def test_causal_counts_the_useful_half() -> None:
    full = attention_cost(seq_len=4096, d_model=4096, n_heads=32)
    causal = attention_cost(seq_len=4096, d_model=4096, n_heads=32, causal=True)
    assert causal.projection_flops == full.projection_flops
    assert causal.score_flops / full.score_flops == pytest.approx(0.5, abs=1e-3)


def test_breakdown_formulas_and_elementwise_apart() -> None:
    B, T, S, C, H, H_kv, D = 2, 10, 30, 64, 8, 2, 8
    cost = attention_cost(seq_len=T, kv_len=S, d_model=C, n_heads=H, n_kv_heads=H_kv, batch=B)
    assert cost.breakdown["q_proj"] == 2 * B * T * C * H * D
    assert cost.breakdown["k_proj"] == cost.breakdown["v_proj"] == 2 * B * T * C * H_kv * D
    assert cost.breakdown["scores"] == cost.breakdown["av"] == 2 * B * H * T * S * D
    assert cost.breakdown["out_proj"] == 2 * B * T * H * D * C
    assert cost.breakdown["softmax"] == 5 * B * H * T * S
    assert cost.flops == sum(v for k, v in cost.breakdown.items() if k not in ("scale", "softmax"))
    assert cost.elementwise_flops == cost.breakdown["scale"] + cost.breakdown["softmax"]
    assert cost.backward_flops == 2 * cost.flops
    assert cost.params == C * (H + 2 * H_kv) * D + H * D * C


def test_bytes_read_once_per_kv_head() -> None:
    """Decoding one token: the K/V bytes read shrink by H / H_kv, and equal the cache."""
    common = dict(seq_len=1, kv_len=4096, d_model=4096, n_heads=32, dtype=torch.bfloat16)
    mha = attention_cost(**common)
    mqa = attention_cost(**common, n_kv_heads=1)
    q_and_out = 2 * 32 * 128 * 2
    assert mha.bytes["attention_io"] - q_and_out == 32 * (mqa.bytes["attention_io"] - q_and_out)
    assert mha.bytes["attention_io"] - q_and_out == mha.kv_cache_bytes
    assert mqa.scores_matrix_bytes == mha.scores_matrix_bytes  # probabilities are per query head
    assert mha.activation_bytes_materialised > mha.activation_bytes


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n_kv_heads", [8, 2, 1])
def test_crossover(causal, n_kv_heads) -> None:
    n = crossover_seq_len(d_model=64, n_heads=8, n_kv_heads=n_kv_heads, causal=causal)
    assert n == int(n)
    cost = attention_cost(seq_len=int(n), d_model=64, n_heads=8, n_kv_heads=n_kv_heads,
                          causal=causal)
    assert cost.score_flops == cost.projection_flops
    longer = attention_cost(seq_len=int(n) + 1, d_model=64, n_heads=8, n_kv_heads=n_kv_heads,
                            causal=causal)
    assert longer.score_flops > longer.projection_flops
    assert crossover_seq_len(d_model=4096, n_heads=32) == 8192  # MHA: n = 2 C


@pytest.mark.parametrize("window", [30, 40, 50, 60, 79, 100, 1000])
def test_crossover_with_a_sliding_window(window) -> None:
    """C=32, H=4, H_kv=1: x = 40 pairs per query; causal crossover 79 without a window."""
    n = crossover_seq_len(d_model=32, n_heads=4, n_kv_heads=1, causal=True, window=window)
    if window <= 40:
        assert n == math.inf
        big = attention_cost(seq_len=4000, d_model=32, n_heads=4, n_kv_heads=1, causal=True,
                             window=window)
        assert big.score_flops < big.projection_flops
        return
    assert (n == 79) == (window >= 79)

    def ahead(length: int) -> bool:
        c = attention_cost(seq_len=length, d_model=32, n_heads=4, n_kv_heads=1, causal=True,
                           window=window)
        return c.score_flops >= c.projection_flops

    assert not ahead(math.floor(n) - 1 if n == int(n) else math.floor(n))
    assert ahead(math.ceil(n))
    with pytest.raises(ValueError, match="window is a causal sliding window"):
        crossover_seq_len(d_model=32, n_heads=4, window=8)


# --------------------------------------------------------------------- whole model

SMALL_CONFIGS = [
    TransformerConfig(vocab_size=97, d_model=64, n_layers=2, n_heads=8, n_kv_heads=2),
    TransformerConfig(vocab_size=97, d_model=48, n_layers=3, n_heads=4, n_kv_heads=1,
                      activation="gelu", norm="layernorm", position="learned", qkv_bias=True,
                      out_bias=True, ffn_bias=True, tie_embeddings=True, max_seq_len=64),
    TransformerConfig(vocab_size=97, d_model=64, n_layers=1, n_heads=4, head_dim=32,
                      rope_interleaved=True, activation="reglu", ffn_bias=True),
]


@pytest.mark.parametrize("config", SMALL_CONFIGS, ids=["gqa-swiglu", "mqa-gpt", "mha-hd32"])
def test_transformer_matches_flop_counter(counted_sdpa, config) -> None:
    model = TransformerLM(config)
    x = torch.randint(0, config.vocab_size, (3, 20))
    cost = transformer_cost(config, 20, batch=3, causal=False)
    total, _ = count(lambda: model(x))
    assert total == cost.flops

    def train_step() -> None:
        logits = model(x)
        F.cross_entropy(logits.flatten(0, 1), x.flatten()).backward()

    total, _ = count(train_step)
    assert total == cost.training_flops
    assert cost.params == model.num_parameters()
    assert cost.flops_per_token == cost.flops / 60


@pytest.mark.parametrize("name", sorted(MODEL_PRESETS))
def test_params_equal_numel_on_meta(name) -> None:
    config = model_config(name)
    with torch.device("meta"):
        model = TransformerLM(config)
    assert transformer_cost(config, 16).params == model.num_parameters() == count_parameters(
        config)


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_params_equal_published(name) -> None:
    config = model_config(name)
    got = count_parameters(config)
    if name == "falcon-7b":  # one shared LayerNorm per layer in parallel attention
        got -= config.n_layers * 2 * config.d_model
    assert got == PUBLISHED_PARAMS[name]


def test_real_model_numbers() -> None:
    cost = transformer_cost("llama-2-7b", 4096)
    # 2 N per token up to the attention core and the embedding lookup.
    assert cost.flops_per_token == pytest.approx(2 * cost.params, rel=0.07)
    assert cost.flops_per_token > 2 * (cost.params - 32000 * 4096)
    assert cost.training_flops == 3 * cost.flops
    assert cost.kaplan_flops_per_token == pytest.approx(cost.flops_per_token, rel=0.05)
    assert 0.05 < cost.score_fraction < 0.1
    mistral = transformer_cost("mistral-7b", 32768)
    assert mistral.attention.pairs == attention_pairs(32768, causal=True, window=4096)
    assert set(REAL_MODELS) <= set(MODEL_PRESETS)


# -------------------------------------------------------------------------- memory

@pytest.mark.parametrize("name,kib", [("llama-2-7b", 512), ("llama-2-70b", 320),
                                      ("mistral-7b", 128), ("falcon-7b", 8)])
def test_kv_cache_per_token_matches_references(name, kib) -> None:
    cfg = model_config(name)
    per_token = kv_cache_bytes(n_layers=cfg.n_layers, n_kv_heads=cfg.kv_heads,
                               head_dim=cfg.dim_head, seq_len=1, dtype=torch.bfloat16)
    assert per_token == kib * KiB
    assert transformer_cost(cfg, 4096, dtype="bf16").kv_cache_bytes == 4096 * kib * KiB


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n_kv_heads", [8, 2, 1])
def test_kv_cache_bytes_equal_kvcache_nbytes(dtype, n_kv_heads) -> None:
    cache = KVCache(n_layers=3, batch=2, n_kv_heads=n_kv_heads, head_dim=16, max_seq_len=40,
                    dtype=dtype)
    assert cache.nbytes == kv_cache_bytes(n_layers=3, n_kv_heads=n_kv_heads, head_dim=16,
                                          seq_len=40, batch=2, dtype=dtype)
    config = TransformerConfig(vocab_size=50, d_model=64, n_layers=3, n_heads=8,
                               n_kv_heads=n_kv_heads)
    made = TransformerLM(config).make_cache(2, 40, dtype=dtype)
    assert made.nbytes == transformer_cost(config, 40, batch=2, dtype=dtype).kv_cache_bytes


def test_decode_step_bytes() -> None:
    cfg = model_config("llama-2-7b")
    step = decode_step_bytes(cfg, context=4096, dtype="bf16")
    assert step["kv_cache"] == 4096 * 512 * KiB
    assert step["weights"] == 2 * (cfg_params := count_parameters(cfg)) - 2 * (
        32000 * 4096 - 4096)
    assert step["total"] == step["weights"] + step["kv_cache"]
    assert cfg_params == 6_738_415_616


# -------------------------------------------------------------------------- errors

@pytest.mark.parametrize("kwargs,match", [
    (dict(seq_len=0, d_model=64, n_heads=8), r"seq_len \(0\) must be a positive int"),
    (dict(seq_len=8, d_model=-64, n_heads=8), r"d_model \(-64\) must be a positive int"),
    (dict(seq_len=8, d_model=64, n_heads=0), r"n_heads \(0\) must be a positive int"),
    (dict(seq_len=8, d_model=64, n_heads=8, n_kv_heads=0), r"n_kv_heads \(0\)"),
    (dict(seq_len=8, d_model=64, n_heads=8, batch=-1), r"batch \(-1\)"),
    (dict(seq_len=8, d_model=64, n_heads=8, kv_len=0), r"kv_len \(0\)"),
    (dict(seq_len=8, d_model=64, n_heads=8, kv_len=4), r"kv_len \(4\) must be >= seq_len \(8\)"),
    (dict(seq_len=8, d_model=64, n_heads=8, n_kv_heads=3),
     r"n_heads \(8\) must be divisible by n_kv_heads \(3\)"),
    (dict(seq_len=8, d_model=64, n_heads=8, n_kv_heads=16),
     r"n_kv_heads \(16\) must not exceed n_heads \(8\)"),
    (dict(seq_len=8, d_model=60, n_heads=8), r"d_model \(60\) must be divisible by n_heads"),
    (dict(seq_len=8, d_model=64, n_heads=8, head_dim=0), r"head_dim \(0\)"),
    (dict(seq_len=8, d_model=64, n_heads=8, window=4), r"window is a causal sliding window"),
    (dict(seq_len=8, d_model=64, n_heads=8, causal=True, window=0), r"window \(0\)"),
    (dict(seq_len=8, d_model=64, n_heads=8, dtype="fp7"), r"dtype \('fp7'\)"),
])
def test_attention_cost_refuses_bad_sizes(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        attention_cost(**kwargs)


def test_type_errors_and_other_refusals() -> None:
    with pytest.raises(TypeError, match=r"seq_len must be an int, got float"):
        attention_cost(seq_len=8.0, d_model=64, n_heads=8)
    with pytest.raises(TypeError, match=r"batch must be an int, got bool"):
        attention_cost(seq_len=8, d_model=64, n_heads=8, batch=True)
    with pytest.raises(ValueError, match=r"seq_len \(0\)"):
        kv_cache_bytes(n_layers=1, n_kv_heads=1, head_dim=8, seq_len=0)
    with pytest.raises(ValueError, match=r"n_layers \(-2\)"):
        kv_cache_bytes(n_layers=-2, n_kv_heads=1, head_dim=8, seq_len=4)
    with pytest.raises(ValueError, match=r"seq_len \(0\)"):
        transformer_cost("tiny", 0)
    with pytest.raises(ValueError, match=r"unknown model 'llama-9'"):
        transformer_cost("llama-9", 16)
    with pytest.raises(TypeError, match=r"config must be a TransformerConfig"):
        transformer_cost(42, 16)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"kv_len \(2048\) exceeds the learned position table"):
        transformer_cost("gpt2", 16, kv_len=2048)
    with pytest.raises(ValueError, match=r"context \(0\)"):
        decode_step_bytes(model_config("tiny"), context=0)


def test_helpers() -> None:
    assert parse_dtype("BF16") is torch.bfloat16 and parse_dtype(torch.float32) is torch.float32
    assert human(1_234_567, "FLOP") == "1.23 MFLOP"
    assert human(0) == "0" and human(12) == "12"
    assert PROJECTIONS == ("q_proj", "k_proj", "v_proj", "out_proj")
