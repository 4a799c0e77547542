"""The computational cost of attention, and of a whole TransformerLM, counted analytically.

Convention: 2 FLOPs per multiply-add, as ``torch.utils.flop_counter.FlopCounterMode``,
Kaplan et al. 2020 and PaLM count. For one attention layer over B sequences of T
queries and S keys (S = T without a cache), model width C, H query heads, H_kv
key/value heads, head dim D, the matmuls of a forward pass are

    q projection        2 B T C H D
    k, v projections    2 B T C H_kv D each      (only the T new positions)
    scores  Q K^T       2 B H P D                 P = T S (query, key) pairs
    weighted sum  A V   2 B H P D
    output projection   2 B T H D C

With a causal mask aligned to the end (query i at absolute position S - T + i) only
P = T (S - T) + T (T + 1) / 2 pairs are useful -- about half when T = S -- and that is
what is counted, as Megatron and MaxText do (flash-attention's kernels skip the
masked half; FlopCounterMode does not, flash-attention#594). A sliding window W
leaves min(p + 1, W) keys to the query at position p.

Two regimes: the projections cost O(n d^2), scores and weighted sum O(n^2 d). With
H D = C they are equal at n = C (1 + H_kv / H) for full attention and
n = 2 C (1 + H_kv / H) - 1 causal (:func:`crossover_seq_len`); head_dim cancels.

Elementwise work (the scale, the softmax) is listed apart and never added to
``flops``: one FLOP per element per operation, a transcendental counting one. The
backward pass of every matmul costs two of the forward (gradient of the input and
of the weight, or of both operands), so training is 3x the forward; a kernel that
recomputes the scores in its backward (flash attention) does one more Q K^T.

Bytes are those a fused attention kernel moves (the score matrix stays on chip);
``*_materialised`` adds writing and reading the (B, H, T, S) score and probability
matrices, as the plain math path does.

Cross-checked in ``tests/cost/test_flops.py`` against FlopCounterMode on blocklab's
own modules (projections as run; scores and weighted sum through an explicit matmul
path, since the counter does not see torch's CPU SDPA kernel, pytorch#195460), the
causal pair count against ``causal_mask(...).sum()``, and parameter counts against
``TransformerLM(config).num_parameters()``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from blocklab.cost.memory import check_positive, dtype_bytes, kv_cache_bytes, parse_dtype

if TYPE_CHECKING:
    from blocklab.models.config import TransformerConfig

__all__ = [
    "AttentionCost",
    "ModelCost",
    "attention_cost",
    "transformer_cost",
    "attention_pairs",
    "crossover_seq_len",
    "count_parameters",
    "ATTENTION_MATMULS",
    "PROJECTIONS",
    "SCORE_PARTS",
]

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")  # O(n d^2)
SCORE_PARTS = ("scores", "av")  # O(n^2 d)
ATTENTION_MATMULS = ("q_proj", "k_proj", "v_proj", "scores", "av", "out_proj")
ATTENTION_ELEMENTWISE = ("scale", "softmax")
FFN_MATMULS = ("ffn_in", "ffn_out")
MODEL_MATMULS = ATTENTION_MATMULS + FFN_MATMULS + ("lm_head",)

# Elementwise operations per element (approximate; counted one per op).
SOFTMAX_OPS = 5  # max, subtract, exp, sum, divide
SOFTMAX_BACKWARD_OPS = 4  # dS = P * (dP - sum(P * dP)): multiply, sum, subtract, multiply
NORM_OPS = {"rmsnorm": 4, "layernorm": 7}  # rms: square, mean, scale, gain
ROPE_OPS = 3  # x cos + rotate(x) sin per rotated feature
LSE_BYTES = 4  # flash attention keeps one fp32 log-sum-exp per query row for its backward


def attention_pairs(seq_len: int, kv_len: int | None = None, *, causal: bool = False,
                    window: int | None = None) -> int:
    """(query, key) pairs one head scores for one sequence.

    All T S without a mask; causal (end-aligned, query i at position S - T + i) the
    query at position p sees min(p + 1, window) keys.
    """
    S = seq_len if kv_len is None else kv_len
    check_positive(seq_len=seq_len, kv_len=S)
    if S < seq_len:
        raise ValueError(f"kv_len ({S}) must be >= seq_len ({seq_len}): the queries' "
                         "own keys are among the keys")
    if window is not None:
        check_positive(window=window)
        if not causal:
            raise ValueError("window is a causal sliding window: pass causal=True with it")
    if not causal:
        return seq_len * S
    W = S if window is None else min(window, S)
    lo, hi = S - seq_len + 1, S  # queries see m = p + 1 keys, m in [lo, hi], capped at W

    def tri(a: int, b: int) -> int:  # a + ... + b, 0 if b < a
        return (a + b) * (b - a + 1) // 2 if b >= a else 0

    return tri(lo, min(hi, W)) + W * max(0, hi - max(lo, W + 1) + 1)


@dataclass(frozen=True)
class AttentionCost:
    """The cost of one attention layer's forward pass (and its backward).

    Attributes:
        seq_len, kv_len, d_model, n_heads, n_kv_heads, head_dim, batch, causal, window:
            the shape counted (T, S, C, H, H_kv, D, B).
        pairs: (query, key) pairs per head and sequence actually scored.
        breakdown: forward FLOPs by part: the matmuls ``ATTENTION_MATMULS`` then the
            elementwise ``scale`` and ``softmax`` (not part of ``flops``).
        backward: backward FLOPs by the same parts.
        bytes: bytes a fused kernel moves, by part: ``weights``, ``qkv_proj_io``
            (read x, write q, k, v), ``attention_io`` (read q, each K/V head once, write
            the output), ``out_proj_io``.
        scores_matrix_bytes: what materialising scores and probabilities adds
            (write and read each of the (B, H, T, S) matrices).
        activation_bytes: saved for the backward pass with a fused kernel: x, q, k, v,
            the attention output, one fp32 log-sum-exp per query row.
        activation_bytes_materialised: the math path saves the (B, H, T, S)
            probabilities instead of the log-sum-exp.
    """

    seq_len: int
    kv_len: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    batch: int
    causal: bool
    window: int | None
    dtype: torch.dtype
    pairs: int
    breakdown: dict[str, int] = field(repr=False)
    backward: dict[str, int] = field(repr=False)
    bytes: dict[str, int] = field(repr=False)
    scores_matrix_bytes: int = field(repr=False)
    activation_bytes: int = field(repr=False)
    activation_bytes_materialised: int = field(repr=False)

    @property
    def flops(self) -> int:
        """Matmul FLOPs of one forward pass (2 per multiply-add)."""
        return sum(self.breakdown[p] for p in ATTENTION_MATMULS)

    @property
    def elementwise_flops(self) -> int:
        """Scale and softmax, one FLOP per element per operation (forward)."""
        return sum(self.breakdown[p] for p in ATTENTION_ELEMENTWISE)

    @property
    def projection_flops(self) -> int:
        """The O(n d^2) part: q, k, v and output projections."""
        return sum(self.breakdown[p] for p in PROJECTIONS)

    @property
    def score_flops(self) -> int:
        """The O(n^2 d) part: Q K^T and A V."""
        return sum(self.breakdown[p] for p in SCORE_PARTS)

    @property
    def backward_flops(self) -> int:
        """Matmul FLOPs of the backward pass (2x the forward)."""
        return sum(self.backward[p] for p in ATTENTION_MATMULS)

    @property
    def training_flops(self) -> int:
        """Forward + backward matmul FLOPs."""
        return self.flops + self.backward_flops

    @property
    def params(self) -> int:
        """Weights of the q/k/v and output projections (no biases)."""
        C, H, H_kv, D = self.d_model, self.n_heads, self.n_kv_heads, self.head_dim
        return C * (H + 2 * H_kv) * D + H * D * C

    @property
    def bytes_moved(self) -> int:
        """Bytes a fused kernel moves in the forward pass."""
        return sum(self.bytes.values())

    @property
    def bytes_moved_materialised(self) -> int:
        return self.bytes_moved + self.scores_matrix_bytes

    @property
    def arithmetic_intensity(self) -> float:
        """Matmul FLOPs per byte moved (fused)."""
        return self.flops / self.bytes_moved

    @property
    def kv_cache_bytes(self) -> int:
        """The keys and values of S positions this layer keeps."""
        return kv_cache_bytes(n_layers=1, n_kv_heads=self.n_kv_heads, head_dim=self.head_dim,
                              seq_len=self.kv_len, batch=self.batch, dtype=self.dtype)


def _check_heads(d_model: int, n_heads: int, n_kv_heads: int | None,
                 head_dim: int | None) -> tuple[int, int]:
    check_positive(d_model=d_model, n_heads=n_heads)
    H_kv = n_heads if n_kv_heads is None else n_kv_heads
    check_positive(n_kv_heads=H_kv)
    if H_kv > n_heads:
        raise ValueError(f"n_kv_heads ({H_kv}) must not exceed n_heads ({n_heads})")
    if n_heads % H_kv:
        raise ValueError(f"n_heads ({n_heads}) must be divisible by n_kv_heads ({H_kv})")
    if head_dim is None:
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads}) "
                             "when head_dim is not given")
        head_dim = d_model // n_heads
    check_positive(head_dim=head_dim)
    return H_kv, head_dim


def attention_cost(
    *,
    seq_len: int,
    d_model: int,
    n_heads: int,
    n_kv_heads: int | None = None,
    batch: int = 1,
    causal: bool = False,
    kv_len: int | None = None,
    head_dim: int | None = None,
    window: int | None = None,
    dtype: torch.dtype | str = torch.float16,
) -> AttentionCost:
    """FLOPs, bytes and activation memory of one attention layer (see the module doc).

    Args:
        seq_len: T, query positions per sequence (1 for a decoding step).
        d_model: C.
        n_heads: H query heads; n_kv_heads: H_kv (default H), dividing H.
        batch: B.
        causal: count only the visible (query, key) pairs, end-aligned.
        kv_len: S keys per sequence (default T; T cached + new when decoding).
        head_dim: D (default C / H).
        window: causal sliding window (Mistral), or None.
        dtype: of weights and activations, for the byte counts.
    """
    H_kv, D = _check_heads(d_model, n_heads, n_kv_heads, head_dim)
    check_positive(seq_len=seq_len, batch=batch)
    S = seq_len if kv_len is None else kv_len
    P = attention_pairs(seq_len, S, causal=causal, window=window)
    B, T, C, H = batch, seq_len, d_model, n_heads
    e = dtype_bytes(dtype)
    fwd = {
        "q_proj": 2 * B * T * C * H * D,
        "k_proj": 2 * B * T * C * H_kv * D,
        "v_proj": 2 * B * T * C * H_kv * D,
        "scores": 2 * B * H * P * D,
        "av": 2 * B * H * P * D,
        "out_proj": 2 * B * T * H * D * C,
        "scale": B * H * P,
        "softmax": SOFTMAX_OPS * B * H * P,
    }
    bwd = {part: 2 * fwd[part] for part in ATTENTION_MATMULS}
    bwd["scale"] = fwd["scale"]
    bwd["softmax"] = SOFTMAX_BACKWARD_OPS * B * H * P
    io = {
        "weights": (C * (H + 2 * H_kv) * D + H * D * C) * e,
        "qkv_proj_io": (B * T * C + B * T * (H + 2 * H_kv) * D) * e,
        # Each K/V head is read once for its whole group of H / H_kv query heads.
        "attention_io": (2 * B * T * H * D + 2 * B * S * H_kv * D) * e,
        "out_proj_io": (B * T * H * D + B * T * C) * e,
    }
    saved = (B * T * C + B * T * H * D + 2 * B * S * H_kv * D + B * T * H * D) * e
    return AttentionCost(
        seq_len=T, kv_len=S, d_model=C, n_heads=H, n_kv_heads=H_kv, head_dim=D, batch=B,
        causal=causal, window=window, dtype=parse_dtype(dtype), pairs=P,
        breakdown=fwd, backward=bwd, bytes=io,
        scores_matrix_bytes=4 * B * H * T * S * e,
        activation_bytes=saved + B * H * T * LSE_BYTES,
        activation_bytes_materialised=saved + B * H * T * S * e,
    )


def crossover_seq_len(*, d_model: int, n_heads: int, n_kv_heads: int | None = None,
                      head_dim: int | None = None, causal: bool = False,
                      window: int | None = None) -> float:
    """The self-attention length n (T = S) where Q K^T + A V cost as much as the four
    projections: C (H + H_kv) / H, or 2 C (H + H_kv) / H - 1 when causal.

    Independent of head_dim (both sides scale with H D); given only to validate it. A
    causal sliding window W caps the keys per query: past n = W the score work per token
    tends to W, so the crossover is W (W - 1) / (2 (W - x)) with x = C (H + H_kv) / H
    when it lies beyond W, and ``math.inf`` when W <= x (it never comes).
    """
    H_kv, _ = _check_heads(d_model, n_heads, n_kv_heads, head_dim)
    x = d_model * (n_heads + H_kv) / n_heads  # pairs per query at which the two are equal
    if not causal:
        if window is not None:
            raise ValueError("window is a causal sliding window: pass causal=True with it")
        return x
    n = 2 * x - 1  # n (n + 1) / 2 = n x
    if window is None or n <= window:
        return n
    check_positive(window=window)
    if window <= x:
        return math.inf
    # W (W + 1) / 2 + (n - W) W = n x
    return window * (window - 1) / (2 * (window - x))


# --------------------------------------------------------------------- whole model

def count_parameters(config: TransformerConfig) -> int:
    """Parameters of ``TransformerLM(config)``, counted from the shapes."""
    C, V, L = config.d_model, config.vocab_size, config.n_layers
    H, H_kv, D, h = config.n_heads, config.kv_heads, config.dim_head, config.hidden_dim
    gated = _gated(config.activation)
    norm = C if config.norm == "rmsnorm" else 2 * C  # LayerNorm carries a bias
    qkv = C * (H + 2 * H_kv) * D + (H + 2 * H_kv) * D * config.qkv_bias
    out = H * D * C + C * config.out_bias
    ffn = C * h * (2 if gated else 1) + h * C
    if config.ffn_bias:
        ffn += h * (2 if gated else 1) + C
    layer = 2 * norm + qkv + out + ffn
    total = V * C + L * layer + norm
    if config.position == "learned":
        total += config.max_seq_len * C
    if not config.tie_embeddings:
        total += V * C
    return total


def _gated(activation: str) -> bool:
    from blocklab.ffn import GLU_ACTIVATIONS

    return activation in GLU_ACTIVATIONS


@dataclass(frozen=True)
class ModelCost:
    """The cost of one forward pass of a TransformerLM (and of training on it).

    Attributes:
        config: the model counted.
        seq_len, kv_len, batch, causal, dtype: the pass counted (T, S, B).
        attention: one layer's :class:`AttentionCost`.
        breakdown: forward FLOPs of the whole model by part: ``MODEL_MATMULS`` (summed
            over layers) then elementwise parts (``scale``, ``softmax``, ``rope``,
            ``norms``, ``residual``, ``ffn_activation``), not part of ``flops``.
        params: exact parameter count; ``embedding_params`` the token table, the
            learned position table and an untied output head.
        weight_bytes, kv_cache_bytes: at ``dtype``.
        activation_bytes: roughly what autograd keeps for the backward pass (fused
            attention; fp32 logits).
    """

    config: TransformerConfig = field(repr=False)
    seq_len: int
    kv_len: int
    batch: int
    causal: bool
    dtype: torch.dtype
    attention: AttentionCost = field(repr=False)
    breakdown: dict[str, int] = field(repr=False)
    params: int
    embedding_params: int
    weight_bytes: int
    kv_cache_bytes: int
    activation_bytes: int

    @property
    def tokens(self) -> int:
        return self.batch * self.seq_len

    @property
    def flops(self) -> int:
        """Matmul FLOPs of one forward pass."""
        return sum(self.breakdown[p] for p in MODEL_MATMULS)

    @property
    def elementwise_flops(self) -> int:
        return sum(v for k, v in self.breakdown.items() if k not in MODEL_MATMULS)

    @property
    def backward_flops(self) -> int:
        return 2 * self.flops

    @property
    def training_flops(self) -> int:
        """Forward + backward: 3x the forward matmuls."""
        return self.flops + self.backward_flops

    @property
    def flops_per_token(self) -> float:
        return self.flops / self.tokens

    @property
    def training_flops_per_token(self) -> float:
        return self.training_flops / self.tokens

    @property
    def score_flops(self) -> int:
        """O(n^2 d): Q K^T and A V over all layers."""
        return sum(self.breakdown[p] for p in SCORE_PARTS)

    @property
    def projection_flops(self) -> int:
        """O(n d^2) attention projections over all layers."""
        return sum(self.breakdown[p] for p in PROJECTIONS)

    @property
    def ffn_flops(self) -> int:
        return sum(self.breakdown[p] for p in FFN_MATMULS)

    @property
    def score_fraction(self) -> float:
        """Share of the forward matmul FLOPs that grows with n^2."""
        return self.score_flops / self.flops

    @property
    def non_embedding_params(self) -> int:
        """Kaplan's N: parameters without the embedding and output tables."""
        return self.params - self.embedding_params

    @property
    def kaplan_flops_per_token(self) -> float:
        """Kaplan et al. 2020: 2 N + 2 n_layer n_ctx d_attn (every pair counted, no head)."""
        cfg = self.config
        return 2 * self.non_embedding_params + 2 * cfg.n_layers * self.kv_len * (
            cfg.n_heads * cfg.dim_head)


