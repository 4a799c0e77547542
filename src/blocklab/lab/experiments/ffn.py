"""DL0045 -- FFN expansion ratio and activation variants (plain vs gated).

Claim: the position-wise FFN ``W_out act(W_in x)`` (Vaswani et al. 2017) holds most of a
transformer's parameters, and its width -- the expansion ratio r = hidden / d, 4 by
default -- buys quality with parameters and FLOPs; gated variants
``W_out (act(W_gate x) * (W_up x))`` (Shazeer 2020, "GLU Variants Improve Transformer":
ReGLU, GEGLU, SwiGLU) beat the plain activations (ReLU, GELU, SiLU/Swish) at a matched
parameter count, i.e. with the hidden width cut to 2/3 because they have three matrices.

Two measurements, each a small pre-norm TransformerLM (:mod:`blocklab.models`) trained
on the shipped byte corpus with the same steps, batches and seeds, scored by the mean
next-token cross entropy (nats per byte) on the held-out split:

(a) expansion sweep: r in ``Scale.ratios`` for a plain GELU FFN (hidden r d) and for a
    SwiGLU FFN (hidden int(2/3 r d), the same parameters); for each model, its
    non-embedding parameters, the FFN's share of them, and forward FLOPs per token --
    matmuls counted by ``torch.utils.flop_counter.FlopCounterMode``, plus the causal
    attention scores and weighted sum, 2 (T + 1) C per layer, added analytically because
    the counter does not see torch's CPU SDPA kernel (pytorch#195460);
(b) activations at matched parameters: relu, gelu, silu with hidden 4d against reglu,
    geglu, swiglu with hidden int(2/3 * 4d) (``blocklab.ffn.ffn_hidden_dim``), over
    ``Scale.seeds`` seeds (the shared GELU baseline over ``Scale.baseline_seeds``); the
    seed-to-seed spread is the noise the GLU gain is judged against.

Models of one seed share their initial weights outside the FFN and see the same
batches, so their losses differ by the FFN alone (:func:`init_model`).

Verdicts: (a) per FFN family, supported if the loss falls at every step of r, partly
if at most of them and overall, then the two families combined as below; (b) supported
if the gated mean beats the plain mean by more than the measured seed spread and in
every seed, partly if it is better but within the noise (or the noise was not
measured), not supported if it is not better. Both supported (or both not) gives that
verdict, anything else partly.

Reference point (Shazeer 2020, T5-base at matched parameters, log-perplexity after 65k
steps): ReLU 1.997, GELU 1.983, Swish 1.994, ReGLU 1.953, GEGLU 1.942, SwiGLU 1.944.
Only the ordering is comparable with a small byte-level model.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from blocklab.data import corpus_tokens  # noqa: E402
from blocklab.ffn import GLU_ACTIVATIONS, ffn_hidden_dim  # noqa: E402
from blocklab.lab.base import Context, Experiment, Outcome, Verdict  # noqa: E402
from blocklab.models import TransformerConfig, TransformerLM  # noqa: E402
from blocklab.train import evaluate_lm, train_lm  # noqa: E402

PLAIN = ("relu", "gelu", "silu")
GATED = ("reglu", "geglu", "swiglu")
SWEEP_ACTIVATIONS = ("gelu", "swiglu")
BASELINE = "gelu"  # the plain FFN of the original transformer (with GELU, as in GPT-2)
# Shazeer 2020, table 1 (T5-base, 65k steps, log-perplexity; lower is better).
# SiLU is Swish with beta = 1.
SHAZEER: dict[str, float] = {"relu": 1.997, "gelu": 1.983, "silu": 1.994,
                             "reglu": 1.953, "geglu": 1.942, "swiglu": 1.944}
MAX_PARAM_MISMATCH = 0.01  # matched means within 1% of the plain model's parameters


@dataclass(frozen=True)
class Scale:
    """How big the models and runs are.

    Attributes:
        d_model, n_layers, n_heads: the TransformerLM (byte vocabulary, RoPE, RMSNorm).
        seq_len, batch, steps, lr, warmup: training; every run of a seed sees the same
            batches. A long warm-up keeps short runs from stalling on a plateau whose
            length varies from seed to seed.
        eval_batches, eval_batch: held-out windows scored at the end (None: all).
        ratios: expansion ratios r of the sweep (hidden = r * d_model).
        expansion: r of the activation comparison (GLU hidden = int(2/3 r d)).
        seeds: seeds of every configuration (model init and batch order).
        baseline_seeds: seeds of the GELU r = ``expansion`` model, which both parts share;
            when more than ``seeds``, its extra runs measure the seed-to-seed noise
            cheaply.
    """

    d_model: int
    n_layers: int
    n_heads: int
    seq_len: int
    batch: int
    steps: int
    lr: float
    warmup: int
    eval_batches: int | None
    eval_batch: int
    ratios: tuple[int, ...]
    expansion: int
    seeds: int
    baseline_seeds: int


SCALES: dict[str, Scale] = {
    # 11 configurations and 2 more seeds of the baseline: 13 runs of ~3 s of one CPU
    # core (~40 s of CPU in all). At this budget a narrow model trained longer (d=32,
    # 240 steps) reaches a lower loss than a wider one trained shorter (d=64, 200 steps).
    "quick": Scale(d_model=32, n_layers=2, n_heads=2, seq_len=64, batch=16, steps=240,
                   lr=6e-3, warmup=60, eval_batches=None, eval_batch=64, ratios=(1, 2, 4, 8),
                   expansion=4, seeds=1, baseline_seeds=3),
    # d_model a multiple of 3 makes int(2/3 * 4d) exact: matched to the parameter.
    "full": Scale(d_model=192, n_layers=4, n_heads=4, seq_len=128, batch=32, steps=1500,
                  lr=2e-3, warmup=150, eval_batches=None, eval_batch=64,
                  ratios=(1, 2, 4, 8), expansion=4, seeds=3, baseline_seeds=3),
    # A seconds-long run for tests of the plumbing; its numbers mean little.
    "smoke": Scale(d_model=24, n_layers=1, n_heads=2, seq_len=16, batch=4, steps=4,
                   lr=3e-3, warmup=1, eval_batches=2, eval_batch=8, ratios=(1, 2, 4),
                   expansion=4, seeds=1, baseline_seeds=2),
}


def scale_for(ctx: Context) -> Scale:
    return SCALES["quick" if ctx.quick else "full"]


def hidden_width(d_model: int, expansion: float, activation: str) -> int:
    """Hidden width at ``expansion``: r d for a plain FFN, int(2/3 r d) for a GLU."""
    return ffn_hidden_dim(d_model, expansion=expansion, activation=activation)


def ffn_params(d_model: int, hidden: int, activation: str) -> int:
    """Weights of one bias-free FFN: 2 h d plain, 3 h d gated."""
    return (3 if activation in GLU_ACTIVATIONS else 2) * hidden * d_model


def make_config(scale: Scale, activation: str, expansion: float) -> TransformerConfig:
    return TransformerConfig(
        vocab_size=256, d_model=scale.d_model, n_layers=scale.n_layers,
        n_heads=scale.n_heads, activation=activation,
        ffn_hidden_dim=hidden_width(scale.d_model, expansion, activation),
        max_seq_len=scale.seq_len, ffn_bias=False,
    )


# ------------------------------------------------------------------------------ sizes

def body_params(model: TransformerLM) -> int:
    """Non-embedding parameters: the layers and final norm, without the token
    embedding and the output head (both are V x C lookups/projections of the vocabulary)."""
    return model.num_parameters(exclude_embeddings=True) - model.lm_head.weight.numel()


def model_ffn_params(model: TransformerLM) -> int:
    return sum(p.numel() for layer in model.layers for p in layer.ffn.parameters())


def attention_core_flops(config: TransformerConfig, seq_len: int) -> float:
    """Per token, causal: query i scores i + 1 keys (2 C each) and sums as many values
    (2 C each); the mean over i of 4 (i + 1) C is 2 (T + 1) C per layer."""
    width = config.n_heads * config.dim_head
    return config.n_layers * 2.0 * (seq_len + 1) * width


def forward_flops_per_token(model: TransformerLM, seq_len: int) -> tuple[float, float]:
    """(total, matmul part) forward FLOPs per token of a (1, seq_len) input, on CPU.

    FlopCounterMode counts the matmuls (projections, FFN, output head); attention ops
    are left out of its count and added analytically so they are counted once, the
    same way, whatever the backend.
    """
    counter = FlopCounterMode(display=False)
    ids = torch.zeros(1, seq_len, dtype=torch.long)
    with torch.no_grad(), counter:
        model(ids)
    matmul = sum(v for k, v in counter.get_flop_counts()["Global"].items()
                 if "attention" not in str(k))
    matmul_per_token = matmul / seq_len
    return matmul_per_token + attention_core_flops(model.config, seq_len), matmul_per_token


# ------------------------------------------------------------------------- training

def init_model(config: TransformerConfig, seed: int) -> TransformerLM:
    """A TransformerLM whose weights outside the FFNs depend on ``seed`` alone.

    Models of one seed then start from the same embeddings, attention and head and
    differ only in their FFNs, so their losses differ by the FFN, not by the draw.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        shared = TransformerLM(config.replace(activation="gelu", ffn_hidden_dim=1))
        torch.manual_seed(seed)
        model = TransformerLM(config)
    state = {k: v for k, v in shared.state_dict().items() if ".ffn." not in k}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or not all(".ffn." in k for k in missing):
        raise RuntimeError(f"shared weights do not fit: missing {missing}, unexpected {unexpected}")
    return model


