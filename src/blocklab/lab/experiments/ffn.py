"""DL0045 -- FFN expansion ratio and activation variants (plain vs gated).

Claim: the position-wise FFN ``W_out act(W_in x)`` (Vaswani et al. 2017) holds most of a
transformer's parameters, and its width -- the expansion ratio r = hidden / d, 4 by
default -- buys quality with parameters and FLOPs; gated variants
``W_out (act(W_gate x) * (W_up x))`` (Shazeer 2020, "GLU Variants Improve Transformer":
ReGLU, GEGLU, SwiGLU) beat the plain activations (ReLU, GELU, SiLU/Swish) at a matched
parameter count, i.e. with the hidden width cut to 2/3 because they have three matrices.

Each model is a small pre-norm TransformerLM (:mod:`blocklab.models`) trained on the
shipped byte corpus with the same steps and learning rate, scored by the mean next-token
cross entropy (nats per byte) on the whole held-out split. Every configuration runs on
the same ``Scale.seeds`` repetition seeds (``ctx.seeds``); models of one seed share
their weights outside the FFN and see the same batches (:func:`init_model`), so the
per-seed comparisons below are paired and the seed's shared effect cancels.

Checks (95% intervals over the seeds; thresholds are the module constants):

(a) ``expansion``, counted: for each seed, the least-squares slope of the loss on
    log2 r over the sweep ``Scale.ratios`` (plain GELU, hidden r d) -- the loss change
    per doubling of the FFN; the mean over seeds must be < 0 with its whole interval.
    A fitted trend over every ratio, not the monotonicity of single numbers.
(b) ``glu_gain``, context (not counted: the card claims capacity from expansion; the GLU
    result is Shazeer's, measured beside it): per seed, the mean loss of the plain activations minus that
    of the gated ones in ``Scale.activations`` at r = ``Scale.expansion`` (GLU hidden
    int(2/3 r d), ``blocklab.ffn.ffn_hidden_dim``); must be > 0. The quick scale runs
    the canonical pair GELU vs SwiGLU, the full scale all six.
(c) ``param_mismatch``, context (not counted): the largest relative difference of the
    matched models' parameters from the plain model's. It follows from the 2/3 width
    rule and d, so it cannot come out otherwise on a run; it is shown because (b) means
    nothing without it.

Besides the checks: non-embedding parameters, the FFN's share of them and forward FLOPs
per token of each sweep model -- matmuls counted by
``torch.utils.flop_counter.FlopCounterMode``, plus the causal attention scores and
weighted sum, 2 (T + 1) C per layer, added analytically because the counter does not
see torch's CPU SDPA kernel (pytorch#195460); and, when three or more activations ran,
the rank correlation of their ordering with Shazeer's.

Reference point (Shazeer 2020, T5-base at matched parameters, log-perplexity after 65k
steps): ReLU 1.997, GELU 1.983, Swish 1.994, ReGLU 1.953, GEGLU 1.942, SwiGLU 1.944.
Only the ordering is comparable with a small byte-level model.

The card's numbered items -- each mapped to the checks that answer it, or to the reason
none is counted -- are ``CARD_ITEMS`` below; the report shows them item by item.
"""

from __future__ import annotations

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
from blocklab.lab.base import CardItem, Context, Experiment, Outcome  # noqa: E402
from blocklab.lab.estimate import Check, Estimate, exact, mean_ci, paired_diff, slope_ci  # noqa: E402
from blocklab.models import TransformerConfig, TransformerLM  # noqa: E402
from blocklab.train import evaluate_lm, train_lm  # noqa: E402

PLAIN = ("relu", "gelu", "silu")
GATED = ("reglu", "geglu", "swiglu")
BASELINE = "gelu"  # the plain FFN of the original transformer (with GELU, as in GPT-2)
# Shazeer 2020, table 1 (T5-base, 65k steps, log-perplexity; lower is better).
# SiLU is Swish with beta = 1.
SHAZEER: dict[str, float] = {"relu": 1.997, "gelu": 1.983, "silu": 1.994,
                             "reglu": 1.953, "geglu": 1.942, "swiglu": 1.944}

