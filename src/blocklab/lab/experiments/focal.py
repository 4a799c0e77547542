"""DL0047 -- focal loss vs class-weighted cross entropy under class imbalance and label noise.

Claim (Lin et al. 2017, "Focal Loss for Dense Object Detection"; Cui et al. 2019,
"Class-Balanced Loss Based on Effective Number of Samples"): the focal loss
``-alpha_t (1 - p_t)^gamma log p_t`` down-weights well-classified examples (by 100x
at p_t = 0.9 and ~1000x at p_t = 0.968 for gamma = 2), so training is not
swamped by the many easy examples of the majority class and the rare class is
learned better than with plain cross entropy; class-weighted cross entropy
(weights from inverse frequency or the effective number of samples) is the
simpler fix for imbalance, and, because it does not up-weight hard examples --
which under label noise are mostly the mislabelled ones -- it is the more robust
of the two to noisy labels.

Measurements:

(a) the seed's figure: CE, weighted CE and FL for gamma in {0, 0.5, 1, 2, 5} as a
    function of p_t, computed with :func:`blocklab.losses.focal_loss`, and the
    down-weighting factor FL / CE at p_t = 0.9 and 0.968;
(b) an imbalanced benchmark: scikit-learn's ``make_classification`` at 1:100 and
    1:1000 positives, and long-tailed digits (scikit-learn's bundled 8x8 digits,
    the training set cut to an exponential profile with an imbalance of 50, tested
    on balanced held-out images), one MLP per run, trained with CE, WCE (inverse
    frequency, effective number) and FL over a gamma x alpha grid (the figure),
    scored on the test split (minority recall, balanced accuracy, average
    precision). The last layer's bias starts at the class prior for every loss
    (RetinaNet's initialisation), so the losses differ only in how they weight
    examples;
(c) label noise: the long-tailed digits with a fraction of training labels
    replaced by another class at random, trained with CE, inverse-weighted CE and
    FL (gamma 2) with the same inverse weights, over ``noise_repeats`` model seeds;
    the drop of balanced test accuracy from clean to noisy labels.

The data sets (and noisy labels) are drawn once, from ``DATA_SEED`` (drawn from
the run seed, they made CE's AP at 1:1000 0.43 / 0.02 / 0.09 at seeds 0 / 1 / 2): a
run's seed varies the models' initialisation and batch order only, and every
comparison is paired on those seeds.

Checks (counted), each comparing two losses that differ in one thing:

- gamma: FL (gamma 2, no alpha) vs CE, test AP averaged over the three sets: the
  paper's setting, not the best of a grid chosen on validation against one CE run
  (unequal tuning), and no alpha (which would confound gamma with class weights);
- class weighting: inverse-frequency WCE vs CE, minority recall, mean of the sets;
- robustness: FL (gamma 2) with inverse-frequency weights vs the same weights at
  gamma 0 (``focal_loss(gamma=0)``): the drop of balanced accuracy under the
  largest label noise.

The down-weighting factors of (a) are context, not counted: they are the formula
``1 / (1 - p_t)^gamma`` evaluated through the library, an implementation check
that cannot fail unless the loss is wrong (the tests cover that).

Runs use one intra-op thread: the models are tiny and a second thread only adds
synchronisation (on a busy 2-core machine, a 10x slow-down).

The card's numbered items -- each mapped to the checks that answer it, or to the reason
none is counted -- are ``CARD_ITEMS`` below; the report shows them item by item.
"""

from __future__ import annotations

import contextlib
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.datasets import load_digits, make_classification  # noqa: E402
from sklearn.metrics import average_precision_score, balanced_accuracy_score  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from blocklab.lab.base import CardItem, Context, Experiment, Outcome, torch_threads  # noqa: E402
from blocklab.lab.estimate import Check, Estimate, exact, mean_ci, paired_diff  # noqa: E402
from blocklab.lab.plot import yerr  # noqa: E402
from blocklab.losses import (  # noqa: E402
    class_weights,
    focal_loss,
    weighted_cross_entropy,
)
from blocklab.train import train_classifier  # noqa: E402


@dataclass(frozen=True)
class Scale:
    """How big each measurement is.

    Attributes:
        rates: positive rates of the synthetic binary sets.
        n_split: examples in each of the train / validation / test splits.
        features: input features of the synthetic sets.
        hidden: MLP hidden width.
        steps, batch, lr: training of one synthetic run.
        digit_steps, digit_batch, digit_lr: training of one digits run.
        imbalance: largest / smallest class in the long-tailed digits training set.
        gammas: focal gammas of the grid (0 with an alpha is alpha-balanced CE).
        repeats: repetition (model) seeds per configuration, every data set alike.
        noise_rates: label-noise fractions for (c), 0 excluded.
        noise_repeats: model seeds for (c) (>= ``repeats``; the first ``repeats`` reuse
            the clean runs of (b)): the robustness gap is a difference of differences.
    """

    rates: tuple[float, ...]
    n_split: int
    features: int
    hidden: int
    steps: int
    batch: int
    lr: float
    digit_steps: int
    digit_batch: int
    digit_lr: float
    imbalance: float
    gammas: tuple[float, ...]
    repeats: int
    noise_rates: tuple[float, ...]
    noise_repeats: int