@dataclass
class Run:
    activation: str
    expansion: float
    seed: int
    hidden: int
    params: int
    ffn_params: int
    flops: float
    val_loss: float


def train_one(activation: str, expansion: float, seed: int, scale: Scale, ctx: Context,
              tokens: tuple[torch.Tensor, torch.Tensor]) -> Run:
    """Train one model and score it on the held-out split."""
    config = make_config(scale, activation, expansion)
    run_seed = ctx.seed * 1000 + seed
    model = init_model(config, run_seed)
    flops, _ = forward_flops_per_token(model, scale.seq_len)
    train, val = tokens
    label = f"ffn: {activation} r={expansion:g} seed {seed}"

    def progress(items, desc="", total=None):
        return ctx.progress(items, label, total=total)

    train_lm(model, train, steps=scale.steps, batch_size=scale.batch, seq_len=scale.seq_len,
             lr=scale.lr, warmup=scale.warmup, seed=run_seed, device=ctx.device,
             progress=progress)
    val_loss = evaluate_lm(model, val, batch_size=scale.eval_batch, seq_len=scale.seq_len,
                           max_batches=scale.eval_batches, device=ctx.device)
    return Run(activation, expansion, seed, config.hidden_dim, body_params(model),
               model_ffn_params(model), flops, val_loss)


