"""DL0044 -- multi-query and grouped-query attention: smaller KV cache, faster decoding.

Claim (Shazeer 2019, "Fast Transformer Decoding: One Write-Head is All You Need";
Ainslie et al. 2023, "GQA"): sharing each key/value head among a group of H / H_kv
query heads divides the KV cache -- 2 L H_kv D bytes-per-value per token, O(n h d) ->
O(n d) for MQA -- and the memory a decoding step reads by H / H_kv, so decoding at
long context gets faster, at a small cost in quality; a multi-head checkpoint converted
by mean-pooling its K/V heads recovers most of its quality with brief uptraining.
How much uptraining that takes here is read off the uptraining curve, scored every 5%
of the training steps up to ``uptrain_fraction``.

Four measurements on :class:`blocklab.models.TransformerLM`:

(a) cache bytes: ``model.make_cache(B, n).nbytes`` for MHA, GQA and MQA at each context
    n, against :func:`blocklab.cost.kv_cache_bytes`;
(b) decoding speed: median time of a decode step (one token per row, as
    ``generate`` runs it) after n cached positions, for each variant of one random
    model, interleaved, in process CPU time on one thread (so that other processes
    sharing the machine do not count); set against the bytes the step must read
    (:func:`blocklab.cost.decode_step_bytes`) over the copy bandwidth measured in the
    same run;
(c) quality: small byte-level LMs trained with each variant (same data, steps and
    seed; the FFN of GQA/MQA widened to match the MHA model's parameters, as Shazeer
    did), scored on the held-out split;
(d) conversion: the trained MHA model converted to GQA and MQA by mean-pooling
    (:func:`blocklab.models.convert.convert_kv_heads`), scored before uptraining and
    every 5% of the training steps during it (Ainslie et al. uptrain 5% of the
    pre-training steps with the pre-training recipe; here the same peak learning rate,
    up to ``uptrain_fraction``).

Everything runs on one thread: these ops are too small to gain from a second, and on
a shared machine other processes turn OpenMP spin-waits into noise.

Reference points: Shazeer 2019 (WMT14 EN-DE) 46 vs 3.8 us/token incremental greedy
decoding, MHA vs MQA, BLEU 26.7 vs 26.5; Ainslie et al. 2023 (T5-XXL) GQA-8 0.28 s per
sample at 47.1 average score, MHA 1.51 s at 47.2, MQA 0.24 s at 46.6.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from blocklab.cost.memory import decode_step_bytes, kv_cache_bytes  # noqa: E402
from blocklab.data import corpus_tokens  # noqa: E402
from blocklab.lab.base import (  # noqa: E402
    Context,
    Experiment,
    Outcome,
    torch_threads,
    verdict_of,
)
from blocklab.models import TransformerConfig, TransformerLM  # noqa: E402
from blocklab.models.convert import convert_kv_heads  # noqa: E402
from blocklab.train import evaluate_lm, train_lm  # noqa: E402


@dataclass(frozen=True)
class Scale:
    """How big each measurement is.

    Attributes:
        n_heads, kv_heads: H and the K/V head counts of the decoding models (H = MHA,
            1 = MQA).
        speed_d_model, speed_layers: the random models timed for decoding (byte vocab).
        speed_batch, contexts: rows decoded at once; cached positions n.
        speed_steps, speed_repeats: decode steps per timed call; timed calls (median).
        copy_mib: size of the tensor copied to measure the bandwidth.
        lm_kv_heads: K/V head counts of the LMs trained for quality, from their H (MHA)
            down to 1; fewer heads than the decoding models so MQA's one K/V head is
            not tiny (D = d_model / H).
        d_model, n_layers, seq_len, batch, steps, lr: the LMs trained for quality.
        eval_batches, eval_batch: held-out windows scored.
        uptrain_fraction: uptraining steps of a converted model / ``steps``; it is
            scored every ``UPTRAIN_EVAL_FRACTION`` of ``steps`` on the way.
        seeds: quality seeds (losses are averaged over them).
    """

    n_heads: int
    kv_heads: tuple[int, ...]
    speed_d_model: int
    speed_layers: int
    speed_batch: int
    contexts: tuple[int, ...]
    speed_steps: int
    speed_repeats: int
    copy_mib: int
    lm_kv_heads: tuple[int, ...]
    d_model: int
    n_layers: int
    seq_len: int
    batch: int
    steps: int
    lr: float
    eval_batches: int
    eval_batch: int
    uptrain_fraction: float
    seeds: int

    def __post_init__(self) -> None:
        for name in ("n_heads", "speed_d_model", "speed_layers", "speed_batch", "speed_steps",
                     "speed_repeats", "copy_mib", "d_model", "n_layers", "seq_len", "batch", "steps",
                     "eval_batches", "eval_batch", "seeds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.kv_heads[0] != self.n_heads or self.kv_heads[-1] != 1:
            raise ValueError(f"kv_heads ({self.kv_heads}) must run from n_heads "
                             f"({self.n_heads}, MHA) down to 1 (MQA)")
        bad = [g for g in self.kv_heads if self.n_heads % g]
        if bad:
            raise ValueError(f"kv_heads {bad} do not divide n_heads ({self.n_heads})")
        H = self.lm_kv_heads[0]
        if self.lm_kv_heads[-1] != 1 or any(H % g for g in self.lm_kv_heads):
            raise ValueError(f"lm_kv_heads ({self.lm_kv_heads}) must run from H down to 1, "
                             "each dividing H")
        if self.d_model % H:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by lm_kv_heads[0] "
                             f"({H})")
        if len(self.contexts) < 2:
            raise ValueError(f"contexts needs at least two lengths, got {self.contexts}")
        if not 0 < self.uptrain_fraction <= 1:
            raise ValueError(f"uptrain_fraction must be in (0, 1], got {self.uptrain_fraction}")

    @property
    def uptrain_steps(self) -> int:
        return max(1, round(self.uptrain_fraction * self.steps))

    @property
    def uptrain_eval_every(self) -> int:
        return max(1, round(UPTRAIN_EVAL_FRACTION * self.steps))


SCALES: dict[str, Scale] = {
    "quick": Scale(n_heads=8, kv_heads=(8, 2, 1), speed_d_model=256, speed_layers=2,
                   speed_batch=4, contexts=(256, 1024, 4096), speed_steps=4, speed_repeats=7,
                   copy_mib=128, lm_kv_heads=(4, 2, 1), d_model=64, n_layers=2, seq_len=64,
                   batch=16, steps=150, lr=3e-3, eval_batches=8, eval_batch=32,
                   uptrain_fraction=0.2, seeds=1),
    "full": Scale(n_heads=8, kv_heads=(8, 4, 2, 1), speed_d_model=512, speed_layers=4,
                  speed_batch=4, contexts=(512, 2048, 8192, 16384), speed_steps=8,
                  speed_repeats=7, copy_mib=256, lm_kv_heads=(8, 4, 2, 1), d_model=128,
                  n_layers=4, seq_len=128, batch=16, steps=800, lr=2e-3, eval_batches=32,
                  eval_batch=32, uptrain_fraction=0.2, seeds=2),
    # A seconds-long run for tests of the plumbing; its numbers mean little.
    "smoke": Scale(n_heads=4, kv_heads=(4, 2, 1), speed_d_model=32, speed_layers=1,
                   speed_batch=1, contexts=(8, 32), speed_steps=2, speed_repeats=2, copy_mib=8,
                   lm_kv_heads=(2, 1), d_model=16, n_layers=1, seq_len=16, batch=4, steps=4,
                   lr=3e-3, eval_batches=1, eval_batch=4, uptrain_fraction=0.5, seeds=1),
}

# Verdict thresholds.
MIN_DECODE_SPEEDUP = 1.3  # MQA decodes >= 1.3x faster than MHA at the longest context
MAX_QUALITY_GAP = 0.03  # MQA's held-out loss at most 3% above MHA's (relative)
MAX_CONVERTED_GAP = 0.03  # uptrained MQA at most 3% above its MHA source
UPTRAIN_EVAL_FRACTION = 0.05  # score the converted models every 5% of the training steps


def scale_for(ctx: Context) -> Scale:
    return SCALES["quick" if ctx.quick else "full"]


def kind(h_kv: int, n_heads: int) -> str:
    return "MHA" if h_kv == n_heads else "MQA" if h_kv == 1 else f"GQA-{h_kv}"


# ------------------------------------------------------------------ (a) cache bytes

def speed_config(scale: Scale, h_kv: int, max_seq_len: int) -> TransformerConfig:
    return TransformerConfig(vocab_size=256, d_model=scale.speed_d_model,
                             n_layers=scale.speed_layers, n_heads=scale.n_heads,
                             n_kv_heads=h_kv, max_seq_len=max_seq_len)


def speed_models(scale: Scale, ctx: Context) -> dict[int, TransformerLM]:
    """One random model per variant, the same seed for each."""
    top = max(scale.contexts) + scale.speed_steps
    models = {}
    for h_kv in scale.kv_heads:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.seed * 7 + 1)
            models[h_kv] = TransformerLM(speed_config(scale, h_kv, top)).to(ctx.device).eval()
    return models


def measure_cache(models: dict[int, TransformerLM], scale: Scale
                  ) -> dict[int, dict[int, tuple[int, int, int]]]:
    """{H_kv: {n: (KVCache.nbytes, bytes of its allocated storage, formula)}}, fp32."""
    out: dict[int, dict[int, tuple[int, int, int]]] = {}
    for h_kv, model in models.items():
        cfg = model.config
        out[h_kv] = {}
        for n in scale.contexts:
            cache = model.make_cache(scale.speed_batch, n, dtype=torch.float32)
            storage = cache.k.untyped_storage().nbytes() + cache.v.untyped_storage().nbytes()
            formula = kv_cache_bytes(n_layers=cfg.n_layers, n_kv_heads=h_kv,
                                     head_dim=cfg.dim_head, seq_len=n, batch=scale.speed_batch,
                                     dtype=torch.float32)
            out[h_kv][n] = (cache.nbytes, storage, formula)
            del cache
    return out


# ----------------------------------------------------------------- (b) decode speed

def clock(device: torch.device) -> float:
    """Seconds: the process's CPU time on CPU (with one thread, the time the work took
    on its core, whatever other processes share the machine); wall time after a
    synchronisation on CUDA."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return time.perf_counter()
    return time.process_time()