SCALES: dict[str, Scale] = {
    # Seeds over settings: the quick grid keeps gamma 0 and 2 (the checks need no more;
    # the grid is a figure), so four model seeds fit for every loss, and the label-noise
    # check, a difference of two drops, gets eight seeds at one noise rate. The full
    # scale does about the work of the former full run (3 + 5 seeds, 5 gammas).
    "quick": Scale(rates=(0.01, 0.001), n_split=40_000, features=20, hidden=64, steps=200,
                   batch=512, lr=3e-3, digit_steps=200, digit_batch=64, digit_lr=3e-3,
                   imbalance=50.0, gammas=(0.0, 2.0), repeats=4,
                   noise_rates=(0.4,), noise_repeats=8),
    "full": Scale(rates=(0.01, 0.001), n_split=100_000, features=20, hidden=64, steps=600,
                  batch=512, lr=3e-3, digit_steps=400, digit_batch=64, digit_lr=3e-3,
                  imbalance=50.0, gammas=(0.0, 1.0, 2.0, 5.0), repeats=4,
                  noise_rates=(0.1, 0.2, 0.3, 0.4, 0.5), noise_repeats=6),
    # A seconds-long run for tests of the plumbing; its numbers mean little.
    "smoke": Scale(rates=(0.05,), n_split=1_000, features=12, hidden=16, steps=5, batch=256,
                   lr=3e-3, digit_steps=5, digit_batch=64, digit_lr=3e-3, imbalance=10.0,
                   gammas=(0.0, 2.0), repeats=2, noise_rates=(0.4,),
                   noise_repeats=3),
}

# Verdict thresholds.
# Context check: the measured FL/CE factors within 5% of Lin et al.'s rounded 100x and
# 1000x (the exact values are 100x and 977x).
FACTOR_TOL = 0.05
# One point of average precision: the smallest AP difference the RetinaNet paper reads
# as a gain in its ablations (Table 1 differences of 0.1-0.5 AP are called "comparable").
MIN_AP_GAIN = 0.01
# Five points of minority recall: one more rare example found in twenty; less is not
# "the simpler fix for imbalance".
MIN_RECALL_GAIN = 0.05
# FL must lose at least one point of balanced accuracy more than the same weighting
# with gamma 0 for "WCE is more robust" to mean something (one point is ~3 of the
# ~300 balanced test images).
MIN_ROBUSTNESS_GAP = 0.01
# Which runs the checks compare: names from :func:`methods`.
FL_FIXED = "FL g=2 a=none"  # the paper's gamma, no class weighting
WCE_NOISE = "FL g=0 a=inverse"  # inverse-weighted CE, as focal_loss(gamma=0)
FL_NOISE = "FL g=2 a=inverse"  # the same weights, gamma 2
DATA_SEED = 0  # the data sets and noisy labels are fixed; the run seed varies the models

PAPER_POINTS = ((0.9, 100.0), (0.968, 1000.0))  # Lin et al. 2017, section 3.2


def scale_for(ctx: Context) -> Scale:
    return SCALES["quick" if ctx.quick else "full"]


# ------------------------------------------------------------------------ (a) curves

def loss_curves(p_t: np.ndarray, gammas: tuple[float, ...]) -> dict[str, np.ndarray]:
    """Loss of one example vs the probability of its true class, from the library.

    Two-class logits ``(log p_t, log(1 - p_t))`` give exactly ``softmax = (p_t, 1 - p_t)``.
    """
    p = torch.tensor(p_t, dtype=torch.float64)
    logits = torch.stack([p.log(), torch.log1p(-p)], dim=1)  # (N, 2)
    target = torch.zeros(len(p), dtype=torch.long)
    out = {f"FL gamma={g:g}": focal_loss(logits, target, gamma=g, reduction="none").numpy()
           for g in gammas}
    out["CE"] = out.pop("FL gamma=0")
    # Weighted CE is CE times the weight of the class: alpha = 0.25 as in RetinaNet.
    out["WCE w=0.25"] = weighted_cross_entropy(
        logits, target, torch.tensor([0.25, 0.75], dtype=torch.float64), reduction="none"
    ).numpy()
    return out