def spread(values: list[float]) -> float:
    """Seed-to-seed spread: max - min."""
    return max(values) - min(values)


def rank_correlation(a: list[float], b: list[float]) -> float:
    """Spearman's rho (no ties expected): Pearson correlation of the ranks."""
    ra = np.argsort(np.argsort(a)).astype(float)
    rb = np.argsort(np.argsort(b)).astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])


def _mean_loss(runs: list[Run]) -> float:
    return statistics.mean(r.val_loss for r in runs)


# --------------------------------------------------------------------------- figures

def _box(ax, x: float, y: float, w: float, h: float, text: str, colour: str) -> None:
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02",
                                fc=colour, ec="black", lw=1.2))
    ax.text(x, y, text, ha="center", va="center", fontsize=10)


def _arrow(ax, start: tuple[float, float], end: tuple[float, float], label: str = "",
           side: float = 0.08) -> None:
    ax.annotate("", xy=end, xytext=start,
                arrowprops=dict(arrowstyle="-|>", lw=1.3, color="black", shrinkA=0, shrinkB=0))
    if label:
        ax.text((start[0] + end[0]) / 2 + side, (start[1] + end[1]) / 2, label,
                ha="left" if side >= 0 else "right", va="center", fontsize=9, color="#444444")


def plot_diagram(scale: Scale, ctx: Context) -> str:
    """Plain FFN d -> r d -> d beside the gated one, with their parameter counts."""
    d, r = scale.d_model, scale.expansion
    h_plain = hidden_width(d, r, "gelu")
    h_glu = hidden_width(d, r, "swiglu")
    p_plain, p_glu = ffn_params(d, h_plain, "gelu"), ffn_params(d, h_glu, "swiglu")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 6.6))
    for ax in (ax1, ax2):
        ax.set_xlim(0, 4)
        ax.set_ylim(-0.7, 6.6)
        ax.axis("off")

    blue, orange, green, grey = "#cfe2f3", "#fce5cd", "#d9ead3", "#eeeeee"
    ax1.set_title("Plain FFN (ReLU / GELU / SiLU)", fontsize=12, fontweight="bold")
    _box(ax1, 2, 0.45, 1.6, 0.55, "x   (d)", grey)
    _box(ax1, 2, 1.85, 2.4, 0.65, "W_in: d -> h   (d h weights)", blue)
    _box(ax1, 2, 3.25, 2.0, 0.6, "act(.)", orange)
    _box(ax1, 2, 4.65, 2.4, 0.65, "W_out: h -> d   (h d weights)", blue)
    _box(ax1, 2, 5.95, 1.6, 0.55, "y   (d)", grey)
    _arrow(ax1, (2, 0.72), (2, 1.52), "d")
    _arrow(ax1, (2, 2.18), (2, 2.95), "h = r d")
    _arrow(ax1, (2, 3.55), (2, 4.32), "h")
    _arrow(ax1, (2, 4.98), (2, 5.67), "d")
    ax1.text(2, -0.05, f"params = 2 h d = 2 r d\u00b2\n"
             f"d={d}, r={r}: h={h_plain}, {p_plain:,} weights per layer",
             ha="center", va="top", fontsize=10.5)

    ax2.set_title("Gated FFN (ReGLU / GEGLU / SwiGLU)", fontsize=12, fontweight="bold")
    _box(ax2, 2, 0.45, 1.6, 0.55, "x   (d)", grey)
    _box(ax2, 1.0, 1.85, 1.8, 0.65, "W_gate: d -> h", blue)
    _box(ax2, 3.0, 1.85, 1.8, 0.65, "W_up: d -> h", blue)
    _box(ax2, 1.0, 3.05, 1.5, 0.55, "act(.)", orange)
    _box(ax2, 2, 4.05, 1.9, 0.55, "elementwise product", green)
    _box(ax2, 2, 5.0, 2.4, 0.6, "W_out: h -> d", blue)
    _box(ax2, 2, 6.1, 1.6, 0.5, "y   (d)", grey)
    _arrow(ax2, (1.85, 0.72), (1.1, 1.52))
    _arrow(ax2, (2.15, 0.72), (2.9, 1.52))
    _arrow(ax2, (1.0, 2.18), (1.0, 2.77), "h")
    _arrow(ax2, (1.2, 3.33), (1.6, 3.77), "act(gate)", side=-0.12)
    _arrow(ax2, (3.0, 2.18), (2.4, 3.77), "up (linear)")
    _arrow(ax2, (2, 4.33), (2, 4.70), "h")
    _arrow(ax2, (2, 5.30), (2, 5.85), "d")
    ax2.text(2, -0.05,
             f"params = 3 h d;  matched when h = 2/3 r d\n"
             f"d={d}, r={r}: h=int(2/3 \u00b7 {r * d})={h_glu}, {p_glu:,} weights per layer "
             f"({(p_glu - p_plain) / p_plain:+.2%})\n"
             f"(blocklab fuses W_gate and W_up into one d -> 2h matmul)",
             ha="center", va="top", fontsize=10.5)
    fig.suptitle("The FFN block at matched parameters: plain vs gated (Shazeer 2020)",
                 fontsize=13)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    rel = ctx.save_figure(fig, "ffn_diagram")
    return rel