# Thresholds.
# The claim is a direction -- a wider FFN gives a lower loss -- not a size (the size of
# the gain depends on the data and budget): any reliable fall per doubling of r counts,
# so the line is no change.
MAX_EXPANSION_SLOPE = 0.0  # nats per byte per doubling of r
# Likewise the GLU claim is an ordering at matched parameters (Shazeer's gap, 0.03-0.05
# log-perplexity on T5, does not transfer to a byte-level model): the line is a tie.
MIN_GLU_GAIN = 0.0  # nats per byte, plain mean minus gated mean
# "Matched parameters": within 1% of the plain model, which int(2/3 r d) gives for any d
# of this lab's size; a bigger gap would let the GLU win on size alone.
MAX_PARAM_MISMATCH = 0.01


@dataclass(frozen=True)
class Scale:
    """How big the models and runs are.

    Attributes:
        d_model, n_layers, n_heads: the TransformerLM (byte vocabulary, RoPE, RMSNorm).
        seq_len, batch, steps, lr, warmup: training; every run of a seed sees the same
            batches. A long warm-up keeps short runs from stalling on a plateau whose
            length varies from seed to seed.
        eval_batches, eval_batch: held-out windows scored at the end (None: all).
        ratios: expansion ratios r of the sweep (plain GELU, hidden = r * d_model).
        expansion: r of the activation comparison (GLU hidden = int(2/3 r d)).
        activations: the variants compared at ``expansion``: at least one plain and one
            gated; GELU is among them (it is the sweep's model at ``expansion``).
        seeds: repetitions of every configuration (model init and batch order).
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
    activations: tuple[str, ...]
    seeds: int

    def __post_init__(self) -> None:
        if len(self.ratios) < 3:
            raise ValueError(f"ratios ({self.ratios}) needs at least 3 values for a slope")
        if BASELINE not in self.activations or self.expansion not in self.ratios:
            raise ValueError(f"activations ({self.activations}) must hold {BASELINE!r} and "
                             f"ratios ({self.ratios}) the expansion ({self.expansion})")
        if not set(PLAIN) & set(self.activations) or not set(GATED) & set(self.activations):
            raise ValueError(f"activations ({self.activations}) need a plain and a gated one")
        if self.seeds < 2:
            raise ValueError(f"seeds ({self.seeds}) must be >= 2 for an interval")


SCALES: dict[str, Scale] = {
    # 4 sweep models + SwiGLU, 4 seeds each: 20 runs of ~1.6 s of one core. One layer,
    # shorter windows and only the canonical GLU pair buy the repetitions: one seed of
    # the old design (11 models of 2 layers, 240 steps of 16x64) cost as much, and its
    # single numbers were within the seed spread.
    "quick": Scale(d_model=32, n_layers=1, n_heads=2, seq_len=32, batch=32, steps=300,
                   lr=6e-3, warmup=30, eval_batches=None, eval_batch=64, ratios=(1, 2, 4, 8),
                   expansion=4, activations=("gelu", "swiglu"), seeds=4),
    # d_model a multiple of 3 makes int(2/3 * 4d) exact: matched to the parameter.
    # 9 models x 3 seeds = 27 runs of ~18 s of one core, ~8 minutes (estimated from the
    # quick runs by scaling the FLOPs per step).
    "full": Scale(d_model=48, n_layers=2, n_heads=4, seq_len=64, batch=32, steps=600,
                  lr=3e-3, warmup=60, eval_batches=None, eval_batch=64, ratios=(1, 2, 4, 8),
                  expansion=4, activations=PLAIN + GATED, seeds=3),
    # A seconds-long run for tests of the plumbing; its numbers mean little.
    "smoke": Scale(d_model=24, n_layers=1, n_heads=2, seq_len=16, batch=4, steps=4,
                   lr=3e-3, warmup=1, eval_batches=2, eval_batch=8, ratios=(1, 2, 4),
                   expansion=4, activations=PLAIN + GATED, seeds=2),
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
    """Train one model from repetition seed ``seed`` and score it on the held-out split."""
    config = make_config(scale, activation, expansion)
    model = init_model(config, seed)
    flops, _ = forward_flops_per_token(model, scale.seq_len)
    train, val = tokens
    label = f"ffn: {activation} r={expansion:g} seed {seed}"

    def progress(items, desc="", total=None):
        return ctx.progress(items, label, total=total)

    train_lm(model, train, steps=scale.steps, batch_size=scale.batch, seq_len=scale.seq_len,
             lr=scale.lr, warmup=scale.warmup, seed=seed, device=ctx.device,
             progress=progress)
    val_loss = evaluate_lm(model, val, batch_size=scale.eval_batch, seq_len=scale.seq_len,
                           max_batches=scale.eval_batches, device=ctx.device)
    return Run(activation, expansion, seed, config.hidden_dim, body_params(model),
               model_ffn_params(model), flops, val_loss)


def loss_slope(ratios: list[float], losses: list[float]) -> float:
    """Least-squares slope of the loss (not its log) on log2 r: the change per doubling."""
    return slope_ci(np.log2(ratios).tolist(), losses, log=False).value


def rank_correlation(a: list[float], b: list[float]) -> float:
    """Spearman's rho (no ties expected): Pearson correlation of the ranks."""
    ra = np.argsort(np.argsort(a)).astype(float)
    rb = np.argsort(np.argsort(b)).astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])


