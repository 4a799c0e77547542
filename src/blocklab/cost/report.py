"""The cost of a model as a reader sees it: the tables ``blocklab cost`` prints and its figure.

:func:`format_report` lays out a :class:`~blocklab.cost.flops.ModelCost`: forward FLOPs
by part with their share and growth (n d^2 for projections and FFN, n^2 d for scores
and the weighted sum), the crossover length, backward and training FLOPs, weight,
KV-cache and activation bytes. :func:`plot_cost` draws FLOPs per token by part and the
KV cache of MHA/GQA/MQA against sequence length. torch, numpy and matplotlib are
imported inside the functions, so importing this module stays light.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from blocklab.cost.flops import ModelCost
    from blocklab.models.config import TransformerConfig

__all__ = ["format_report", "plot_cost"]


def _bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"


def format_report(cost: ModelCost) -> str:
    """The tables ``blocklab cost`` prints."""
    from blocklab.cost.flops import (
        MODEL_MATMULS,
        PROJECTIONS,
        SCORE_PARTS,
        crossover_seq_len,
        human,
    )
    from blocklab.cost.memory import kv_cache_bytes
    from blocklab.cost.presets import PRESET_NOTES

    cfg = cost.config
    lines = [
        f"{cfg.name}: {human(cost.params)} parameters ({human(cost.non_embedding_params)} "
        f"without embeddings), {cfg.n_layers} layers, C={cfg.d_model}, H={cfg.n_heads}, "
        f"H_kv={cfg.kv_heads}, D={cfg.dim_head}, FFN {cfg.hidden_dim} {cfg.activation}, "
        f"V={cfg.vocab_size}",
        f"one forward pass: batch {cost.batch} x {cost.seq_len} tokens"
        + (f" against {cost.kv_len} keys" if cost.kv_len != cost.seq_len else "")
        + (", causal (visible pairs only)" if cost.causal else ", every (query, key) pair")
        + f", {str(cost.dtype).removeprefix('torch.')}",
    ]
    if cfg.name.split(" ")[0] in PRESET_NOTES:
        lines.append(f"note: {PRESET_NOTES[cfg.name.split(' ')[0]]}")
    total = cost.flops
    width = max(len(p) for p in cost.breakdown) + 2
    lines += ["", f"{'part':<{width}}{'FLOPs':>12}{'share':>8}{'per token':>14}   grows as",
              "-" * (width + 48)]
    grows = {**{p: "n d^2" for p in PROJECTIONS}, **{p: "n^2 d" for p in SCORE_PARTS},
             "ffn_in": "n d^2", "ffn_out": "n d^2", "lm_head": "n d V"}
    for part in MODEL_MATMULS:
        v = cost.breakdown[part]
        lines.append(f"{part:<{width}}{human(v):>12}{100 * v / total:>7.1f}%"
                     f"{human(v / cost.tokens):>14}   {grows[part]}")
    lines.append(f"{'matmul total':<{width}}{human(total):>12}{100.0:>7.1f}%"
                 f"{human(cost.flops_per_token):>14}")
    lines += ["", "elementwise (one FLOP per element per op; not in the total):"]
    lines.append("  " + ", ".join(f"{p} {human(v)}" for p, v in cost.breakdown.items()
                                  if p not in MODEL_MATMULS))
    x = crossover_seq_len(d_model=cfg.d_model, n_heads=cfg.n_heads, n_kv_heads=cfg.kv_heads,
                          causal=cost.causal,
                          window=cfg.sliding_window if cost.causal else None)
    proj = cost.projection_flops
    lines += [
        "",
        f"n^2 d  (scores + AV):             {human(cost.score_flops):>10}  "
        f"({100 * cost.score_fraction:.1f}% of the matmuls)",
        f"n d^2  (attention projections):   {human(proj):>10}  ({100 * proj / total:.1f}%)",
        f"n d^2  (FFN):                     {human(cost.ffn_flops):>10}  "
        f"({100 * cost.ffn_flops / total:.1f}%)",
        (f"scores + AV overtake the attention projections at n = {x:,.0f}"
         f" ({'causal' if cost.causal else 'all pairs'}; "
         f"{'past' if cost.kv_len > x else 'below'} it at {cost.kv_len})"
         if math.isfinite(x) else
         f"scores + AV never overtake the attention projections: the sliding window "
         f"({cfg.sliding_window}) caps the keys per query below the "
         f"{cfg.d_model * (cfg.n_heads + cfg.kv_heads) / cfg.n_heads:,.0f} it would take"),
        f"backward {human(cost.backward_flops)}FLOP (2x), training step {human(cost.training_flops)}"
        f"FLOP (3x) = {human(cost.training_flops_per_token)}FLOP per token; "
        f"Kaplan 2N + 2 L n d_attn: {human(cost.kaplan_flops_per_token)}FLOP per token forward",
        "",
        f"weights: {_bytes(cost.weight_bytes)}; KV cache: "
        f"{_bytes(kv_cache_bytes(n_layers=cfg.n_layers, n_kv_heads=cfg.kv_heads, head_dim=cfg.dim_head, seq_len=1, dtype=cost.dtype))}"
        f" per token, {_bytes(cost.kv_cache_bytes)} for {cost.batch} x {cost.kv_len} tokens"
        + (f" (MHA would need {_bytes(cost.kv_cache_bytes * cfg.n_heads // cfg.kv_heads)})"
           if cfg.kv_heads != cfg.n_heads else "")
        + f"; training activations ~{_bytes(cost.activation_bytes)}",
    ]
    return "\n".join(lines)


def plot_cost(config: TransformerConfig, seq_len: int, *, batch: int, dtype: Any, causal: bool,
              path: Path) -> None:
    """Forward FLOPs per token by part, and KV-cache bytes, against sequence length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from blocklab.cost.flops import crossover_seq_len, transformer_cost
    from blocklab.cost.memory import kv_cache_bytes

    cross = crossover_seq_len(d_model=config.d_model, n_heads=config.n_heads,
                              n_kv_heads=config.kv_heads, causal=causal,
                              window=config.sliding_window if causal else None)
    top = int(max(4 * seq_len, 2 * cross if math.isfinite(cross) else 4 * seq_len))
    if config.position == "learned":
        top = min(top, config.max_seq_len)
    ns = np.unique(np.geomspace(16, top, 60).astype(int))
    costs = [transformer_cost(config, int(n), batch=batch, causal=causal, dtype=dtype)
             for n in ns]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    series = {
        "scores + AV (n^2 d)": [c.score_flops / c.tokens for c in costs],
        "attention projections (n d^2)": [c.projection_flops / c.tokens for c in costs],
        "FFN (n d^2)": [c.ffn_flops / c.tokens for c in costs],
        "output head": [c.breakdown["lm_head"] / c.tokens for c in costs],
        "total": [c.flops_per_token for c in costs],
    }
    for label, ys in series.items():
        ax1.loglog(ns, ys, "k-" if label == "total" else "-", lw=2 if label == "total" else 1.5,
                   label=label)
    if math.isfinite(cross):
        ax1.axvline(cross, color="grey", ls=":", lw=1)
        ax1.text(cross, ax1.get_ylim()[0] * 1.5, f" scores = projections\n n = {cross:,.0f}",
                 fontsize=8, color="grey")
    ax1.axvline(seq_len, color="C4", ls="--", lw=1, label=f"--seq-len {seq_len}")
    ax1.set_xlabel("sequence length n")
    ax1.set_ylabel("forward FLOPs per token")
    ax1.set_title(f"{config.name}: forward cost per token by part"
                  f"{' (causal)' if causal else ''}")
    ax1.legend(fontsize=8)

    variants = {config.n_heads: "--", 1: ":"}
    if config.n_heads % 8 == 0 and config.n_heads > 8:
        variants[8] = "-."  # the common GQA choice (Llama-2-70B, Llama-3, Mistral)
    variants[config.kv_heads] = "-"
    for g, style in sorted(variants.items(), reverse=True):
        kind = "MHA" if g == config.n_heads else "MQA" if g == 1 else f"GQA-{g}"
        mine = " (this model)" if g == config.kv_heads else ""
        per_token = kv_cache_bytes(n_layers=config.n_layers, n_kv_heads=g,
                                   head_dim=config.dim_head, seq_len=1, dtype=dtype)
        ax2.loglog(ns, [per_token * n * batch / 2**30 for n in ns], style,
                   lw=2 if mine else 1.2, label=f"{kind}: {g} K/V head{'s' if g > 1 else ''}{mine}")
    ax2.axhline(costs[0].weight_bytes / 2**30, color="grey", lw=0.8, label="weights")
    ax2.axvline(seq_len, color="C4", ls="--", lw=1, label=f"--seq-len {seq_len}")
    ax2.set_xlabel("tokens in the cache")
    ax2.set_ylabel(f"KV cache, GiB (batch {batch}, {str(costs[0].dtype).removeprefix('torch.')})")
    ax2.set_title("KV cache: 2 L H_kv D n bytes-per-value")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
