"""DL0042 -- the computational cost of attention: O(n^2 d) scores against O(n d^2) projections.

Claim (Vaswani et al. 2017, section 3.2.2 and table 1; Kaplan et al. 2020, section 2.1): a
self-attention layer over n positions of width d costs O(n^2 d) for the scores Q K^T, the
softmax over them and the weighted sum A V, and O(n d^2) for the q/k/v/output
projections; the quadratic part overtakes the projections once n exceeds about the
width (at n = d (1 + H_kv / H) FLOP for FLOP, 2 d for multi-head attention); splitting
d into H heads costs about what one head of the full width does; and an analytic count
-- 2 FLOPs per multiply-add, bytes for the softmax -- predicts what a matmul counter
sees and, through the machine's throughput, the time.

Measurements (the timed ones one thread, fp32, every callable of every shape visited
once per round, ``repeats`` interleaved rounds; process CPU time on the CPU, which other
processes sharing the machine do not stretch, wall time on CUDA):

(a) counted vs analytic: ``FlopCounterMode`` over blocklab's ``Attention`` and
    ``FeedForward`` with the shapes of real models, on the meta device, against
    :func:`blocklab.cost.attention_cost`. Context, not counted in the verdict: the
    modules run the very matmuls the formula lists, so the two agree by construction
    (the library's tests hold it there).
(b) exponents: the projections, Q K^T, softmax and A V timed over >= 4 lengths n at
    fixed d and >= 4 widths d at fixed n; log-log slopes fitted over every round at every
    size, with their 95% intervals (theory: 1 for the projections and 2 for the rest in
    n; 2 and 1 in d, H = d / D growing with d).
(c) prediction: one roofline for every part -- the longer of its compute time (its
    FLOPs over the fp32 matmul rate; for the softmax, its scores over the rate of a
    softmax on cache-resident data) and its memory time (the bytes it reads and writes
    over the copy bandwidth), all rates measured in the same rounds. Q K^T writes, A V
    reads, the (B, H, n, n) matrix the FLOP count leaves out. The softmax was first
    modelled as memory traffic alone: it came out 1.9-2.2x slower than that (one
    thread), on the edge of the 2x band from one seed to the next -- on these CPUs the
    big softmax runs at the rate of a cached one, its exponentials, not its bytes, set
    its time. Measured / predicted
    time, paired round by round over every shape (geometric mean, log-t interval), per
    part -- a part the model mispredicts fails on its own, not hidden in a correlation
    over all parts. The FLOPs-only ratios are kept beside it in the metrics.
(d) crossover: per round, where the time of Q K^T + A V overtakes the projections in
    the n sweep, against n = d (1 + H_kv / H) (median, order-statistic interval).
(e) multi-head vs single-head: the whole layer with H = d / D heads against one head of
    width d at (n_fixed, d_fixed), paired by round. And the table of real models
    (parameters, FLOPs per token, the n^2 d share at their context, KV cache per token).

The card's numbered items -- each mapped to the checks that answer it, or to the reason
none is counted -- are ``CARD_ITEMS`` below; the report shows them item by item.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from blocklab.attention import Attention  # noqa: E402
from blocklab.cost.flops import attention_cost, crossover_seq_len, transformer_cost  # noqa: E402
from blocklab.cost.memory import kv_cache_bytes  # noqa: E402
from blocklab.cost.presets import REAL_MODELS, model_config  # noqa: E402
from blocklab.ffn import FeedForward  # noqa: E402
from blocklab.lab.base import CardItem, Context, Experiment, Outcome, torch_threads  # noqa: E402
from blocklab.lab.estimate import (  # noqa: E402
    Check,
    Estimate,
    exact,
    interleaved_timings,
    median_ci,
    ratio_ci,
    slope_ci,
)
from blocklab.lab.plot import errorbars  # noqa: E402

PARTS = ("projections", "scores", "softmax", "av")
MATMULS = ("projections", "scores", "av")
# Theory for each (sweep, part): the exponent of its work in n (d fixed) and in d (n fixed).
EXPONENTS = {("n", "projections"): 1, ("n", "scores"): 2, ("n", "softmax"): 2, ("n", "av"): 2,
             ("d", "projections"): 2, ("d", "scores"): 1, ("d", "softmax"): 1, ("d", "av"): 1}


@dataclass(frozen=True)
class Scale:
    """How big each measurement is.

    Attributes:
        head_dim: D of the timed layers (H = d / D).
        d_fixed, n_sweep: the n sweep at width d_fixed.
        n_fixed, d_sweep: the d sweep at length n_fixed.
        batch: B of the timed layers.
        warmup, repeats: untimed and timed interleaved rounds.
        matmul_n, copy_mib: sizes of the throughput and bandwidth calibrations.
        count_len: sequence length of the counted real-model layers (meta device).
        table_lengths: lengths at which the n^2 d share of real models is tabled.
    """

    head_dim: int
    d_fixed: int
    n_sweep: tuple[int, ...]
    n_fixed: int
    d_sweep: tuple[int, ...]
    batch: int
    warmup: int
    repeats: int
    matmul_n: int
    copy_mib: int
    count_len: int
    table_lengths: tuple[int, ...]

    def __post_init__(self) -> None:
        for name in ("head_dim", "d_fixed", "n_fixed", "batch", "repeats", "matmul_n",
                     "copy_mib", "count_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if len(set(self.n_sweep)) < 4 or len(set(self.d_sweep)) < 4:
            raise ValueError(f"n_sweep ({self.n_sweep}) and d_sweep ({self.d_sweep}) need "
                             "at least four sizes for a slope")
        if self.repeats < 3:
            raise ValueError(f"repeats ({self.repeats}) must be >= 3 for intervals")
        if self.d_fixed not in self.d_sweep or self.n_fixed not in self.n_sweep:
            raise ValueError(f"d_fixed ({self.d_fixed}) must be in d_sweep ({self.d_sweep}) "
                             f"and n_fixed ({self.n_fixed}) in n_sweep ({self.n_sweep})")
        bad = [d for d in (self.d_fixed, *self.d_sweep) if d % self.head_dim]
        if bad:
            raise ValueError(f"widths {bad} must be multiples of head_dim ({self.head_dim})")


SCALES: dict[str, Scale] = {
    # n from 256: below, a part's fixed per-call cost (tens of microseconds, which the cost
    # model leaves out) is a visible share of its time and flattens the fitted exponents.
    "quick": Scale(head_dim=64, d_fixed=256, n_sweep=(256, 512, 1024, 2048, 4096), n_fixed=512,
                   d_sweep=(128, 256, 512, 1024, 2048), batch=1, warmup=1, repeats=15,
                   matmul_n=1024, copy_mib=64, count_len=4096,
                   table_lengths=(2048, 8192, 32768)),
    # n stops at 4096: the (H, n, n) scores and probabilities take 1 GiB there.
    "full": Scale(head_dim=64, d_fixed=512, n_sweep=(256, 512, 1024, 2048, 4096),
                  n_fixed=1024, d_sweep=(128, 256, 512, 1024, 2048), batch=1, warmup=2,
                  repeats=9, matmul_n=2048, copy_mib=256, count_len=8192,
                  table_lengths=(2048, 8192, 32768, 131072)),
    # A seconds-long run for tests of the plumbing; its numbers mean little.
    "smoke": Scale(head_dim=16, d_fixed=32, n_sweep=(16, 32, 64, 128), n_fixed=32,
                   d_sweep=(16, 32, 64, 128), batch=1, warmup=0, repeats=3, matmul_n=64,
                   copy_mib=4, count_len=64, table_lengths=(2048,)),
}

# Thresholds of the checks.
SLOPE_TOLERANCE = 0.3  # exponents within +-0.3 of 2 or 1: n^1.7 is no longer "quadratic",
# and 0.3 leaves room for the fixed per-call cost that flattens the smallest shapes
CROSSOVER_FACTOR = 2.0  # measured crossover within 2x of d (1 + H_kv / H): "about 2d"
PREDICT_FACTOR = 2.0  # measured / predicted time within 2x: a roofline-style model,
# which knows FLOPs and bytes but not cache blocking or kernel choice, claims no more
MULTI_HEAD_FACTOR = 2.0  # multi / single-head time within 2x: "similar" cost (Vaswani)


def scale_for(ctx: Context) -> Scale:
    return SCALES["quick" if ctx.quick else "full"]


# ------------------------------------------------------------ (a) counted vs analytic

def count_flops(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def count_real_model(name: str, seq_len: int) -> dict[str, int]:
    """FlopCounterMode over one attention layer and one FFN of ``name`` on the meta
    device, and the analytic counts of the same (every pair: what the math kernel does)."""
    cfg = model_config(name)
    if cfg.position == "learned":  # GPT-2/3 cannot run past their position table
        seq_len = min(seq_len, cfg.max_seq_len)
    with torch.device("meta"):
        attn = Attention(cfg.d_model, cfg.n_heads, n_kv_heads=cfg.kv_heads,
                         head_dim=cfg.dim_head, bias=cfg.qkv_bias, out_bias=cfg.out_bias)
        ffn = FeedForward(cfg.d_model, hidden_dim=cfg.hidden_dim,
                          activation=cfg.activation, bias=cfg.ffn_bias)  # type: ignore[arg-type]
        x = torch.empty(1, seq_len, cfg.d_model)
    counted_attn = count_flops(lambda: attn(x))
    counted_ffn = count_flops(lambda: ffn(x))
    analytic = transformer_cost(cfg, seq_len, causal=False)
    per_layer_ffn = (analytic.breakdown["ffn_in"] + analytic.breakdown["ffn_out"]) // cfg.n_layers
    return {"seq_len": seq_len, "counted_attention": counted_attn, "analytic_attention": analytic.attention.flops,
            "counted_ffn": counted_ffn, "analytic_ffn": per_layer_ffn}


# --------------------------------------------------------------- (b) timing the parts

def part_fns(n: int, d: int, heads: int, scale: Scale, g: torch.Generator,
             device: torch.device) -> dict[str, Callable[[], object]]:
    """The parts of one self-attention layer over n positions of width d with ``heads``
    heads (head dim d / heads; no mask, fp32), each a callable to time.

    Every part writes into a preallocated buffer: a fresh (B, H, n, n) tensor per call
    costs page faults on CPU (for n = 2048 as much as the matmul itself), which is the
    allocator's cost, not attention's.
    """
    B, H, D = scale.batch, heads, d // heads

    def randn(*shape: int, std: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * std).to(device)

    x, o = randn(B, n, d), randn(B, n, d)
    w_qkv, w_o = randn(d, 3 * d, std=d**-0.5), randn(d, d, std=d**-0.5)  # (C_in, C_out)
    # q carries attention's 1/sqrt(D): unscaled scores of one wide head (std sqrt(D))
    # push most probabilities into float32 denormals, which slow A V down many times.
    q, k, v = randn(B, H, n, D, std=D**-0.5), randn(B, H, n, D), randn(B, H, n, D)
    qkv, out = torch.empty(B, n, 3 * d, device=device), torch.empty(B, n, d, device=device)
    scores = torch.empty(B, H, n, n, device=device)
    torch.matmul(q, k.transpose(-1, -2), out=scores)
    probs = torch.softmax(scores, dim=-1)
    heads_out = torch.empty(B, H, n, D, device=device)
    return {
        "projections": lambda: (torch.matmul(x, w_qkv, out=qkv), torch.matmul(o, w_o, out=out)),
        "scores": lambda: torch.matmul(q, k.transpose(-1, -2), out=scores),  # (B, H, n, n)
        "softmax": lambda: torch.softmax(scores, dim=-1, out=probs),
        "av": lambda: torch.matmul(probs, v, out=heads_out),  # (B, H, n, D)
    }


# The softmax's compute rate: EXP_CALLS softmaxes of a cache-resident (64, 1024) fp32
# block per call (256 KiB: no memory traffic, the kernel's own throughput -- its
# exponentials), as the square matmul gives the matmul parts theirs.
EXP_ROWS, EXP_COLS, EXP_CALLS = 64, 1024, 32
EXP_ELEMENTS = EXP_ROWS * EXP_COLS


def calibration_fns(scale: Scale, device: torch.device) -> dict[str, Callable[[], object]]:
    """fp32 matmul (``mm``, 2 m^3 FLOPs), copy (``copy``, bytes read + written) and the
    softmax on cached data (``exp``, EXP_ELEMENTS * EXP_CALLS scores)."""
    m = scale.matmul_n
    a, b = torch.rand(m, m, device=device), torch.rand(m, m, device=device)
    out = torch.empty(m, m, device=device)
    src = torch.rand(scale.copy_mib * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    e_in = torch.randn(EXP_ROWS, EXP_COLS, device=device)
    e_out = torch.empty_like(e_in)

    def exps() -> None:
        for _ in range(EXP_CALLS):
            torch.softmax(e_in, dim=-1, out=e_out)

    return {"mm": lambda: torch.mm(a, b, out=out), "copy": lambda: dst.copy_(src),
            "exp": exps}


def time_everything(scale: Scale, g: torch.Generator, ctx: Context) -> dict[str, list[float]]:
    """Seconds per call of every part at every shape, of the single-head layer and of
    the calibrations, all in one interleaved loop: each round visits every callable
    once, so a change of load hits every shape alike instead of bending a slope.

    Keys: ``n=<n>/<part>`` (width d_fixed), ``d=<d>/<part>`` (length n_fixed),
    ``single/<part>`` (one head of width d_fixed at n_fixed), ``mm``, ``copy``. On the
    CPU the seconds are process CPU time (one thread: the time on its core, which other
    processes sharing the machine do not stretch); on CUDA wall time.
    """
    fns: dict[str, Callable[[], object]] = dict(calibration_fns(scale, ctx.device))
    shapes = [(f"n={n}", n, scale.d_fixed) for n in scale.n_sweep] + [
        (f"d={d}", scale.n_fixed, d) for d in scale.d_sweep]
    for key, n, d in shapes + [("single", scale.n_fixed, scale.d_fixed)]:
        heads = 1 if key == "single" else d // scale.head_dim
        for part, fn in part_fns(n, d, heads, scale, g, ctx.device).items():
            fns[f"{key}/{part}"] = fn
    with torch.inference_mode():
        timings = interleaved_timings(fns, repeats=scale.repeats, device=ctx.device,
                                      warmup=scale.warmup)
    return {k: t.seconds for k, t in timings.items()}


def part_work(n: int, d: int, scale: Scale, heads: int | None = None
              ) -> dict[str, dict[str, float]]:
    """{"flops": {part: matmul FLOPs}, "bytes": {part: fp32 bytes read + written},
    "exps": {part: exponentials}} of each part as :func:`part_fns` runs it: the softmax
    evaluates one exponential per score (its other elementwise work -- max, sum,
    scale -- is a few FLOPs per score, left out)."""
    cost = attention_cost(seq_len=n, d_model=d, n_heads=heads or d // scale.head_dim,
                          batch=scale.batch, dtype=torch.float32)
    b, B, H = cost.breakdown, cost.batch, cost.n_heads
    act, matrix = B * n * d, B * H * n * n  # one (B, n, d) activation, one (B, H, n, n) matrix
    flops = {"projections": float(cost.projection_flops), "scores": float(b["scores"]),
             "av": float(b["av"]), "softmax": 0.0}
    elements = {"projections": 6 * act + 4 * d * d,  # x, o, W_qkv, W_o in; qkv, out written
                "scores": 2 * act + matrix,  # q, k in; the scores written
                "av": matrix + 2 * act,  # probabilities and v in; the heads written
                "softmax": 2 * matrix}  # scores in, probabilities written
    exps = {"projections": 0.0, "scores": 0.0, "av": 0.0, "softmax": float(matrix)}
    return {"flops": flops, "bytes": {k: 4.0 * v for k, v in elements.items()}, "exps": exps}


def crossing(ns: list[int], ratio: list[float]) -> float | None:
    """First n where ``ratio`` reaches 1, interpolated in log-log; None if it never does
    inside the sweep (or is already above 1 at its start)."""
    if ratio[0] >= 1:
        return None
    for i in range(1, len(ns)):
        if ratio[i] >= 1:
            x0, x1 = math.log(ns[i - 1]), math.log(ns[i])
            y0, y1 = math.log(ratio[i - 1]), math.log(ratio[i])
            return math.exp(x0 + (0 - y0) * (x1 - x0) / (y1 - y0))
    return None


def crossings(t: dict[str, list[float]], ns: list[int], parts: tuple[str, ...]) -> list[float]:
    """Per round, where the summed time of ``parts`` overtakes the projections (a round
    that never crosses in the sweep counts as twice its longest length: beyond it)."""
    out = []
    for r in range(len(t["mm"])):
        ratio = [sum(t[f"n={n}/{p}"][r] for p in parts) / t[f"n={n}/projections"][r]
                 for n in ns]
        x = crossing(ns, ratio)
        out.append(2.0 * ns[-1] if x is None else x)
    return out


# ---------------------------------------------------------------------- real models

def real_model_table(scale: Scale) -> dict[str, dict[str, float]]:
    table = {}
    for name in REAL_MODELS:
        cfg = model_config(name)
        row: dict[str, float] = {"params_B": transformer_cost(cfg, 1).params / 1e9}
        c = transformer_cost(cfg, min(4096, cfg.max_seq_len))
        row["gflops_per_token_4k"] = c.flops_per_token / 1e9
        row["train_gflops_per_token_4k"] = c.training_flops_per_token / 1e9
        for n in scale.table_lengths:
            # GPT-2/3 past their learned position table: the cost of the same shapes.
            longer = cfg.replace(max_seq_len=max(n, cfg.max_seq_len))
            row[f"score_share_n{n}"] = transformer_cost(longer, n).score_fraction
        row["kv_kib_per_token_bf16"] = kv_cache_bytes(
            n_layers=cfg.n_layers, n_kv_heads=cfg.kv_heads, head_dim=cfg.dim_head, seq_len=1,
            dtype=torch.bfloat16) / 1024
        row["crossover_causal"] = crossover_seq_len(d_model=cfg.d_model, n_heads=cfg.n_heads,
                                                    n_kv_heads=cfg.kv_heads, causal=True,
                                                    window=cfg.sliding_window)
        table[name] = row
    return table


# --------------------------------------------------------------------------- figures

COLOURS = {"projections": "C0", "scores": "C1", "softmax": "C2", "av": "C3"}


def _errorbar(ax, xs, samples: list[list[float]], k: float = 1e3, **kw) -> None:
    """Median times (``k`` x seconds) with their intervals."""
    errorbars(ax, xs, [median_ci(s) for s in samples], k, **kw)


def plot_prediction(t, predicted, slopes, scale: Scale, ctx: Context) -> str:
    """``predicted``: {(shape key, part): predicted seconds per round}."""
    # Two rows: the cost model and its key on top, the two sweeps side by side below.
    fig, axd = plt.subplot_mosaic([["pred", "key"], ["n", "d"]], figsize=(10, 8.6),
                                  layout="constrained")
    ax = axd["pred"]
    for part in PARTS:
        keys = [k for k, p in predicted if p == part]
        xs = [1e3 * statistics.median(predicted[k, part]) for k in keys]
        _errorbar(ax, xs, [t[f"{k}/{part}"] for k in keys], fmt="o", color=COLOURS[part],
                  label=part)
    ends = [1e3 * min(min(v) for v in predicted.values()) / 2,
            1e3 * max(max(v) for v in predicted.values()) * 2]
    ax.plot(ends, ends, "k-", lw=1, label="measured = predicted")
    ax.fill_between(ends, [e / PREDICT_FACTOR for e in ends], [e * PREDICT_FACTOR for e in ends],
                    color="grey", alpha=0.15, label=f"within {PREDICT_FACTOR:g}x")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("predicted ms: max(compute time, bytes / copy rate)")
    ax.set_ylabel("measured ms (median, 95% CI)")
    ax.set_title("Cost model vs measured time,\nevery part and shape")
    axd["key"].axis("off")
    axd["key"].legend(*ax.get_legend_handles_labels(), loc="center", fontsize=9,
                      title="left: one point per part and shape")
    for ax, sizes, axis, fixed in ((axd["n"], scale.n_sweep, "n", f"d={scale.d_fixed}"),
                                   (axd["d"], scale.d_sweep, "d", f"n={scale.n_fixed}")):
        for part in PARTS:
            _errorbar(ax, sizes, [t[f"{axis}={x}/{part}"] for x in sizes], fmt="o-",
                      color=COLOURS[part], label=f"{part}: slope {slopes[axis, part]:.2f}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(sizes, [str(x) for x in sizes])
        ax.minorticks_off()
        ax.set_xlabel(f"{axis} ({fixed}, D={scale.head_dim}, B={scale.batch})")
        ax.set_ylabel("measured ms (median, 95% CI)")
        theory = "scores/softmax/AV 2, projections 1" if axis == "n" else \
            "projections 2, scores/softmax/AV 1"
        ax.set_title(f"Time vs {axis}\n(theory: {theory})")
        ax.legend(fontsize=8)
    fig.suptitle(f"Attention cost by part ({ctx.device.type}, 1 thread, fp32, "
                 f"{scale.repeats} interleaved rounds)")
    return ctx.save_figure(fig, "cost_prediction")


def plot_crossover(t, analytic_x: float, measured: Estimate, measured_softmax: Estimate,
                   scale: Scale, ctx: Context) -> str:
    ns = list(scale.n_sweep)
    rounds = range(scale.repeats)

    def summed(n: int, parts: tuple[str, ...]) -> list[float]:
        return [sum(t[f"n={n}/{p}"][r] for p in parts) for r in rounds]

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 7.8), layout="constrained")
    _errorbar(ax1, ns, [summed(n, ("projections",)) for n in ns], fmt="o-", color="C0",
              label="projections (n d^2)")
    _errorbar(ax1, ns, [summed(n, ("scores", "av")) for n in ns], fmt="o-", color="C1",
              label="Q K^T + A V (n^2 d)")
    _errorbar(ax1, ns, [summed(n, ("scores", "softmax", "av")) for n in ns], fmt="s--",
              color="C2", label="Q K^T + softmax + A V")
    ax1.axvline(analytic_x, color="grey", ls=":", label=f"FLOPs equal: n = 2d = {analytic_x:.0f}")
    for est, colour, what in ((measured, "C1", "matmuls"), (measured_softmax, "C2", "with softmax")):
        x = est.map(lambda r: r * analytic_x)
        ax1.axvspan(x.low, x.high, color=colour, alpha=0.15,
                    label=f"measured ({what}): n = {x.value:.0f} [{x.low:.0f}, {x.high:.0f}]")
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.minorticks_off()
    ax1.set_yscale("log")
    ax1.set_xlabel(f"n (d={scale.d_fixed}, H={scale.d_fixed // scale.head_dim})")
    ax1.set_ylabel("measured ms (median, 95% CI)")
    ax1.set_title("Where the quadratic part overtakes the projections")
    ax1.legend(fontsize=8)
    work = {n: part_work(n, scale.d_fixed, scale)["flops"] for n in ns}
    share = [(work[n]["scores"] + work[n]["av"]) / (work[n]["scores"] + work[n]["av"]
                                                      + work[n]["projections"]) for n in ns]
    ax2.plot(ns, share, "o-", color="k", label="analytic FLOP share")
    _errorbar(ax2, ns, [[q / (q + p) for q, p in zip(summed(n, ("scores", "av")),
                                                        summed(n, ("projections",)), strict=True)]
                        for n in ns], k=1.0, fmt="s--", color="C1", label="measured time share")
    ax2.axhline(0.5, color="grey", ls=":", lw=1)
    ax2.set_ylim(0, 1)
    ax2.set_xlabel("n")
    ax2.set_ylabel("share of Q K^T + A V in the attention matmuls")
    ax2.set_title("n^2 d share: analytic n / (n + 2d) vs measured")
    ax2.legend(fontsize=8)
    return ctx.save_figure(fig, "cost_crossover")


def plot_real_models(table: dict[str, dict[str, float]], scale: Scale, ctx: Context) -> str:
    names = list(table)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 6.4), width_ratios=(1.25, 1),
                                   layout="constrained")
    width = 0.8 / len(scale.table_lengths)
    y = np.arange(len(names))
    for i, n in enumerate(scale.table_lengths):
        vals = [table[m].get(f"score_share_n{n}", np.nan) * 100 for m in names]
        ax1.barh(y + i * width, vals, width, label=f"n = {n:,}")
    labels = [f"{m} (window {model_config(m).sliding_window})" if model_config(m).sliding_window
              else m for m in names]
    ax1.set_yticks(y + width * (len(scale.table_lengths) - 1) / 2, labels, fontsize=8)
    ax1.invert_yaxis()
    ax1.set_xlabel("% of forward matmul FLOPs\nin Q K^T + A V (causal)")
    ax1.set_title("The n^2 d share of real models\n(GPT-2/3 past their trained context)")
    ax1.legend(fontsize=8, loc="lower right")
    kv = [table[m]["kv_kib_per_token_bf16"] for m in names]
    colours = []
    for m in names:
        cfg = model_config(m)
        colours.append("C3" if cfg.kv_heads == cfg.n_heads else "C2" if cfg.kv_heads == 1
                       else "C1")
    ax2.barh(y, kv, color=colours)
    for yi, v in zip(y, kv, strict=True):
        ax2.text(v, yi, f" {v:,.0f}", va="center", fontsize=8)
    ax2.set_xscale("log")
    ax2.set_yticks(y, names, fontsize=8)
    ax2.invert_yaxis()
    ax2.set_xlabel("KV cache per token, KiB (bf16)")
    ax2.set_title("KV cache per token:\nMHA (red), GQA (orange), MQA (green)")
    rel = ctx.save_figure(fig, "cost_real_models")
    return rel


# ------------------------------------------------------------------------------- run

def run(ctx: Context) -> Outcome:
    scale = scale_for(ctx)
    counts = {name: count_real_model(name, scale.count_len) for name in REAL_MODELS}
    mismatch = max(abs(c[f"counted_{k}"] / c[f"analytic_{k}"] - 1)
                   for c in counts.values() for k in ("attention", "ffn"))
    with torch_threads(1):
        t = time_everything(scale, ctx.generator(5), ctx)
    R = scale.repeats
    rate = [2 * scale.matmul_n**3 / s for s in t["mm"]]  # fp32 FLOP/s, per round
    copy_bytes = 2 * scale.copy_mib * 2**20  # read + write
    bandwidth = [copy_bytes / s for s in t["copy"]]
    exp_rate = [EXP_ELEMENTS * EXP_CALLS / s for s in t["exp"]]  # softmax scores / s

    # (c) prediction: each part's FLOPs over the matmul rate plus its bytes over the copy
    # bandwidth, both measured in the same round; paired round by round over every shape.
    shapes = {f"n={n}": (n, scale.d_fixed) for n in scale.n_sweep} | {
        f"d={d}": (scale.n_fixed, d) for d in scale.d_sweep}
    predicted, flops_only = {}, {}
    for key, (n, d) in shapes.items():
        work = part_work(n, d, scale)
        for part in PARTS:
            # A roofline: the compute time or the memory time, whichever is longer.
            predicted[key, part] = [max(work["flops"][part] / rate[r] + work["exps"][part]
                                        / exp_rate[r], work["bytes"][part] / bandwidth[r])
                                    for r in range(R)]
            flops_only[key, part] = [work["flops"][part] / rate[r] for r in range(R)]

    def over(model: dict, part: str) -> Estimate:
        return ratio_ci([x for k in shapes for x in t[f"{k}/{part}"]],
                        [x for k in shapes for x in model[k, part]])

    ratios = {part: over(predicted, part) for part in PARTS}

    # (b) exponents: every round at every size is a point of the fit.
    slopes = {}
    for axis, sizes in (("n", scale.n_sweep), ("d", scale.d_sweep)):
        for part in PARTS:
            slopes[axis, part] = slope_ci([x for x in sizes for _ in range(R)],
                                          [y for x in sizes for y in t[f"{axis}={x}/{part}"]])

    # (d) crossover, per round, against n = d (1 + H_kv / H).
    analytic_x = crossover_seq_len(d_model=scale.d_fixed, n_heads=scale.d_fixed // scale.head_dim)
    ns = list(scale.n_sweep)
    measured_x = median_ci(crossings(t, ns, ("scores", "av"))).map(lambda x: x / analytic_x)
    measured_x_softmax = median_ci(crossings(t, ns, ("scores", "softmax", "av"))).map(
        lambda x: x / analytic_x)

    # Multi-head (H heads of D) against one head of width d, the same n and d.
    def layer(key: str, parts: tuple[str, ...] = PARTS) -> list[float]:
        return [sum(t[f"{key}/{p}"][r] for p in parts) for r in range(R)]

    multi = ratio_ci(layer(f"d={scale.d_fixed}"), layer("single"))
    core = ("scores", "softmax", "av")
    multi_core = ratio_ci(layer(f"d={scale.d_fixed}", core), layer("single", core))
    flop_ratio = sum(part_work(scale.n_fixed, scale.d_fixed, scale)["flops"].values()) / sum(
        part_work(scale.n_fixed, scale.d_fixed, scale, heads=1)["flops"].values())

    checks = [Check("counted / analytic FLOPs - 1 (worst model)", exact(mismatch), "<=", 0.0,
                    why="context: blocklab's modules run the matmuls the formula lists, so the "
                        "counter equals it by construction (tests/cost/test_flops.py)",
                    counted=False)]
    for (axis, part), expected in EXPONENTS.items():
        checks.append(Check(f"{part} time exponent in {axis}", slopes[axis, part], "in",
                            (expected - SLOPE_TOLERANCE, expected + SLOPE_TOLERANCE),
                            why=f"theory {expected}: the part's work grows as {axis}^{expected}"))
    for part in PARTS:
        checks.append(Check(f"{part} measured / predicted time", ratios[part], "in",
                            (1 / PREDICT_FACTOR, PREDICT_FACTOR),
                            why="predicted: max(FLOPs / fp32 matmul rate (softmax: scores / cached "
                                "softmax rate), bytes / copy bandwidth), measured alike"))
    checks += [
        Check("crossover measured / analytic", measured_x, "in",
              (1 / CROSSOVER_FACTOR, CROSSOVER_FACTOR),
              why="Q K^T + A V time overtakes the projections at n = d (1 + H_kv / H)"),
        Check("multi-head / single-head layer time", multi, "in",
              (1 / MULTI_HEAD_FACTOR, MULTI_HEAD_FACTOR),
              why=f"Vaswani et al.: similar cost (matmul FLOP ratio {flop_ratio:g})"),
    ]

    table = real_model_table(scale)
    metrics: dict[str, object] = {
        "counted_mismatch": mismatch, "counted": counts, "real_models": table,
        "matmul_gflops": median_ci(rate).map(lambda x: x / 1e9),
        "copy_gbps": median_ci(bandwidth).map(lambda x: x / 1e9),
        "exp_gops": median_ci(exp_rate).map(lambda x: x / 1e9),
        "crossover_analytic": analytic_x,
        "crossover_measured": measured_x.map(lambda x: x * analytic_x),
        "crossover_measured_with_softmax": measured_x_softmax.map(lambda x: x * analytic_x),
        "multi_over_single_core": multi_core, "multi_over_single": multi,
    }
    for part in MATMULS:  # the FLOPs-only prediction, beside the one checked
        metrics[f"measured_over_flops_only_{part}"] = over(flops_only, part)
    for part in PARTS:
        metrics[f"measured_over_predicted_{part}"] = ratios[part]
        for axis in ("n", "d"):
            metrics[f"slope_{part}_vs_{axis}"] = slopes[axis, part]

    figures = [plot_prediction(t, predicted, slopes, scale, ctx),
               plot_crossover(t, analytic_x, measured_x, measured_x_softmax, scale, ctx),
               plot_real_models(table, scale, ctx)]
    big = "llama-2-7b"
    held = sum(c.status == "holds" for c in checks if c.counted)
    evidence = (
        f"FlopCounterMode over one attention layer and one FFN of each of {len(counts)} real "
        f"models at n={scale.count_len} (meta device) against the analytic count, worst "
        f"relative difference {mismatch:g} (e.g. {big}: {counts[big]['counted_attention']:.4g} "
        f"vs {counts[big]['analytic_attention']:.4g} attention FLOPs; context, equal by "
        f"construction). Timed parts, {R} interleaved rounds over every shape, 1 thread, "
        f"{'CPU' if ctx.device.type == 'cpu' else 'wall'} time, matmul "
        f"{metrics['matmul_gflops']:.3g} GFLOP/s, copy {metrics['copy_gbps']:.3g} GB/s and "
        f"cached softmax {metrics['exp_gops']:.3g} G scores/s "
        f"measured in the same rounds: " + "; ".join(c.text() for c in checks[1:]) + ". "
        f"Crossover at d={scale.d_fixed}: analytic n = {analytic_x:.0f}, measured n = "
        f"{metrics['crossover_measured']:.0f}, with the softmax n = "
        f"{metrics['crossover_measured_with_softmax']:.0f}. Multi-head / single-head "
        f"attention core (scores, softmax, A V) {multi_core:.2f}: the softmax runs over H times "
        f"the scores. Measured / FLOPs-only prediction (bytes left out): " + ", ".join(
            f"{p} {metrics[f'measured_over_flops_only_{p}']:.2f}x" for p in MATMULS)
        + ". Real models at n=32768 (causal): n^2 d share "
        + ", ".join(f"{m} {100 * table[m]['score_share_n32768']:.0f}%"
                    for m in ("llama-2-7b", "llama-3-8b", "falcon-7b", "llama-2-70b")
                    if "score_share_n32768" in table[m])
        + "; KV cache per token (bf16) "
        + ", ".join(f"{m} {table[m]['kv_kib_per_token_bf16']:.0f} KiB"
                    for m in ("llama-2-7b", "llama-2-70b", "mistral-7b", "falcon-7b"))
        + f". {held}/{sum(c.counted for c in checks)} counted checks hold."
    )
    return Outcome(metrics=metrics, evidence=evidence, checks=checks, figures=figures)


# The card's items and the checks that answer them (the report's item-by-item table;
# the runner refuses a mapping that names a missing check or leaves a counted one out).
CARD_ITEMS = (
    CardItem("The scores Q K^T, their softmax and the weighted sum A V cost O(n^2 d)",
             ("scores time exponent in *", "softmax time exponent in *", "av time exponent in *")),
    CardItem("The q/k/v/output projections cost O(n d^2)", ("projections time exponent in *",)),
    CardItem("An analytic count (2 FLOPs per multiply-add) gives what a FLOP counter sees",
             ("counted / analytic FLOPs - 1 (worst model)",),
             untested="the modules run the very matmuls the formula lists: they agree by "
                      "construction (held by the tests), context"),
    CardItem("Through the machine's throughput the count predicts the time; the softmax "
             "(step 3), which has no matmul FLOPs, is set by its bytes or its "
             "exponentials",
             ("projections measured / predicted time", "scores measured / predicted time",
              "softmax measured / predicted time", "av measured / predicted time")),
    CardItem("The quadratic part overtakes the projections once n exceeds about the width "
             "(n = 2 d for multi-head attention)", ("crossover measured / analytic",)),
    CardItem("Splitting d into H heads costs about what one head of the full width does",
             ("multi-head / single-head layer time",)),
)


EXPERIMENT = Experiment(
    id="cost",
    card="DL0042",
    title="The computational cost of attention",
    claim=(
        "Self-attention costs O(n^2 d) for its scores, softmax and weighted sum and O(n d^2) "
        "for its projections, so the quadratic part overtakes the projections once n passes "
        "about 2d (multi-head); multi-head attention costs about what single-head attention "
        "of the full width does; and the analytic count (2 FLOPs per multiply-add, and the "
        "bytes each part moves), through the machine's measured matmul rate and bandwidth, "
        "predicts each part's time within 2x."
    ),
    run=run,
    card_items=CARD_ITEMS,
    # quick: measured, user+sys CPU seconds of one run at 1 thread (15.0-15.4 at seeds
    # 0-2); full: measured once (25), rounded up.
    seconds={"quick": 16, "full": 30},
)