def _si(x: float) -> str:
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}"


def plot_sweep(sweeps: dict[str, dict[int, list[Run]]], scale: Scale, ctx: Context) -> str:
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    styles = {"gelu": ("o-", "C0", "plain GELU, h = r d"),
              "swiglu": ("s--", "C1", "SwiGLU, h = int(2/3 r d)")}
    for activation, sweep in sweeps.items():
        ratios = sorted(sweep)
        loss = [_mean_loss(sweep[k]) for k in ratios]
        lo = [m - min(r.val_loss for r in sweep[k]) for m, k in zip(loss, ratios, strict=True)]
        hi = [max(r.val_loss for r in sweep[k]) - m for m, k in zip(loss, ratios, strict=True)]
        fmt, colour, label = styles[activation]
        for ax, xs in ((axes[0], [sweep[k][0].params for k in ratios]),
                       (axes[1], [sweep[k][0].flops for k in ratios])):
            ax.errorbar(xs, loss, yerr=[lo, hi], fmt=fmt, color=colour, capsize=4, lw=1.5,
                        label=label)
            for x, y, k in zip(xs, loss, ratios, strict=True):
                ax.annotate(f"r={k}", (x, y), textcoords="offset points", xytext=(6, 5),
                            fontsize=9, color=colour)
    gelu = sweeps[BASELINE]
    for ax, xs, xlabel in (
            (axes[0], [gelu[k][0].params for k in sorted(gelu)], "non-embedding parameters"),
            (axes[1], [gelu[k][0].flops for k in sorted(gelu)], "forward FLOPs per token")):
        ax.set_xscale("log")
        ax.set_xticks(xs, [_si(x) for x in xs])
        ax.minorticks_off()
        ax.set_xlabel(f"{xlabel} (log scale)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9, title="FFN (bars: min-max over seeds)", title_fontsize=9)
    axes[0].set_ylabel("validation loss (nats per byte)")
    axes[0].set_title("Loss vs parameters")
    axes[1].set_title(f"Loss vs compute (T={scale.seq_len}, FlopCounterMode + attention)")
    fig.suptitle(f"FFN expansion sweep: d={scale.d_model}, {scale.n_layers} layers, "
                 f"{scale.steps} steps of {scale.batch}x{scale.seq_len} tokens, "
                 f"{scale.seeds} seed(s) ({BASELINE} r={scale.expansion}: "
                 f"{max(scale.seeds, scale.baseline_seeds)})", fontsize=12)
    fig.tight_layout()
    rel = ctx.save_figure(fig, "ffn_expansion")
    return rel


def plot_activations(acts: dict[str, list[Run]], scale: Scale, ctx: Context) -> str:
    names = list(PLAIN + GATED)
    mean = [_mean_loss(acts[a]) for a in names]
    colours = ["#7f9fbf" if a in PLAIN else "#e07b39" for a in names]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5),
                                   gridspec_kw={"width_ratios": [3, 2]})
    x = np.arange(len(names))
    lo = [m - min(r.val_loss for r in acts[a]) for m, a in zip(mean, names, strict=True)]
    hi = [max(r.val_loss for r in acts[a]) - m for m, a in zip(mean, names, strict=True)]
    ax1.bar(x, mean, 0.6, color=colours, yerr=[lo, hi], capsize=5, ecolor="black")
    for i, a in enumerate(names):
        ax1.plot([x[i]] * len(acts[a]), [r.val_loss for r in acts[a]], "k.", ms=7,
                 label="one seed" if i == 0 else None)
        ax1.text(x[i], mean[i] + hi[i], f"{mean[i]:.3f}\n{acts[a][0].params:,} p",
                 ha="center", va="bottom", fontsize=8.5)
    bottom = min(m - low for m, low in zip(mean, lo, strict=True))
    top = max(m + h for m, h in zip(mean, hi, strict=True))
    span = max(top - bottom, 1e-3)
    ax1.set_ylim(bottom - 0.8 * span, top + 0.6 * span)
    ax1.set_xticks(x, [f"{a}\nh={acts[a][0].hidden}" for a in names])
    ax1.set_ylabel("validation loss (nats per byte; axis cut)")
    seeds_txt = ", ".join(f"{a} {len(acts[a])}" for a in names if len(acts[a]) > scale.seeds)
    ax1.set_title(f"This run: {scale.seeds} seed(s) per variant"
                  f"{f' ({seeds_txt})' if seeds_txt else ''}; bars min-max")
    ax1.bar([0], [0], color="#7f9fbf", label="plain (h = 4d)")
    ax1.bar([0], [0], color="#e07b39", label="gated (h = int(2/3 4d))")
    ax1.legend(fontsize=8.5, loc="upper left", ncols=3)

    ref = [SHAZEER[a] for a in names]
    ax2.bar(x, ref, 0.6, color=colours)
    for i, v in enumerate(ref):
        ax2.text(x[i], v, f"{v:.3f}", ha="center", va="bottom", fontsize=8.5)
    ax2.set_ylim(1.9, 2.01)
    ax2.set_xticks(x, ["relu", "gelu", "swish", "reglu", "geglu", "swiglu"])
    ax2.set_ylabel("log-perplexity (axis cut)")
    ax2.set_title("Reference: Shazeer 2020, T5-base, 65k steps")
    fig.suptitle("FFN activation variants at matched parameters (lower is better)", fontsize=12)
    fig.tight_layout()
    rel = ctx.save_figure(fig, "ffn_activations")
    return rel


