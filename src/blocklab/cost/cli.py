"""``blocklab cost MODEL|--config FILE --seq-len N [--batch B] [--dtype bf16] [--kv-heads G]``.

Prints the forward FLOPs of one pass by part, the n^2 d (scores, weighted sum) vs
n d^2 (projections, FFN) split and where they cross, backward and training FLOPs,
parameters, weight and KV-cache bytes, and draws the cost against sequence length.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from blocklab.cli import Command

if TYPE_CHECKING:
    from blocklab.cost.flops import ModelCost
    from blocklab.models.config import TransformerConfig

__all__ = ["COMMAND", "load_config", "format_report"]

USAGE_ERROR = 2


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", metavar="MODEL",
                        help="a preset (see --list), e.g. llama-2-7b, mistral-7b, falcon-7b")
    parser.add_argument("--config", metavar="FILE",
                        help="a YAML file of TransformerConfig keys, or a 'blocklab train' "
                             "config.yaml (its model: section), instead of MODEL")
    parser.add_argument("--seq-len", type=int, metavar="N",
                        help="tokens per sequence (default: the model's max_seq_len)")
    parser.add_argument("--batch", type=int, default=1, metavar="B",
                        help="sequences per pass (default: %(default)s)")
    parser.add_argument("--dtype", default="bf16", metavar="DTYPE",
                        help="bytes per value for weights, cache and activations: fp32, bf16, "
                             "fp16, fp8, int8 (default: %(default)s)")
    parser.add_argument("--kv-heads", type=int, metavar="G",
                        help="count the model with G key/value heads instead (GQA; 1 = MQA)")
    parser.add_argument("--no-causal", dest="causal", action="store_false",
                        help="count every (query, key) pair, as FlopCounterMode does, instead "
                             "of the visible half")
    parser.add_argument("--plot", metavar="PNG",
                        help="where to draw cost vs sequence length (default: "
                             "cost-MODEL.png in the current directory)")
    parser.add_argument("--no-plot", action="store_true", help="draw nothing")
    parser.add_argument("--list", action="store_true", help="list the model presets and exit")


def load_config(model: str | None, config_file: str | None,
                kv_heads: int | None = None) -> TransformerConfig:
    """The TransformerConfig named by a preset or read from a YAML file."""
    import yaml

    from blocklab.cost.presets import model_config
    from blocklab.models.config import TransformerConfig

    if (model is None) == (config_file is None):
        raise ValueError("give exactly one of MODEL or --config FILE")
    if model is not None:
        config = model_config(model)
    else:
        path = Path(config_file)  # type: ignore[arg-type]
        if not path.is_file():
            raise ValueError(f"--config file {config_file!r} does not exist")
        data: Any = yaml.safe_load(path.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of config keys, got "
                             f"{type(data).__name__}")
        if isinstance(data.get("model"), dict):  # a TrainConfig file
            data = data["model"]
        data = dict(data)
        preset = data.pop("preset", None)
        config = model_config(preset, **data) if preset else TransformerConfig.from_dict(data)
    if kv_heads is not None:
        config = config.replace(n_kv_heads=kv_heads, name=f"{config.name} (kv_heads={kv_heads})")
    return config


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


def _error(message: str) -> int:
    print(f"blocklab cost: error: {message}", file=sys.stderr)
    return USAGE_ERROR


def _run(args: argparse.Namespace) -> int:
    from blocklab.cost.flops import transformer_cost
    from blocklab.cost.memory import parse_dtype
    from blocklab.cost.presets import MODEL_PRESETS, REAL_MODELS

    if args.list:
        for name in sorted(MODEL_PRESETS, key=lambda n: (n not in REAL_MODELS, n)):
            p = MODEL_PRESETS[name]
            print(f"{name:<14} C={p['d_model']:<6} L={p['n_layers']:<3} H={p['n_heads']:<4} "
                  f"H_kv={p.get('n_kv_heads') or p['n_heads']}")
        return 0
    try:
        config = load_config(args.model, args.config, args.kv_heads)
        dtype = parse_dtype(args.dtype)
        seq_len = config.max_seq_len if args.seq_len is None else args.seq_len
        cost = transformer_cost(config, seq_len, batch=args.batch, causal=args.causal,
                                dtype=dtype)
    except (ValueError, TypeError) as err:
        return _error(str(err))
    print(format_report(cost))
    if not args.no_plot:
        stem = (args.model or Path(args.config).stem).replace("/", "_")
        path = Path(args.plot) if args.plot else Path(f"cost-{stem}.png")
        plot_cost(config, seq_len, batch=args.batch, dtype=dtype, causal=args.causal, path=path)
        print(f"plot: {path}")
    return 0


COMMAND = Command(
    name="cost",
    help="FLOPs, parameters and KV-cache bytes of a model (analytic)",
    description=(
        "Count the cost of one forward pass of a TransformerLM -- a preset of a real model "
        "or a config file -- by part: q/k/v/output projections, scores, weighted sum, FFN, "
        "output head (2 FLOPs per multiply-add, causal counting the visible pairs), with "
        "softmax and other elementwise work apart; the n^2 d vs n d^2 split and where it "
        "crosses; backward and training FLOPs; parameters, weight and KV-cache bytes. "
        "Draws the cost against sequence length."
    ),
    add_arguments=_add_arguments,
    run=_run,
)