def copy_bandwidth(device: torch.device, mib: int = 128, repeats: int = 5) -> float:
    """Bytes read + written per second copying a large fp32 tensor (median)."""
    src = torch.rand(mib * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        start = clock(device)
        dst.copy_(src)
        times.append(clock(device) - start)
    return 2 * src.nbytes / statistics.median(times)


def measure_decode(models: dict[int, TransformerLM], scale: Scale, ctx: Context
                   ) -> dict[int, dict[int, float]]:
    """{H_kv: {n: seconds per decode step}} with n positions cached.

    The cache is filled once by its length index (its contents do not change the work
    of a step) and rewound to n before every timed call, so each call decodes the same
    ``speed_steps`` tokens after the same n positions. Variants are interleaved.
    """
    g = ctx.generator(11)
    tokens = torch.randint(0, 256, (scale.speed_batch, 1), generator=g).to(ctx.device)
    times: dict[int, dict[int, float]] = {h: {} for h in scale.kv_heads}
    for n in ctx.progress(scale.contexts, "mqa: decode speed", total=len(scale.contexts)):
        caches = {h: m.make_cache(scale.speed_batch, n + scale.speed_steps)
                  for h, m in models.items()}
        samples: dict[int, list[float]] = {h: [] for h in models}

        def decode(h: int, caches=caches, n=n) -> float:
            model, cache = models[h], caches[h]
            cache.length = n
            tok = tokens
            start = clock(ctx.device)
            for _ in range(scale.speed_steps):
                tok = model(tok, cache=cache)[:, -1].argmax(-1, keepdim=True)  # (B, 1)
            return (clock(ctx.device) - start) / scale.speed_steps

        with torch.inference_mode():
            for h in models:  # warm-up
                decode(h)
            for _ in range(scale.speed_repeats):
                for h in models:
                    samples[h].append(decode(h))
        for h in models:
            times[h][n] = statistics.median(samples[h])
        del caches
    return times


# ---------------------------------------------------------------------- (c) quality

def quality_config(scale: Scale, h_kv: int) -> TransformerConfig:
    """The LM with ``h_kv`` K/V heads, its SwiGLU widened to the MHA model's parameters."""
    H = scale.lm_kv_heads[0]
    base = TransformerConfig(vocab_size=256, d_model=scale.d_model, n_layers=scale.n_layers,
                             n_heads=H, max_seq_len=scale.seq_len)
    # Removed K/V weights 2 C (H - H_kv) D per layer, given back to the 3 C h SwiGLU.
    extra = round(2 * (H - h_kv) * base.dim_head / 3)
    return base.replace(n_kv_heads=h_kv, ffn_hidden_dim=base.hidden_dim + extra)


def train_quality(scale: Scale, h_kv: int, seed: int, ctx: Context,
                  tokens: tuple[torch.Tensor, torch.Tensor]) -> tuple[TransformerLM, float]:
    train, val = tokens
    run_seed = ctx.seed * 1000 + seed
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run_seed)
        model = TransformerLM(quality_config(scale, h_kv))
    label = f"mqa: train {kind(h_kv, scale.lm_kv_heads[0])} seed {seed}"
    train_lm(model, train, steps=scale.steps, batch_size=scale.batch, seq_len=scale.seq_len,
             lr=scale.lr, seed=run_seed, device=ctx.device,
             progress=lambda it, desc="", total=None: ctx.progress(it, label, total=total))
    return model, score(model, scale, ctx, val)


