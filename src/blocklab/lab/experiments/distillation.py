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
    500 test): a small CNN teacher (dropout, random 1-pixel shifts) and an
    unregularised MLP student, trained alone and distilled (cached teacher
    logits, ``alpha`` on the soft term) over a temperature sweep; T is chosen on the
    validation split and the students are compared on the test split, with the
    parameter ratio and the measured inference speed-up (batch of test images);
(c) language modelling on the shipped corpus: a TransformerLM teacher and a
    smaller student, alone and distilled for the same number of steps
    (:func:`blocklab.train.distill.distill_lm`, T chosen on the first half of the
    validation tokens, reported on the second half), with the parameter ratio and
    the measured forward-pass speed-up.

Runs use one intra-op thread on CPU: the models are small and a second thread only
adds synchronisation on a busy machine; teacher and student are timed alike.
"""

from __future__ import annotations

import contextlib
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
from sklearn.datasets import load_digits  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from blocklab.data import corpus_tokens  # noqa: E402
from blocklab.lab.base import (  # noqa: E402
    Context,
    Experiment,
    Outcome,
    torch_threads,
    verdict_of,
)
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
        temperatures, alpha, seeds: digits distillation sweep (alpha on the soft term).
        lm_teacher, lm_student: (d_model, n_layers, n_heads) of the LMs.
        lm_teacher_steps: the LM teacher trains longer than the students: a teacher
            is a model already trained, and one barely better than its student has
            nothing to teach.
        lm_steps, lm_batch, lm_seq, lm_lr: LM student training (the teacher's too, but
            for its steps).
        lm_temperatures, lm_alpha: LM distillation settings tried.
        lm_eval_batches: validation batches (16 x lm_seq tokens) per half for the LM
            scores; the training curves use a quarter of them.
        time_repeats: timed forward passes per model for the speed-ups.
    """

    teacher_channels: tuple[int, int]
    teacher_hidden: int
    teacher_steps: int
    student_hidden: int
    student_steps: int
    temperatures: tuple[float, ...]
    alpha: float
    seeds: int
    lm_teacher: tuple[int, int, int]
    lm_student: tuple[int, int, int]
    lm_teacher_steps: int
    lm_steps: int
    lm_batch: int
    lm_seq: int
    lm_lr: float
    lm_temperatures: tuple[float, ...]
    lm_alpha: float
    lm_eval_batches: int
    time_repeats: int


SCALES: dict[str, Scale] = {
    "quick": Scale(teacher_channels=(32, 64), teacher_hidden=128, teacher_steps=500,
                   student_hidden=64, student_steps=400, temperatures=(1.0, 2.0, 4.0, 20.0),
                   alpha=0.9, seeds=2, lm_teacher=(96, 2, 4), lm_student=(48, 1, 2),
                   lm_teacher_steps=300, lm_steps=200, lm_batch=12, lm_seq=64, lm_lr=3e-3,
                   lm_temperatures=(1.0,), lm_alpha=0.9, lm_eval_batches=12, time_repeats=15),
    "full": Scale(teacher_channels=(32, 64), teacher_hidden=128, teacher_steps=1500,
                  student_hidden=64, student_steps=800, temperatures=(1.0, 2.0, 4.0, 8.0, 20.0),
                  alpha=0.9, seeds=5, lm_teacher=(128, 3, 4), lm_student=(64, 1, 2),
                  lm_teacher_steps=1000, lm_steps=500, lm_batch=16, lm_seq=64, lm_lr=3e-3,
                  lm_temperatures=(1.0, 2.0, 4.0), lm_alpha=0.9, lm_eval_batches=40,
                  time_repeats=30),
    # A seconds-long run for tests of the plumbing; its numbers mean little.
    "smoke": Scale(teacher_channels=(4, 8), teacher_hidden=16, teacher_steps=10,
                   student_hidden=8, student_steps=10, temperatures=(1.0, 4.0), alpha=0.9,
                   seeds=1, lm_teacher=(32, 1, 2), lm_student=(16, 1, 2), lm_teacher_steps=5,
                   lm_steps=5, lm_batch=2, lm_seq=16, lm_lr=3e-3, lm_temperatures=(1.0,),
                   lm_alpha=0.9, lm_eval_batches=1, time_repeats=3),
}

