"""DL0051 -- sparsity: L1, ReLU, pruning, and what it really buys.

Claim (the seed): an L1 penalty drives weights to zero; ReLU makes activations
sparse; most weights can be pruned with little loss of accuracy (Han et al. 2015:
9x fewer weights in AlexNet, 13x in VGG-16, after retraining), gradually better than
all at once (Zhu & Gupta 2017); and sparsity makes inference faster.

Four measurements, on real data -- sklearn's 8x8 digits (1,797 images, a fixed
80/20 split) with an MLP 64-256-256-10 (ReLU), and the small byte-level
TransformerLM with a ReLU FFN on the shipped corpus:

(a) L1 sweep: the MLP trained with ``L_task + lambda sum |w|`` over a lambda sweep
    (lambda = 0 is the dense baseline); weight histograms, the share of near-zero
    weights (|w| < ``NEAR_ZERO``), test accuracy, and the accuracy after zeroing those
    near-zero weights with no retraining.
(b) ReLU activation sparsity: the share of exact zeros after every ReLU (per layer)
    on a fixed batch during the baseline MLP's and the LM's training (hooks, via
    :func:`blocklab.sparsity.activation_sparsity`), against T5-Base's 3% non-zero.
(c) accuracy vs sparsity: from the trained baseline, global magnitude pruning to
    each sparsity, one-shot (prune, then fine-tune) against gradual (the cubic
    schedule over the first ``gradual_frac`` of the same fine-tuning steps), same
    steps, data and learning rate; also one-shot with no fine-tuning. The LM gets
    the same treatment at a point or two (its Linear layers, embeddings and head
    excluded), scored by held-out loss.
(d) speed: median inference time of an FFN-shaped pair (d -> h -> d, ReLU) on a
    batch of tokens, dense against the same pair with masked unstructured weights
    (a dense kernel over zeros), physically pruned hidden units (a smaller dense
    pair; :func:`blocklab.sparsity.prune_linear_pair`) and CSR weights
    (``torch.sparse.mm``), at several sparsities, interleaved, one thread.

Each sub-claim gets a verdict from its own checks; the experiment is "supported"
when all four are, "not supported" when none is, "partly" otherwise.
"""

from __future__ import annotations

import copy
import functools
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
from torch import Tensor, nn  # noqa: E402

from blocklab.data import corpus_tokens  # noqa: E402
from blocklab.lab.base import (  # noqa: E402
    Context,
    Experiment,
    Outcome,
    Verdict,
    torch_threads,
    verdict_of,
)
from blocklab.models import TransformerConfig, TransformerLM  # noqa: E402
from blocklab.sparsity import (  # noqa: E402
    GradualPruner,
    activation_sparsity,
    l1_penalty,
    magnitude_prune,
    prune_linear_pair,
    sparsity_report,
    to_csr,
)
from blocklab.train import evaluate_classifier, evaluate_lm, train_classifier, train_lm  # noqa: E402


@dataclass(frozen=True)
class Scale:
    """How big each measurement is.

    Attributes:
        widths: MLP layer widths, input to classes.
        steps, batch, lr: MLP training (dense baseline and each L1 run).
        lambdas: L1 strengths swept (0 first: the baseline).
        probe_every: steps between activation-sparsity probes.
        sparsities: pruning targets for the MLP.
        ft_steps, ft_lr: fine-tuning after (one-shot) or during (gradual) pruning.
        gradual_frac, gradual_every: the gradual schedule ends after this fraction of
            the fine-tuning steps, pruning every ``gradual_every`` steps.
        lm_d, lm_layers, lm_heads, lm_seq, lm_batch, lm_steps, lm_lr: the ReLU LM.
        lm_sparsities, lm_ft_steps: its pruning points and fine-tuning steps.
        lm_eval_batches: held-out batches (of ``lm_batch`` windows) scored.
        speed_d, speed_hidden, speed_tokens: the timed FFN pair and batch.
        speed_sparsities, speed_repeats: timed sparsities, timed rounds per variant.
    """

    widths: tuple[int, ...]
    steps: int
    batch: int
    lr: float
    lambdas: tuple[float, ...]
    probe_every: int
    sparsities: tuple[float, ...]
    ft_steps: int
    ft_lr: float
    gradual_frac: float
    gradual_every: int
    lm_d: int
    lm_layers: int
    lm_heads: int
    lm_seq: int
    lm_batch: int
    lm_steps: int
    lm_lr: float
    lm_sparsities: tuple[float, ...]
    lm_ft_steps: int
    lm_eval_batches: int
    speed_d: int
    speed_hidden: int
    speed_tokens: int
    speed_sparsities: tuple[float, ...]
    speed_repeats: int

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "probe_every", "ft_steps", "gradual_every", "lm_d",
                     "lm_layers", "lm_heads", "lm_seq", "lm_batch", "lm_steps", "lm_ft_steps",
                     "lm_eval_batches", "speed_d", "speed_hidden", "speed_tokens",
                     "speed_repeats"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.lambdas or self.lambdas[0] != 0 or len(self.lambdas) < 2:
            raise ValueError(f"lambdas must start with 0 (the baseline) and sweep at least "
                             f"one more value, got {self.lambdas}")
        for name in ("sparsities", "lm_sparsities", "speed_sparsities"):
            values = getattr(self, name)
            if not values or not all(0 < s < 1 for s in values):
                raise ValueError(f"{name} must hold values in (0, 1), got {values}")
        if not 0 < self.gradual_frac <= 1:
            raise ValueError(f"gradual_frac must be in (0, 1], got {self.gradual_frac}")