def plot_curves(curves: dict[str, np.ndarray], p_t: np.ndarray,
                factors: dict[float, float], ctx: Context) -> str:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.8), layout="constrained")
    for name, values in curves.items():
        style = {"CE": dict(color="black", lw=2.2), "WCE w=0.25": dict(color="grey", ls="--")}
        ax1.plot(p_t, values, label=name, **style.get(name, {}))
    ax1.set_ylim(0, 5)
    ax1.set_xlim(0, 1)
    ax1.set_xlabel("probability of the ground-truth class, p_t")
    ax1.set_ylabel("loss")
    ax1.set_title("Focal loss -(1 - p_t)^gamma log p_t\n(Lin et al. 2017, Fig. 1)")
    ax1.axvspan(0.6, 1.0, color="C2", alpha=0.08)
    ax1.text(0.8, 4.6, "well-classified\nexamples", ha="center", va="top", fontsize=9)
    ax1.legend()

    ce = curves["CE"]
    for name, values in curves.items():
        if name.startswith("FL"):
            ax2.semilogy(p_t, ce / values, label=f"CE / {name}")
    for p, factor in factors.items():
        ax2.plot([p], [factor], "ko", ms=5)
        ax2.annotate(f"{factor:.0f}x at p_t={p}", (p, factor), textcoords="offset points",
                     xytext=(-90, 8), fontsize=9)
    ax2.set_xlim(0, 1)
    ax2.set_ylim(1, 1e5)
    ax2.set_xlabel("probability of the ground-truth class, p_t")
    ax2.set_ylabel("CE / FL: down-weighting factor (log)")
    ax2.set_title("How much less an example\ncounts under FL")
    ax2.legend(fontsize=8)
    rel = ctx.save_figure(fig, "focal_loss_curves")
    return rel


# ---------------------------------------------------------------------- (b) data sets

@dataclass
class Split:
    """One data set: standardised features and labels for train / val / test."""

    name: str
    x: dict[str, Tensor]
    y: dict[str, Tensor]
    n_classes: int
    minority: tuple[int, ...]  # the classes whose recall is "minority recall"


def synthetic(rate: float, scale: Scale, seed: int) -> Split:
    """``make_classification`` with a positive rate ``rate``, split stratified 1:1:1."""
    n = 3 * scale.n_split
    x, y = make_classification(n_samples=n, n_features=scale.features, n_informative=5,
                               n_redundant=5, n_clusters_per_class=2, weights=[1 - rate],
                               flip_y=0.0, class_sep=1.0, random_state=seed)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for c in (0, 1):  # stratified, so every split holds the same share of positives
        idx = rng.permutation(np.flatnonzero(y == c))
        for i, name in enumerate(parts):
            parts[name].append(idx[i::3])
    xs = {k: torch.tensor(x[np.concatenate(v)], dtype=torch.float32) for k, v in parts.items()}
    ys = {k: torch.tensor(y[np.concatenate(v)]) for k, v in parts.items()}
    mu, sd = xs["train"].mean(0), xs["train"].std(0) + 1e-6
    xs = {k: (v - mu) / sd for k, v in xs.items()}
    return Split(f"1:{round(1 / rate)}", xs, ys, 2, (1,))


def long_tailed_digits(scale: Scale, seed: int, n_max: int = 120) -> Split:
    """Digits with class c keeping ``n_max * imbalance^(-c/9)`` training images.

    Validation and test are balanced: the images left after the first 120 of each
    class (about 60 per class), split in two.
    """
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32)
    y = torch.tensor(digits.target)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=g)
    parts: dict[str, list[Tensor]] = {"train": [], "val": [], "test": []}
    for c in range(10):
        idx = perm[y[perm] == c]
        keep = max(1, round(n_max * scale.imbalance ** (-c / 9)))
        rest = idx[n_max:]
        parts["train"].append(idx[:keep])
        parts["val"].append(rest[0::2])
        parts["test"].append(rest[1::2])
    index = {k: torch.cat(v) for k, v in parts.items()}
    mu, sd = x[index["train"]].mean(0), x[index["train"]].std(0) + 0.1
    xs = {k: (x[v] - mu) / sd for k, v in index.items()}
    ys = {k: y[v] for k, v in index.items()}
    return Split("digits-LT", xs, ys, 10, (7, 8, 9))


# ---------------------------------------------------------------------- (b) training

# A loss factory gets the training labels and returns ``loss(logits, target,
# reduction="mean")``; "none" gives the per-example losses used in (c).
LossFn = Callable[..., Tensor]
LossFactory = Callable[[Tensor], LossFn]