# Verdict thresholds.
MIN_ACC_GAIN = 0.005  # distilled digits student beats the student alone by >= 0.5 points
MIN_RETAINED = 0.97  # ... and keeps >= 97% of the teacher's accuracy (DistilBERT's 97%)
MIN_LOSS_GAIN = 0.01  # distilled LM student beats the student alone by >= 0.01 nats/token
MIN_PARAM_RATIO = 2.0  # each student has >= 2x fewer parameters than its teacher ...
MIN_SPEEDUP = 1.5  # ... and runs >= 1.5x faster, measured

HINTON = {"teacher": 67, "student": 146, "distilled": 74}  # MNIST test errors of 10,000
FIGURE_TEMPERATURES = (1.0, 4.0, 20.0)


def scale_for(ctx: Context) -> Scale:
    return SCALES["quick" if ctx.quick else "full"]


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def median_seconds(fns: dict[str, Callable[[], object]], repeats: int,
                   device: torch.device) -> dict[str, float]:
    """Median seconds per call, the callables interleaved so load drifts hit all alike."""
    samples: dict[str, list[float]] = {k: [] for k in fns}
    with torch.inference_mode():
        for fn in fns.values():
            fn()  # warm-up
        for _ in range(repeats):
            for name, fn in fns.items():
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                fn()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                samples[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in samples.items()}


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
    data = load_split(ctx.seed)
    dev = ctx.device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.seed)
        teacher = DigitCNN(scale.teacher_channels, scale.teacher_hidden)
    train_classifier(teacher, data.x["train"], data.y["train"], steps=scale.teacher_steps,
                     batch_size=64, lr=3e-3, seed=ctx.seed, device=dev)
    acc = {"teacher": evaluate_classifier(teacher, data.x["test"], data.y["test"], device=dev)}
    cached = teacher_logits(teacher, data.x["train"], device=dev)

    scratch_val, scratch_test = [], []
    kd_val: dict[float, list[float]] = {t: [] for t in scale.temperatures}
    kd_test: dict[float, list[float]] = {t: [] for t in scale.temperatures}
    jobs = [(s, t) for s in range(scale.seeds) for t in (None, *scale.temperatures)]
    for s, t in ctx.progress(jobs, "distillation: digits", total=len(jobs)):
        student = student_mlp(scale.student_hidden, ctx.seed * 101 + s)
        common = dict(steps=scale.student_steps, batch_size=64, lr=3e-3, seed=ctx.seed + s,
                      device=dev)
        if t is None:
            train_classifier(student, data.x["train"], data.y["train"], **common)
            scratch_val.append(evaluate_classifier(student, data.x["val"], data.y["val"]))
            scratch_test.append(evaluate_classifier(student, data.x["test"], data.y["test"]))
        else:
            distill_classifier(student, teacher, data.x["train"], data.y["train"],
                               temperature=t, alpha=scale.alpha, cached_logits=cached, **common)
            kd_val[t].append(evaluate_classifier(student, data.x["val"], data.y["val"]))
            kd_test[t].append(evaluate_classifier(student, data.x["test"], data.y["test"]))
    best_t = max(scale.temperatures, key=lambda t: statistics.mean(kd_val[t]))
    acc["scratch"] = statistics.mean(scratch_test)
    acc["distilled"] = statistics.mean(kd_test[best_t])
    paired = [k - s for k, s in zip(kd_test[best_t], scratch_test, strict=True)]

    teacher.eval()
    student.eval()
    x_test = data.x["test"].to(dev)
    times = median_seconds({"teacher": lambda: teacher(x_test), "student": lambda: student(x_test)},
                           scale.time_repeats, dev)
    with torch.no_grad():
        test_logits = teacher(x_test).float().cpu()
    return {"data": data, "acc": acc, "best_t": best_t, "kd_test": kd_test, "kd_val": kd_val,
            "scratch_test": scratch_test, "paired": paired, "test_logits": test_logits,
            "params": {"teacher": _params(teacher), "student": _params(student)},
            "times": times}


# -------------------------------------------------------------------------- language model

def _lm(shape: tuple[int, int, int], seq: int, seed: int) -> TransformerLM:
    d, layers, heads = shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TransformerLM(TransformerConfig(vocab_size=256, d_model=d, n_layers=layers,
                                               n_heads=heads, max_seq_len=max(seq, 256)))