# ------------------------------------------------------------------------------ run

def _combine(a: Verdict, b: Verdict) -> Verdict:
    return a if a == b else "partly"


def run(ctx: Context) -> Outcome:
    scale = scale_for(ctx)
    tokens = corpus_tokens()
    metrics: dict[str, float | int] = {}

    # Every configuration once per seed; the r = expansion models serve both parts.
    baseline = (BASELINE, scale.expansion)
    wanted = [(a, r) for a in SWEEP_ACTIVATIONS for r in scale.ratios]
    wanted += [(a, scale.expansion) for a in PLAIN + GATED
               if (a, scale.expansion) not in wanted]
    n_seeds = {key: scale.seeds for key in wanted}
    n_seeds[baseline] = max(scale.seeds, scale.baseline_seeds)
    runs: dict[tuple[str, int], list[Run]] = {key: [] for key in wanted}
    for seed in range(max(n_seeds.values())):
        for key in wanted:
            if seed < n_seeds[key]:
                runs[key].append(train_one(*key, seed, scale, ctx, tokens))

    # Noise: the seed-to-seed range of every configuration run with several seeds.
    spreads = {key: spread([r.val_loss for r in rs]) for key, rs in runs.items()
               if len(rs) > 1}
    noise = statistics.mean(spreads.values()) if spreads else math.nan
    if spreads:
        metrics["seed_spread"] = noise

    # (a) expansion sweep, per FFN family
    ratios = list(scale.ratios)
    sweeps = {a: {r: runs[(a, r)] for r in ratios} for a in SWEEP_ACTIVATIONS}
    family_verdicts: dict[str, Verdict] = {}
    sweep_txts = []
    for a, sweep in sweeps.items():
        loss = {r: _mean_loss(sweep[r]) for r in ratios}
        for r in ratios:
            first = sweep[r][0]
            metrics[f"loss_{a}_r{r}"] = loss[r]
            metrics[f"params_{a}_r{r}"] = first.params
            metrics[f"ffn_share_{a}_r{r}"] = first.ffn_params / first.params
            metrics[f"flops_per_token_{a}_r{r}"] = first.flops
        drops = [loss[x] - loss[y] for x, y in zip(ratios, ratios[1:], strict=False)]
        n_down = sum(d > 0 for d in drops)
        gain = loss[ratios[0]] - loss[ratios[-1]]
        metrics[f"sweep_{a}_decreasing_steps"] = n_down
        metrics[f"sweep_{a}_gain"] = gain
        if n_down == len(drops):
            family_verdicts[a] = "supported"
        elif gain > 0 and n_down >= len(drops) / 2:
            family_verdicts[a] = "partly"
        else:
            family_verdicts[a] = "not supported"
        sweep_txts.append(
            f"{a}: " + ", ".join(f"r={r} {loss[r]:.4f}" for r in ratios)
            + f"; falls at {n_down} of {len(drops)} steps of r, {gain:+.4f} from r={ratios[0]} "
            f"to r={ratios[-1]} [{family_verdicts[a]}]")
    sweep_verdict = _combine(*family_verdicts.values())
    size_txt = "; ".join(
        f"r={r}: {metrics[f'params_{BASELINE}_r{r}']:,} params "
        f"(FFN {metrics[f'ffn_share_{BASELINE}_r{r}']:.0%}), "
        f"{_si(metrics[f'flops_per_token_{BASELINE}_r{r}'])}FLOP/token" for r in ratios)

    # (b) activations at matched parameters
    names = list(PLAIN + GATED)
    acts = {a: runs[(a, scale.expansion)] for a in names}
    act_loss = {a: _mean_loss(acts[a]) for a in names}
    base_params = acts[BASELINE][0].params
    mismatch = max(abs(acts[a][0].params - base_params) / base_params for a in names)
    for a in names:
        metrics[f"loss_{a}"] = act_loss[a]
        if (a, scale.expansion) in spreads:
            metrics[f"loss_{a}_spread"] = spreads[(a, scale.expansion)]
        metrics[f"params_{a}"] = acts[a][0].params
        metrics[f"hidden_{a}"] = acts[a][0].hidden
    metrics["param_mismatch"] = mismatch
    plain_mean = statistics.mean(act_loss[a] for a in PLAIN)
    glu_mean = statistics.mean(act_loss[a] for a in GATED)
    glu_gain = plain_mean - glu_mean  # > 0: gated better
    # The gain within each seed every variant ran with: GLU must win seed by seed.
    per_seed_gain = [statistics.mean(acts[a][s].val_loss for a in PLAIN)
                     - statistics.mean(acts[a][s].val_loss for a in GATED)
                     for s in range(scale.seeds)]
    metrics["plain_mean"] = plain_mean
    metrics["glu_mean"] = glu_mean
    metrics["glu_gain"] = glu_gain
    metrics["glu_gain_min_seed"] = min(per_seed_gain)
    metrics["glu_beats_all_plain"] = int(max(act_loss[a] for a in GATED)
                                         < min(act_loss[a] for a in PLAIN))
    rho = rank_correlation([act_loss[a] for a in names], [SHAZEER[a] for a in names])
    metrics["rank_corr_shazeer"] = rho
    glu_verdict: Verdict
    if mismatch > MAX_PARAM_MISMATCH or glu_gain <= 0:
        glu_verdict = "not supported"
    elif glu_gain > noise and min(per_seed_gain) > 0:  # False when noise is unmeasured
        glu_verdict = "supported"
    else:
        glu_verdict = "partly"  # better on average, but not beyond the seed noise
    verdict = _combine(sweep_verdict, glu_verdict)

    figures = [plot_diagram(scale, ctx), plot_sweep(sweeps, scale, ctx),
               plot_activations(acts, scale, ctx)]

    act_txt = ", ".join(f"{a} {act_loss[a]:.4f}" for a in sorted(names, key=act_loss.get))
    params_txt = ", ".join(f"{a} {acts[a][0].params:,}" for a in names)
    ref_order = ", ".join(sorted(names, key=SHAZEER.get))
    noise_txt = (f"a seed-to-seed spread (max - min) of {noise:.4f}, mean over "
                 + ", ".join(f"{a} r={r} ({len(runs[(a, r)])} seeds: {v:.4f})"
                             for (a, r), v in spreads.items())
                 if spreads else "no measured seed noise (one seed per model)")
    evidence = (
        f"Byte-level TransformerLM, d={scale.d_model}, {scale.n_layers} layers, "
        f"{scale.steps} steps of {scale.batch}x{scale.seq_len} tokens; held-out loss in "
        f"nats/byte, {noise_txt}. "
        f"(a) Expansion sweep, sizes ({BASELINE}; SwiGLU matches them): {size_txt}. "
        f"Losses: {'. '.join(sweep_txts)}. Sweep overall [{sweep_verdict}]. "
        f"(b) Matched parameters ({params_txt}; hidden {metrics['hidden_gelu']} plain vs "
        f"{metrics['hidden_swiglu']} gated; largest mismatch {mismatch:.2%}, limit "
        f"{MAX_PARAM_MISMATCH:.0%}): best to worst {act_txt}. Gated mean {glu_mean:.4f} vs "
        f"plain mean {plain_mean:.4f}, gain {glu_gain:+.4f} (per seed: "
        f"{', '.join(f'{g:+.4f}' for g in per_seed_gain)}; noise "
        f"{f'{noise:.4f}' if spreads else 'not measured'}) "
        f"[{glu_verdict}]. "
        f"Shazeer 2020 (T5-base, log-perplexity) orders them {ref_order} "
        f"(ReLU 1.997, GELU 1.983, Swish 1.994, ReGLU 1.953, GEGLU 1.942, SwiGLU 1.944); "
        f"rank correlation of this run's ordering with it: {rho:+.2f}."
    )
    return Outcome(metrics=metrics, verdict=verdict, evidence=evidence, figures=figures)


EXPERIMENT = Experiment(
    id="ffn",
    card="DL0045",
    title="FFN expansion ratio and activation variants",
    claim=(
        "The FFN's width (expansion ratio, 4x by default) buys quality with parameters and "
        "FLOPs; gated variants (GLU: ReGLU, GEGLU, SwiGLU) beat plain activations (ReLU, "
        "GELU, SiLU) at matched parameters (Shazeer 2020)."
    ),
    run=run,
)
