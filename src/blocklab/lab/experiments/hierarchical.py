"""DL0041 -- hierarchical attention: as accurate as flat attention, cheaper on long
documents, and its attention points at the words and sentences that decide.

Claim (Yang et al. 2016, "Hierarchical Attention Networks for Document
Classification"; Chalkidis et al. 2022, HAT): encoding words within sentences and then
sentences within the document classifies documents at least as well as a flat model
over all the words, costs less as documents grow (attention over S sentences of W words
costs ~ S W^2 + S^2 instead of (S W)^2), and its two attention levels single out the
informative words and sentences.

Three models at comparable width, trained with the same steps, batches and optimiser:
``flat`` (one transformer over the document's words, attention pooling), ``han``
(BiGRU + attention at both levels) and ``hierarchical`` (HAT-style transformer:
within-segment layers, across-segment layers, back down). Every model runs on the same
``Scale.seeds`` repetition seeds (``ctx.seeds``); comparisons are paired by seed.
Checks, each on a 95% interval (thresholds are the module constants):

(a) accuracy, four counted checks: on each task, each hierarchical model's test
    accuracy minus flat's, per seed, must stay above -``MAX_ACC_DEFICIT``
    (non-inferiority). Tasks: the shipped real-text set (Python reference topics, 5
    classes, one fixed split: its seeds vary init and batch order) and the synthetic
    negation-majority set, whose label needs each negator matched to its own sentence
    (each seed draws its own documents). Each model is held to flat on its own -- no
    "better of the two", which would pick on the test set -- and accuracy is read once,
    after the last step, so there is no model selection needing a validation split;
(b) cost vs document length, two counted checks: documents of S sentences x W words
    with S doubling over at least four lengths, one training step (forward + backward)
    of each model timed in interleaved rounds (A B C A B C ..., one thread): the
    hierarchical transformer's speed-up over flat at the longest length, and the time
    growth exponent of flat minus that of the hierarchical model (one exponent per
    round, paired). Peak memory is shown, not checked: torch's memory-efficient
    attention kernel keeps flat attention's memory linear, so the claim is about time;
(c) where the attention goes, one counted check: on the synthetic test set, the share
    of HAN's sentence attention on the sentences holding a polar word divided by the
    share uniform attention would give them, per seed; and the figure: word- and
    sentence-level heat maps over real test documents and a synthetic one.

The card's numbered items -- each mapped to the checks that answer it, or to the reason
none is counted -- are ``CARD_ITEMS`` below; the report shows them item by item.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from blocklab.data.documents import (  # noqa: E402
    DocumentSet,
    build_vocab,
    encode_documents,
    load_documents,
    parse_document,
    synthetic_documents,
)
from blocklab.lab.base import CardItem, Context, Experiment, Outcome, torch_threads  # noqa: E402
from blocklab.lab.estimate import (  # noqa: E402
    Check,
    Timing,
    interleaved_timings,
    mean_ci,
    median_ci,
    paired_diff,
    slope_ci,
    speedup,
)
from blocklab.lab.measure import peak_memory_bytes  # noqa: E402
from blocklab.models.classifier import (  # noqa: E402
    CLASSIFIER_KINDS,
    DocumentClassifier,
    make_classifier,
)
from blocklab.train import train_classifier  # noqa: E402

POLAR_WORDS = frozenset(
    "good great excellent wonderful pleasant superb lovely delightful "
    "bad poor awful terrible unpleasant dreadful horrible mediocre".split()
)


@dataclass(frozen=True)
class Scale:
    """How big each measurement is.

    Attributes:
        n_synthetic, syn_sentences, syn_words: synthetic documents (count, S, W).
        real_sentences, real_words: S, W of the real documents (longer ones are cut).
        d_model, n_heads, n_layers: model width, heads, transformer layers.
        steps_synthetic, steps_real, batch, lr: training budget, the same for every model.
        seeds: repetitions per model and task (``ctx.seeds``), paired across models.
        cost_sentences, cost_words, cost_batch, repeats: the cost sweep's documents
            (at least four S values, W) and batch; ``repeats`` interleaved rounds of
            timed steps after a warm-up.
    """

    n_synthetic: int
    syn_sentences: int
    syn_words: int
    real_sentences: int
    real_words: int
    d_model: int
    n_heads: int
    n_layers: int
    steps_synthetic: int
    steps_real: int
    batch: int
    lr: float
    seeds: int
    cost_sentences: tuple[int, ...]
    cost_words: int
    cost_batch: int
    repeats: int

    def __post_init__(self) -> None:
        for name in ("n_synthetic", "syn_sentences", "syn_words", "real_sentences",
                     "real_words", "d_model", "n_heads", "n_layers", "steps_synthetic",
                     "steps_real", "batch", "seeds", "cost_words", "cost_batch", "repeats"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if len(self.cost_sentences) < 4:
            raise ValueError(
                f"cost_sentences needs at least four values for a slope, got {self.cost_sentences}"
            )
        if self.seeds < 2 or self.repeats < 2:
            raise ValueError(f"seeds ({self.seeds}) and repeats ({self.repeats}) must be >= 2 "
                             "for an interval")
        if self.syn_sentences < 8:
            raise ValueError(f"syn_sentences ({self.syn_sentences}) must be >= 8 "
                             "(synthetic documents have up to 8 sentences)")


SCALES: dict[str, Scale] = {
    # 4 seeds x 2 tasks x 3 models = 24 runs of ~2 s of one core (57 s of CPU with the
    # cost sweep, over the 40 s aim: fewer seeds flip the verdict): shorter real
    # documents (12 x 16 words instead of 16 x 24) and fewer steps buy the repetitions
    # (at 3 seeds the t-interval is too wide to tell a 12-point deficit from a tie).
    "quick": Scale(n_synthetic=2000, syn_sentences=8, syn_words=12, real_sentences=12,
                   real_words=16, d_model=32, n_heads=4, n_layers=1, steps_synthetic=120,
                   steps_real=60, batch=32, lr=1e-2, seeds=4,
                   cost_sentences=(4, 8, 16, 32, 64), cost_words=32, cost_batch=4, repeats=4),
    # ~7 minutes on one core (estimated from the quick runs by scaling the work): 30
    # runs of ~15 s, and the cost sweep to 4096 words.
    "full": Scale(n_synthetic=4000, syn_sentences=8, syn_words=12, real_sentences=16,
                  real_words=24, d_model=64, n_heads=4, n_layers=1, steps_synthetic=300,
                  steps_real=150, batch=32, lr=5e-3, seeds=5,
                  cost_sentences=(4, 8, 16, 32, 64, 128), cost_words=32, cost_batch=4,
                  repeats=5),
    # A seconds-long run for tests of the plumbing; its numbers mean little.
    "smoke": Scale(n_synthetic=120, syn_sentences=8, syn_words=12, real_sentences=6,
                   real_words=10, d_model=16, n_heads=2, n_layers=1, steps_synthetic=3,
                   steps_real=3, batch=16, lr=1e-2, seeds=2, cost_sentences=(1, 2, 4, 8),
                   cost_words=8, cost_batch=2, repeats=2),
}

REAL_WORDS_PER_DOC = 100  # ~400 documents of ~9 sentences from the shipped reference
REAL_TEST_FRACTION = 0.25

TASKS = ("real", "synthetic")
HIERARCHICAL_KINDS = ("han", "hierarchical")  # each is held to the flat baseline

# Thresholds.
# "At least as well" is non-inferiority: a hierarchical model may trail flat by less
# than 2 points -- below the 2-4 points by which HAN beat its flat baselines (Yang et
# al. 2016), and four times the 0.5-point gap a reproduction measured, so a bigger loss
# is a real one. The margin is on the mean over seeds of the paired difference; it is
# no longer widened by the test set's binomial error.
MAX_ACC_DEFICIT = 0.02
ACC_WHY = "non-inferiority: trail flat by less than 2 points"
# Cheaper: 1.5x at the longest documents, about the 40-45% HAT reports against
# Longformer at 4096 tokens (flat full attention should be the easier peer).
MIN_SPEEDUP = 1.5
SPEEDUP_WHY = "about HAT's 40-45% gain over Longformer at 4096 tokens"
# "Costs less as documents grow": the time exponent of the hierarchical model must be
# below the flat one's; the claim is a direction, so the line is equal growth.
MIN_EXPONENT_GAP = 0.0
EXPONENT_WHY = "hierarchical time must grow slower than flat; the line is equal growth"
# Attention that "singles out" the deciding sentences: at least twice the share that
# uniform attention would put on them.
MIN_ATTENTION_LIFT = 2.0
LIFT_WHY = "at least twice the uniform share on the sentences holding a polar word"


def scale_for(ctx: Context) -> Scale:
    return SCALES["quick" if ctx.quick else "full"]


# --------------------------------------------------------------------------- (a) data

def synthetic_set(scale: Scale, seed: int) -> DocumentSet:
    """The synthetic task, split 80/20 (the documents are i.i.d.)."""
    texts, labels, names = synthetic_documents(scale.n_synthetic, seed=seed)
    docs = [parse_document(t) for t in texts]
    n_train = int(0.8 * len(docs))
    vocab = build_vocab(docs[:n_train])
    kw = dict(max_sentences=scale.syn_sentences, max_words=scale.syn_words)
    y = torch.tensor(labels)
    return DocumentSet(
        train_x=encode_documents(docs[:n_train], vocab, **kw), train_y=y[:n_train],
        test_x=encode_documents(docs[n_train:], vocab, **kw), test_y=y[n_train:],
        vocab=vocab, label_names=names, name="synthetic negation-majority",
        test_texts=docs[n_train:],
    )


def train_one(kind: str, data: DocumentSet, steps: int, seed: int, scale: Scale,
              ctx: Context) -> tuple[DocumentClassifier, float]:
    """(model, test accuracy at the end of training) from repetition seed ``seed``.

    The accuracy is read once, after the last step: nothing is selected on the test
    set (no early stopping, no best-of), so no validation split is needed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 7919 + 1)
        model = make_classifier(kind, vocab_size=data.vocab_size, n_classes=data.n_classes,
                                d_model=scale.d_model, n_heads=scale.n_heads,
                                n_layers=scale.n_layers)
    with torch_threads(1):
        history = train_classifier(
            model, data.train_x, data.train_y, steps=steps, batch_size=scale.batch,
            lr=scale.lr, warmup=max(1, steps // 20), seed=seed * 31 + 1,
            device=ctx.device, eval_x=data.test_x, eval_y=data.test_y,
        )
    return model.cpu().eval(), history.eval_accuracies[-1]


# ---------------------------------------------------------------------- (b) cost

def measure_cost(scale: Scale, ctx: Context) -> dict[str, dict[int, dict]]:
    """Per document length L = S W: interleaved timings of one training step of each
    model ({"timings": {L: {kind: Timing}}}) and its peak memory ({"mem": {L: {kind:
    bytes}}})."""
    res: dict[str, dict[int, dict]] = {"timings": {}, "mem": {}}
    g = ctx.generator(5)
    W = scale.cost_words
    for S in ctx.progress(scale.cost_sentences, "hierarchical: cost",
                          total=len(scale.cost_sentences)):
        x = torch.randint(2, 1000, (scale.cost_batch, S, W), generator=g).to(ctx.device)
        y = torch.randint(0, 2, (scale.cost_batch,), generator=g).to(ctx.device)
        models = {}
        for kind in CLASSIFIER_KINDS:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(ctx.seed)
                models[kind] = make_classifier(kind, vocab_size=1000, n_classes=2,
                                               d_model=scale.d_model, n_heads=scale.n_heads,
                                               n_layers=scale.n_layers).to(ctx.device)

        def step(model: DocumentClassifier, x: torch.Tensor = x, y: torch.Tensor = y) -> None:
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x).logits, y).backward()

        with torch_threads(1):
            res["mem"][S * W] = {kind: peak_memory_bytes(lambda m=m: step(m), ctx.device)
                                 for kind, m in models.items()}
            res["timings"][S * W] = interleaved_timings(
                {kind: (lambda m=m: step(m)) for kind, m in models.items()},
                repeats=scale.repeats, device=ctx.device)
    return res