def lm_part(scale: Scale, ctx: Context) -> dict:
    train, val = corpus_tokens()
    half = val.numel() // 2
    select, report = val[:half], val[half:]  # choose T on one half, report on the other
    dev = ctx.device
    common = dict(steps=scale.lm_steps, batch_size=scale.lm_batch, seq_len=scale.lm_seq,
                  lr=scale.lm_lr, seed=ctx.seed, device=dev, eval_every=max(1, scale.lm_steps // 4),
                  eval_batches=max(1, scale.lm_eval_batches // 4))  # curves only: a few batches

    def score(model: nn.Module, tokens: Tensor) -> float:
        return evaluate_lm(model, tokens, batch_size=16, seq_len=scale.lm_seq,
                           max_batches=scale.lm_eval_batches, device=dev)

    curves: dict[str, TrainHistory] = {}
    teacher = _lm(scale.lm_teacher, scale.lm_seq, ctx.seed)
    jobs = ["teacher", "scratch", *scale.lm_temperatures]
    students: dict[str, nn.Module] = {}
    for job in ctx.progress(jobs, "distillation: lm", total=len(jobs)):
        if job == "teacher":
            curves["teacher"] = train_lm(teacher, train, eval_tokens=report,
                                         **{**common, "steps": scale.lm_teacher_steps,
                                            "eval_every": max(1, scale.lm_teacher_steps // 4)})
            continue
        student = _lm(scale.lm_student, scale.lm_seq, ctx.seed + 1)  # same init for all
        if job == "scratch":
            curves["scratch"] = train_lm(student, train, eval_tokens=report, **common)
            students["scratch"] = student
        else:
            name = f"KD T={job:g}"
            curves[name] = distill_lm(student, teacher, train, temperature=float(job),
                                      alpha=scale.lm_alpha, eval_tokens=report, **common)
            students[name] = student
    kd_names = [n for n in students if n.startswith("KD")]
    best = kd_names[0] if len(kd_names) == 1 else min(
        kd_names, key=lambda n: score(students[n], select))
    loss = {"teacher": score(teacher, report), "scratch": score(students["scratch"], report),
            "distilled": score(students[best], report)}

    teacher.eval()
    student = students[best].eval()
    x = torch.randint(0, 256, (8, scale.lm_seq), generator=ctx.generator(5)).to(dev)
    times = median_seconds({"teacher": lambda: teacher(x), "student": lambda: student(x)},
                           scale.time_repeats, dev)
    return {"loss": loss, "best": best, "curves": curves, "times": times,
            "params": {"teacher": teacher.num_parameters(), "student": student.num_parameters()},
            "kd_names": kd_names}


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
    fig, axes = plt.subplots(1, 5, figsize=(18, 3.8),
                             gridspec_kw={"width_ratios": [0.8, 1, 1, 1, 1.2]})
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
    fig.tight_layout()
    rel = ctx.save_figure(fig, "distillation_soft_targets")
    return rel, mean_entropy


def plot_digits(digits: dict, scale: Scale, ctx: Context) -> str:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.6))
    ts = sorted(digits["kd_test"])
    for key, label, style in (("kd_test", "distilled student, test", "o-"),
                              ("kd_val", "distilled student, validation", "s--")):
        ax1.errorbar(ts, [np.mean(digits[key][t]) for t in ts],
                     yerr=[np.std(digits[key][t]) for t in ts], fmt=style, capsize=3, label=label)
    ax1.axhline(digits["acc"]["teacher"], color="C2", label="teacher (CNN), test")
    ax1.axhline(digits["acc"]["scratch"], color="C3", ls=":", label="student alone, test")
    ax1.axvline(digits["best_t"], color="grey", lw=0.8, ls="--", label="T chosen on validation")
    ax1.set_xscale("log")
    ax1.set_xlabel("temperature T")
    ax1.set_ylabel("accuracy")
    ax1.set_title(f"Digits: temperature sweep (alpha={scale.alpha} on the soft term, "
                  f"{scale.seeds} seed(s))")
    ax1.legend(fontsize=8)

    names = ["teacher", "scratch", "distilled"]
    errors = [(1 - digits["acc"][n]) * 10_000 for n in names]
    hinton = [HINTON["teacher"], HINTON["student"], HINTON["distilled"]]
    x = np.arange(3)
    ax2.bar(x - 0.2, errors, 0.4, label="ours (digits, 500 test images)")
    ax2.bar(x + 0.2, hinton, 0.4, label="Hinton et al. (MNIST)")
    ax2.set_xticks(x, ["teacher", "student alone", "distilled student"])
    ax2.set_ylabel("test errors per 10,000")
    p, t = digits["params"]["teacher"], digits["params"]["student"]
    speed = digits["times"]["teacher"] / digits["times"]["student"]
    ax2.set_title(f"Teacher {p:,} vs student {t:,} parameters, student {speed:.1f}x faster")
    ax2.legend()
    fig.tight_layout()
    rel = ctx.save_figure(fig, "distillation_digits")
    return rel


def plot_lm(lm: dict, scale: Scale, ctx: Context) -> str:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.6))
    labels = {"teacher": "teacher", "scratch": "student alone"}
    for name, history in lm["curves"].items():
        ax1.plot(history.eval_steps, history.eval_losses, "o-",
                 label=labels.get(name, f"distilled student ({name})"))
    curve_tokens = max(1, scale.lm_eval_batches // 4) * 16 * scale.lm_seq
    ax1.set_xlabel("training step")
    ax1.set_ylabel(f"validation loss, first {curve_tokens:,} tokens (nats/byte)")
    ax1.set_title("Language model on the shipped corpus: training curves")
    ax1.legend()
    names = ["teacher", "scratch", "distilled"]
    ppl = [math.exp(lm["loss"][n]) for n in names]
    bars = ax2.bar(["teacher", "student alone", f"distilled ({lm['best']})"], ppl,
                   color=["C0", "C1", "C2"])
    for bar, value in zip(bars, ppl, strict=True):
        ax2.text(bar.get_x() + bar.get_width() / 2, value, f"{value:.2f}", ha="center",
                 va="bottom")
    ax2.set_ylabel(f"perplexity per byte, {scale.lm_eval_batches * 16 * scale.lm_seq:,} "
                   "held-out tokens")
    p, s = lm["params"]["teacher"], lm["params"]["student"]
    speed = lm["times"]["teacher"] / lm["times"]["student"]
    ax2.set_title(f"Teacher {p:,} vs student {s:,} parameters; student {speed:.1f}x faster",
                  fontsize=10)
    fig.tight_layout()
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
    fig_soft, mean_entropy = plot_soft_targets(digits, ctx)
    figures = [fig_soft, plot_digits(digits, scale, ctx), plot_lm(lm, scale, ctx)]

    acc, n_test = digits["acc"], len(digits["data"].y["test"])
    errors = {k: round((1 - v) * n_test, 1) for k, v in acc.items()}
    gain = acc["distilled"] - acc["scratch"]
    gap = acc["teacher"] - acc["scratch"]
    recovered = gain / gap if gap > 0 else math.nan
    retained = acc["distilled"] / acc["teacher"]
    d_ratio = digits["params"]["teacher"] / digits["params"]["student"]
    d_speed = digits["times"]["teacher"] / digits["times"]["student"]
    l_ratio = lm["params"]["teacher"] / lm["params"]["student"]
    l_speed = lm["times"]["teacher"] / lm["times"]["student"]
    l_gain = lm["loss"]["scratch"] - lm["loss"]["distilled"]
    hinton_recovered = (HINTON["student"] - HINTON["distilled"]) / (
        HINTON["student"] - HINTON["teacher"])

    metrics: dict[str, float | str] = {
        "threads": torch.get_num_threads(),
        "digits_seconds": digits_seconds, "lm_seconds": lm_seconds,
        **{f"entropy_T{t:g}": v for t, v in mean_entropy.items()},
        "digits_teacher_acc": acc["teacher"], "digits_scratch_acc": acc["scratch"],
        "digits_distilled_acc": acc["distilled"], "digits_best_T": digits["best_t"],
        **{f"digits_kd_acc_T{t:g}": statistics.mean(v) for t, v in digits["kd_test"].items()},
        "digits_test_size": n_test,
        "digits_errors_teacher": errors["teacher"], "digits_errors_scratch": errors["scratch"],
        "digits_errors_distilled": errors["distilled"],
        "digits_gain": gain, "digits_gap_recovered": recovered,
        "digits_gain_per_seed": str([round(v, 4) for v in digits["paired"]]),
        "digits_retained": retained, "digits_param_ratio": d_ratio, "digits_speedup": d_speed,
        "digits_teacher_params": digits["params"]["teacher"],
        "digits_student_params": digits["params"]["student"],
        "hinton_gap_recovered": hinton_recovered,
        "lm_teacher_loss": lm["loss"]["teacher"], "lm_scratch_loss": lm["loss"]["scratch"],
        "lm_distilled_loss": lm["loss"]["distilled"], "lm_distilled_setting": lm["best"],
        "lm_teacher_ppl": math.exp(lm["loss"]["teacher"]),
        "lm_scratch_ppl": math.exp(lm["loss"]["scratch"]),
        "lm_distilled_ppl": math.exp(lm["loss"]["distilled"]),
        "lm_gain_nats": l_gain, "lm_param_ratio": l_ratio, "lm_speedup": l_speed,
        "lm_teacher_params": lm["params"]["teacher"], "lm_student_params": lm["params"]["student"],
    }
    checks = {
        "digits_kd_beats_scratch": gain >= MIN_ACC_GAIN,
        "digits_retains_teacher": retained >= MIN_RETAINED,
        "lm_kd_beats_scratch": l_gain >= MIN_LOSS_GAIN,
        "small_and_fast": min(d_ratio, l_ratio) >= MIN_PARAM_RATIO
        and min(d_speed, l_speed) >= MIN_SPEEDUP,
    }
    for k, v in checks.items():
        metrics[f"check_{k}"] = "holds" if v else "fails"
    held = sum(checks.values())
    verdict = verdict_of(checks)

    def tag(ok: bool) -> str:
        return "holds" if ok else "fails"

    evidence = (
        "Soft targets: mean entropy of the teacher's softmax "
        + ", ".join(f"{v:.2f}" for v in mean_entropy.values())
        + f" nats at T = {', '.join(f'{t:g}' for t in mean_entropy)} (uniform {math.log(10):.2f}). "
        f"Digits ({n_test} test images, {scale.seeds} seed(s)): CNN teacher {acc['teacher']:.3f} "
        f"({errors['teacher']:g} errors), MLP student alone {acc['scratch']:.3f} "
        f"({errors['scratch']:g}), distilled at T={digits['best_t']:g} (chosen on validation, "
        f"alpha {scale.alpha}) {acc['distilled']:.3f} ({errors['distilled']:g}): "
        f"{gain * 100:+.1f} points (need >= {MIN_ACC_GAIN * 100:g}) "
        f"[{tag(checks['digits_kd_beats_scratch'])}], {recovered:.0%} of the student-teacher "
        f"gap closed (Hinton et al. on MNIST: {HINTON['teacher']}/{HINTON['student']}/"
        f"{HINTON['distilled']} errors, {hinton_recovered:.0%}); the distilled student keeps "
        f"{retained:.1%} of the teacher's accuracy (need >= {MIN_RETAINED:.0%}) "
        f"[{tag(checks['digits_retains_teacher'])}] with {d_ratio:.1f}x fewer parameters, "
        f"{d_speed:.1f}x faster. Language model (teacher {scale.lm_teacher_steps} steps, "
        f"students {scale.lm_steps}, alpha {scale.lm_alpha}): teacher "
        f"{lm['loss']['teacher']:.3f} nats/byte (ppl {math.exp(lm['loss']['teacher']):.2f}), "
        f"student alone {lm['loss']['scratch']:.3f} "
        f"(ppl {math.exp(lm['loss']['scratch']):.2f}), {lm['best']} student "
        f"{lm['loss']['distilled']:.3f} (ppl {math.exp(lm['loss']['distilled']):.2f}): "
        f"{l_gain:+.3f} nats (need >= {MIN_LOSS_GAIN}) [{tag(checks['lm_kd_beats_scratch'])}]; "
        f"{l_ratio:.1f}x fewer parameters, {l_speed:.1f}x faster forward. Size and speed (need "
        f">= {MIN_PARAM_RATIO:g}x fewer parameters and >= {MIN_SPEEDUP:g}x speed-up for both "
        f"pairs) [{tag(checks['small_and_fast'])}]. {held}/{len(checks)} checks hold."
    )
    return Outcome(metrics=metrics, verdict=verdict, evidence=evidence, figures=figures)


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
)