SCALES: dict[str, Scale] = {
    "quick": Scale(widths=(64, 256, 256, 10), steps=400, batch=64, lr=2e-3,
                   lambdas=(0.0, 1e-4, 3e-4, 1e-3), probe_every=25,
                   sparsities=(0.5, 0.8, 0.9, 0.95, 0.98), ft_steps=150, ft_lr=1e-3,
                   gradual_frac=0.6, gradual_every=5,
                   lm_d=48, lm_layers=2, lm_heads=4, lm_seq=64, lm_batch=16, lm_steps=120,
                   lm_lr=4e-3, lm_sparsities=(0.5, 0.8), lm_ft_steps=30, lm_eval_batches=4,
                   speed_d=512, speed_hidden=2048, speed_tokens=64,
                   speed_sparsities=(0.5, 0.75, 0.9, 0.95, 0.98, 0.99), speed_repeats=15),
    "full": Scale(widths=(64, 256, 256, 10), steps=1500, batch=64, lr=2e-3,
                  lambdas=(0.0, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3), probe_every=50,
                  sparsities=(0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99), ft_steps=600,
                  ft_lr=1e-3, gradual_frac=0.6, gradual_every=10,
                  lm_d=128, lm_layers=4, lm_heads=4, lm_seq=128, lm_batch=32, lm_steps=1000,
                  lm_lr=2e-3, lm_sparsities=(0.5, 0.8, 0.9), lm_ft_steps=300,
                  lm_eval_batches=32,
                  speed_d=1024, speed_hidden=4096, speed_tokens=128,
                  speed_sparsities=(0.5, 0.75, 0.9, 0.95, 0.98, 0.99), speed_repeats=25),
    # A seconds-long run for tests of the plumbing; its numbers mean little.
    "smoke": Scale(widths=(64, 32, 32, 10), steps=30, batch=32, lr=3e-3,
                   lambdas=(0.0, 1e-3), probe_every=10, sparsities=(0.5, 0.9), ft_steps=10,
                   ft_lr=1e-3, gradual_frac=0.6, gradual_every=2,
                   lm_d=16, lm_layers=1, lm_heads=2, lm_seq=16, lm_batch=4, lm_steps=6,
                   lm_lr=3e-3, lm_sparsities=(0.5,), lm_ft_steps=4, lm_eval_batches=2,
                   speed_d=32, speed_hidden=64, speed_tokens=8, speed_sparsities=(0.5, 0.9),
                   speed_repeats=2),
}

NEAR_ZERO = 1e-3  # |w| below this counts as near zero (init |w| is up to 1/sqrt(fan_in) ~ 0.06)
THREADS = 1  # small models on a shared machine: one thread is faster and steadier

# Rules for the sub-claims.
L1_MAX_ACC_DROP = 0.02  # a lambda "keeps accuracy" within 2 points of lambda = 0
L1_MIN_NEAR_ZERO = 0.5  # ... and then at least half the weights must be near zero
L1_MIN_RATIO = 5.0  # ... and at least 5x the baseline's near-zero share
RELU_MIN_ZEROS = 0.5  # "sparse": most activations exactly zero, in every ReLU layer
PRUNE_MAX_DROP = 0.01  # "little accuracy loss": within 1 point of the dense model, or
PRUNE_SE = 2.0  # ... within this many standard errors of its test accuracy if that is wider
PRUNE_MIN_SPARSITY = 0.9  # ... at >= 90% sparsity (10x, Han et al.'s 9-13x range)
HIGH_SPARSITY = 0.9  # gradual vs one-shot is compared at sparsities >= this
GRADUAL_MIN_GAIN = 0.005  # mean accuracy gain there that counts as "better" (> noise floor)
SPEEDUP = 1.2  # a variant counts as faster when dense / variant >= this
MASK_NEUTRAL = (0.8, 1.25)  # masked / dense time within this band: "no gain, no loss"

# Reference points.
HAN_COMPRESSION = {"AlexNet": 9.0, "VGG-16": 13.0}
T5_NONZERO = 0.03  # T5-Base MLP activations: 3% non-zero (Li et al. 2023)


def scale_for(ctx: Context) -> Scale:
    return SCALES["quick" if ctx.quick else "full"]


# ----------------------------------------------------------------------------- data