def time_exponents(timings: dict[int, dict[str, Timing]], kind: str) -> list[float]:
    """One growth exponent per interleaved round: the slope of log time on log L over
    the lengths, round i of every length taken together (for paired comparisons)."""
    lengths = sorted(timings)
    rounds = len(timings[lengths[0]][kind].seconds)
    return [slope_ci(lengths, [timings[n][kind].seconds[i] for n in lengths]).value
            for i in range(rounds)]


# ------------------------------------------------------------------ (c) attention

@torch.no_grad()
def polar_shares(model: DocumentClassifier, data: DocumentSet
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per synthetic test document: the sentence attention on sentences with a polar
    word, the share uniform attention would give them, and whether the prediction is right."""
    out = model(data.test_x)
    polar_id = {i for i, w in enumerate(data.vocab) if w in POLAR_WORDS}
    is_polar = torch.zeros(data.test_x.shape[:2], dtype=torch.bool)
    for i in polar_id:
        is_polar |= (data.test_x == i).any(-1)
    real = (data.test_x != 0).any(-1)
    share = (out.sentence_weights * is_polar).sum(-1)
    uniform = is_polar.sum(-1) / real.sum(-1).clamp_min(1)
    return share, uniform, out.logits.argmax(-1) == data.test_y


def _draw_document(ax: plt.Axes, words: list[list[str]], word_w: np.ndarray,
                   sent_w: np.ndarray, title: str, max_cols: int) -> None:
    """One document: a sentence-weight column, then the words tinted by weight."""
    S = len(words)
    cols = min(max(len(s) for s in words), max_cols)
    # Yang et al.'s display: word weight scaled by sqrt(sentence weight).
    tint = np.zeros((S, cols))
    for i, sentence in enumerate(words):
        n = min(len(sentence), cols)
        tint[i, :n] = word_w[i, :n] * math.sqrt(sent_w[i])
    tint /= max(tint.max(), 1e-12)
    ax.imshow(np.ones((S, 1)) * 0, extent=(-1.6, -0.6, S - 0.5, -0.5), cmap="Greys", vmin=0,
              vmax=1)
    ax.imshow(sent_w[:, None], extent=(-1.6, -0.6, S - 0.5, -0.5), cmap="Reds", vmin=0,
              vmax=max(sent_w.max(), 1e-12), aspect="auto")
    ax.imshow(tint, extent=(-0.5, cols - 0.5, S - 0.5, -0.5), cmap="Blues", vmin=0, vmax=1,
              aspect="auto")
    for i, sentence in enumerate(words):
        ax.text(-1.1, i, f"{sent_w[i]:.2f}", ha="center", va="center", fontsize=8)
        for j, word in enumerate(sentence[:cols]):
            ax.text(j, i, word[:9], ha="center", va="center", fontsize=8,
                    color="white" if tint[i, j] > 0.6 else "black")
    ax.set_xlim(-1.6, cols - 0.5)
    ax.set_ylim(S - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks(range(S), [f"s{i + 1}" for i in range(S)], fontsize=8)
    ax.set_title(title, fontsize=9)


def plot_heat_maps(examples: list[tuple[str, DocumentClassifier, DocumentSet, int]],
                   ctx: Context) -> str:
    """examples: (title, model, data, test index)."""
    max_cols = 14
    heights = []
    for _, _, data, i in examples:
        heights.append(len(data.decode(data.test_x[i])) + 1.5)
    fig, axes = plt.subplots(len(examples), 1, figsize=(10, 0.34 * sum(heights) + 1.2),
                             height_ratios=heights, layout="constrained")
    axes = np.atleast_1d(axes)
    for ax, (title, model, data, i) in zip(axes, examples, strict=True):
        with torch.no_grad():
            out = model(data.test_x[i:i + 1])
        words = data.decode(data.test_x[i])
        S = len(words)
        pred = data.label_names[int(out.logits.argmax(-1))]
        true = data.label_names[int(data.test_y[i])]
        _draw_document(ax, words, out.word_weights[0, :S].numpy(),
                       out.sentence_weights[0, :S].numpy(),
                       textwrap.shorten(f"{title} -- label {true!r}, predicted {pred!r}", 120),
                       max_cols)
    fig.suptitle("HAN attention: sentence weight (red column) and word weight x "
                 f"sqrt(sentence weight) (blue);\nfirst {max_cols} words of each sentence",
                 fontsize=10)
    rel = ctx.save_figure(fig, "hierarchical_attention")
    return rel


def plot_cost_accuracy(acc: dict[tuple[str, str], list[float]], metrics: dict,
                       lengths: list[int], scale: Scale, ctx: Context) -> str:
    """Accuracy bars (mean, 95% interval, seeds as dots); time per step (median and its
    interval) and peak memory against document length."""
    # Accuracy across the top; time and memory side by side below.
    fig, axd = plt.subplot_mosaic([["acc", "acc"], ["time", "mem"]], figsize=(10, 8.4),
                                  layout="constrained")
    axes = [axd["acc"], axd["time"], axd["mem"]]
    ax = axes[0]
    x = np.arange(len(TASKS))
    for i, kind in enumerate(CLASSIFIER_KINDS):
        est = [metrics[f"acc_{t}_{kind}"] for t in TASKS]
        err = [[e.value - max(e.low, 0.0) for e in est],
               [min(e.high, 1.0) - e.value for e in est]]
        pos = x + (i - 1) * 0.27
        bars = ax.bar(pos, [e.value for e in est], 0.27, yerr=err, capsize=4, label=kind)
        for j, t in enumerate(TASKS):
            ax.plot([pos[j]] * len(acc[(t, kind)]), acc[(t, kind)], "k.", ms=4)
        for b, e in zip(bars, est, strict=True):
            ax.text(b.get_x() + b.get_width() / 2, min(e.high, 1.0), f"{e.value:.2f}",
                    ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, TASKS)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel(f"test accuracy ({scale.seeds} seeds: mean, 95% interval)")
    ax.set_title("Accuracy at equal training budget")
    ax.legend(loc="upper right", ncol=len(CLASSIFIER_KINDS), fontsize=9)  # in the headroom
    for kind, style in zip(CLASSIFIER_KINDS, ("o-", "s-", "^-"), strict=True):
        est = [metrics[f"ms_{kind}_L{n}"] for n in lengths]
        err = [[e.value - e.low for e in est], [e.high - e.value for e in est]]
        axes[1].errorbar(lengths, [e.value for e in est], yerr=err, fmt=style, capsize=3,
                         label=f"{kind} (exponent {metrics[f'time_slope_{kind}'].text('.2f')})")
        mem = [metrics[f"mem_{kind}_L{n}"] / 2**20 for n in lengths]
        if all(m > 0 for m in mem):
            axes[2].plot(lengths, mem, style, label=f"{kind} (slope {slope_ci(lengths, mem).value:.2f})")
    for ax, label in ((axes[1], "ms per training step (1 thread):\nmedian, interval"),
                      (axes[2], "peak memory of a step\n(MiB; one count, exact)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_xlabel(f"document length S x W\n(W = {scale.cost_words} words per sentence)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[1].set_title(f"Time vs length, batch {scale.cost_batch}, d={scale.d_model},\n"
                      f"{scale.repeats} interleaved rounds", fontsize=10)
    axes[2].set_title("Memory vs length")
    return ctx.save_figure(fig, "hierarchical_cost_accuracy")


# --------------------------------------------------------------------------------- run

def run(ctx: Context) -> Outcome:
    scale = scale_for(ctx)
    metrics: dict[str, object] = {}
    seeds = ctx.seeds(scale.seeds)

    # The real set is one fixed split (the seeds vary init and batch order); each seed
    # draws its own synthetic documents, so that task's interval holds the data's noise.
    real = load_documents("reference", max_sentences=scale.real_sentences,
                          max_words=scale.real_words, words_per_doc=REAL_WORDS_PER_DOC,
                          test_fraction=REAL_TEST_FRACTION)
    data = {("real", s): real for s in seeds}
    data |= {("synthetic", s): synthetic_set(scale, s) for s in seeds}
    steps = {"real": scale.steps_real, "synthetic": scale.steps_synthetic}
    acc: dict[tuple[str, str], list[float]] = {}
    lifts: list[float] = []
    han: dict[str, DocumentClassifier] = {}
    jobs = [(t, kind, s) for s in seeds for t in TASKS for kind in CLASSIFIER_KINDS]
    for task, kind, seed in ctx.progress(jobs, "hierarchical: training", total=len(jobs)):
        d = data[(task, seed)]
        model, accuracy = train_one(kind, d, steps[task], seed, scale, ctx)
        acc.setdefault((task, kind), []).append(accuracy)
        metrics[f"params_{task}_{kind}"] = sum(p.numel() for p in model.parameters())
        if kind == "han" and task == "synthetic":
            shares, uniforms, _ = polar_shares(model, d)
            lifts.append(shares.mean().item() / max(uniforms.mean().item(), 1e-12))
        if kind == "han" and seed == seeds[0]:
            han[task] = model

    checks: list[Check] = []
    for task in TASKS:
        d = data[(task, seeds[0])]
        counts = torch.bincount(d.test_y, minlength=d.n_classes)
        metrics[f"majority_baseline_{task}"] = (counts.max() / counts.sum()).item()
        metrics[f"n_train_{task}"] = len(d.train_y)
        metrics[f"n_test_{task}"] = len(d.test_y)
        for kind in CLASSIFIER_KINDS:
            metrics[f"acc_{task}_{kind}"] = mean_ci(acc[(task, kind)])
        for kind in HIERARCHICAL_KINDS:
            diff = paired_diff(acc[(task, kind)], acc[(task, "flat")])
            metrics[f"{kind}_minus_flat_{task}"] = diff
            checks.append(Check(f"accuracy {task}: {kind} minus flat", diff, ">=",
                                -MAX_ACC_DEFICIT, why=ACC_WHY))

    cost = measure_cost(scale, ctx)
    lengths = sorted(cost["timings"])
    L = lengths[-1]
    for n in lengths:
        for kind in CLASSIFIER_KINDS:
            metrics[f"ms_{kind}_L{n}"] = median_ci([t * 1e3 for t in cost["timings"][n][kind].seconds])
            metrics[f"mem_{kind}_L{n}"] = cost["mem"][n][kind]
    exponents = {kind: time_exponents(cost["timings"], kind) for kind in CLASSIFIER_KINDS}
    for kind in CLASSIFIER_KINDS:
        xs = [n for n in lengths for _ in cost["timings"][n][kind].seconds]
        ys = [t for n in lengths for t in cost["timings"][n][kind].seconds]
        metrics[f"time_slope_{kind}"] = slope_ci(xs, ys)
    gap = paired_diff(exponents["flat"], exponents["hierarchical"])
    metrics["time_slope_gap_flat_minus_hierarchical"] = gap
    speed = speedup(cost["timings"][L], slow="flat", fast="hierarchical")
    metrics["speedup_hierarchical_vs_flat"] = speed
    metrics["speedup_han_vs_flat"] = speedup(cost["timings"][L], slow="flat", fast="han")
    mem = cost["mem"][L]
    mem_ratio = mem["hierarchical"] / mem["flat"] if mem["flat"] > 0 else math.nan
    metrics["memory_ratio_hierarchical_vs_flat"] = mem_ratio
    checks.append(Check(f"speed-up of hierarchical over flat at L={L}", speed, ">=",
                        MIN_SPEEDUP, why=SPEEDUP_WHY))
    checks.append(Check("time exponent: flat minus hierarchical", gap, ">=",
                        MIN_EXPONENT_GAP, why=EXPONENT_WHY))

    lift = mean_ci(lifts)
    metrics["han_polar_attention_lift"] = lift
    checks.append(Check("HAN sentence attention on polar sentences / uniform", lift, ">=",
                        MIN_ATTENTION_LIFT, why=LIFT_WHY))

    syn = data[("synthetic", seeds[0])]
    shares, uniforms, right = polar_shares(han["synthetic"], syn)
    metrics["han_polar_sentence_share"] = shares.mean().item()
    metrics["uniform_polar_sentence_share"] = uniforms.mean().item()
    # Heat-map documents: the first two real test documents HAN gets right with 4-10
    # sentences (readable), and a synthetic one.
    with torch.no_grad():
        pred_real = han["real"](real.test_x).logits.argmax(-1)
    picks = [i for i in range(len(real.test_y))
             if pred_real[i] == real.test_y[i] and 4 <= len(real.decode(real.test_x[i])) <= 10]
    picks = (picks or list(range(min(2, len(real.test_y)))))[:2]
    # The synthetic one: a correctly classified document with a negated polar sentence
    # whose polar-sentence share is nearest the median (a typical one, not the best).
    negated = [i for i, doc in enumerate(syn.test_texts) if right[i] and any(
        {"not", "never", "hardly"} & set(s) and POLAR_WORDS & set(s) for s in doc)] or [0]
    median = shares.median().item()
    negated = min(negated, key=lambda i: abs(shares[i].item() - median))
    examples = [(f"Real test document {i} ({real.name})", han["real"], real, i) for i in picks]
    examples.append((f"Synthetic test document {negated} (typical polar-sentence share)",
                     han["synthetic"], syn, negated))
    figures = [plot_heat_maps(examples, ctx), plot_cost_accuracy(acc, metrics, lengths, scale,
                                                                 ctx)]

    mib = 2**20
    acc_txt = "; ".join(
        f"{t} ({metrics[f'n_train_{t}']} train / {metrics[f'n_test_{t}']} test docs, "
        f"majority {metrics[f'majority_baseline_{t}']:.2f}): "
        + ", ".join(f"{k} {metrics[f'acc_{t}_{k}'].text('.3f')}" for k in CLASSIFIER_KINDS)
        for t in TASKS)
    evidence = (
        f"Test accuracy after the same training budget, mean [95% interval] over "
        f"{len(seeds)} seeds (paired by seed): {acc_txt}. "
        + " ".join(c.text("+.3f") + "." for c in checks[:2 * len(TASKS)])
        + f" A HAN reproduction found flat attention within 0.5 points of HAN on Yelp-scale "
        f"data, so ties on the real set are expected. One training step on "
        f"{scale.cost_batch} documents of L = S x {scale.cost_words} words, L = "
        f"{lengths[0]}..{L}, {scale.repeats} interleaved rounds: time exponents "
        + ", ".join(f"{k} {metrics[f'time_slope_{k}'].text('.2f')}" for k in CLASSIFIER_KINDS)
        + f"; at L={L} " + ", ".join(f"{k} {metrics[f'ms_{k}_L{L}'].text('.0f')} ms"
                                     for k in CLASSIFIER_KINDS)
        + f". {checks[-3].text('.2f')}; {checks[-2].text('.2f')}; HAT reports 40-45% faster "
        f"than Longformer at 4096. Peak memory at L={L} (not a check: torch's "
        f"memory-efficient kernel already keeps flat attention's memory linear, so the "
        f"hierarchy's saving is time): "
        + ", ".join(f"{k} {mem[k] / mib:.0f} MiB" for k in CLASSIFIER_KINDS)
        + f" (ratio {mem_ratio:.2f}). On the synthetic test sets HAN puts "
        f"{shares.mean().item():.0%} (first seed) of its sentence attention on the sentences "
        f"with a polar word, against {uniforms.mean().item():.0%} for uniform attention: "
        f"{checks[-1].text('.2f')}."
    )
    return Outcome(metrics=metrics, evidence=evidence, checks=checks, figures=figures)


# The card's items and the checks that answer them (the report's item-by-item table;
# the runner refuses a mapping that names a missing check or leaves a counted one out).
CARD_ITEMS = (
    CardItem("Encoding words within sentences, then sentences within the document, "
             "classifies documents at least as well as flat attention over all the words",
             ("accuracy *",)),
    CardItem("It costs less as documents grow (S W^2 + S^2 against (S W)^2)",
             ("speed-up of hierarchical over flat at *", "time exponent: flat minus hierarchical")),
    CardItem("... and needs less memory",
             untested="peak memory is in the metrics, not checked: torch's memory-efficient "
                      "kernel keeps flat attention linear in memory, so here the claim is "
                      "about time"),
    CardItem("Its two attention levels single out the informative words and sentences",
             ("HAN sentence attention on polar sentences / uniform",)),
)


EXPERIMENT = Experiment(
    id="hierarchical",
    card="DL0041",
    title="Hierarchical attention (HAN, hierarchical transformer)",
    claim=(
        "Attending over words within sentences and then over sentences classifies "
        "documents at least as well as a flat model over all words, costs less as "
        "documents grow, and its word- and sentence-level attention single out the parts "
        "of the document that decide the label."
    ),
    run=run,
    card_items=CARD_ITEMS,
    seconds={"quick": 57, "full": 420},  # quick measured (CPU s), full estimated
)
