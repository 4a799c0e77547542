"""DL0042 -- the computational cost of attention: O(n^2 d) scores against O(n d^2) projections.

Claim (Vaswani et al. 2017, table 1; Kaplan et al. 2020, section 2.1): a self-attention
layer over n positions of width d costs O(n^2 d) for the scores Q K^T and the weighted
sum A V, and O(n d^2) for the q/k/v/output projections; the quadratic part overtakes
the projections once n exceeds about the width (at n = d (1 + H_kv / H) FLOP for FLOP,
2 d for multi-head attention), and an analytic count -- 2 FLOPs per multiply-add --
predicts what a matmul counter sees and, through the machine's throughput, the time.

Four measurements:

(a) counted vs analytic: ``FlopCounterMode`` over blocklab's ``Attention`` and
    ``FeedForward`` with the shapes of real models, on the meta device (no memory;
    there SDPA decomposes into the math kernel, which the counter sees, every pair
    counted), against :func:`blocklab.cost.attention_cost` with ``causal=False``;
(b) time of each part: the projections, Q K^T, softmax and A V timed separately
    (one thread, process CPU time so that other processes sharing the machine do not
    count, median of interleaved repeats) over a sweep of n at fixed d and of d
    at fixed n; log-log slopes fitted (theory: scores 2 and projections 1 in n; 1 and 2
    in d);
(c) prediction: each matmul part's FLOPs over the fp32 matmul throughput, and the
    softmax's bytes (read scores, write probabilities) over the copy bandwidth, both
    measured in the same run, against the measured times;
(d) crossover: where the measured time of Q K^T + A V overtakes the projections,
    against n = d (1 + H_kv / H); and the table of real models (parameters, FLOPs per
    token, the n^2 d share at their context, KV cache per token).
"""

from __future__ import annotations

import math
import statistics
import time
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
from blocklab.lab.base import (  # noqa: E402
    Context,
    Experiment,
    Outcome,
    torch_threads,
    verdict_of,
)

PARTS = ("projections", "scores", "softmax", "av")