def score(model: TransformerLM, scale: Scale, ctx: Context, val: torch.Tensor) -> float:
    return evaluate_lm(model, val, batch_size=scale.eval_batch, seq_len=scale.seq_len,
                       max_batches=scale.eval_batches, device=ctx.device)


def uptrain(model: TransformerLM, scale: Scale, seed: int, ctx: Context,
            tokens: tuple[torch.Tensor, torch.Tensor]) -> dict[int, float]:
    """Uptrain a converted model in place; {step: held-out loss} every
    ``uptrain_eval_every`` steps and at the end (scored as the trained models are)."""
    steps = scale.uptrain_steps
    curve: dict[int, float] = {}

    def record(step: int, loss: float, m: torch.nn.Module) -> None:
        if step % scale.uptrain_eval_every == 0 or step == steps:
            curve[step] = score(model, scale, ctx, tokens[1])

    train_lm(model, tokens[0], steps=steps, batch_size=scale.batch, seq_len=scale.seq_len,
             lr=scale.lr, warmup=max(1, steps // 10), seed=ctx.seed * 1000 + seed + 500,
             device=ctx.device, callback=record)
    return curve


# --------------------------------------------------------------------------- figures

def plot_memory_speed(cache, times, bandwidth: float, step_bytes, scale: Scale,
                      ctx: Context) -> str:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    ns = np.array(scale.contexts)
    for i, h in enumerate(scale.kv_heads):
        c = f"C{i}"
        label = f"{kind(h, scale.n_heads)} ({h} K/V head{'s' if h > 1 else ''})"
        ax1.loglog(ns, [cache[h][n][2] / 2**20 for n in ns], "-", color=c, lw=1.2)
        ax1.loglog(ns, [cache[h][n][0] / 2**20 for n in ns], "o", color=c, label=label)
        rate = [scale.speed_batch / times[h][n] for n in ns]
        ax2.semilogx(ns, rate, "o-", color=c, label=f"{label}: measured")
        ceiling = [scale.speed_batch * bandwidth / step_bytes[h][n] for n in ns]
        ax2.semilogx(ns, ceiling, ":", color=c, lw=1)
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_xticks(list(ns), [str(n) for n in ns])
        ax.minorticks_off()
    ax1.set_xlabel("cached positions n")
    ax1.set_ylabel("KV cache, MiB")
    ax1.set_title(f"KV cache: allocated bytes (dots) = 2 L H_kv D n B x 4 (lines)\n"
                  f"L={scale.speed_layers}, H={scale.n_heads}, "
                  f"D={scale.speed_d_model // scale.n_heads}, B={scale.speed_batch}, fp32")
    ax1.legend(fontsize=8)
    ax2.set_yscale("log")
    ax2.set_xlabel("cached positions n")
    ax2.set_ylabel("decoded tokens per CPU-second (all rows)" if ctx.device.type == "cpu"
                   else "decoded tokens / s (all rows)")
    ax2.set_title(f"Decoding speed ({ctx.device.type}, 1 thread, batch {scale.speed_batch})\n"
                  f"dotted: bound = copy rate ({bandwidth / 1e9:.1f} GB/s, same run) / bytes "
                  f"a step reads")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    rel = ctx.save_figure(fig, "mqa_memory_speed")
    return rel


def plot_quality(losses: dict[str, float], curve: dict[int, dict[int, float]],
                 trained: dict[int, float], lm_heads: int, scale: Scale, ctx: Context) -> str:
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(15, 5), width_ratios=(1.4, 1))
    names = list(losses)
    colours = ["C0" if n.startswith("trained") else "C1" if "pooled" in n else "C2"
               for n in names]
    bars = ax.bar(range(len(names)), [losses[n] for n in names], color=colours)
    for b, n in zip(bars, names, strict=True):
        ax.text(b.get_x() + b.get_width() / 2, losses[n], f"{losses[n]:.3f}", ha="center",
                va="bottom", fontsize=9)
    ax.set_xticks(range(len(names)), [n.replace(": ", ":\n") for n in names], fontsize=8.5)
    reference = trained[lm_heads]
    ax.axhline(reference, color="grey", ls="--", lw=1, label="MHA trained from scratch")
    ax.legend(loc="upper left", fontsize=8)
    lo = min(losses.values())
    ax.set_ylim(lo - 0.15 * (max(losses.values()) - lo + 0.05), None)
    ax.set_ylabel("held-out loss (nats per byte)")
    ax.set_title(f"Byte-level LMs, C={scale.d_model}, H={lm_heads}: trained from scratch "
                 f"({scale.steps} steps, blue),\nthe MHA one converted by mean-pooling K/V "
                 f"heads (orange), then uptrained {scale.uptrain_steps} steps (green)",
                 fontsize=10)

    for i, (h, points) in enumerate(sorted(curve.items(), reverse=True)):
        steps = sorted(points)
        colour = f"C{i + 3}"
        ax2.plot([100 * s / scale.steps for s in steps], [points[s] for s in steps], "o-",
                 color=colour, label=f"{kind(h, lm_heads)} converted from MHA")
        ax2.axhline(trained[h], color=colour, ls=":", lw=1,
                    label=f"{kind(h, lm_heads)} trained from scratch")
    ax2.axhline(reference, color="C0", ls="--", lw=1.2, label="MHA source")
    ax2.axhspan(reference, reference * (1 + MAX_CONVERTED_GAP), color="C0", alpha=0.1,
                label=f"within {100 * MAX_CONVERTED_GAP:.0f}% of MHA")
    ax2.axvline(5, color="grey", ls=":", lw=1)
    ax2.text(5, ax2.get_ylim()[1], " Ainslie: 5%", va="top", fontsize=8, color="grey")
    ax2.set_xlabel("uptraining steps, % of the training steps")
    ax2.set_ylabel("held-out loss (nats per byte)")
    ax2.set_title(f"Uptraining after mean-pooling (peak lr {scale.lr:g})", fontsize=10)
    ax2.legend(fontsize=7.5)
    fig.tight_layout()
    rel = ctx.save_figure(fig, "mqa_quality")
    return rel