def methods(split: Split, gammas: tuple[float, ...]) -> dict[str, tuple[LossFactory, dict]]:
    """Every loss of the benchmark: name -> (factory from train labels, description).

    The factory gets the training labels, so class weights are computed from the
    labels the model is trained on (noisy ones in (c)).
    """
    c = split.n_classes

    def wce(method: str) -> LossFactory:
        def make(y: Tensor) -> LossFn:
            counts = torch.bincount(y, minlength=c).clamp_min(1)
            w = class_weights(counts, method)  # type: ignore[arg-type]
            return lambda z, t, reduction="mean": weighted_cross_entropy(
                z, t, w, reduction=reduction)
        return make

    def fl(gamma: float, alpha: str) -> LossFactory:
        def make(y: Tensor) -> LossFn:
            if alpha == "none":
                a = None
            elif alpha == "inverse":
                a = class_weights(torch.bincount(y, minlength=c).clamp_min(1), "inverse")
            else:  # RetinaNet's alpha: weight of the rare (positive) class
                a = torch.tensor([1 - float(alpha), float(alpha)])
            return lambda z, t, reduction="mean": focal_loss(z, t, gamma=gamma, alpha=a,
                                                             reduction=reduction)
        return make

    out: dict[str, tuple[LossFactory, dict]] = {
        "CE": (fl(0.0, "none"), {"family": "CE"}),
        "WCE inverse": (wce("inverse"), {"family": "WCE"}),
        "WCE effective": (wce("effective_number"), {"family": "WCE"}),
    }
    alphas = ("none", "0.25", "0.75") if c == 2 else ("none", "inverse")
    for gamma in sorted({*gammas, 0.0, 2.0}):  # the checks need gamma 0 and 2
        for alpha in alphas:
            if gamma == 0 and alpha == "none":
                continue  # that is CE
            family = "alpha-CE" if gamma == 0 else "FL"
            out[f"FL g={gamma:g} a={alpha}"] = (fl(gamma, alpha),
                                                {"family": family, "gamma": gamma,
                                                 "alpha": alpha})
    return out


def _mlp(d_in: int, hidden: int, n_classes: int, prior: Tensor, seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))
    with torch.no_grad():
        # RetinaNet's prior initialisation: the untrained model predicts the class
        # frequencies (for two classes, the positive logit minus the negative one is
        # -log((1 - pi) / pi)).
        model[2].bias.copy_(prior.clamp_min(1e-6).log())
    return model


def scores(split: Split, probs: Tensor, part: str) -> dict[str, float]:
    """Minority recall, balanced accuracy and (macro) average precision on a split."""
    y = split.y[part].numpy()
    p = probs.numpy()
    pred = p.argmax(1)
    recalls = [float((pred[y == c] == c).mean()) for c in split.minority]
    if split.n_classes == 2:
        ap = average_precision_score(y, p[:, 1])
    else:
        ap = average_precision_score(np.eye(split.n_classes)[y], p, average="macro")
    return {"minority_recall": float(np.mean(recalls)),
            "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
            "ap": float(ap)}


def train_one(split: Split, make_loss: LossFactory, *, y_train: Tensor, seed: int, steps: int,
              batch: int, lr: float, hidden: int, ctx: Context,
              flipped: Tensor | None = None) -> dict[str, dict[str, float]]:
    """Train one MLP; its scores on the validation and test splits.

    With ``flipped`` (a bool mask of the training labels that were corrupted), also
    the share of the final training loss carried by those examples.
    """
    prior = torch.bincount(y_train, minlength=split.n_classes).float() / len(y_train)
    model = _mlp(split.x["train"].shape[1], hidden, split.n_classes, prior, seed)
    loss_fn = make_loss(y_train)
    train_classifier(model, split.x["train"], y_train, steps=steps, batch_size=batch, lr=lr,
                     loss_fn=loss_fn, seed=seed, device=ctx.device)
    model.eval()
    out = {}
    with torch.no_grad():
        for part in ("val", "test"):
            probs = torch.softmax(model(split.x[part].to(ctx.device)).float(), -1).cpu()
            out[part] = scores(split, probs, part)
        if flipped is not None:
            logits = model(split.x["train"].to(ctx.device)).float().cpu()
            per = loss_fn(logits, y_train, reduction="none")
            out["train"] = {"noisy_loss_share": float(per[flipped].sum() / per.sum()),
                            "noisy_fraction": float(flipped.float().mean())}
    return out


def _mean(runs: list[dict[str, dict[str, float]]], part: str, key: str) -> float:
    return statistics.mean(r[part][key] for r in runs)


def benchmark(split: Split, scale: Scale, seeds: list[int], ctx: Context
              ) -> dict[str, list[dict[str, dict[str, float]]]]:
    """Every method on one data set, once per repetition seed (lists in seed order)."""
    binary = split.n_classes == 2
    steps = scale.steps if binary else scale.digit_steps
    batch = scale.batch if binary else scale.digit_batch
    lr = scale.lr if binary else scale.digit_lr
    table = methods(split, scale.gammas)
    results: dict[str, list[dict[str, dict[str, float]]]] = {}
    jobs = [(name, s) for name in table for s in seeds]
    for name, s in ctx.progress(jobs, f"focal: {split.name}", total=len(jobs)):
        run = train_one(split, table[name][0], y_train=split.y["train"], seed=s,
                        steps=steps, batch=batch, lr=lr, hidden=scale.hidden, ctx=ctx)
        results.setdefault(name, []).append(run)
    return results