def digits_split(ctx: Context) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """sklearn's digits as (x_train, y_train, x_test, y_test), pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0  # (1797, 64)
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(x.shape[0], generator=ctx.generator(11))
    n_test = x.shape[0] // 5
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def make_mlp(widths: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def all_weights(model: nn.Module) -> Tensor:
    return torch.cat([m.weight.detach().flatten() for m in model.modules()
                      if isinstance(m, nn.Linear)])


def near_zero_share(model: nn.Module, threshold: float = NEAR_ZERO) -> float:
    return (all_weights(model).abs() < threshold).float().mean().item()


# ------------------------------------------------------------------ (a) + (b) MLP

@dataclass
class L1Run:
    lam: float
    accuracy: float
    near_zero: float
    exact_zero: float
    pruned_accuracy: float  # near-zero weights zeroed, no retraining
    weights: np.ndarray
    probes: dict[str, list[float]]  # ReLU layer -> zero share at each probe
    probe_steps: list[int]


def train_mlp(scale: Scale, ctx: Context, data: tuple[Tensor, ...], lam: float) -> tuple[
        nn.Sequential, L1Run]:
    x_tr, y_tr, x_te, y_te = data
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.seed * 7919 + 1)  # same init for every lambda
        model = make_mlp(scale.widths)
    probe_x = x_te[:256].to(ctx.device)
    probes: dict[str, list[float]] = {}
    probe_steps: list[int] = []

    def probe(step: int) -> None:
        probe_steps.append(step)
        for name, frac in activation_sparsity(model, probe_x).items():
            probes.setdefault(name, []).append(frac)

    def callback(step: int, loss: float, m: nn.Module) -> None:
        if step % scale.probe_every == 0 or step == scale.steps:
            probe(step)

    model.to(ctx.device)
    baseline = lam == 0  # only the baseline's activations are followed
    if baseline:
        probe(0)
    regularizer = functools.partial(l1_penalty, strength=lam) if lam > 0 else None
    label = f"sparsity: mlp lambda={lam:g}"
    train_classifier(model, x_tr, y_tr, steps=scale.steps, batch_size=scale.batch, lr=scale.lr,
                     seed=ctx.seed, device=ctx.device, regularizer=regularizer,
                     callback=callback if baseline else None,
                     progress=lambda it, desc="", total=None: ctx.progress(it, label, total=total))
    accuracy = evaluate_classifier(model, x_te, y_te)
    weights = all_weights(model).cpu().numpy()
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        for m in pruned.modules():
            if isinstance(m, nn.Linear):
                m.weight[m.weight.abs() < NEAR_ZERO] = 0
    run = L1Run(lam=lam, accuracy=accuracy, near_zero=near_zero_share(model),
                exact_zero=float((weights == 0).mean()),
                pruned_accuracy=evaluate_classifier(pruned, x_te, y_te), weights=weights,
                probes=probes, probe_steps=probe_steps)
    return model, run


# --------------------------------------------------------------------- (c) pruning

def prune_curve(dense: nn.Module, scale: Scale, ctx: Context, data: tuple[Tensor, ...]
                ) -> dict[str, dict[float, float]]:
    """{method: {sparsity: test accuracy}} for one-shot (with and without fine-tuning)
    and gradual pruning of ``dense``; "dense_ft" at sparsity 0 is the dense model
    trained for the same fine-tuning steps (the same budget, no pruning)."""
    x_tr, y_tr, x_te, y_te = data
    out: dict[str, dict[float, float]] = {"none": {}, "oneshot": {}, "gradual": {},
                                          "dense_ft": {}}
    end = max(1, round(scale.gradual_frac * scale.ft_steps))
    jobs = [(0.0, "dense_ft")] + [(s, m) for s in scale.sparsities for m in ("oneshot", "gradual")]
    for sparsity, method in ctx.progress(jobs, "sparsity: pruning digits", total=len(jobs)):
        model = copy.deepcopy(dense)
        callback: Callable | None = None
        if method == "oneshot":
            callback = magnitude_prune(model, sparsity)
            out["none"][sparsity] = evaluate_classifier(model, x_te, y_te)
        elif method == "gradual":
            callback = GradualPruner(model, sparsity, start=1, end=end,
                                     every=scale.gradual_every)
        train_classifier(model, x_tr, y_tr, steps=scale.ft_steps, batch_size=scale.batch,
                         lr=scale.ft_lr, seed=ctx.seed + 1, device=ctx.device,
                         callback=callback)
        reached = sparsity_report(model).global_sparsity
        if abs(reached - sparsity) > 1e-3:
            raise AssertionError(f"{method} pruning reached {reached:.4f}, not {sparsity}")
        out[method][sparsity] = evaluate_classifier(model, x_te, y_te)
    return out


def lm_config(scale: Scale) -> TransformerConfig:
    return TransformerConfig(vocab_size=256, d_model=scale.lm_d, n_layers=scale.lm_layers,
                             n_heads=scale.lm_heads, activation="relu",
                             max_seq_len=scale.lm_seq, ffn_bias=False)


def lm_layers_to_prune(model: TransformerLM) -> list[nn.Module]:
    """The blocks' Linear layers (attention and FFN); embedding and head stay dense."""
    return [m for layer in model.layers for m in layer.modules() if isinstance(m, nn.Linear)]


@dataclass
class LMResult:
    dense_loss: float
    losses: dict[str, dict[float, float]]  # method -> sparsity -> held-out loss
    probes: dict[str, list[float]]
    probe_steps: list[int]