def _resolve_config(config: TransformerConfig | str) -> TransformerConfig:
    from blocklab.models.config import TransformerConfig

    if isinstance(config, str):
        from blocklab.cost.presets import model_config

        return model_config(config)
    if not isinstance(config, TransformerConfig):
        raise TypeError(f"config must be a TransformerConfig or a preset name, "
                        f"got {type(config).__name__}")
    return config


def transformer_cost(
    config: TransformerConfig | str,
    seq_len: int,
    *,
    batch: int = 1,
    kv_len: int | None = None,
    causal: bool = True,
    dtype: torch.dtype | str = torch.float16,
) -> ModelCost:
    """FLOPs, parameters and bytes of one forward pass of ``TransformerLM(config)``.

    Args:
        config: a TransformerConfig or a preset name (:data:`blocklab.cost.MODEL_PRESETS`).
        seq_len: T tokens per sequence run through the model.
        batch: B sequences.
        kv_len: S positions attended to (default T; T + cached when decoding).
        causal: count only the visible pairs (as the model computes them with a fused
            kernel); False counts every pair, as FlopCounterMode and the math path do.
        dtype: of weights, cache and activations, for the byte counts.

    Per token: ``flops_per_token``; training (forward + backward): ``training_flops``.
    """
    config = _resolve_config(config)
    check_positive(seq_len=seq_len, batch=batch)
    S = seq_len if kv_len is None else kv_len
    if config.position == "learned" and S > config.max_seq_len:
        raise ValueError(f"kv_len ({S}) exceeds the learned position table "
                         f"(max_seq_len {config.max_seq_len})")
    window = config.sliding_window if causal else None
    attn = attention_cost(seq_len=seq_len, kv_len=S, d_model=config.d_model,
                          n_heads=config.n_heads, n_kv_heads=config.kv_heads,
                          head_dim=config.dim_head, batch=batch, causal=causal,
                          window=window, dtype=dtype)
    B, T, C, L, V = batch, seq_len, config.d_model, config.n_layers, config.vocab_size
    h = config.hidden_dim
    gated = _gated(config.activation)
    parts = {p: L * attn.breakdown[p] for p in ATTENTION_MATMULS}
    parts["ffn_in"] = L * 2 * B * T * C * h * (2 if gated else 1)
    parts["ffn_out"] = L * 2 * B * T * h * C
    parts["lm_head"] = 2 * B * T * C * V
    for p in ATTENTION_ELEMENTWISE:
        parts[p] = L * attn.breakdown[p]
    if config.position == "rope":
        parts["rope"] = L * ROPE_OPS * B * T * (config.n_heads + config.kv_heads) * config.rotary_dim
    elif config.position in ("sinusoidal", "learned"):
        parts["positions"] = B * T * C
    parts["norms"] = (2 * L + 1) * NORM_OPS[config.norm] * B * T * C
    parts["residual"] = 2 * L * B * T * C
    parts["ffn_activation"] = L * B * T * h * (2 if gated else 1)  # activation (+ gate product)

    e = dtype_bytes(dtype)
    params = count_parameters(config)
    embedding = V * C * (1 if config.tie_embeddings else 2)
    if config.position == "learned":
        embedding += config.max_seq_len * C
    ffn_saved = (B * T * C + B * T * h * (2 if gated else 1) + B * T * h) * e
    norm_saved = 2 * B * T * C * e
    activations = L * (attn.activation_bytes + ffn_saved + norm_saved) + B * T * V * 4
    return ModelCost(
        config=config, seq_len=T, kv_len=S, batch=B, causal=causal, dtype=parse_dtype(dtype),
        attention=attn, breakdown=parts, params=params, embedding_params=embedding,
        weight_bytes=params * e,
        kv_cache_bytes=kv_cache_bytes(n_layers=L, n_kv_heads=config.kv_heads,
                                      head_dim=config.dim_head, seq_len=S, batch=B,
                                      dtype=dtype),
        activation_bytes=activations,
    )


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23 M' (SI prefixes), for tables."""
    if n == 0:
        return f"0 {unit}".strip()
    k = min(int(math.log10(abs(n)) // 3), 6) if abs(n) >= 1 else 0
    prefix = ["", "K", "M", "G", "T", "P", "E"][k]
    return f"{n / 1000**k:.3g} {prefix}{unit}".strip()