# ------------------------------------------------------------------------------- run

def run(ctx: Context) -> Outcome:
    scale = scale_for(ctx)
    H = scale.n_heads
    mha, mqa = scale.kv_heads[0], scale.kv_heads[-1]
    lm_heads = scale.lm_kv_heads
    LH = lm_heads[0]
    metrics: dict[str, float] = {}
    with torch_threads(1):
        models = speed_models(scale, ctx)
        cache = measure_cache(models, scale)
        bandwidth = copy_bandwidth(ctx.device, scale.copy_mib)
        times = measure_decode(models, scale, ctx)
        del models
        tokens = corpus_tokens()
        trained: dict[int, list[float]] = {h: [] for h in lm_heads}
        pooled: dict[int, list[float]] = {h: [] for h in lm_heads[1:]}
        curves: dict[int, list[dict[int, float]]] = {h: [] for h in lm_heads[1:]}
        for seed in range(scale.seeds):
            for h in lm_heads:
                model, loss = train_quality(scale, h, seed, ctx, tokens)
                trained[h].append(loss)
                if h == LH:
                    source = model
            for h in ctx.progress(lm_heads[1:], "mqa: convert and uptrain",
                                  total=len(lm_heads) - 1):
                converted = convert_kv_heads(source, h)
                pooled[h].append(score(converted, scale, ctx, tokens[1]))
                curves[h].append(uptrain(converted, scale, seed, ctx, tokens))

    # (a) cache
    cache_exact = all(m == a == f for per in cache.values() for m, a, f in per.values())
    n_top = max(scale.contexts)
    for h in scale.kv_heads:
        k = kind(h, H)
        for n in scale.contexts:
            metrics[f"cache_bytes_{k}_n{n}"] = cache[h][n][0]
        metrics[f"cache_bytes_per_token_{k}"] = cache[h][n_top][0] / (n_top * scale.speed_batch)
    cache_ratio = cache[mha][n_top][0] / cache[mqa][n_top][0]
    metrics["cache_ratio_mha_mqa"] = cache_ratio
    metrics["cache_measured_equals_formula"] = float(cache_exact)

    # (b) speed
    step_bytes = {h: {n: decode_step_bytes(speed_config(scale, h, n_top), context=n,
                                           batch=scale.speed_batch, dtype=torch.float32)["total"]
                      for n in scale.contexts} for h in scale.kv_heads}
    for h in scale.kv_heads:
        k = kind(h, H)
        for n in scale.contexts:
            metrics[f"decode_tok_s_{k}_n{n}"] = scale.speed_batch / times[h][n]
            metrics[f"read_gbps_{k}_n{n}"] = step_bytes[h][n] / times[h][n] / 1e9
    speedup = {n: times[mha][n] / times[mqa][n] for n in scale.contexts}
    for n, s in speedup.items():
        metrics[f"decode_speedup_mqa_n{n}"] = s
    metrics["copy_gbps"] = bandwidth / 1e9

    # (c), (d) quality
    mean = statistics.mean
    losses: dict[str, float] = {}
    params = {}
    for h in lm_heads:
        losses[f"trained: {kind(h, LH)}"] = mean(trained[h])
        metrics[f"val_loss_{kind(h, LH)}"] = mean(trained[h])
        with torch.device("meta"):
            params[h] = TransformerLM(quality_config(scale, h)).num_parameters()
        metrics[f"params_{kind(h, LH)}"] = params[h]
    for h in lm_heads[1:]:
        losses[f"pooled: {kind(h, LH)}"] = mean(pooled[h])
        metrics[f"val_loss_pooled_{kind(h, LH)}"] = mean(pooled[h])
    # Mean uptraining curve per variant: {step: loss}, step 0 = just converted.
    curve = {h: {0: mean(pooled[h]),
                 **{step: mean(c[step] for c in curves[h]) for step in curves[h][0]}}
             for h in lm_heads[1:]}
    final = scale.uptrain_steps
    for h in lm_heads[1:]:
        k = kind(h, LH)
        losses[f"uptrained: {k}"] = curve[h][final]
        metrics[f"val_loss_uptrained_{k}"] = curve[h][final]
        for step, loss in curve[h].items():
            if step:
                metrics[f"val_loss_uptrained_{k}_{100 * step / scale.steps:.0f}pct"] = loss
    base = mean(trained[LH])
    quality_gap = mean(trained[1]) / base - 1
    converted_gap = curve[1][final] / base - 1
    recovered = curve[1][0] - curve[1][final]
    damage_recovered = recovered / (curve[1][0] - base) if curve[1][0] > base else 1.0
    within = next((step for step in sorted(curve[1]) if step
                   and curve[1][step] / base - 1 <= MAX_CONVERTED_GAP), None)
    first = min(step for step in curve[1] if step)
    metrics["damage_recovered_mqa"] = damage_recovered
    metrics["mqa_within_gap_pct"] = None if within is None else 100 * within / scale.steps
    param_spread = max(params.values()) / min(params.values()) - 1
    metrics["quality_gap_mqa"] = quality_gap
    metrics["converted_gap_mqa"] = converted_gap
    metrics["uptrain_recovery_mqa"] = recovered
    metrics["param_mismatch"] = param_spread

    figures = [plot_memory_speed(cache, times, bandwidth, step_bytes, scale, ctx),
               plot_quality(losses, curve, {h: mean(trained[h]) for h in lm_heads}, LH, scale,
                            ctx)]

    checks = {
        "cache": cache_exact and cache_ratio == H,
        "speed": speedup[n_top] >= MIN_DECODE_SPEEDUP,
        "quality": quality_gap <= MAX_QUALITY_GAP,
        "conversion": recovered > 0 and converted_gap <= MAX_CONVERTED_GAP,
    }
    held = sum(checks.values())
    verdict = verdict_of(checks)

    def mark(name: str) -> str:
        return "holds" if checks[name] else "fails"

    per_token = ", ".join(f"{kind(h, H)} {metrics[f'cache_bytes_per_token_{kind(h, H)}']:,.0f}"
                          for h in scale.kv_heads)
    speed_txt = "; ".join(
        f"n={n}: " + ", ".join(f"{kind(h, H)} {scale.speed_batch / times[h][n]:,.0f}"
                               for h in scale.kv_heads)
        for n in scale.contexts)
    gbps = ", ".join(f"{kind(h, H)} {metrics[f'read_gbps_{kind(h, H)}_n{n_top}']:.1f}"
                     for h in scale.kv_heads)
    evidence = (
        f"KV cache bytes per token (fp32, L={scale.speed_layers}, D="
        f"{scale.speed_d_model // H}): {per_token}; KVCache.nbytes and the bytes it allocated "
        f"equal 2 L H_kv D n B x 4 at every n and variant: {cache_exact}; "
        f"MHA/MQA = {cache_ratio:g} (H = {H}) "
        f"[{mark('cache')}]. "
        f"Decoding tokens per CPU-second (batch {scale.speed_batch}, one thread): {speed_txt}; "
        f"at n={n_top} "
        f"MQA is {speedup[n_top]:.2f}x MHA (need >= {MIN_DECODE_SPEEDUP}x), reading "
        f"{gbps} GB/s against a copy rate of {bandwidth / 1e9:.1f} GB/s [{mark('speed')}]. "
        f"Held-out loss of {scale.n_layers}-layer LMs (C={scale.d_model}, H={LH}, "
        f"{params[LH]:,} parameters, the others within {100 * param_spread:.1f}% through "
        f"their FFN) after {scale.steps} steps, mean of {scale.seeds} seed(s): "
        + ", ".join(f"{kind(h, LH)} {mean(trained[h]):.4f}" for h in lm_heads)
        + f"; MQA {100 * quality_gap:+.1f}% vs MHA (need <= {100 * MAX_QUALITY_GAP:.0f}%) "
        f"[{mark('quality')}]. "
        f"MHA converted by mean-pooling, then uptrained at the training lr: "
        + ", ".join(f"{kind(h, LH)} {curve[h][0]:.4f} -> {curve[h][first]:.4f} after "
                    f"{100 * first / scale.steps:.0f}% -> {curve[h][final]:.4f} after "
                    f"{100 * final / scale.steps:.0f}% of the training steps"
                    for h in lm_heads[1:])
        + f"; MQA recovers {100 * damage_recovered:.0f}% of what pooling lost and ends "
        f"{100 * converted_gap:+.1f}% vs its MHA source (need a recovery > 0 and <= "
        f"{100 * MAX_CONVERTED_GAP:.0f}%; "
        + (f"first within it after {100 * within / scale.steps:.0f}%" if within is not None
           else "not within it in this budget")
        + f") [{mark('conversion')}]. "
        f"{held}/{len(checks)} checks hold."
    )
    return Outcome(metrics=metrics, verdict=verdict, evidence=evidence, figures=figures)


EXPERIMENT = Experiment(
    id="mqa",
    card="DL0044",
    title="Multi-query and grouped-query attention",
    claim=(
        "Sharing key/value heads across query heads (MQA: one; GQA: groups) divides the KV "
        "cache and the bytes a decoding step reads by H / H_kv, so decoding at long context "
        "is faster, at a small cost in quality; a multi-head model converted by mean-pooling "
        "its K/V heads recovers with brief uptraining."
    ),
    run=run,
)
