"""DL0050 -- knowledge distillation: a small student learns more from a teacher's soft targets.

Claim (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network"):
the temperature-softened outputs ``softmax(z / T)`` of a large teacher carry how
it ranks the wrong classes; a small student trained on them (plus the labels)
generalises better than the same student trained on the labels alone, coming
close to the teacher while being much smaller and faster. On MNIST: teacher 67
test errors, student alone 146, distilled student 74 (T = 20) -- 91% of the gap
closed; DistilBERT keeps 97% of BERT's score with 40% fewer parameters, 60%
faster.

Measurements:

(a) the seed's figure: the softmax of a trained teacher's fixed logits for one
    test digit at T = 1, 4 and 20, and the mean entropy of the soft targets vs T;
(b) digits (scikit-learn's bundled 8x8 images, 1000 train / 297 validation /
    500 test), repeated ``repeats`` times: each repetition draws its own split and
    trains its own small CNN teacher (dropout, random 1-pixel shifts) and an
    unregularised MLP student, alone and distilled (cached teacher logits, ``alpha``
    on the soft term) over a temperature sweep, all from the repetition's seed. T is
    chosen on the validation split (mean over repetitions) and the students are
    compared on the test split, paired by repetition: the interval of the gain then
    holds the noise of the 500 test images, of the teacher and of the student;
(c) language modelling on the shipped corpus: one TransformerLM teacher per run and
    a smaller student, alone and distilled for the same number of steps
    (:func:`blocklab.train.distill.distill_lm`, T chosen on the first half of the
    validation tokens, reported on the second half), paired over ``lm_repeats``
    student seeds (the teacher is fixed within a run: it is what is distilled from);
(d) size and speed: parameter ratios, and forward-pass speed-ups from interleaved
    timings (teacher, student, teacher, ...) of both pairs.

Checks: the distilled student beats the student alone (digits accuracy, LM loss) by
a margin, and each student runs faster than its teacher. Context, not counted: the
parameter ratios (fixed by the chosen architectures) and the share of the
teacher's accuracy kept (>= 97%), which the student trained alone also keeps on
digits, so it cannot tell distillation from no distillation.

Runs use one intra-op thread on CPU: the models are small and a second thread only
adds synchronisation on a busy machine; teacher and student are timed alike.

The card's numbered items -- each mapped to the checks that answer it, or to the reason
none is counted -- are ``CARD_ITEMS`` below; the report shows them item by item.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from blocklab.data import corpus_tokens  # noqa: E402
from blocklab.lab.base import CardItem, Context, Experiment, Outcome, torch_threads  # noqa: E402
from blocklab.lab.estimate import (  # noqa: E402
    Check,
    Estimate,
    exact,
    interleaved_timings,
    mean_ci,
    paired_diff,
    speedup,
)
from blocklab.lab.plot import band, yerr  # noqa: E402
from blocklab.models import TransformerConfig, TransformerLM  # noqa: E402
from blocklab.train import (  # noqa: E402
    TrainHistory,
    evaluate_classifier,
    evaluate_lm,
    train_classifier,
    train_lm,
)
from blocklab.train.distill import distill_classifier, distill_lm, teacher_logits  # noqa: E402


@dataclass(frozen=True)
class Scale:
    """How big each measurement is.

    Attributes:
        teacher_channels, teacher_hidden, teacher_steps: digits CNN teacher.
        student_hidden, student_steps: digits MLP student (two hidden layers).
        temperatures, alpha: digits distillation sweep (alpha on the soft term).
        repeats: digits repetitions (split, teacher and students each).
        lm_teacher, lm_student: (d_model, n_layers, n_heads) of the LMs.
        lm_teacher_steps: the LM teacher trains longer than the students: a teacher
            is a model already trained, and one barely better than its student has
            nothing to teach.
        lm_steps, lm_batch, lm_seq, lm_lr: LM student training (the teacher's too, but
            for its steps).
        lm_temperatures, lm_alpha: LM distillation settings tried.
        lm_repeats: LM student seeds (scratch and distilled paired on each).
        lm_eval_batches: validation batches (16 x lm_seq tokens) per half for the LM
            scores; the training curves use a quarter of them.
        time_repeats: interleaved timing rounds per pair for the speed-ups.
    """

    teacher_channels: tuple[int, int]
    teacher_hidden: int
    teacher_steps: int
    student_hidden: int
    student_steps: int
    temperatures: tuple[float, ...]
    alpha: float
    repeats: int
    lm_teacher: tuple[int, int, int]
    lm_student: tuple[int, int, int]
    lm_teacher_steps: int
    lm_steps: int
    lm_batch: int
    lm_seq: int
    lm_lr: float
    lm_temperatures: tuple[float, ...]
    lm_alpha: float
    lm_repeats: int
    lm_eval_batches: int
    time_repeats: int


SCALES: dict[str, Scale] = {
    # Cheaper repetitions, more of them: the digits teacher trains 200 steps (not 500)
    # and the students 300 (not 400), over two temperatures: the teacher still beats the
    # student by ~1.5 points, and six repetitions (each its own split and teacher) fit,
    # where four left the gain's interval straddling the threshold at some seeds and not
    # at others. The LM students train 150 steps (not 200) so that four seeds fit: the
    # per-seed gain varies 0.04-0.11 nats; three seeds left the low end at the threshold.
    "quick": Scale(teacher_channels=(32, 64), teacher_hidden=128, teacher_steps=200,
                   student_hidden=64, student_steps=300, temperatures=(2.0, 8.0),
                   alpha=0.9, repeats=6, lm_teacher=(96, 2, 4), lm_student=(48, 1, 2),
                   lm_teacher_steps=250, lm_steps=150, lm_batch=12, lm_seq=64, lm_lr=3e-3,
                   lm_temperatures=(1.0,), lm_alpha=0.9, lm_repeats=4, lm_eval_batches=12,
                   time_repeats=20),
    "full": Scale(teacher_channels=(32, 64), teacher_hidden=128, teacher_steps=1000,
                  student_hidden=64, student_steps=800, temperatures=(1.0, 2.0, 4.0, 8.0, 20.0),
                  alpha=0.9, repeats=8, lm_teacher=(128, 3, 4), lm_student=(64, 1, 2),
                  lm_teacher_steps=1000, lm_steps=500, lm_batch=16, lm_seq=64, lm_lr=3e-3,
                  lm_temperatures=(1.0, 2.0, 4.0), lm_alpha=0.9, lm_repeats=3,
                  lm_eval_batches=40, time_repeats=30),
    # A seconds-long run for tests of the plumbing; its numbers mean little.
    "smoke": Scale(teacher_channels=(4, 8), teacher_hidden=16, teacher_steps=10,
                   student_hidden=8, student_steps=10, temperatures=(1.0, 4.0), alpha=0.9,
                   repeats=2, lm_teacher=(32, 1, 2), lm_student=(16, 1, 2), lm_teacher_steps=5,
                   lm_steps=5, lm_batch=2, lm_seq=16, lm_lr=3e-3, lm_temperatures=(1.0,),
                   lm_alpha=0.9, lm_repeats=2, lm_eval_batches=1, time_repeats=3),
}

# Verdict thresholds.
# Half a point of digits test accuracy: the size of Hinton et al.'s MNIST gain (0.72
# points, 146 -> 74 errors); a smaller gain is not worth training a teacher. The noise
# of the 500 test images (one image = 0.2 points) is in the interval, since every
# repetition draws its own split.
MIN_ACC_GAIN = 0.005
# A hundredth of a nat per token: about 1% perplexity, the smallest LM gain worth a
# teacher's forward pass on every training batch.
MIN_LOSS_GAIN = 0.01
# DistilBERT's 97% of BERT's score: context only (the student alone keeps as much here).
MIN_RETAINED = 0.97
# "Much smaller": half the parameters (DistilBERT has 40% fewer). Context: the ratio
# is fixed by the chosen architectures.
MIN_PARAM_RATIO = 2.0
# DistilBERT's 60% faster, rounded down: a student that is not >= 1.5x faster than
# its teacher is not worth distilling for speed.
MIN_SPEEDUP = 1.5

HINTON = {"teacher": 67, "student": 146, "distilled": 74}  # MNIST test errors of 10,000
FIGURE_TEMPERATURES = (1.0, 4.0, 20.0)


def scale_for(ctx: Context) -> Scale:
    return SCALES["quick" if ctx.quick else "full"]


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def time_pair(teacher: nn.Module, student: nn.Module, x: Tensor, repeats: int,
              device: torch.device) -> Estimate:
    """How many times faster the student's forward pass on ``x`` is than the teacher's:
    interleaved timings (teacher, student, teacher, ...), per-round wall-time ratios."""
    teacher.eval()
    student.eval()
    with torch.inference_mode():
        timings = interleaved_timings({"teacher": lambda: teacher(x), "student": lambda: student(x)},
                                      repeats=repeats, device=device, inner=3)
    est = speedup(timings, slow="teacher", fast="student")
    return Estimate(est.value, est.low, est.high, est.samples, est.method,
                    {**est.extra, "timings": {k: t.to_json() for k, t in timings.items()}})


# ------------------------------------------------------------------------------ digits

@dataclass
class Digits:
    x: dict[str, Tensor]  # standardised (N, 64)
    y: dict[str, Tensor]
    images: dict[str, Tensor]  # (N, 8, 8) in [0, 16], for the figure


def load_split(seed: int) -> Digits:
    """1000 train / 297 validation / 500 test, standardised on the training images."""
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32)
    y = torch.tensor(digits.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    index = {"train": perm[:1000], "val": perm[1000:1297], "test": perm[1297:]}
    mu, sd = x[index["train"]].mean(0), x[index["train"]].std(0) + 0.1
    return Digits({k: (x[v] - mu) / sd for k, v in index.items()},
                  {k: y[v] for k, v in index.items()},
                  {k: x[v].view(-1, 8, 8) for k, v in index.items()})


class DigitCNN(nn.Module):
    """The teacher: two 3x3 convolutions, max-pool, a hidden layer; dropout and
    random shifts of up to one pixel while training (Hinton's teacher used dropout
    and jittered inputs)."""

    def __init__(self, channels: tuple[int, int], hidden: int) -> None:
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(c2 * 16, hidden),
                                  nn.ReLU(), nn.Dropout(0.3), nn.Linear(hidden, 10))

    def forward(self, x: Tensor) -> Tensor:
        """Args: x (B, 64) standardised pixels. Returns logits (B, 10)."""
        img = x.view(-1, 1, 8, 8)  # (B, 1, 8, 8)
        if self.training:
            shift = torch.randint(-1, 2, (2,)).tolist()
            img = torch.roll(img, shifts=shift, dims=(2, 3))
        return self.head(self.features(img))


def student_mlp(hidden: int, seed: int) -> nn.Module:
    """The student: 64 -> hidden -> hidden -> 10, no regularisation (as Hinton's)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                             nn.ReLU(), nn.Linear(hidden, 10))


def digits_part(scale: Scale, ctx: Context) -> dict:
    """Every repetition: its split, teacher, student alone and distilled students."""
    dev = ctx.device
    teacher_test: list[float] = []
    scratch_test: list[float] = []
    kd_val: dict[float, list[float]] = {t: [] for t in scale.temperatures}
    kd_test: dict[float, list[float]] = {t: [] for t in scale.temperatures}
    seeds = ctx.seeds(scale.repeats)
    for seed in ctx.progress(seeds, "distillation: digits", total=len(seeds)):
        data = load_split(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # dropout and shifts of the teacher
            teacher = DigitCNN(scale.teacher_channels, scale.teacher_hidden)
            train_classifier(teacher, data.x["train"], data.y["train"],
                             steps=scale.teacher_steps, batch_size=64, lr=3e-3, seed=seed,
                             device=dev)
        teacher_test.append(evaluate_classifier(teacher, data.x["test"], data.y["test"],
                                                device=dev))
        cached = teacher_logits(teacher, data.x["train"], device=dev)
        common = dict(steps=scale.student_steps, batch_size=64, lr=3e-3, seed=seed, device=dev)
        student = student_mlp(scale.student_hidden, seed)  # same init for every student
        train_classifier(student, data.x["train"], data.y["train"], **common)
        scratch_test.append(evaluate_classifier(student, data.x["test"], data.y["test"]))
        for t in scale.temperatures:
            student = student_mlp(scale.student_hidden, seed)
            distill_classifier(student, teacher, data.x["train"], data.y["train"],
                               temperature=t, alpha=scale.alpha, cached_logits=cached, **common)
            kd_val[t].append(evaluate_classifier(student, data.x["val"], data.y["val"]))
            kd_test[t].append(evaluate_classifier(student, data.x["test"], data.y["test"]))
    best_t = max(scale.temperatures, key=lambda t: statistics.mean(kd_val[t]))

    x_test = data.x["test"].to(dev)  # the last repetition's models and split
    speed = time_pair(teacher, student, x_test, scale.time_repeats, dev)
    with torch.no_grad():
        test_logits = teacher(x_test).float().cpu()
    return {"data": data, "best_t": best_t, "kd_test": kd_test, "kd_val": kd_val,
            "teacher_test": teacher_test, "scratch_test": scratch_test,
            "test_logits": test_logits, "speedup": speed,
            "params": {"teacher": _params(teacher), "student": _params(student)}}


# -------------------------------------------------------------------------- language model

def _lm(shape: tuple[int, int, int], seq: int, seed: int) -> TransformerLM:
    d, layers, heads = shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TransformerLM(TransformerConfig(vocab_size=256, d_model=d, n_layers=layers,
                                               n_heads=heads, max_seq_len=max(seq, 256)))


def lm_part(scale: Scale, ctx: Context) -> dict:
    """One teacher; for every student seed, the student alone and distilled at each T."""
    train, val = corpus_tokens()
    half = val.numel() // 2
    select, report = val[:half], val[half:]  # choose T on one half, report on the other
    dev = ctx.device
    common = dict(steps=scale.lm_steps, batch_size=scale.lm_batch, seq_len=scale.lm_seq,
                  lr=scale.lm_lr, device=dev, eval_every=max(1, scale.lm_steps // 4),
                  eval_batches=max(1, scale.lm_eval_batches // 4))  # curves only: a few batches

    def score(model: nn.Module, tokens: Tensor) -> float:
        return evaluate_lm(model, tokens, batch_size=16, seq_len=scale.lm_seq,
                           max_batches=scale.lm_eval_batches, device=dev)

    teacher = _lm(scale.lm_teacher, scale.lm_seq, ctx.seed)
    teacher_curve = train_lm(teacher, train, eval_tokens=report, seed=ctx.seed,
                             **{**common, "steps": scale.lm_teacher_steps,
                                "eval_every": max(1, scale.lm_teacher_steps // 4)})
    names = ["scratch", *(f"KD T={t:g}" for t in scale.lm_temperatures)]
    curves: dict[str, list[TrainHistory]] = {n: [] for n in names}
    selected: dict[str, list[float]] = {n: [] for n in names}
    reported: dict[str, list[float]] = {n: [] for n in names}
    jobs = [(seed, n) for seed in ctx.seeds(scale.lm_repeats) for n in names]
    for seed, name in ctx.progress(jobs, "distillation: lm", total=len(jobs)):
        student = _lm(scale.lm_student, scale.lm_seq, seed + 1)  # same init for the seed
        if name == "scratch":
            curve = train_lm(student, train, eval_tokens=report, seed=seed, **common)
        else:
            t = float(name.removeprefix("KD T="))
            curve = distill_lm(student, teacher, train, temperature=t, alpha=scale.lm_alpha,
                               eval_tokens=report, seed=seed, **common)
        curves[name].append(curve)
        selected[name].append(score(student, select))
        reported[name].append(score(student, report))
    kd_names = names[1:]
    best = min(kd_names, key=lambda n: statistics.mean(selected[n]))

    x = torch.randint(0, 256, (8, scale.lm_seq), generator=ctx.generator(5)).to(dev)
    speed = time_pair(teacher, student, x, scale.time_repeats, dev)
    return {"teacher_loss": score(teacher, report), "reported": reported, "best": best,
            "teacher_curve": teacher_curve, "curves": curves, "speedup": speed,
            "params": {"teacher": teacher.num_parameters(), "student": student.num_parameters()}}


# ----------------------------------------------------------------------------- figures

def _entropy(p: Tensor) -> Tensor:
    return -torch.xlogy(p, p).sum(-1)


def plot_soft_targets(digits: dict, ctx: Context) -> tuple[str, dict[float, float]]:
    logits = digits["test_logits"]  # (N, 10)
    probs = torch.softmax(logits, -1)
    right = probs.argmax(-1) == digits["data"].y["test"]
    # The correctly classified digit whose runner-up class is most likely: dark knowledge.
    runner_up = probs.topk(2, -1).values[:, 1].masked_fill(~right, -1.0)
    i = int(runner_up.argmax())
    mean_entropy = {t: float(_entropy(torch.softmax(logits / t, -1)).mean())
                    for t in (1.0, 2.0, 4.0, 8.0, 20.0)}
    # Top: the digit and the mean entropy; below: its soft targets at three temperatures.
    fig, axd = plt.subplot_mosaic([["digit"] * 2 + ["entropy"] * 4,
                                   ["T0"] * 2 + ["T1"] * 2 + ["T2"] * 2],
                                  figsize=(10, 7.0), layout="constrained")
    axes = [axd["digit"], axd["T0"], axd["T1"], axd["T2"], axd["entropy"]]
    axes[0].imshow(digits["data"].images["test"][i].numpy(), cmap="gray_r")
    axes[0].set_title(f"test digit, label {int(digits['data'].y['test'][i])}")
    axes[0].axis("off")
    for ax, t in zip(axes[1:4], FIGURE_TEMPERATURES, strict=True):
        p = torch.softmax(logits[i] / t, -1)
        ax.bar(range(10), p.numpy(), color=["C3" if k == int(p.argmax()) else "C0"
                                             for k in range(10)])
        ax.set_xticks(range(10))
        ax.set_ylim(0, 1)
        ax.set_xlabel("class")
        ax.set_ylabel("softmax(z / T)")
        ax.set_title(f"T = {t:g}: entropy {float(_entropy(p)):.2f} nats")
    ts = sorted(mean_entropy)
    axes[4].semilogx(ts, [mean_entropy[t] for t in ts], "o-", label="mean over test digits")
    axes[4].axhline(math.log(10), color="grey", ls=":", label="uniform: ln 10")
    axes[4].set_xlabel("temperature T")
    axes[4].set_ylabel("entropy of the soft targets (nats)")
    axes[4].set_title("Softer targets as T grows")
    axes[4].legend(fontsize=8)
    fig.suptitle("The teacher's fixed logits through a softmax at three temperatures")
    rel = ctx.save_figure(fig, "distillation_soft_targets")
    return rel, mean_entropy


def plot_digits(digits: dict, est: dict[str, Estimate], scale: Scale, ctx: Context) -> str:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 5.4), layout="constrained")
    ts = sorted(digits["kd_test"])
    for key, label, style in (("kd_test", "distilled student, test", "o-"),
                              ("kd_val", "distilled student, validation", "s--")):
        sweep = [mean_ci(digits[key][t]) for t in ts]
        ax1.errorbar(ts, [e.value for e in sweep], yerr=yerr(sweep), fmt=style, capsize=3,
                     label=label)
    for name, color, ls, label in (("teacher", "C2", "-", "teacher (CNN), test"),
                                   ("scratch", "C3", ":", "student alone, test")):
        e = est[name]
        ax1.axhline(e.value, color=color, ls=ls, label=label)
        if math.isfinite(e.low) and math.isfinite(e.high):
            ax1.axhspan(e.low, e.high, color=color, alpha=0.12)
    ax1.axvline(digits["best_t"], color="grey", lw=0.8, ls="--", label="T chosen on validation")
    ax1.set_xscale("log")
    ax1.set_xlabel("temperature T")
    ax1.set_ylabel("accuracy")
    ax1.set_title(f"Digits: temperature sweep (alpha={scale.alpha} on the\nsoft term, "
                  f"{scale.repeats} repetitions, 95% intervals)", fontsize=10)
    # Legends below the axes: the intervals span most of each panel.
    ax1.legend(fontsize=8, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.14))

    names = ["teacher", "scratch", "distilled"]
    bars = [est[n].map(lambda a: (1 - a) * 10_000) for n in names]
    hinton = [HINTON["teacher"], HINTON["student"], HINTON["distilled"]]
    x = np.arange(3)
    ax2.bar(x - 0.2, [b.value for b in bars], 0.4, yerr=yerr(bars), capsize=3,
            label="ours (digits, 500 test images, 95% intervals)")
    ax2.bar(x + 0.2, hinton, 0.4, label="Hinton et al. (MNIST)")
    ax2.set_xticks(x, ["teacher", "student alone", "distilled student"])
    ax2.set_ylabel("test errors per 10,000")
    p, t = digits["params"]["teacher"], digits["params"]["student"]
    ax2.set_title(f"Teacher {p:,} vs student {t:,} parameters,\nstudent "
                  f"{digits['speedup'].value:.0f}x faster")
    ax2.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08))
    rel = ctx.save_figure(fig, "distillation_digits")
    return rel


def plot_lm(lm: dict, est: dict[str, Estimate], scale: Scale, ctx: Context) -> str:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.8), layout="constrained")
    ax1.plot(lm["teacher_curve"].eval_steps, lm["teacher_curve"].eval_losses, "o-",
             label="teacher (one run)")
    for name, runs in lm["curves"].items():
        steps = runs[0].eval_steps
        label = "student alone" if name == "scratch" else f"distilled student ({name})"
        band(ax1, steps, [r.eval_losses for r in runs], "o-",
             label=f"{label}, mean of {len(runs)}")
    curve_tokens = max(1, scale.lm_eval_batches // 4) * 16 * scale.lm_seq
    ax1.set_xlabel("training step")
    ax1.set_ylabel(f"validation loss, first {curve_tokens:,} tokens\n(nats/byte)")
    ax1.set_title("Language model on the shipped corpus:\ntraining curves (95% bands)")
    ax1.legend(fontsize=8)
    ppl = [exact(lm["teacher_loss"]).map(math.exp), est["lm_scratch"].map(math.exp),
           est["lm_distilled"].map(math.exp)]
    bars = ax2.bar(["teacher", "student alone", f"distilled ({lm['best']})"],
                   [e.value for e in ppl], yerr=yerr(ppl), capsize=3, color=["C0", "C1", "C2"])
    for bar, e in zip(bars, ppl, strict=True):
        ax2.text(bar.get_x() + bar.get_width() / 2, e.high, f"{e.value:.2f}", ha="center",
                 va="bottom")
    ax2.set_ylabel(f"perplexity per byte, {scale.lm_eval_batches * 16 * scale.lm_seq:,} "
                   "held-out tokens")
    p, s = lm["params"]["teacher"], lm["params"]["student"]
    ax2.set_title(f"Teacher {p:,} vs student {s:,} parameters;\nstudent "
                  f"{lm['speedup'].value:.1f}x faster", fontsize=10)
    rel = ctx.save_figure(fig, "distillation_lm")
    return rel


# --------------------------------------------------------------------------------- run

def run(ctx: Context) -> Outcome:
    scale = scale_for(ctx)
    with torch_threads(1) if ctx.device.type == "cpu" else contextlib.nullcontext():
        return _run(ctx, scale)


def _run(ctx: Context, scale: Scale) -> Outcome:
    start = time.perf_counter()
    digits = digits_part(scale, ctx)
    digits_seconds = time.perf_counter() - start
    lm = lm_part(scale, ctx)
    lm_seconds = time.perf_counter() - start - digits_seconds

    best_t = digits["best_t"]
    teacher_acc, scratch_acc = digits["teacher_test"], digits["scratch_test"]
    kd_acc = digits["kd_test"][best_t]
    est = {"teacher": mean_ci(teacher_acc), "scratch": mean_ci(scratch_acc),
           "distilled": mean_ci(kd_acc),
           "lm_scratch": mean_ci(lm["reported"]["scratch"]),
           "lm_distilled": mean_ci(lm["reported"][lm["best"]])}
    gain = paired_diff(kd_acc, scratch_acc)
    gap = paired_diff(teacher_acc, scratch_acc)
    recovered = gain.value / gap.value if gap.value > 0 else math.nan
    retained = mean_ci([k / t for k, t in zip(kd_acc, teacher_acc, strict=True)])
    retained_alone = mean_ci([s / t for s, t in zip(scratch_acc, teacher_acc, strict=True)])
    l_gain = paired_diff(lm["reported"]["scratch"], lm["reported"][lm["best"]])
    d_ratio = exact(digits["params"]["teacher"] / digits["params"]["student"])
    l_ratio = exact(lm["params"]["teacher"] / lm["params"]["student"])
    hinton_recovered = (HINTON["student"] - HINTON["distilled"]) / (
        HINTON["student"] - HINTON["teacher"])

    checks = [
        Check("digits: distilled - alone, test accuracy", gain, ">=", MIN_ACC_GAIN,
              why="half a point, Hinton et al.'s MNIST gain (0.72 points); paired over "
                  "repetitions that each draw their own split and teacher"),
        Check("LM: alone - distilled, nats/token", l_gain, ">=", MIN_LOSS_GAIN,
              why="1% perplexity, the least worth a teacher's forward pass per batch; "
                  "paired over student seeds"),
        Check("digits: student speed-up", digits["speedup"], ">=", MIN_SPEEDUP,
              why="DistilBERT's 60% faster, rounded down; interleaved timings"),
        Check("LM: student speed-up", lm["speedup"], ">=", MIN_SPEEDUP,
              why="DistilBERT's 60% faster, rounded down; interleaved timings"),
        Check("digits: distilled / teacher accuracy", retained, ">=", MIN_RETAINED,
              why="DistilBERT's 97%; context: the student alone keeps "
                  f"{retained_alone.value:.1%} too, so it cannot tell KD from no KD",
              counted=False),
        Check("digits: parameter ratio", d_ratio, ">=", MIN_PARAM_RATIO,
              why="context: fixed by the chosen architectures", counted=False),
        Check("LM: parameter ratio", l_ratio, ">=", MIN_PARAM_RATIO,
              why="context: fixed by the chosen architectures", counted=False),
    ]
    fig_soft, mean_entropy = plot_soft_targets(digits, ctx)
    figures = [fig_soft, plot_digits(digits, est, scale, ctx), plot_lm(lm, est, scale, ctx)]

    n_test = len(digits["data"].y["test"])
    metrics: dict[str, object] = {
        "threads": torch.get_num_threads(),
        "digits_seconds": digits_seconds, "lm_seconds": lm_seconds,
        **{f"entropy_T{t:g}": v for t, v in mean_entropy.items()},
        "digits_teacher_acc": est["teacher"], "digits_scratch_acc": est["scratch"],
        "digits_distilled_acc": est["distilled"], "digits_best_T": best_t,
        **{f"digits_kd_acc_T{t:g}": mean_ci(v) for t, v in digits["kd_test"].items()},
        **{f"digits_kd_val_acc_T{t:g}": mean_ci(v) for t, v in digits["kd_val"].items()},
        "digits_test_size": n_test, "digits_repeats": scale.repeats,
        "digits_gain": gain, "digits_teacher_gap": gap, "digits_gap_recovered": recovered,
        "digits_retained": retained, "digits_retained_alone": retained_alone,
        "digits_param_ratio": d_ratio.value, "digits_speedup": digits["speedup"],
        "digits_teacher_params": digits["params"]["teacher"],
        "digits_student_params": digits["params"]["student"],
        "hinton_gap_recovered": hinton_recovered,
        "lm_teacher_loss": lm["teacher_loss"], "lm_scratch_loss": est["lm_scratch"],
        "lm_distilled_loss": est["lm_distilled"], "lm_distilled_setting": lm["best"],
        "lm_teacher_ppl": math.exp(lm["teacher_loss"]), "lm_repeats": scale.lm_repeats,
        "lm_gain_nats": l_gain, "lm_param_ratio": l_ratio.value, "lm_speedup": lm["speedup"],
        "lm_teacher_params": lm["params"]["teacher"], "lm_student_params": lm["params"]["student"],
    }
    errors = {k: e.map(lambda a: (1 - a) * n_test) for k, e in est.items()
              if k in ("teacher", "scratch", "distilled")}
    counted = [c for c in checks if c.counted]
    held = sum(c.status == "holds" for c in counted)
    evidence = (
        "Soft targets: mean entropy of the teacher's softmax "
        + ", ".join(f"{v:.2f}" for v in mean_entropy.values())
        + f" nats at T = {', '.join(f'{t:g}' for t in mean_entropy)} (uniform {math.log(10):.2f}). "
        f"Digits ({n_test} test images, {scale.repeats} repetitions, each its own split and "
        f"teacher; 95% intervals): CNN teacher {est['teacher']:.3f} ({errors['teacher']:.3g} "
        f"errors), MLP student alone {est['scratch']:.3f} ({errors['scratch']:.3g}), distilled "
        f"at T={best_t:g} (chosen on validation, alpha {scale.alpha}) {est['distilled']:.3f} "
        f"({errors['distilled']:.3g}); {checks[0].text()}; {recovered:.0%} of the "
        f"student-teacher gap ({gap:.3f}) closed (Hinton et al. on MNIST: {HINTON['teacher']}/"
        f"{HINTON['student']}/{HINTON['distilled']} errors, {hinton_recovered:.0%}). "
        f"Language model (one teacher, {scale.lm_teacher_steps} steps, "
        f"{lm['teacher_loss']:.3f} nats/byte; {scale.lm_repeats} student seeds of "
        f"{scale.lm_steps} steps, alpha {scale.lm_alpha}): student alone "
        f"{est['lm_scratch']:.3f}, {lm['best']} student {est['lm_distilled']:.3f}; "
        f"{checks[1].text()}. Speed: {checks[2].text()}; {checks[3].text()}. Context (not "
        f"counted): {checks[4].text()} (the student alone {retained_alone:.3f}); "
        f"{checks[5].text()}; {checks[6].text()}. {held}/{len(counted)} counted checks hold."
    )
    return Outcome(metrics=metrics, evidence=evidence, checks=checks, figures=figures)


# The card's items and the checks that answer them (the report's item-by-item table;
# the runner refuses a mapping that names a missing check or leaves a counted one out).
CARD_ITEMS = (
    CardItem("softmax(z / T) at a higher temperature spreads the teacher's probability over "
             "the wrong classes (the 'dark knowledge' of how it ranks them)",
             untested="a property of softmax(z / T): the entropy rises with T by "
                      "construction; shown in the first figure"),
    CardItem("A student trained on the soft targets generalises better than the same "
             "student trained on the labels alone",
             ("digits: distilled - alone, test accuracy", "LM: alone - distilled, nats/token")),
    CardItem("The distilled student comes close to the teacher (DistilBERT keeps 97%)",
             ("digits: distilled / teacher accuracy",),
             untested="the student trained alone also keeps >= 97% of the teacher's digits "
                      "accuracy, so this cannot tell distillation from none: context"),
    CardItem("The student is much smaller and faster than the teacher",
             ("digits: student speed-up", "LM: student speed-up",
              "digits: parameter ratio", "LM: parameter ratio")),
)


EXPERIMENT = Experiment(
    id="distillation",
    card="DL0050",
    title="Knowledge distillation",
    claim=(
        "A small student trained on a large teacher's temperature-softened outputs "
        "generalises better than the same student trained on the labels alone, coming close "
        "to the teacher while being much smaller and faster (Hinton et al. 2015: 146 -> 74 "
        "MNIST errors against the teacher's 67)."
    ),
    run=run,
    card_items=CARD_ITEMS,
    # quick: measured, user+sys CPU seconds of a one-experiment run at 1 thread (44-46 s
    # at seeds 0-2); full: estimated from the quick parts scaled by steps, repetitions and
    # model sizes (digits ~130 s, LM ~280 s).
    seconds={"quick": 45, "full": 420},
)