def lm_part(scale: Scale, ctx: Context) -> LMResult:
    """Train the ReLU LM (probing its FFN activations), then prune it both ways."""
    train, val = corpus_tokens()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.seed * 7919 + 2)
        model = TransformerLM(lm_config(scale))
    model.to(ctx.device)
    probe_x = val[: 8 * scale.lm_seq].reshape(8, scale.lm_seq).to(ctx.device)
    probes: dict[str, list[float]] = {}
    probe_steps: list[int] = []

    def probe(step: int) -> None:
        probe_steps.append(step)
        for name, frac in activation_sparsity(model, probe_x).items():
            probes.setdefault(name, []).append(frac)

    def callback(step: int, loss: float, m: nn.Module) -> None:
        if step % scale.probe_every == 0 or step == scale.lm_steps:
            probe(step)

    probe(0)
    kw = dict(batch_size=scale.lm_batch, seq_len=scale.lm_seq, device=ctx.device)
    train_lm(model, train, steps=scale.lm_steps, lr=scale.lm_lr, seed=ctx.seed,
             callback=callback,
             progress=lambda it, desc="", total=None: ctx.progress(it, "sparsity: lm", total=total),
             **kw)

    def score(m: nn.Module) -> float:
        return evaluate_lm(m, val, batch_size=scale.lm_batch, seq_len=scale.lm_seq,
                           max_batches=scale.lm_eval_batches)

    dense_loss = score(model)
    losses: dict[str, dict[float, float]] = {"none": {}, "oneshot": {}, "gradual": {},
                                             "dense_ft": {}}
    end = max(1, round(scale.gradual_frac * scale.lm_ft_steps))
    jobs = [(0.0, "dense_ft")] + [(s, m) for s in scale.lm_sparsities
                                  for m in ("oneshot", "gradual")]
    for sparsity, method in ctx.progress(jobs, "sparsity: pruning lm", total=len(jobs)):
        pruned = copy.deepcopy(model)
        layers = lm_layers_to_prune(pruned)
        callback_ft: Callable | None = None
        if method == "oneshot":
            callback_ft = magnitude_prune(pruned, sparsity, modules=layers)
            losses["none"][sparsity] = score(pruned)
        elif method == "gradual":
            callback_ft = GradualPruner(pruned, sparsity, start=1, end=end,
                                        every=scale.gradual_every, modules=layers)
        # Fine-tune at the end-of-training learning rate: a fresh warm-up would undo it.
        train_lm(pruned, train, steps=scale.lm_ft_steps, lr=scale.lm_lr * 0.3, warmup=0,
                 seed=ctx.seed + 1, callback=callback_ft, **kw)
        losses[method][sparsity] = score(pruned)
    return LMResult(dense_loss, losses, probes, probe_steps)


# ----------------------------------------------------------------------- (d) speed

def _pair(d: int, h: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, d))