def _runs(runs: list[dict[str, dict[str, float]]], part: str, key: str) -> list[float]:
    return [r[part][key] for r in runs]


def select_fl(results: dict[str, list[dict[str, dict[str, float]]]]) -> str:
    """The focal setting (gamma > 0) with the best validation AP."""
    names = [n for n in results if n.startswith("FL") and not n.startswith("FL g=0 ")]
    return max(names, key=lambda n: _mean(results[n], "val", "ap"))


# ----------------------------------------------------------------------- (c) noise

def add_label_noise(y: Tensor, n_classes: int, rate: float, seed: int) -> Tensor:
    """Replace a ``rate`` fraction of labels by a different class drawn uniformly."""
    g = torch.Generator().manual_seed(seed)
    flip = torch.rand(len(y), generator=g) < rate
    other = (y + torch.randint(1, n_classes, (len(y),), generator=g)) % n_classes
    return torch.where(flip, other, y)


# ----------------------------------------------------------------------------- figures

METRICS = (("minority_recall", "minority recall"), ("balanced_accuracy", "balanced accuracy"),
           ("ap", "average precision"))


def _panel_grid(n: int, height: float) -> tuple[Any, list[Any]]:
    """A figure of ``n`` panels in rows of at most two, 10 inches wide (the report's
    page width); a leftover slot is removed."""
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(10, height * rows), squeeze=False,
                             layout="constrained")
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.remove()
    return fig, flat[:n]


def plot_benchmark(bench: dict[str, dict], chosen: dict[str, str], ctx: Context) -> str:
    names = list(bench)
    fig, axes = _panel_grid(len(names), 4.1)
    for ax, ds in zip(axes, names, strict=True):
        res = bench[ds]
        shown = ["CE", "WCE inverse", "WCE effective", "FL g=2 a=" +
                 ("0.25" if "1:" in ds else "none"), chosen[ds]]
        shown = list(dict.fromkeys(shown))
        x = np.arange(len(METRICS))
        width = 0.8 / len(shown)
        for i, name in enumerate(shown):
            est = [mean_ci(_runs(res[name], "test", k)) for k, _ in METRICS]
            label = name + (" (val-selected)" if name == chosen[ds] else "")
            ax.bar(x + (i - (len(shown) - 1) / 2) * width, [e.value for e in est], width,
                   yerr=yerr(est), label=label, capsize=2)
        ax.set_xticks(x, [m[1] for m in METRICS])
        ax.set_ylim(0, 1.3)  # headroom for the legend
        ax.set_yticks(np.linspace(0, 1, 6))
        ax.set_ylabel("test score")
        ax.set_title(f"{ds}: {len(res['CE'])} model seeds, 95% intervals")
        ax.legend(fontsize=8, loc="upper left", ncol=2)
    fig.suptitle("Imbalanced benchmark: cross entropy, weighted CE and focal loss")
    rel = ctx.save_figure(fig, "focal_imbalance")
    return rel


def plot_grid(bench: dict[str, dict], scale: Scale, ctx: Context) -> str:
    names = list(bench)
    fig, axes = _panel_grid(len(names), 3.6)
    for ax, ds in zip(axes, names, strict=True):
        res = bench[ds]
        alphas = ("none", "0.25", "0.75") if "1:" in ds else ("none", "inverse")
        grid = np.full((len(scale.gammas), len(alphas)), np.nan)
        for i, g in enumerate(scale.gammas):
            for j, a in enumerate(alphas):
                name = "CE" if (g == 0 and a == "none") else f"FL g={g:g} a={a}"
                grid[i, j] = _mean(res[name], "test", "ap")
        im = ax.imshow(grid, cmap="viridis", aspect="auto")
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                ax.text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", color="w",
                        fontsize=9)
        ax.set_xticks(range(len(alphas)), [f"alpha={a}" for a in alphas])
        ax.set_yticks(range(len(scale.gammas)), [f"gamma={g:g}" for g in scale.gammas])
        ax.set_title(f"{ds}: test average precision")
        fig.colorbar(im, ax=ax)
    fig.suptitle("Focal loss gamma x alpha grid (gamma=0, alpha=none is CE)")
    rel = ctx.save_figure(fig, "focal_grid")
    return rel


