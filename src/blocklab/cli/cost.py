"""``blocklab cost MODEL|--config FILE --seq-len N [--batch B] [--dtype bf16] [--kv-heads G]``.

Prints the forward FLOPs of one pass by part, the n^2 d (scores, weighted sum) vs
n d^2 (projections, FFN) split and where they cross, backward and training FLOPs,
parameters, weight and KV-cache bytes (:func:`blocklab.cost.report.format_report`), and
draws the cost against sequence length (:func:`blocklab.cost.report.plot_cost`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from blocklab.cli.command import Command

if TYPE_CHECKING:
    from blocklab.models.config import TransformerConfig

__all__ = ["COMMAND", "load_config"]

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


def _error(message: str) -> int:
    print(f"blocklab cost: error: {message}", file=sys.stderr)
    return USAGE_ERROR


def _run(args: argparse.Namespace) -> int:
    from blocklab.cost.flops import transformer_cost
    from blocklab.cost.memory import parse_dtype
    from blocklab.cost.presets import MODEL_PRESETS, REAL_MODELS
    from blocklab.cost.report import format_report, plot_cost

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
        from blocklab._extras import missing_extra

        message = missing_extra("lab", "the plot")
        if message:
            print(f"no plot: {message}")
            return 0
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
