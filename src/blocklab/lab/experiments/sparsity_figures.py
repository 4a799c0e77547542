"""Figures of the sparsity experiment (DL0051): every curve with its 95% interval."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from blocklab.lab.base import Context  # noqa: E402
from blocklab.lab.estimate import Estimate, mean_ci  # noqa: E402
from blocklab.lab.experiments.sparsity import (  # noqa: E402
    NEAR_ZERO,
    PRUNE_MAX_DROP,
    RELU_MIN_ZEROS,
    T5_NONZERO,
    THREADS,
    Rep,
    Scale,
)
from blocklab.lab.plot import band, errorbars


def plot_l1(reps: list[Rep], scale: Scale, ctx: Context) -> str:
    # The two histograms on top, the near-zero share and accuracy across the bottom.
    fig, axd = plt.subplot_mosaic([["values", "magnitudes"], ["share", "share"]],
                                  figsize=(10, 8.6), layout="constrained")
    ax1, ax2, ax3 = axd["values"], axd["magnitudes"], axd["share"]
    bins, log_bins = np.linspace(-0.3, 0.3, 121), np.linspace(-8, 0, 81)
    for i, lam in enumerate(scale.lambdas):
        label = "lambda = 0 (no L1)" if lam == 0 else f"lambda = {lam:g}"
        w = reps[0].weights[lam]
        ax1.hist(np.clip(w, bins[0], bins[-1]), bins=bins, histtype="step", lw=1.6,
                 color=f"C{i}", label=label)
        ax2.hist(np.log10(np.clip(np.abs(w), 1e-8, None)), bins=log_bins, histtype="step",
                 lw=1.6, color=f"C{i}", label=label)
    ax1.set_yscale("log")
    ax1.set_xlabel("weight value (clipped to +-0.3)")
    ax1.set_ylabel("weights (log scale)")
    ax1.set_title("Weight values after training\n(first seed)")
    ax1.legend(fontsize=8, loc="upper left")  # clear of the spike at 0
    ax2.axvline(np.log10(NEAR_ZERO), color="grey", ls="--", lw=1,
                label=f"near zero: |w| < {NEAR_ZERO:g}")
    ax2.set_xlabel("log10 |w|  (exact zeros at -8)")
    ax2.set_ylabel("weights")
    ax2.set_title("Magnitudes: L1 moves mass\ntowards zero")
    ax2.legend(fontsize=8)
    xs = np.arange(len(scale.lambdas))
    near = [mean_ci([100 * r.near_zero[lam] for r in reps]) for lam in scale.lambdas]
    ax3.bar(xs - 0.2, [e.value for e in near], width=0.4, color="C0",
            label=f"weights with |w| < {NEAR_ZERO:g} (%)")
    errorbars(ax3, xs - 0.2, near, fmt="none", color="black")
    ax3.set_ylabel("near-zero weights (%)", color="C0")
    ax3.set_ylim(0, 100)
    ax3.set_xticks(xs, [f"{lam:g}" for lam in scale.lambdas])
    ax3.set_xlabel("L1 strength lambda")
    twin = ax3.twinx()
    for key, fmt, colour, label in (("acc", "o-", "C3", "test accuracy"),
                                    ("zeroed_acc", "s--", "C2", "near-zero weights set to 0")):
        errorbars(twin, xs, [mean_ci([100 * getattr(r, key)[lam] for r in reps])
                              for lam in scale.lambdas], fmt=fmt, color=colour, label=label)
    twin.set_ylabel("test accuracy (%)", color="C3")
    handles = ax3.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax3.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="upper center",
               bbox_to_anchor=(0.5, -0.16), ncol=3)
    ax3.set_title(f"Near-zero share and accuracy ({len(reps)} seeds, 95% CI)")
    return ctx.save_figure(fig, "sparsity_l1_histograms")


def plot_relu(reps: list[Rep], lm_runs, ctx: Context) -> str:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.8), sharey=True, layout="constrained")
    panels = ((ax1, [r.probes for r in reps], reps[0].probe_steps, "MLP on digits",
               lambda i, n: f"hidden layer {i + 1}"),
              (ax2, [p for p, _ in lm_runs], lm_runs[0][1], "Byte-level LM, ReLU FFN units",
               lambda i, n: n.replace("layers.", "block ").replace(".ffn", " FFN")))
    for ax, probes, steps, title, names in panels:
        for i, name in enumerate(probes[0]):
            band(ax, steps, [p[name] for p in probes], "o-", k=100, ms=3, color=f"C{i}",
                 label=names(i, name))
        ax.axhline(100 * (1 - T5_NONZERO), color="black", ls="--", lw=1,
                   label="T5-Base MLPs: 97% zeros")
        ax.axhline(100 * RELU_MIN_ZEROS, color="grey", ls=":", lw=1, label="most zero above")
        ax.set_xlabel("training step")
        ax.set_title(f"{title}\n({len(probes)} seeds, 95% CI band)")
        ax.legend(fontsize=8, loc="lower right")
        ax.grid(alpha=0.3)
    ax1.set_ylabel("activations exactly zero (%)")
    ax1.set_ylim(0, 100)
    return ctx.save_figure(fig, "sparsity_relu_activations")


def _compression_axis(ax, sparsities, xlabel: str) -> None:
    """x = 1 / (1 - sparsity) on a log scale, ticks labelled with both."""
    ax.set_xscale("log")
    ax.set_xticks([1 / (1 - s) for s in sparsities],
                  [f"{100 * s:g}%\n{1 / (1 - s):.0f}x" for s in sparsities])
    ax.minorticks_off()
    ax.set_xlabel(xlabel)


def plot_pruning(reps: list[Rep], reference: Estimate, scale: Scale, ctx: Context) -> str:
    fig, ax = plt.subplots(figsize=(8.5, 5))
    styles = {"gradual": ("o-", "C0", "gradual (cubic schedule) + fine-tune"),
              "oneshot": ("s-", "C1", "one-shot + fine-tune"),
              "none": ("x:", "C7", "one-shot, no fine-tune"),
              "structured": ("D", "C3", "structured (units removed) + fine-tune")}
    for method, (fmt, colour, label) in styles.items():
        ss = sorted(reps[0].prune[method])
        errorbars(ax, [1 / (1 - s) for s in ss],
                   [mean_ci([100 * r.prune[method][s] for r in reps]) for s in ss],
                   fmt=fmt, color=colour, label=label)
    ax.axhline(100 * reference.value, color="black", lw=1,
               label=f"dense, same fine-tuning {100 * reference.value:.1f}%")
    ax.axhspan(100 * (reference.value - PRUNE_MAX_DROP), 100 * reference.value, color="grey",
               alpha=0.25, label=f"within {100 * PRUNE_MAX_DROP:g} points (little loss)")
    _compression_axis(ax, scale.sparsities, "weights pruned (compression)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Digits MLP: accuracy vs sparsity ({len(reps)} seeds, 95% CI)")
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return ctx.save_figure(fig, "sparsity_pruning")


def plot_speed(speed: dict[float, dict[str, Estimate]], scale: Scale, ctx: Context) -> str:
    fig, ax = plt.subplots(figsize=(8.5, 5.8), layout="constrained")
    ss = sorted(speed)
    labels = {"masked": "masked unstructured (dense kernel over zeros)",
              "structured": "structured: hidden units removed (smaller dense)",
              "csr": "CSR sparse weights (torch.sparse.mm)"}
    for i, (k, label) in enumerate(labels.items()):
        if k in speed[ss[0]]:
            errorbars(ax, [1 / (1 - s) for s in ss], [speed[s][k] for s in ss], fmt="o-",
                       color=f"C{i}", label=label)
    ax.axhline(1.0, color="black", lw=1, label="dense (1x)")
    ax.plot([1 / (1 - s) for s in ss], [1 / (1 - s) for s in ss], ":", color="grey",
            label="1 / (1 - sparsity): the FLOP ratio")
    ax.set_yscale("log")
    _compression_axis(ax, ss, "sparsity (compression)")
    ax.set_ylabel("speed-up over dense (log scale)")
    ax.set_title(f"Digits MLP {'-'.join(map(str, scale.widths))} on the test set, "
                 f"{THREADS} thread (interleaved, 95% CI)")
    # Below the axes: inside, it would cover the FLOP-ratio line.
    ax.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    ax.grid(alpha=0.3, which="both")
    return ctx.save_figure(fig, "sparsity_speed")