def _losses(runs: list[Run]) -> list[float]:
    return [r.val_loss for r in runs]


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
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 6.8))
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
             f"d={d}, r={r}: h={h_plain},\n{p_plain:,} weights per layer",
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
             f"d={d}, r={r}: h=int(2/3 \u00b7 {r * d})={h_glu},\n{p_glu:,} weights per layer "
             f"({(p_glu - p_plain) / p_plain:+.2%})\n"
             f"(blocklab fuses W_gate and W_up\ninto one d -> 2h matmul)",
             ha="center", va="top", fontsize=10.5)
    fig.suptitle("The FFN block at matched parameters: plain vs gated (Shazeer 2020)",
                 fontsize=13)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    rel = ctx.save_figure(fig, "ffn_diagram")
    return rel


def _si(x: float) -> str:
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}"


def plot_sweep(sweep: dict[int, list[Run]], slope: Estimate, scale: Scale,
               ctx: Context) -> str:
    """Loss vs parameters and vs FLOPs: mean over seeds with its 95% interval, and the
    seeds themselves (thin lines: one seed's sweep)."""
    ratios = sorted(sweep)
    est = {k: mean_ci(_losses(sweep[k])) for k in ratios}
    fig, axes = plt.subplots(1, 2, figsize=(10, 5.2), sharey=True, layout="constrained")
    for ax, xs, xlabel in (
            (axes[0], [sweep[k][0].params for k in ratios], "non-embedding parameters"),
            (axes[1], [sweep[k][0].flops for k in ratios], "forward FLOPs per token")):
        for s in range(len(sweep[ratios[0]])):
            ax.plot(xs, [sweep[k][s].val_loss for k in ratios], "-", color="0.7", lw=0.8,
                    label="one seed" if s == 0 else None)
        mean = [est[k].value for k in ratios]
        err = [[est[k].value - est[k].low for k in ratios],
               [est[k].high - est[k].value for k in ratios]]
        ax.errorbar(xs, mean, yerr=err, fmt="o-", color="C0", capsize=4, lw=1.5,
                    label=f"{BASELINE}, h = r d: mean, 95% interval")
        for x, y, k in zip(xs, mean, ratios, strict=True):
            ax.annotate(f"r={k}", (x, y), textcoords="offset points", xytext=(6, 5),
                        fontsize=9, color="C0")
        ax.set_xscale("log")
        ax.set_xticks(xs, [_si(x) for x in xs])
        ax.minorticks_off()
        ax.set_xlabel(f"{xlabel} (log scale)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9)
    axes[0].set_ylabel("validation loss (nats per byte)")
    axes[0].set_title(f"Loss vs parameters; slope per doubling\nof r {slope.text('+.4f')}")
    axes[1].set_title(f"Loss vs compute\n(T={scale.seq_len}, FlopCounterMode + attention)")
    fig.suptitle(f"FFN expansion sweep: d={scale.d_model}, {scale.n_layers} layers, "
                 f"{scale.steps} steps of {scale.batch}x{scale.seq_len} tokens, "
                 f"{len(sweep[ratios[0]])} seeds", fontsize=12)
    return ctx.save_figure(fig, "ffn_expansion")


def plot_activations(acts: dict[str, list[Run]], gain: Estimate, ctx: Context) -> str:
    """Mean loss per activation with its 95% interval and the seeds as dots, beside
    Shazeer's reference numbers."""
    names = list(acts)
    est = [mean_ci(_losses(acts[a])) for a in names]
    colours = ["#7f9fbf" if a in PLAIN else "#e07b39" for a in names]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 5.2), width_ratios=(3, 2),
                                   layout="constrained")
    x = np.arange(len(names))
    lo = [e.value - e.low for e in est]
    hi = [e.high - e.value for e in est]
    ax1.bar(x, [e.value for e in est], 0.6, color=colours, yerr=[lo, hi], capsize=5,
            ecolor="black")
    for i, a in enumerate(names):
        ax1.plot([x[i]] * len(acts[a]), _losses(acts[a]), "k.", ms=7,
                 label="one seed" if i == 0 else None)
        ax1.text(x[i], est[i].high, f"{est[i].value:.3f}\n{acts[a][0].params:,} p",
                 ha="center", va="bottom", fontsize=8.5)
    bottom = min(min(e.low, *e.samples) for e in est)
    top = max(max(e.high, *e.samples) for e in est)
    span = max(top - bottom, 1e-3)
    ax1.set_ylim(bottom - 0.8 * span, top + 0.6 * span)
    ax1.set_xticks(x, [f"{a}\nh={acts[a][0].hidden}" for a in names])
    ax1.set_ylabel("validation loss (nats per byte; axis cut)")
    ax1.set_title(f"This run: {len(acts[names[0]])} seeds, bars 95% interval;\n"
                  f"plain - gated {gain.text('+.4f')}", fontsize=10)
    ax1.bar([0], [0], color="#7f9fbf", label="plain (h = r d)")
    ax1.bar([0], [0], color="#e07b39", label="gated (h = int(2/3 r d))")
    ax1.legend(fontsize=8.5, loc="upper left", ncols=3)

    ref_names = list(PLAIN + GATED)
    ref = [SHAZEER[a] for a in ref_names]
    xr = np.arange(len(ref_names))
    ax2.bar(xr, ref, 0.6, color=["#7f9fbf" if a in PLAIN else "#e07b39" for a in ref_names])
    for i, v in enumerate(ref):
        ax2.text(xr[i], v, f"{v:.3f}", ha="center", va="bottom", fontsize=8.5)
    ax2.set_ylim(1.9, 2.01)
    ax2.set_xticks(xr, ["relu", "gelu", "swish", "reglu", "geglu", "swiglu"])
    ax2.set_ylabel("log-perplexity (axis cut)")
    ax2.set_title("Reference: Shazeer 2020,\nT5-base, 65k steps")
    fig.suptitle("FFN activation variants at matched parameters (lower is better)", fontsize=12)
    return ctx.save_figure(fig, "ffn_activations")