def measure_speed(scale: Scale, ctx: Context) -> dict[float, dict[str, float]]:
    """{sparsity: {variant: median ms}} for dense, masked, physical and CSR pairs
    (process CPU time on the CPU, wall time on CUDA)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.seed * 7919 + 3)
        dense = _pair(scale.speed_d, scale.speed_hidden).to(ctx.device).eval()
        x = torch.randn(scale.speed_tokens, scale.speed_d).to(ctx.device)
    out: dict[float, dict[str, float]] = {}
    for sparsity in ctx.progress(scale.speed_sparsities, "sparsity: speed",
                                 total=len(scale.speed_sparsities)):
        masked = copy.deepcopy(dense)
        magnitude_prune(masked, sparsity, scope="layer")
        first, second, _ = prune_linear_pair(dense[0], dense[2], sparsity)
        physical = nn.Sequential(first, nn.ReLU(), second).eval()
        variants: dict[str, nn.Module] = {"dense": dense, "masked": masked, "physical": physical}
        if ctx.device.type == "cpu":  # torch's CSR matmul is a CPU (MKL) or cuSPARSE path
            variants["csr"] = nn.Sequential(to_csr(masked[0]), nn.ReLU(), to_csr(masked[2]))
        times: dict[str, list[float]] = {k: [] for k in variants}
        cuda = ctx.device.type == "cuda"
        # On the CPU, process time: with one thread it leaves out the time other
        # processes held the core, which wall time on a shared machine does not.
        clock = time.perf_counter if cuda else time.process_time
        with torch.inference_mode():
            for fn in variants.values():
                fn(x)  # warm-up
            for _ in range(scale.speed_repeats):  # round-robin: load drift hits all alike
                for name, fn in variants.items():
                    if cuda:
                        torch.cuda.synchronize(ctx.device)
                    start = clock()
                    fn(x)
                    if cuda:
                        torch.cuda.synchronize(ctx.device)
                    times[name].append((clock() - start) * 1e3)
        out[sparsity] = {k: statistics.median(v) for k, v in times.items()}
    return out


# -------------------------------------------------------------------------- verdicts

def combine(verdicts: dict[str, Verdict]) -> Verdict:
    values = list(verdicts.values())
    if all(v == "supported" for v in values):
        return "supported"
    if all(v == "not supported" for v in values):
        return "not supported"
    return "partly"


def best_l1(runs: list[L1Run]) -> L1Run:
    """The strongest lambda whose accuracy stays within L1_MAX_ACC_DROP of lambda = 0."""
    base = runs[0].accuracy
    ok = [r for r in runs if r.accuracy >= base - L1_MAX_ACC_DROP]
    return max(ok, key=lambda r: r.lam)


def accuracy_tolerance(reference: float, n_test: int) -> float:
    """The accuracy drop that counts as "little": PRUNE_MAX_DROP, or PRUNE_SE binomial
    standard errors of the reference accuracy on ``n_test`` examples if wider (on 360
    digits one example is 0.28 points: a smaller drop is not measurable)."""
    se = math.sqrt(max(reference * (1 - reference), 1e-12) / n_test)
    return max(PRUNE_MAX_DROP, PRUNE_SE * se)


def max_sparsity_within(curve: dict[str, dict[float, float]], dense: float,
                        drop: float) -> float:
    """Highest sparsity at which the better of one-shot and gradual (both fine-tuned)
    stays within ``drop`` of the dense accuracy (0 if none does)."""
    ok = [s for s in curve["oneshot"]
          if max(curve["oneshot"][s], curve["gradual"][s]) >= dense - drop]
    return max(ok, default=0.0)


def crossover(speed: dict[float, dict[str, float]], variant: str) -> float | None:
    """Lowest sparsity from which ``variant`` is SPEEDUP faster than dense at every
    higher measured sparsity too; None if it never is."""
    found = None
    for s in sorted(speed, reverse=True):
        if variant in speed[s] and speed[s]["dense"] / speed[s][variant] >= SPEEDUP:
            found = s
        else:
            break
    return found


# --------------------------------------------------------------------------- figures

def plot_l1(runs: list[L1Run], ctx: Context) -> str:
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4.8))
    bins = np.linspace(-0.3, 0.3, 121)
    log_bins = np.linspace(-8, 0, 81)
    for i, r in enumerate(runs):
        label = "lambda = 0 (no L1)" if r.lam == 0 else f"lambda = {r.lam:g}"
        ax1.hist(np.clip(r.weights, bins[0], bins[-1]), bins=bins, histtype="step", lw=1.6,
                 color=f"C{i}", label=label)
        logs = np.log10(np.clip(np.abs(r.weights), 1e-8, None))
        ax2.hist(logs, bins=log_bins, histtype="step", lw=1.6, color=f"C{i}", label=label)
    ax1.set_yscale("log")
    ax1.set_xlabel("weight value (clipped to +-0.3)")
    ax1.set_ylabel("weights (log scale)")
    ax1.set_title("Weight values after training, MLP on digits")
    ax1.legend(fontsize=9)
    ax2.axvline(np.log10(NEAR_ZERO), color="grey", ls="--", lw=1)
    ax2.text(np.log10(NEAR_ZERO) - 0.1, ax2.get_ylim()[1] * 0.95, f"near zero:\n|w| < {NEAR_ZERO:g}",
             ha="right", va="top", fontsize=9, color="#444444")
    ax2.set_xlabel("log10 |w|  (exact zeros at -8)")
    ax2.set_ylabel("weights")
    ax2.set_title("Magnitudes: L1 moves mass towards zero")
    lams = [r.lam for r in runs]
    xs = np.arange(len(runs))
    ax3.bar(xs - 0.2, [100 * r.near_zero for r in runs], width=0.4, color="C0",
            label=f"weights with |w| < {NEAR_ZERO:g} (%)")
    ax3.set_ylabel("near-zero weights (%)", color="C0")
    ax3.set_ylim(0, 100)
    ax3.set_xticks(xs, ["0" if lam == 0 else f"{lam:g}" for lam in lams])
    ax3.set_xlabel("L1 strength lambda")
    twin = ax3.twinx()
    twin.plot(xs, [100 * r.accuracy for r in runs], "o-", color="C3", label="test accuracy")
    twin.plot(xs, [100 * r.pruned_accuracy for r in runs], "s--", color="C2",
              label="accuracy, near-zero weights set to 0")
    twin.set_ylabel("test accuracy (%)", color="C3")
    lo = min(min(r.accuracy, r.pruned_accuracy) for r in runs)
    twin.set_ylim(max(0, 100 * lo - 5), 100)
    handles = ax3.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    for x, r in zip(xs, runs, strict=True):
        ax3.text(x - 0.2, 100 * r.near_zero + 1, f"{100 * r.near_zero:.0f}%", ha="center",
                 va="bottom", fontsize=9, color="C0")
    ax3.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="upper center",
               bbox_to_anchor=(0.5, -0.16), ncol=2)
    ax3.set_title("Share of near-zero weights and accuracy")
    fig.tight_layout()
    rel = ctx.save_figure(fig, "sparsity_l1_histograms")
    return rel


def plot_relu(mlp_run: L1Run, lm: LMResult, ctx: Context) -> str:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
    for ax, probes, steps, title, names in (
        (ax1, mlp_run.probes, mlp_run.probe_steps, "MLP on digits (ReLU after each hidden layer)",
         lambda i, n: f"hidden layer {i + 1} (module {n})"),
        (ax2, lm.probes, lm.probe_steps, "Byte-level LM, ReLU FFN hidden units",
         lambda i, n: n.replace("layers.", "block ").replace(".ffn", " FFN")),
    ):
        for i, (name, fracs) in enumerate(probes.items()):
            ax.plot(steps, [100 * f for f in fracs], "o-", ms=3, color=f"C{i}",
                    label=names(i, name))
        ax.axhline(100 * (1 - T5_NONZERO), color="black", ls="--", lw=1)
        ax.text(steps[0], 100 * (1 - T5_NONZERO) - 1.5, "T5-Base MLPs: 97% zeros",
                ha="left", va="top", fontsize=9)
        ax.axhline(100 * RELU_MIN_ZEROS, color="grey", ls=":", lw=1)
        ax.text(steps[0], 100 * RELU_MIN_ZEROS + 1, "most activations zero above this",
                ha="left", va="bottom", fontsize=8, color="#555555")
        ax.set_xlabel("training step")
        ax.set_title(title)
        ax.legend(fontsize=9, loc="lower right")
        ax.grid(alpha=0.3)
    ax1.set_ylabel("activations exactly zero (%)")
    ax1.set_ylim(0, 100)
    fig.tight_layout()
    rel = ctx.save_figure(fig, "sparsity_relu_activations")
    return rel


def _compression_axis(ax, sparsities: list[float], xlabel: str) -> None:
    """x = 1 / (1 - sparsity) on a log scale, ticks labelled with both."""
    ax.set_xscale("log")
    ax.set_xticks([1 / (1 - s) for s in sparsities],
                  [f"{100 * s:g}%\n{1 / (1 - s):.0f}x" for s in sparsities])
    ax.minorticks_off()
    ax.set_xlabel(xlabel)


def plot_pruning(curve: dict[str, dict[float, float]], reference: float, tolerance: float,
                 lm: LMResult, ctx: Context) -> str:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    styles = {"gradual": ("o-", "C0", "gradual (cubic schedule) + fine-tune"),
              "oneshot": ("s-", "C1", "one-shot + fine-tune"),
              "none": ("x:", "C7", "one-shot, no fine-tune")}
    for method, (fmt, colour, label) in styles.items():
        ss = sorted(curve[method])
        errors = [max(100 * (1 - curve[method][s]), 0.1) for s in ss]  # log axis: no 0
        ax1.plot([1 / (1 - s) for s in ss], errors, fmt, color=colour, label=label)
    ref_err = max(100 * (1 - reference), 0.1)
    ax1.axhline(ref_err, color="black", lw=1,
                label=f"dense reference {ref_err:.1f}% error")
    ax1.axhspan(ref_err, ref_err + 100 * tolerance, color="grey", alpha=0.25,
                label=f"within {100 * tolerance:.1f} points (little loss)")
    _compression_axis(ax1, sorted(curve["oneshot"]), "weights pruned (compression)")
    ax1.set_yscale("log")
    ax1.set_ylabel("test error (%, log scale)")
    ax1.set_title("Digits MLP: error vs sparsity (global magnitude pruning)")
    ax1.legend(fontsize=8, loc="upper left")
    ax1.grid(alpha=0.3)
    for method, (fmt, colour, label) in styles.items():
        ss = sorted(lm.losses[method])
        ax2.plot([1 / (1 - s) for s in ss], [lm.losses[method][s] for s in ss], fmt,
                 color=colour, label=label)
    _compression_axis(ax2, sorted(lm.losses["oneshot"]),
                      "weights of the blocks' Linear layers pruned (compression)")
    ax2.axhline(lm.dense_loss, color="black", lw=1, label=f"dense {lm.dense_loss:.3f}")
    dense_ft = lm.losses["dense_ft"][0.0]
    ax2.axhline(dense_ft, color="black", lw=1, ls="--",
                label=f"dense + same fine-tuning {dense_ft:.3f}")
    ax2.set_ylabel("held-out loss (nats per byte)")
    ax2.set_title("Byte-level LM: loss vs sparsity")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    rel = ctx.save_figure(fig, "sparsity_pruning")
    return rel


def plot_speed(speed: dict[float, dict[str, float]], scale: Scale, ctx: Context) -> str:
    fig, ax = plt.subplots(figsize=(8.5, 5))
    ss = sorted(speed)
    labels = {"masked": "masked unstructured (dense kernel over zeros)",
              "physical": "physically pruned hidden units (smaller dense)",
              "csr": "CSR sparse weights (torch.sparse.mm)"}
    for i, (variant, label) in enumerate(labels.items()):
        if variant not in speed[ss[0]]:
            continue
        ax.plot([1 / (1 - s) for s in ss], [speed[s]["dense"] / speed[s][variant] for s in ss],
                "o-", color=f"C{i}", label=label)
    ax.axhline(1.0, color="black", lw=1, label="dense (1x)")
    ax.set_yscale("log")
    ax.plot([1 / (1 - s) for s in ss], [1 / (1 - s) for s in ss], ":", color="grey",
            label="1 / (1 - sparsity): the FLOP ratio")
    _compression_axis(ax, ss, "sparsity (compression)")
    ax.set_ylabel("speed-up over dense (log scale)")
    ax.set_title(f"Inference of a {scale.speed_d}-{scale.speed_hidden}-{scale.speed_d} ReLU "
                 f"pair, {scale.speed_tokens} tokens, {THREADS} thread (median CPU time)")
    ax.legend(fontsize=9)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    rel = ctx.save_figure(fig, "sparsity_speed")
    return rel


# --------------------------------------------------------------------------------- run

def run(ctx: Context) -> Outcome:
    scale = scale_for(ctx)
    with torch_threads(THREADS):
        return _run(scale, ctx)


def _run(scale: Scale, ctx: Context) -> Outcome:
    metrics: dict[str, float] = {}
    data = digits_split(ctx)
    data = tuple(t.to(ctx.device) for t in data)

    # (a) + (b): L1 sweep; the lambda = 0 run is the dense baseline.
    runs: list[L1Run] = []
    dense = None
    for lam in scale.lambdas:
        model, r = train_mlp(scale, ctx, data, lam)
        runs.append(r)
        if lam == 0:
            dense = model
        key = f"{lam:g}"
        metrics[f"l1_acc_{key}"] = r.accuracy
        metrics[f"l1_near_zero_{key}"] = r.near_zero
        metrics[f"l1_pruned_acc_{key}"] = r.pruned_accuracy
    assert dense is not None
    base = runs[0]
    chosen = best_l1(runs)
    metrics["l1_best_lambda"] = chosen.lam
    metrics["l1_best_near_zero"] = chosen.near_zero
    metrics["l1_near_zero_ratio"] = chosen.near_zero / max(base.near_zero, 1e-9)
    checks_l1 = {
        "near_zero_share": chosen.near_zero >= L1_MIN_NEAR_ZERO,
        "vs_baseline": chosen.near_zero >= L1_MIN_RATIO * base.near_zero,
        "grows_with_lambda": all(b.near_zero >= a.near_zero
                                 for a, b in zip(runs, runs[1:], strict=False)),
    }

    # (b) ReLU activation sparsity, MLP (baseline run) and LM.
    lm = lm_part(scale, ctx)
    final_mlp = {n: f[-1] for n, f in base.probes.items()}
    final_lm = {n: f[-1] for n, f in lm.probes.items()}
    for name, frac in final_mlp.items():
        metrics[f"relu_zero_mlp_{name}"] = frac
    for name, frac in final_lm.items():
        metrics[f"relu_zero_lm_{name}"] = frac
    init_all = [f[0] for f in base.probes.values()] + [f[0] for f in lm.probes.values()]
    final_all = list(final_mlp.values()) + list(final_lm.values())
    metrics["relu_zero_min"] = min(final_all)
    metrics["relu_zero_mean"] = statistics.mean(final_all)
    metrics["relu_zero_init_mean"] = statistics.mean(init_all)
    checks_relu = {
        "lm_ffn_mostly_zero": min(final_lm.values()) >= RELU_MIN_ZEROS,
        "mlp_mostly_zero": min(final_mlp.values()) >= RELU_MIN_ZEROS,
    }

    # (c) accuracy vs sparsity.
    curve = prune_curve(dense, scale, ctx, data)
    for method, points in curve.items():
        for s, acc in points.items():
            metrics[f"prune_acc_{method}_{s:g}"] = acc
    for method, points in lm.losses.items():
        for s, loss in points.items():
            metrics[f"lm_loss_{method}_{s:g}"] = loss
    metrics["lm_loss_dense"] = lm.dense_loss
    metrics["prune_acc_dense"] = base.accuracy
    # The reference has had the fine-tuning steps too: extra training is not pruning's merit.
    reference = max(base.accuracy, curve["dense_ft"][0.0])
    metrics["prune_acc_reference"] = reference
    tolerance = accuracy_tolerance(reference, int(data[3].numel()))
    metrics["prune_tolerance"] = tolerance
    s_max = max_sparsity_within(curve, reference, tolerance)
    metrics["prune_max_sparsity"] = s_max
    metrics["prune_max_compression"] = 1 / (1 - s_max)
    high = [s for s in curve["oneshot"] if s >= HIGH_SPARSITY]
    gain = statistics.mean(curve["gradual"][s] - curve["oneshot"][s] for s in high) if high \
        else 0.0
    metrics["gradual_minus_oneshot_high"] = gain
    lm_high = max(lm.losses["oneshot"])
    lm_gain = lm.losses["oneshot"][lm_high] - lm.losses["gradual"][lm_high]  # > 0: gradual better
    metrics["lm_gradual_gain_high"] = lm_gain
    checks_prune = {
        "little_loss_at_high_sparsity": s_max >= PRUNE_MIN_SPARSITY,
        "gradual_beats_oneshot": gain >= GRADUAL_MIN_GAIN,
    }

    # (d) speed.
    speed = measure_speed(scale, ctx)
    for s, times in speed.items():
        for variant, ms in times.items():
            metrics[f"speed_ms_{variant}_{s:g}"] = ms
    ratios = {v: {s: speed[s]["dense"] / speed[s][v] for s in speed if v in speed[s]}
              for v in ("masked", "physical", "csr")}
    at90 = min(speed, key=lambda s: abs(s - 0.9))
    for v, r in ratios.items():
        if r:
            metrics[f"speedup_{v}_{at90:g}"] = r[at90]
            metrics[f"speedup_{v}_max"] = max(r.values())
    csr_from = crossover(speed, "csr")
    metrics["csr_crossover"] = csr_from if csr_from is not None else float("nan")
    masked_neutral = all(MASK_NEUTRAL[0] <= x <= MASK_NEUTRAL[1] for x in ratios["masked"].values())
    checks_speed = {
        "masked_faster": ratios["masked"][at90] >= SPEEDUP,
        "physical_faster": ratios["physical"][at90] >= SPEEDUP,
        "csr_faster": bool(ratios["csr"]) and ratios["csr"][at90] >= SPEEDUP,
    }

    verdicts: dict[str, Verdict] = {
        "l1": verdict_of(checks_l1),
        "relu": verdict_of(checks_relu),
        "pruning": verdict_of(checks_prune),
        "speed": verdict_of(checks_speed),
    }
    verdict = combine(verdicts)
    for name, v in verdicts.items():
        metrics[f"verdict_{name}"] = {"supported": 1.0, "partly": 0.5, "not supported": 0.0}[v]

    figures = [plot_l1(runs, ctx), plot_relu(base, lm, ctx),
               plot_pruning(curve, reference, tolerance, lm, ctx), plot_speed(speed, scale, ctx)]

    def mark(ok: bool) -> str:
        return "holds" if ok else "fails"

    l1_txt = ", ".join(f"lambda {r.lam:g}: {100 * r.near_zero:.0f}% near zero, "
                       f"acc {100 * r.accuracy:.1f}%" for r in runs)
    relu_mlp = ", ".join(f"{100 * f:.0f}%" for f in final_mlp.values())
    relu_lm = ", ".join(f"{100 * f:.0f}%" for f in final_lm.values())
    prune_txt = ", ".join(
        f"{100 * s:g}%: {100 * curve['oneshot'][s]:.1f} / {100 * curve['gradual'][s]:.1f} / "
        f"{100 * curve['none'][s]:.1f}" for s in sorted(curve["oneshot"]))
    lm_txt = ", ".join(
        f"{100 * s:g}%: {lm.losses['oneshot'][s]:.3f} / {lm.losses['gradual'][s]:.3f} / "
        f"{lm.losses['none'][s]:.3f}" for s in sorted(lm.losses["oneshot"]))
    speed_txt = "; ".join(
        f"{100 * s:g}%: " + ", ".join(f"{v} {ratios[v][s]:.2f}x" for v in ratios if s in ratios[v])
        for s in sorted(speed))
    han = "/".join(f"{v:g}x" for v in HAN_COMPRESSION.values())
    masked_txt = ("masks buy nothing, the dense kernel multiplies the zeros (pytorch#43552)"
                  if masked_neutral else
                  f"masks move the time outside {MASK_NEUTRAL[0]:g}-{MASK_NEUTRAL[1]:g}x")
    csr_at = ratios["csr"].get(at90, float("nan"))
    csr_txt = f"{csr_at:.2f}x [{mark(checks_speed['csr_faster'])}], " + (
        f"faster only from {100 * csr_from:g}% sparsity" if csr_from is not None
        else "faster at no measured sparsity")
    evidence = (
        f"[L1: {verdicts['l1']}] Digits MLP {'-'.join(map(str, scale.widths))}, "
        f"{scale.steps} steps: {l1_txt}. The strongest lambda within "
        f"{100 * L1_MAX_ACC_DROP:g} points of lambda = 0 is {chosen.lam:g}: "
        f"{100 * chosen.near_zero:.0f}% of weights below {NEAR_ZERO:g} (need >= "
        f"{100 * L1_MIN_NEAR_ZERO:g}%) [{mark(checks_l1['near_zero_share'])}], "
        f"{metrics['l1_near_zero_ratio']:.1f}x the baseline's {100 * base.near_zero:.1f}% "
        f"(need >= {L1_MIN_RATIO:g}x) [{mark(checks_l1['vs_baseline'])}]; the share grows with "
        f"lambda [{mark(checks_l1['grows_with_lambda'])}]; zeroing those weights without "
        f"retraining gives {100 * chosen.pruned_accuracy:.1f}% accuracy. L1 with Adam leaves "
        f"them near, not at, zero ({100 * chosen.exact_zero:.1f}% exact zeros). "
        f"[ReLU: {verdicts['relu']}] Exact zeros after each ReLU at the end of training: MLP "
        f"{relu_mlp} [{mark(checks_relu['mlp_mostly_zero'])}], LM FFNs {relu_lm} "
        f"[{mark(checks_relu['lm_ffn_mostly_zero'])}] (need >= {100 * RELU_MIN_ZEROS:g}% in "
        f"every layer; at init {100 * metrics['relu_zero_init_mean']:.0f}% on average); "
        f"T5-Base MLPs reach {100 * (1 - T5_NONZERO):g}% after far longer training. "
        f"[Pruning: {verdicts['pruning']}] Digits accuracy (dense {100 * base.accuracy:.1f}%, "
        f"{100 * curve['dense_ft'][0.0]:.1f}% after the same fine-tuning; reference "
        f"{100 * reference:.1f}%) "
        f"at sparsity one-shot+ft / gradual+ft / one-shot no ft, {scale.ft_steps} fine-tuning "
        f"steps: {prune_txt}. Highest sparsity within {100 * tolerance:.1f} points of the "
        f"reference (max of {100 * PRUNE_MAX_DROP:g} point and {PRUNE_SE:g} standard errors on "
        f"{int(data[3].numel())} test images): "
        f"{100 * s_max:g}% = {1 / (1 - s_max):.0f}x fewer weights (need >= "
        f"{100 * PRUNE_MIN_SPARSITY:g}%; Han et al. 2015: {han}) "
        f"[{mark(checks_prune['little_loss_at_high_sparsity'])}]; gradual minus one-shot at "
        f">= {100 * HIGH_SPARSITY:g}% sparsity: {100 * gain:+.1f} points (need >= "
        f"{100 * GRADUAL_MIN_GAIN:g}) [{mark(checks_prune['gradual_beats_oneshot'])}]. LM held-out "
        f"loss (dense {lm.dense_loss:.3f}, {lm.losses['dense_ft'][0.0]:.3f} after the same "
        f"fine-tuning) one-shot+ft / gradual+ft / no ft: {lm_txt}; gradual gains "
        f"{lm_gain:+.3f} nats over one-shot at {100 * lm_high:g}% (not in the verdict: "
        f"{scale.lm_ft_steps} fine-tuning steps). "
        f"[Speed: {verdicts['speed']}] Speed-up over dense (median CPU time) of a "
        f"{scale.speed_d}-{scale.speed_hidden}-{scale.speed_d} ReLU pair on "
        f"{scale.speed_tokens} tokens: {speed_txt}. Faster (>= {SPEEDUP:g}x) at "
        f"{100 * at90:g}% sparsity? Masked weights {ratios['masked'][at90]:.2f}x "
        f"[{mark(checks_speed['masked_faster'])}]: {masked_txt}; physically removed units "
        f"{ratios['physical'][at90]:.1f}x [{mark(checks_speed['physical_faster'])}] (FLOP ratio "
        f"{1 / (1 - at90):.0f}x); CSR {csr_txt}. "
        "Sub-claims: " + ", ".join(f"{k} {v}" for k, v in verdicts.items()) + "."
    )
    return Outcome(metrics=metrics, verdict=verdict, evidence=evidence, figures=figures)


EXPERIMENT = Experiment(
    id="sparsity",
    card="DL0051",
    title="Sparsity: L1, ReLU, pruning, and what it really buys",
    claim=(
        "An L1 penalty drives weights to zero; ReLU gives sparse activations; large fractions "
        "of the weights can be pruned with little accuracy loss, gradual pruning beating "
        "one-shot at high sparsity; and sparsity makes inference faster."
    ),
    run=run,
)