def plot_noise(noise: dict[str, dict[float, list[float]]], tail: dict[str, dict[float, list[float]]],
               ctx: Context) -> str:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.6), layout="constrained")
    for name, by_rate in noise.items():
        rates = sorted(by_rate)
        for ax, values in ((ax1, by_rate), (ax2, tail[name])):
            est = [mean_ci(values[r]) for r in rates]
            ax.errorbar(rates, [e.value for e in est], yerr=yerr(est), marker="o", capsize=3,
                        label=name)
    for ax, what in ((ax1, "balanced test accuracy"), (ax2, "recall of the 3 rarest classes")):
        ax.set_xlabel("fraction of training labels replaced at random")
        ax.set_ylabel(what)
        ax.set_ylim(0, 1)
        ax.legend()
    ax1.set_title("Label noise on long-tailed digits\n(95% intervals over model seeds)",
                  fontsize=10)
    ax2.set_title("... on the tail classes")
    rel = ctx.save_figure(fig, "focal_noise")
    return rel


# --------------------------------------------------------------------------------- run

def run(ctx: Context) -> Outcome:
    scale = scale_for(ctx)
    with torch_threads(1) if ctx.device.type == "cpu" else contextlib.nullcontext():
        return _run(ctx, scale)


def _run(ctx: Context, scale: Scale) -> Outcome:
    metrics: dict[str, object] = {}

    # (a) the curves and Lin et al.'s down-weighting factors
    p_t = np.linspace(0.001, 0.999, 999)
    curves = loss_curves(p_t, (0.0, 0.5, 1.0, 2.0, 5.0))
    pts = loss_curves(np.array([p for p, _ in PAPER_POINTS]), (0.0, 2.0))
    factors = {p: float(pts["CE"][i] / pts["FL gamma=2"][i])
               for i, (p, _) in enumerate(PAPER_POINTS)}
    checks = [
        Check(f"FL/CE down-weighting at p_t={p}", exact(factors[p]), "in",
              (paper * (1 - FACTOR_TOL), paper * (1 + FACTOR_TOL)),
              why=f"Lin et al.'s ~{paper:.0f}x, within {FACTOR_TOL:.0%}; context: the "
                  "formula 1/(1-p_t)^2 evaluated through the library", counted=False)
        for p, paper in PAPER_POINTS
    ]
    for (p, paper), factor in zip(PAPER_POINTS, factors.values(), strict=True):
        metrics[f"downweight_pt{p}"] = factor
        metrics[f"downweight_pt{p}_paper"] = paper

    # (b) imbalanced benchmark: fixed data, the run seed varies the models
    seeds = ctx.seeds(scale.repeats)
    splits = [synthetic(rate, scale, DATA_SEED * 31 + i) for i, rate in enumerate(scale.rates)]
    splits.append(long_tailed_digits(scale, DATA_SEED))
    bench: dict[str, dict] = {}
    chosen: dict[str, str] = {}
    ap_gain: dict[str, Estimate] = {}
    recall_gain: dict[str, Estimate] = {}
    for split in splits:
        res = benchmark(split, scale, seeds, ctx)
        bench[split.name] = res
        chosen[split.name] = best = select_fl(res)  # shown in the figure, not checked
        metrics[f"{split.name}_train_counts"] = str(
            torch.bincount(split.y["train"], minlength=split.n_classes).tolist())
        metrics[f"{split.name}_fl_val_selected"] = best
        for name in ("CE", "WCE inverse", "WCE effective", FL_FIXED):
            for m, _ in METRICS:
                metrics[f"{split.name}_{name.replace(' ', '_')}_{m}"] = mean_ci(
                    _runs(res[name], "test", m))
        ap_gain[split.name] = paired_diff(_runs(res[FL_FIXED], "test", "ap"),
                                          _runs(res["CE"], "test", "ap"))
        recall_gain[split.name] = paired_diff(_runs(res["WCE inverse"], "test", "minority_recall"),
                                              _runs(res["CE"], "test", "minority_recall"))
        metrics[f"{split.name}_fl_ap_gain_over_ce"] = ap_gain[split.name]
        metrics[f"{split.name}_wce_recall_gain_over_ce"] = recall_gain[split.name]

    def pooled(per_set: dict[str, Estimate]) -> Estimate:
        """Per seed, the mean over the sets of the paired differences; then over seeds."""
        by_seed = zip(*(e.samples for e in per_set.values()), strict=True)
        est = mean_ci([statistics.fmean(v) for v in by_seed])
        return Estimate(est.value, est.low, est.high, est.samples, "paired t, mean over sets",
                        est.extra)

    fl_gain, wce_gain = pooled(ap_gain), pooled(recall_gain)
    # Paper points: RetinaNet's alpha-balanced CE (gamma 0) at alpha 0.25 collapsed to
    # 10.8 AP (vs 31.1 at alpha 0.75); Cui et al.'s class-balanced weights cut
    # CIFAR-10-LT error from 29.6% to 25.4%.
    paper_txt = []
    for ds, res in bench.items():
        if "FL g=0 a=0.25" in res:
            a25 = mean_ci(_runs(res["FL g=0 a=0.25"], "test", "ap"))
            a75 = mean_ci(_runs(res["FL g=0 a=0.75"], "test", "ap"))
            metrics[f"{ds}_alpha_ce_0.25_ap"] = a25
            metrics[f"{ds}_alpha_ce_0.75_ap"] = a75
            paper_txt.append(f"{ds} alpha-CE AP {a25:.3f} at alpha 0.25, {a75:.3f} at 0.75")
    lt = splits[-1].name
    lt_err = (1 - metrics[f"{lt}_CE_balanced_accuracy"].value,
              1 - metrics[f"{lt}_WCE_effective_balanced_accuracy"].value)
    paper_txt.append(f"{lt} balanced error {lt_err[0]:.1%} (CE) -> {lt_err[1]:.1%} "
                     "(effective-number weights)")

    # (c) label noise on the long-tailed digits (fixed noisy labels per rate)
    digits = splits[-1]
    table = methods(digits, (0.0, 2.0))
    noisy_methods = {"CE": "CE", "WCE inverse": WCE_NOISE, "FL gamma=2 inverse": FL_NOISE}
    noise: dict[str, dict[float, list[float]]] = {k: {} for k in noisy_methods}
    share: dict[str, list[float]] = {k: [] for k in noisy_methods}
    tail: dict[str, dict[float, list[float]]] = {k: {} for k in noisy_methods}
    noise_seeds = ctx.seeds(max(scale.noise_repeats, scale.repeats))
    for label, name in noisy_methods.items():  # clean runs: (b)'s, then the extra seeds
        clean = bench[digits.name][name] + [
            train_one(digits, table[name][0], y_train=digits.y["train"], seed=s,
                      steps=scale.digit_steps, batch=scale.digit_batch, lr=scale.digit_lr,
                      hidden=scale.hidden, ctx=ctx) for s in noise_seeds[scale.repeats:]]
        noise[label][0.0] = _runs(clean, "test", "balanced_accuracy")
        tail[label][0.0] = _runs(clean, "test", "minority_recall")
    y_noisy = {rate: add_label_noise(digits.y["train"], 10, rate, DATA_SEED * 7 + i)
               for i, rate in enumerate(scale.noise_rates)}
    top = max(scale.noise_rates)
    jobs = [(rate, label, s) for rate in scale.noise_rates for label in noisy_methods
            for s in noise_seeds]
    for rate, label, s in ctx.progress(jobs, "focal: label noise", total=len(jobs)):
        r = train_one(digits, table[noisy_methods[label]][0], y_train=y_noisy[rate], seed=s,
                      steps=scale.digit_steps, batch=scale.digit_batch, lr=scale.digit_lr,
                      hidden=scale.hidden, ctx=ctx, flipped=y_noisy[rate] != digits.y["train"])
        if rate == top:
            share[label].append(r["train"]["noisy_loss_share"])
            metrics["noise_top_flipped_fraction"] = r["train"]["noisy_fraction"]
        noise[label].setdefault(rate, []).append(r["test"]["balanced_accuracy"])
        tail[label].setdefault(rate, []).append(r["test"]["minority_recall"])
    drops = {label: [c - n for c, n in zip(v[0.0], v[top], strict=True)]
             for label, v in noise.items()}
    for label in noisy_methods:
        key = label.replace(" ", "_").replace("=", "")
        for rate in sorted(noise[label]):
            metrics[f"noise{rate:g}_{key}_balanced_accuracy"] = mean_ci(noise[label][rate])
        metrics[f"noise_drop_{key}"] = mean_ci(drops[label])
        metrics[f"noise_top_{key}_mislabelled_loss_share"] = mean_ci(share[label])
    robust_gap = paired_diff(drops["FL gamma=2 inverse"], drops["WCE inverse"])
    metrics["noise_robustness_gap"] = robust_gap

    checks += [
        Check("FL (gamma 2) - CE, test AP, mean of the sets", fl_gain, ">=", MIN_AP_GAIN,
              why="one AP point, the least RetinaNet's ablations call a gain; one fixed "
                  "focal setting, no alpha, paired on model seeds"),
        Check("WCE inverse - CE, minority recall, mean of the sets", wce_gain, ">=",
              MIN_RECALL_GAIN, why="five recall points: one more rare example in twenty"),
        Check(f"noise drop at {top:.0%}: FL - WCE (same weights)", robust_gap, ">=",
              MIN_ROBUSTNESS_GAP, why="one point of balanced accuracy (~3 test images); "
              "FL and CE with the same inverse weights, differing in gamma only"),
    ]
    metrics.update({"repeats": scale.repeats, "data_seed": DATA_SEED,
                    "fl_ap_gain_over_ce": fl_gain, "wce_recall_gain_over_ce": wce_gain})

    figures = [
        plot_curves(curves, p_t, factors, ctx),
        plot_benchmark(bench, chosen, ctx),
        plot_grid(bench, scale, ctx),
        plot_noise(noise, tail, ctx),
    ]

    fac_txt = ", ".join(f"{f:.0f}x at p_t={p} (paper ~{paper:.0f}x)"
                        for (p, paper), f in zip(PAPER_POINTS, factors.values(), strict=True))

    def trio(ds: str, name: str) -> str:
        return " / ".join(f"{metrics[f'{ds}_{name}_{m}'].value:.3f}" for m, _ in METRICS)

    bench_txt = "; ".join(
        f"{ds}: CE {trio(ds, 'CE')}, WCE-inverse {trio(ds, 'WCE_inverse')}, WCE-effective "
        f"{trio(ds, 'WCE_effective')}, FL gamma 2 {trio(ds, FL_FIXED.replace(' ', '_'))} "
        f"(val-selected FL: {chosen[ds]})" for ds in bench)
    noise_txt = ", ".join(
        f"{label} {statistics.mean(noise[label][0.0]):.3f} -> {statistics.mean(noise[label][top]):.3f}"
        for label in noisy_methods)
    counted = [c for c in checks if c.counted]
    held = sum(c.status == "holds" for c in counted)
    evidence = (
        f"(a) FL (gamma 2) down-weights easy examples by {fac_txt} (context). "
        f"(b) Mean test minority recall / balanced accuracy / AP over {scale.repeats} model "
        f"seeds on fixed data: {bench_txt}. {checks[2].text()} (per set "
        + ", ".join(f"{k} {v:+.3f}" for k, v in ap_gain.items())
        + f"); {checks[3].text()} (per set "
        + ", ".join(f"{k} {v:+.3f}" for k, v in recall_gain.items())
        + "). Against the papers (RetinaNet COCO AP: alpha-CE 10.8 at alpha 0.25, 31.1 at "
        "0.75; Cui et al. CIFAR-10-LT error 29.6% -> 25.4%): " + "; ".join(paper_txt) + ". "
        f"(c) Balanced test accuracy on long-tailed digits, clean -> {top:.0%} noisy labels: "
        f"{noise_txt}; {checks[4].text()}; at {top:.0%} noise the "
        f"{metrics['noise_top_flipped_fraction']:.0%} mislabelled training examples carry "
        + ", ".join(f"{statistics.mean(share[k]):.0%} ({k})" for k in noisy_methods)
        + f" of the final training loss. {held}/{len(counted)} counted checks hold."
    )
    return Outcome(metrics=metrics, evidence=evidence, checks=checks, figures=figures)