# ------------------------------------------------------------------------------ run

def run(ctx: Context) -> Outcome:
    scale = scale_for(ctx)
    tokens = corpus_tokens()
    metrics: dict[str, object] = {}

    # Every configuration on every seed; the GELU r = expansion model serves both parts.
    names = [a for a in PLAIN + GATED if a in scale.activations]
    wanted = [(BASELINE, r) for r in scale.ratios]
    wanted += [(a, scale.expansion) for a in names if a != BASELINE]
    seeds = ctx.seeds(scale.seeds)
    runs: dict[tuple[str, int], list[Run]] = {key: [] for key in wanted}
    for seed in seeds:
        for key in wanted:
            runs[key].append(train_one(*key, seed, scale, ctx, tokens))

    # (a) expansion sweep: one slope per seed, then their mean and interval.
    ratios = list(scale.ratios)
    sweep = {r: runs[(BASELINE, r)] for r in ratios}
    slopes = [loss_slope(ratios, [sweep[r][i].val_loss for r in ratios])
              for i in range(len(seeds))]
    slope = mean_ci(slopes)
    metrics["expansion_slope"] = slope
    for r in ratios:
        first = sweep[r][0]
        metrics[f"loss_{BASELINE}_r{r}"] = mean_ci(_losses(sweep[r]))
        metrics[f"params_{BASELINE}_r{r}"] = first.params
        metrics[f"ffn_share_{BASELINE}_r{r}"] = first.ffn_params / first.params
        metrics[f"flops_per_token_{BASELINE}_r{r}"] = first.flops
    end_gain = paired_diff(_losses(sweep[ratios[0]]), _losses(sweep[ratios[-1]]))
    metrics[f"gain_r{ratios[0]}_to_r{ratios[-1]}"] = end_gain

    # (b) activations at matched parameters, paired by seed.
    acts = {a: runs[(a, scale.expansion)] for a in names}
    plain = [a for a in names if a in PLAIN]
    gated = [a for a in names if a in GATED]
    per_seed = {kind: [statistics.fmean(acts[a][i].val_loss for a in group)
                       for i in range(len(seeds))]
                for kind, group in (("plain", plain), ("gated", gated))}
    glu_gain = paired_diff(per_seed["plain"], per_seed["gated"])  # > 0: gated better
    base_params = acts[BASELINE][0].params
    mismatch = max(abs(acts[a][0].params - base_params) / base_params for a in names)
    for a in names:
        metrics[f"loss_{a}"] = mean_ci(_losses(acts[a]))
        metrics[f"params_{a}"] = acts[a][0].params
        metrics[f"hidden_{a}"] = acts[a][0].hidden
    metrics["plain_mean"] = mean_ci(per_seed["plain"])
    metrics["glu_mean"] = mean_ci(per_seed["gated"])
    metrics["glu_gain"] = glu_gain
    metrics["param_mismatch"] = mismatch
    act_mean = {a: metrics[f"loss_{a}"].value for a in names}
    rho = None
    if len(names) >= 3:
        rho = rank_correlation([act_mean[a] for a in names], [SHAZEER[a] for a in names])
        metrics["rank_corr_shazeer"] = rho

    checks = [
        Check("expansion: loss change per doubling of r", slope, "<=", MAX_EXPANSION_SLOPE,
              why="a wider FFN must lower the loss; the line is no change"),
        Check("glu_gain: plain minus gated loss at matched parameters", glu_gain, ">=",
              MIN_GLU_GAIN, counted=False,
              why="context: Shazeer's GLU result, not the card's claim; gated must beat "
                  "plain, the line is a tie"),
        Check("param_mismatch: matched models' parameter gap", exact(mismatch), "<=",
              MAX_PARAM_MISMATCH, counted=False,
              why="context: fixed by the 2/3 width rule and d, not by the run"),
    ]
    figures = [plot_diagram(scale, ctx), plot_sweep(sweep, slope, scale, ctx),
               plot_activations(acts, glu_gain, ctx)]

    size_txt = "; ".join(
        f"r={r}: {metrics[f'params_{BASELINE}_r{r}']:,} params "
        f"(FFN {metrics[f'ffn_share_{BASELINE}_r{r}']:.0%}), "
        f"{_si(metrics[f'flops_per_token_{BASELINE}_r{r}'])}FLOP/token" for r in ratios)
    loss_txt = ", ".join(f"r={r} {metrics[f'loss_{BASELINE}_r{r}'].text('.4f')}"
                         for r in ratios)
    act_txt = ", ".join(f"{a} {metrics[f'loss_{a}'].text('.4f')}"
                        for a in sorted(names, key=act_mean.get))
    rho_txt = (f"; rank correlation of this run's ordering with Shazeer 2020's "
               f"(ReLU 1.997, GELU 1.983, Swish 1.994, ReGLU 1.953, GEGLU 1.942, SwiGLU "
               f"1.944): {rho:+.2f}" if rho is not None else
               "; Shazeer 2020 (T5-base): GELU 1.983, SwiGLU 1.944 log-perplexity")
    evidence = (
        f"Byte-level TransformerLM, d={scale.d_model}, {scale.n_layers} layers, "
        f"{scale.steps} steps of {scale.batch}x{scale.seq_len} tokens, {len(seeds)} seeds "
        f"per model (paired: same init outside the FFN, same batches); held-out loss in "
        f"nats/byte, mean [95% interval]. (a) Sizes ({BASELINE}): {size_txt}. Losses: "
        f"{loss_txt}; r={ratios[0]} minus r={ratios[-1]} {end_gain.text('+.4f')}. "
        f"{checks[0].text('+.4f')}. "
        f"(b) Matched parameters (hidden {acts[BASELINE][0].hidden} plain vs "
        f"{acts[gated[0]][0].hidden} gated): {act_txt}. {checks[1].text('+.4f')}"
        f"{rho_txt}. Context: {checks[2].text('.2%')}."
    )
    return Outcome(metrics=metrics, evidence=evidence, checks=checks, figures=figures)