@dataclass(frozen=True)
class Scale:
    """How big each measurement is.

    Attributes:
        head_dim: D of the timed layers (H = d / D).
        d_fixed, n_sweep: the n sweep at width d_fixed.
        n_fixed, d_sweep: the d sweep at length n_fixed.
        batch: B of the timed layers.
        warmup, repeats: untimed and timed rounds per shape (median).
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
        if len(self.n_sweep) < 3 or len(self.d_sweep) < 3:
            raise ValueError(f"n_sweep ({self.n_sweep}) and d_sweep ({self.d_sweep}) need "
                             "at least three sizes for a slope")
        bad = [d for d in (self.d_fixed, *self.d_sweep) if d % self.head_dim]
        if bad:
            raise ValueError(f"widths {bad} must be multiples of head_dim ({self.head_dim})")


SCALES: dict[str, Scale] = {
    "quick": Scale(head_dim=64, d_fixed=256, n_sweep=(128, 256, 512, 1024, 2048), n_fixed=512,
                   d_sweep=(128, 256, 512, 1024, 2048), batch=1, warmup=1, repeats=7,
                   matmul_n=1024, copy_mib=64, count_len=4096,
                   table_lengths=(2048, 8192, 32768)),
    # n stops at 4096: the (H, n, n) scores and probabilities take 1 GiB there.
    "full": Scale(head_dim=64, d_fixed=512, n_sweep=(128, 256, 512, 1024, 2048, 4096),
                  n_fixed=1024, d_sweep=(128, 256, 512, 1024, 2048), batch=1, warmup=2,
                  repeats=9, matmul_n=2048, copy_mib=256, count_len=8192,
                  table_lengths=(2048, 8192, 32768, 131072)),
    # A seconds-long run for tests of the plumbing; its numbers mean little.
    "smoke": Scale(head_dim=16, d_fixed=32, n_sweep=(16, 32, 64, 128), n_fixed=32,
                   d_sweep=(16, 32, 64), batch=1, warmup=0, repeats=2, matmul_n=64,
                   copy_mib=4, count_len=64, table_lengths=(2048,)),
}

# Verdict thresholds.
SLOPE_TOLERANCE = 0.3  # fitted exponents within +-0.3 of 2 (quadratic) or 1 (linear)
CROSSOVER_FACTOR = 2.0  # measured crossover within 2x of d (1 + H_kv / H)
MIN_LOG_CORRELATION = 0.95  # log predicted vs log measured time over every part and shape


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

def median_times(fns: dict[str, Callable[[], object]], warmup: int, repeats: int,
                 device: torch.device) -> dict[str, float]:
    """Median seconds per call of each function, timed round-robin.

    On CPU the clock is the process's CPU time: with one thread it is the time the work
    took on its core, which other processes sharing the machine cannot inflate (wall
    time grows with the chance of being preempted, more for longer calls, and bends
    the fitted exponents upwards). On CUDA it is wall time between synchronisations.
    """
    cuda = device.type == "cuda"
    clock = time.perf_counter if cuda else time.process_time
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if cuda:
                torch.cuda.synchronize(device)
            start = clock()
            fn()
            if cuda:
                torch.cuda.synchronize(device)
            samples[name].append(clock() - start)
    return {k: statistics.median(v) for k, v in samples.items()}


def time_parts(n: int, d: int, scale: Scale, g: torch.Generator, device: torch.device
               ) -> dict[str, float]:
    """Seconds of each part of one multi-head self-attention layer (no mask, fp32).

    Every part writes into a preallocated buffer: a fresh (B, H, n, n) tensor per call
    costs page faults on CPU (for n = 2048 as much as the matmul itself), which is the
    allocator's cost, not attention's.
    """
    B, D = scale.batch, scale.head_dim
    H = d // D

    def randn(*shape: int, std: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * std).to(device)

    x, o = randn(B, n, d), randn(B, n, d)
    w_qkv, w_o = randn(d, 3 * d, std=d**-0.5), randn(d, d, std=d**-0.5)  # (C_in, C_out)
    q, k, v = randn(B, H, n, D), randn(B, H, n, D), randn(B, H, n, D)
    qkv, out = torch.empty(B, n, 3 * d, device=device), torch.empty(B, n, d, device=device)
    scores = torch.empty(B, H, n, n, device=device)
    torch.matmul(q, k.transpose(-1, -2), out=scores)
    probs = torch.softmax(scores, dim=-1)
    heads = torch.empty(B, H, n, D, device=device)
    with torch.inference_mode():
        return median_times({
            "projections": lambda: (torch.matmul(x, w_qkv, out=qkv),
                                    torch.matmul(o, w_o, out=out)),
            "scores": lambda: torch.matmul(q, k.transpose(-1, -2), out=scores),  # (B, H, n, n)
            "softmax": lambda: torch.softmax(scores, dim=-1, out=probs),
            "av": lambda: torch.matmul(probs, v, out=heads),  # (B, H, n, D)
        }, scale.warmup, scale.repeats, device)


def part_work(n: int, d: int, scale: Scale) -> dict[str, float]:
    """FLOPs of the matmul parts and bytes of the softmax, from the cost model."""
    cost = attention_cost(seq_len=n, d_model=d, n_heads=d // scale.head_dim, batch=scale.batch,
                          dtype=torch.float32)
    b = cost.breakdown
    return {"projections": float(cost.projection_flops), "scores": float(b["scores"]),
            "av": float(b["av"]),
            # read the (B, H, n, n) scores, write the probabilities
            "softmax": 2.0 * cost.batch * cost.n_heads * n * n * 4}


def calibrate(scale: Scale, device: torch.device) -> tuple[float, float]:
    """(fp32 matmul FLOP/s, copy bytes read + written per second), medians."""
    m = scale.matmul_n
    a, b = torch.rand(m, m, device=device), torch.rand(m, m, device=device)
    out = torch.empty(m, m, device=device)
    src = torch.rand(scale.copy_mib * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    t = median_times({"mm": lambda: torch.mm(a, b, out=out), "copy": lambda: dst.copy_(src)},
                     1, max(3, scale.repeats), device)
    return 2 * m**3 / t["mm"], 2 * src.nbytes / t["copy"]


def slope(xs: list[float], ys: list[float]) -> float:
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


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


def plot_prediction(points, n_times, d_times, slopes, scale: Scale, ctx: Context) -> str:
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    ax = axes[0]
    for part in PARTS:
        pred = [p[2] for p in points if p[0] == part]
        meas = [p[3] for p in points if p[0] == part]
        ax.loglog(np.array(pred) * 1e3, np.array(meas) * 1e3, "o", color=COLOURS[part],
                  label=part)
    lo = min(min(p[2], p[3]) for p in points) * 1e3 / 2
    hi = max(max(p[2], p[3]) for p in points) * 1e3 * 2
    ax.loglog([lo, hi], [lo, hi], "k-", lw=1, label="measured = predicted")
    ax.fill_between([lo, hi], [lo / 2, hi / 2], [lo * 2, hi * 2], color="grey", alpha=0.15,
                    label="within 2x")
    ax.set_xlabel("predicted ms (FLOPs / matmul rate; softmax: bytes / copy rate)")
    ax.set_ylabel("measured ms")
    ax.set_title("Cost model vs measured time, every part and shape")
    ax.legend(fontsize=8)
    for ax, times, sizes, axis, fixed in (
            (axes[1], n_times, scale.n_sweep, "n", f"d={scale.d_fixed}"),
            (axes[2], d_times, scale.d_sweep, "d", f"n={scale.n_fixed}")):
        for part in PARTS:
            ax.loglog(sizes, [times[s][part] * 1e3 for s in sizes], "o-", color=COLOURS[part],
                      label=f"{part}: slope {slopes[axis][part]:.2f}")
        ax.set_xticks(sizes, [str(x) for x in sizes])
        ax.minorticks_off()
        ax.set_xlabel(f"{axis} ({fixed}, D={scale.head_dim}, B={scale.batch})")
        ax.set_ylabel("measured ms")
        theory = "scores/softmax/AV 2, projections 1" if axis == "n" else \
            "projections 2, scores/softmax/AV 1"
        ax.set_title(f"Time vs {axis} (theory: {theory})")
        ax.legend(fontsize=8)
    fig.suptitle(f"Attention cost by part ({ctx.device.type}, 1 thread, fp32)")
    fig.tight_layout()
    rel = ctx.save_figure(fig, "cost_prediction")
    return rel


def plot_crossover(n_times, n_work, analytic_x: float, measured_x: float | None,
                   measured_x_softmax: float | None, scale: Scale, ctx: Context) -> str:
    ns = list(scale.n_sweep)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    ax1.loglog(ns, [n_times[n]["projections"] * 1e3 for n in ns], "o-", color="C0",
               label="projections (n d^2)")
    ax1.loglog(ns, [(n_times[n]["scores"] + n_times[n]["av"]) * 1e3 for n in ns], "o-",
               color="C1", label="Q K^T + A V (n^2 d)")
    ax1.loglog(ns, [(n_times[n]["scores"] + n_times[n]["av"] + n_times[n]["softmax"]) * 1e3
                    for n in ns], "s--", color="C2", label="Q K^T + softmax + A V")
    ax1.axvline(analytic_x, color="grey", ls=":", label=f"FLOPs equal: n = 2d = {analytic_x:.0f}")
    if measured_x is not None:
        ax1.axvline(measured_x, color="C1", ls="--", lw=1,
                    label=f"measured (matmuls): n = {measured_x:.0f}")
    if measured_x_softmax is not None:
        ax1.axvline(measured_x_softmax, color="C2", ls="--", lw=1,
                    label=f"measured (with softmax): n = {measured_x_softmax:.0f}")
    for ax in (ax1, ax2):
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.minorticks_off()
    ax1.set_xlabel(f"n (d={scale.d_fixed}, H={scale.d_fixed // scale.head_dim})")
    ax1.set_ylabel("measured ms")
    ax1.set_title("Where the quadratic part overtakes the projections")
    ax1.legend(fontsize=8)
    share = [(n_work[n]["scores"] + n_work[n]["av"]) / (n_work[n]["scores"] + n_work[n]["av"]
                                                          + n_work[n]["projections"]) for n in ns]
    t_share = [(n_times[n]["scores"] + n_times[n]["av"]) / (
        n_times[n]["scores"] + n_times[n]["av"] + n_times[n]["projections"]) for n in ns]
    ax2.semilogx(ns, share, "o-", color="k", label="analytic FLOP share")
    ax2.semilogx(ns, t_share, "s--", color="C1", label="measured time share")
    ax2.axhline(0.5, color="grey", ls=":", lw=1)
    ax2.set_ylim(0, 1)
    ax2.set_xlabel("n")
    ax2.set_ylabel("share of Q K^T + A V in the attention matmuls")
    ax2.set_title("n^2 d share: analytic n / (n + 2d) vs measured")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    rel = ctx.save_figure(fig, "cost_crossover")
    return rel


def plot_real_models(table: dict[str, dict[str, float]], scale: Scale, ctx: Context) -> str:
    names = list(table)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 5.5))
    width = 0.8 / len(scale.table_lengths)
    y = np.arange(len(names))
    for i, n in enumerate(scale.table_lengths):
        vals = [table[m].get(f"score_share_n{n}", np.nan) * 100 for m in names]
        ax1.barh(y + i * width, vals, width, label=f"n = {n:,}")
    labels = [f"{m} (window {model_config(m).sliding_window})" if model_config(m).sliding_window
              else m for m in names]
    ax1.set_yticks(y + width * (len(scale.table_lengths) - 1) / 2, labels, fontsize=8)
    ax1.invert_yaxis()
    ax1.set_xlabel("% of forward matmul FLOPs in Q K^T + A V (causal)")
    ax1.set_title("The n^2 d share of real models (GPT-2/3 past their trained context)")
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
    ax2.set_title("KV cache per token: MHA (red), GQA (orange), MQA (green)")
    fig.tight_layout()
    rel = ctx.save_figure(fig, "cost_real_models")
    return rel


# ------------------------------------------------------------------------------- run

def run(ctx: Context) -> Outcome:
    scale = scale_for(ctx)
    metrics: dict[str, object] = {}
    g = ctx.generator(5)

    counts = {name: count_real_model(name, scale.count_len) for name in REAL_MODELS}
    counted_ok = all(c["counted_attention"] == c["analytic_attention"]
                     and c["counted_ffn"] == c["analytic_ffn"] for c in counts.values())
    metrics["counted_equals_analytic"] = float(counted_ok)

    with torch_threads(1):
        rate, bandwidth = calibrate(scale, ctx.device)
        n_times = {n: time_parts(n, scale.d_fixed, scale, g, ctx.device)
                   for n in ctx.progress(scale.n_sweep, "cost: n sweep", total=len(scale.n_sweep))}
        d_times = {d: time_parts(scale.n_fixed, d, scale, g, ctx.device)
                   for d in ctx.progress(scale.d_sweep, "cost: d sweep", total=len(scale.d_sweep))}
    metrics["matmul_gflops"] = rate / 1e9
    metrics["copy_gbps"] = bandwidth / 1e9

    n_work = {n: part_work(n, scale.d_fixed, scale) for n in scale.n_sweep}
    d_work = {d: part_work(scale.n_fixed, d, scale) for d in scale.d_sweep}
    points = []  # (part, shape, predicted s, measured s)
    for work, times, label in ((n_work, n_times, "n"), (d_work, d_times, "d")):
        for size in work:
            for part in PARTS:
                speed = bandwidth if part == "softmax" else rate
                points.append((part, f"{label}={size}", work[size][part] / speed,
                               times[size][part]))
    log_pred = np.log([p[2] for p in points])
    log_meas = np.log([p[3] for p in points])
    correlation = float(np.corrcoef(log_pred, log_meas)[0, 1])
    ratios = {part: statistics.median(p[3] / p[2] for p in points if p[0] == part)
              for part in PARTS}
    metrics["log_correlation"] = correlation
    for part in PARTS:
        metrics[f"measured_over_predicted_{part}"] = ratios[part]

    sweeps = {"n": (list(scale.n_sweep), n_times), "d": (list(scale.d_sweep), d_times)}
    slopes = {axis: {part: slope(sizes, [t[x][part] for x in sizes]) for part in PARTS}
              for axis, (sizes, t) in sweeps.items()}
    for axis in sweeps:
        for part in PARTS:
            metrics[f"slope_{part}_vs_{axis}"] = slopes[axis][part]
    expected = {("n", "projections"): 1, ("n", "scores"): 2, ("n", "av"): 2,
                ("d", "projections"): 2, ("d", "scores"): 1, ("d", "av"): 1}
    slopes_ok = all(abs(slopes[a][p] - e) <= SLOPE_TOLERANCE for (a, p), e in expected.items())

    ns = list(scale.n_sweep)
    analytic_x = crossover_seq_len(d_model=scale.d_fixed, n_heads=scale.d_fixed // scale.head_dim)
    ratio_mm = [(n_times[n]["scores"] + n_times[n]["av"]) / n_times[n]["projections"] for n in ns]
    ratio_sm = [(n_times[n]["scores"] + n_times[n]["av"] + n_times[n]["softmax"])
                / n_times[n]["projections"] for n in ns]
    measured_x = crossing(ns, ratio_mm)
    measured_x_softmax = crossing(ns, ratio_sm)
    metrics["crossover_analytic"] = analytic_x
    metrics["crossover_measured"] = measured_x
    metrics["crossover_measured_with_softmax"] = measured_x_softmax
    crossover_ok = measured_x is not None and \
        1 / CROSSOVER_FACTOR <= measured_x / analytic_x <= CROSSOVER_FACTOR

    table = real_model_table(scale)
    metrics["real_models"] = table
    metrics["counted"] = counts

    figures = [plot_prediction(points, n_times, d_times, slopes, scale, ctx),
               plot_crossover(n_times, n_work, analytic_x, measured_x, measured_x_softmax,
                              scale, ctx),
               plot_real_models(table, scale, ctx)]

    checks = {
        "counted": counted_ok,
        "exponents": slopes_ok,
        "prediction": correlation >= MIN_LOG_CORRELATION,
        "crossover": crossover_ok,
    }
    held = sum(checks.values())
    verdict = verdict_of(checks)

    def mark(name: str) -> str:
        return "holds" if checks[name] else "fails"

    slope_txt = "; ".join(
        f"vs {axis} ({', '.join(str(x) for x in sweeps[axis][0])}): "
        + ", ".join(f"{p} {slopes[axis][p]:.2f}" for p in PARTS)
        for axis in ("n", "d"))
    big = "llama-2-7b"
    evidence = (
        f"FlopCounterMode over one attention layer and one FFN of each of {len(counts)} real "
        f"models at n={scale.count_len} (meta device) equals the analytic count: {counted_ok} "
        f"(e.g. {big}: {counts[big]['counted_attention']:.4g} vs "
        f"{counts[big]['analytic_attention']:.4g} attention FLOPs) [{mark('counted')}]. "
        f"Fitted exponents of measured time (1 thread, CPU time; theory n: projections 1, "
        f"scores/AV 2; d: projections 2, scores/AV 1, within +-{SLOPE_TOLERANCE}): "
        f"{slope_txt} "
        f"[{mark('exponents')}]. "
        f"Predicted from {rate / 1e9:.1f} GFLOP/s fp32 matmul and {bandwidth / 1e9:.1f} GB/s "
        f"copy, measured in the same run: log-log correlation {correlation:.3f} over "
        f"{len(points)} part-shapes (need >= {MIN_LOG_CORRELATION}); measured / predicted "
        f"medians " + ", ".join(f"{p} {ratios[p]:.2f}" for p in PARTS)
        + f" [{mark('prediction')}]. "
        f"At d={scale.d_fixed} (MHA) Q K^T + A V cost as much as the projections at "
        f"n = {analytic_x:.0f} FLOP for FLOP; measured time crosses at n = "
        + (f"{measured_x:.0f}" if measured_x else "none in the sweep")
        + f" (need within {CROSSOVER_FACTOR:g}x), with the softmax at n = "
        + (f"{measured_x_softmax:.0f}" if measured_x_softmax else "none in the sweep")
        + f" [{mark('crossover')}]. "
        f"Real models at n=32768 (causal): n^2 d share "
        + ", ".join(f"{m} {100 * table[m]['score_share_n32768']:.0f}%"
                    for m in ("llama-2-7b", "llama-3-8b", "falcon-7b", "llama-2-70b")
                    if "score_share_n32768" in table[m])
        + "; KV cache per token (bf16) "
        + ", ".join(f"{m} {table[m]['kv_kib_per_token_bf16']:.0f} KiB"
                    for m in ("llama-2-7b", "llama-2-70b", "mistral-7b", "falcon-7b"))
        + f". {held}/{len(checks)} checks hold."
    )
    return Outcome(metrics=metrics, verdict=verdict, evidence=evidence, figures=figures)


EXPERIMENT = Experiment(
    id="cost",
    card="DL0042",
    title="The computational cost of attention",
    claim=(
        "Self-attention costs O(n^2 d) for its scores and weighted sum and O(n d^2) for its "
        "projections, so the quadratic part overtakes the projections once n passes about "
        "2d (multi-head); an analytic count at 2 FLOPs per multiply-add matches a FLOP "
        "counter and, through the machine's measured throughput, predicts the time."
    ),
    run=run,
)