# The card's items and the checks that answer them (the report's item-by-item table;
# the runner refuses a mapping that names a missing check or leaves a counted one out).
CARD_ITEMS = (
    CardItem("The focal term (1 - p_t)^gamma down-weights well-classified examples "
             "(100x at p_t = 0.9 for gamma 2)",
             ("FL/CE down-weighting at p_t=0.9", "FL/CE down-weighting at p_t=0.968"),
             untested="the formula evaluated through the library: an implementation check "
                      "(tests/losses), context"),
    CardItem("So the many easy majority examples do not swamp training and the rare class "
             "is learned better than with plain cross entropy",
             ("FL (gamma 2) - CE, test AP, mean of the sets",)),
    CardItem("Class-weighted cross entropy (inverse frequency, effective number) is the "
             "simpler fix for imbalance", ("WCE inverse - CE, minority recall, mean of the sets",)),
    CardItem("Weighted CE is the more robust of the two to label noise: focal loss "
             "up-weights the hard, mostly mislabelled examples",
             ("noise drop at *: FL - WCE (same weights)",)),
)


EXPERIMENT = Experiment(
    id="focal",
    card="DL0047",
    title="Focal loss vs weighted cross entropy",
    claim=(
        "Focal loss down-weights well-classified examples by (1 - p_t)^gamma (100x at "
        "p_t = 0.9 for gamma = 2), so under heavy class imbalance the rare class is learned "
        "better than with cross entropy; class-weighted cross entropy is the simpler fix "
        "(it raises minority recall) and is more robust than focal loss to noisy labels."
    ),
    run=run,
    card_items=CARD_ITEMS,
    # quick: measured (user+sys CPU s, 1 thread, 36-38 s at seeds 0-2); full: estimated,
    # about the work of the former full run (9.5 min wall), ~170 CPU s by scaling runs.
    seconds={"quick": 38, "full": 570},
)