# The card's items and the checks that answer them (the report's item-by-item table;
# the runner refuses a mapping that names a missing check or leaves a counted one out).
CARD_ITEMS = (
    CardItem("The FFN expands each position from d to r d (r = 4 by default), applies the "
             "activation and projects back, position by position",
             untested="a definition; the shapes and the position-wise independence are "
                      "tested in tests/test_ffn.py"),
    CardItem("The FFN holds most of a layer's parameters and FLOPs (2/3 at r = 4)",
             untested="follows from the shapes (8 d^2 of 12 d^2 per layer); the measured "
                      "shares are in the metrics (ffn_share_*)"),
    CardItem("A wider FFN (larger r) adds capacity: lower loss for its extra parameters "
             "and FLOPs", ("expansion: loss change per doubling of r",)),
    CardItem("Gated variants (GLU) beat plain activations at matched parameters "
             "(Shazeer 2020)",
             ("glu_gain: plain minus gated loss at matched parameters",
              "param_mismatch: matched models' parameter gap"),
             untested="Shazeer's result, not the card's claim: measured and shown beside "
                      "it, not counted"),
)


EXPERIMENT = Experiment(
    id="ffn",
    card="DL0045",
    title="FFN expansion ratio and activation variants",
    claim=(
        "The FFN's width (expansion ratio, 4x by default) adds capacity: a wider FFN buys "
        "quality with parameters and FLOPs. Beside it, as context: gated variants (GLU: "
        "ReGLU, GEGLU, SwiGLU) against plain activations (ReLU, GELU, SiLU) at matched "
        "parameters (Shazeer 2020)."
    ),
    run=run,
    card_items=CARD_ITEMS,
    seconds={"quick": 44, "full": 480},  # quick measured (CPU s), full estimated
)
