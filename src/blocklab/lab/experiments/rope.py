"""DL0052 -- rotary positional embedding: relative position, long-term decay, and
length extrapolation measured honestly.

Claim (Su et al. 2021, "RoFormer", sections 3.3-3.4): rotating each query/key pair of
features by m * theta_i makes the attention score depend on positions only through
m - n, <R_m q, R_n k> = q^T R_(n-m) k; the score "decays" with the relative distance
(RoFormer's bound (1/(d/2)) sum_j |S_j|, S_j = sum_(i<j) exp(i (m-n) theta_i)); and the
model is flexible in sequence length, the property usually quoted as "RoPE
extrapolates well to sequences longer than the training length".

Three measurements:

(a) decay: RoFormer's bound, the mean score <R_m v, R_n v> of random vectors, the dot
    product of sinusoidal position vectors (Vaswani et al. 2017), and the mean
    q_m . k_n of the first layer of the trained RoPE and sinusoidal models, against
    m - n;
(b) the relative property: the largest change of <R_(s+D) q, R_s k> over shifts s up to
    10^6, for fixed q, k and distance D, with our fp32 and bf16 rotation -- and with
    fp32 angles (Hugging Face's recipe) for contrast;
(c) extrapolation: three small byte-level LMs trained at context L on the shipped
    corpus -- RoPE, fixed sinusoidal and learned absolute positions -- scored on the
    same validation tokens in windows of L, 2L, 4L, 8L. Then the RoPE model with
    linear (position interpolation), NTK, dynamic NTK and YaRN scaling at inference
    (factor = window / L), and after a short fine-tune at 4L with linear and YaRN
    scaling (factor 4), which is how both methods are meant to be used -- next to a
    fine-tune at 4L without scaling, the control that separates the method from the
    extra training.

Choices the claim leaves open: the learned model gets a table of 8L positions but
trains only at L, so rows L..8L-1 keep their random initialisation (that is what such
a model has there); the sinusoidal model's token embeddings start at unit scale, as
Vaswani's sqrt(d_model) scaling makes them, so the unit-amplitude position vectors do
not drown them. Training runs on one thread (tiny ops: faster, and the numbers do not
depend on the machine's thread count). How fast plain RoPE degrades past L depends on
how well the model is trained -- an under-trained model has less positional structure
to lose (at the quick scale: 4L/L ~1.2 after 200 steps, ~1.3-1.4 after 250, ~1.9 after
400) -- so the quick scale is a sketch and the full scale the reference.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from blocklab.data import corpus_tokens  # noqa: E402
from blocklab.lab.base import Context, Experiment, Outcome  # noqa: E402
from blocklab.models import TransformerConfig, TransformerLM  # noqa: E402
from blocklab.position import RopeScaling, RotaryEmbedding, sinusoidal_embedding  # noqa: E402
from blocklab.train import evaluate_lm, train_lm  # noqa: E402


@dataclass(frozen=True)
class Scale:
    """How big each measurement is.

    Attributes:
        d_model, n_layers, n_heads: the three LMs (byte vocabulary, SwiGLU, RMSNorm).
        context: training length L; evaluation at L, 2L, 4L, 8L.
        steps, batch, lr: training.
        eval_tokens: validation tokens scored at every window length (the same tokens).
        finetune_steps, finetune_factor: the short fine-tune at finetune_factor * L.
        decay_dim, decay_distance: head dim and largest distance of the decay curves.
        n_vectors: random vectors averaged in (a) and (b).
    """

    d_model: int
    n_layers: int
    n_heads: int
    context: int
    steps: int
    batch: int
    lr: float
    eval_tokens: int
    finetune_steps: int
    finetune_factor: int
    decay_dim: int
    decay_distance: int
    n_vectors: int


SCALES: dict[str, Scale] = {
    "quick": Scale(d_model=64, n_layers=2, n_heads=4, context=64, steps=250, batch=16, lr=3e-3,
                   eval_tokens=8192, finetune_steps=60, finetune_factor=4,
                   decay_dim=128, decay_distance=256, n_vectors=256),
    "full": Scale(d_model=128, n_layers=4, n_heads=4, context=128, steps=2000, batch=16,
                  lr=2e-3, eval_tokens=32768, finetune_steps=300, finetune_factor=4,
                  decay_dim=128, decay_distance=1024, n_vectors=1024),
    # A seconds-long run for tests of the plumbing; its numbers mean little.
    "smoke": Scale(d_model=16, n_layers=1, n_heads=2, context=8, steps=4, batch=4, lr=3e-3,
                   eval_tokens=512, finetune_steps=2, finetune_factor=2,
                   decay_dim=16, decay_distance=32, n_vectors=8),
}

EVAL_MULTIPLES = (1, 2, 4, 8)
# Verdict thresholds.
MAX_PPL_RATIO = 1.2  # "extrapolates well": ppl at 4L within 20% of ppl at L
MAX_REL_DEV_FP32 = 1e-4  # relative property, as a fraction of |q||k|
MAX_DECAY_RATIO = 0.5  # bound and mean score at the far end vs at distance 0
SHIFTS = (0, 10, 100, 1000, 10**4, 10**5, 10**6)


def scale_for(ctx: Context) -> Scale:
    return SCALES["quick" if ctx.quick else "full"]


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------------- (a) decay

def roformer_bound(distances: torch.Tensor, dim: int, base: float = 10000.0) -> torch.Tensor:
    """(1/(d/2)) sum_j |S_j|, S_j = sum_(i<j) exp(i r theta_i), for each distance r."""
    theta = base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angles = distances.double()[:, None] * theta  # (R, d/2)
    phase = torch.polar(torch.ones_like(angles), angles)
    partial = phase.cumsum(-1)  # S_1 .. S_(d/2)
    return partial.abs().sum(-1) / (dim // 2)


def random_self_score(distances: torch.Tensor, dim: int, n: int, g: torch.Generator
                      ) -> torch.Tensor:
    """Mean over n random unit-variance v of <R_(r) v, R_0 v> / dim, per distance r."""
    v = torch.randn(n, 1, 1, dim, generator=g, dtype=torch.float64)  # (n, 1, 1, d)
    rope = RotaryEmbedding(dim)
    rv, _ = rope(v.expand(n, 1, len(distances), dim), v.expand(n, 1, len(distances), dim),
                 distances)
    return (rv * v).sum(-1).mean(0)[0] / dim  # (R,)


def sinusoidal_score(distances: torch.Tensor, dim: int) -> torch.Tensor:
    """PE(r) . PE(0) / (dim/2) for Vaswani's sinusoidal position vectors."""
    pe = sinusoidal_embedding(distances, dim).double()
    return pe @ sinusoidal_embedding(torch.zeros(1, dtype=torch.long), dim).double()[0] / (dim // 2)


@torch.no_grad()
def trained_scores(model: TransformerLM, tokens: torch.Tensor, length: int, max_distance: int
                   ) -> torch.Tensor:
    """Mean q_m . k_n / sqrt(D) of the first layer over heads and windows, per m - n >= 0."""
    model.eval()
    attn = model.layers[0].attn
    H, H_kv, D = attn.n_heads, attn.n_kv_heads, attn.head_dim
    n_windows = min(32, (tokens.numel() - 1) // length)
    x = tokens[: n_windows * length].view(n_windows, length).to(model.embed.weight.device)
    h = model.embed(x)  # (W, T, C)
    if model.pos_embed is not None:
        h = model.pos_embed(h, torch.arange(length, device=h.device))
    q, k, _ = attn.wqkv(model.layers[0].attn_norm(h)).split((H * D, H_kv * D, H_kv * D), -1)
    q = q.view(n_windows, length, H, D).transpose(1, 2)  # (W, H, T, D)
    k = k.view(n_windows, length, H_kv, D).transpose(1, 2)
    if attn.rope is not None:
        q, k = attn.rope(q, k)
    k = k.repeat_interleave(H // H_kv, dim=1)
    scores = (q @ k.transpose(-1, -2)).mean((0, 1)) / math.sqrt(D)  # (T, T)
    out = torch.full((max_distance + 1,), float("nan"))
    for r in range(min(max_distance, length - 1) + 1):
        out[r] = scores.diagonal(-r).mean()
    return out


# ---------------------------------------------------------------------- (b) relative

def relative_deviation(dim: int, n: int, g: torch.Generator) -> dict[str, list[float]]:
    """Per shift s: max over n (q, k) pairs of |<R_(s+D) q, R_s k> - <R_D q, R_0 k>| / |q||k|,
    D = 7, for our fp32 and bf16 rotation and for fp32 angles (Hugging Face's recipe)."""
    q = torch.randn(n, 1, 1, dim, generator=g)
    k = torch.randn(n, 1, 1, dim, generator=g)
    norm = (q.double().norm(dim=-1) * k.double().norm(dim=-1)).squeeze()
    rope = RotaryEmbedding(dim)
    inv32 = 1.0 / (10000.0 ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))

    def score(kind: str, s: int) -> torch.Tensor:
        pos_q, pos_k = torch.tensor([s + 7]), torch.tensor([s])
        if kind == "hf_fp32_angles":
            def rot(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
                ang = p.float()[:, None] * inv32  # the angle itself rounded to fp32
                c, si = torch.cat((ang.cos(),) * 2, -1), torch.cat((ang.sin(),) * 2, -1)
                half = dim // 2
                return x * c + torch.cat((-x[..., half:], x[..., :half]), -1) * si
            rq, rk = rot(q, pos_q), rot(k, pos_k)
        else:
            dtype = torch.bfloat16 if kind == "bf16" else torch.float32
            rq, _ = rope(q.to(dtype), q.to(dtype), pos_q)
            _, rk = rope(k.to(dtype), k.to(dtype), pos_k)
        return (rq.double() * rk.double()).sum(-1).squeeze()

    out: dict[str, list[float]] = {}
    for kind in ("fp32", "bf16", "hf_fp32_angles"):
        ref = score(kind, 0)
        out[kind] = [float(((score(kind, s) - ref).abs() / norm).max()) for s in SHIFTS]
    return out


def far_rotation_error(n: int, g: torch.Generator, position: int = 10**6,
                       base: float = 5e5, dim: int = 128) -> dict[str, float]:
    """Largest |rotated - exact| element at a far position for unit-variance inputs:
    our fp32 rotation, and fp32 angles (Hugging Face's recipe); exact = float64."""
    x = torch.randn(n, 1, 1, dim, generator=g)
    pos = torch.tensor([position])
    rope = RotaryEmbedding(dim, base=base)
    exact, _ = RotaryEmbedding(dim, base=base)(x.double(), x.double(), pos)
    ours, _ = rope(x, x.clone(), pos)
    inv32 = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    ang = pos.float()[:, None] * inv32
    half = dim // 2
    c, si = torch.cat((ang.cos(),) * 2, -1), torch.cat((ang.sin(),) * 2, -1)
    hf = x * c + torch.cat((-x[..., half:], x[..., :half]), -1) * si
    return {"ours": float((ours.double() - exact).abs().max()),
            "hf_fp32_angles": float((hf.double() - exact).abs().max())}


# ------------------------------------------------------------------- (c) extrapolation

def _config(scale: Scale, position: str, **extra) -> TransformerConfig:
    return TransformerConfig(
        vocab_size=256, d_model=scale.d_model, n_layers=scale.n_layers, n_heads=scale.n_heads,
        position=position, max_seq_len=max(EVAL_MULTIPLES) * scale.context, **extra)


def _perplexity(model: TransformerLM, val: torch.Tensor, scale: Scale, multiple: int,
                ctx: Context) -> float:
    """Perplexity on the first eval_tokens validation tokens in windows of multiple * L:
    the same tokens at every window length."""
    return math.exp(evaluate_lm(model, val[: scale.eval_tokens + 1], batch_size=8,
                                seq_len=multiple * scale.context, device=ctx.device))


def _perplexities(model: TransformerLM, val: torch.Tensor, scale: Scale, ctx: Context
                  ) -> dict[int, float]:
    return {m: _perplexity(model, val, scale, m, ctx) for m in EVAL_MULTIPLES}


def _with_scaling(model: TransformerLM, scaling: RopeScaling | None) -> TransformerLM:
    """The same weights under another RoPE scaling rule."""
    out = TransformerLM(model.config.replace(rope_scaling=scaling))
    out.load_state_dict(model.state_dict())
    return out.to(model.embed.weight.device)


def train_models(scale: Scale, ctx: Context, train: torch.Tensor
                 ) -> dict[str, TransformerLM]:
    models = {}
    for i, position in enumerate(ctx.progress(("rope", "sinusoidal", "learned"),
                                              "rope: train LMs", total=3)):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.seed * 7919 + 1)
            model = TransformerLM(_config(scale, position))
            if position == "sinusoidal":
                torch.nn.init.normal_(model.embed.weight, std=1.0)
        train_lm(model, train, steps=scale.steps, batch_size=scale.batch,
                 seq_len=scale.context, lr=scale.lr, seed=ctx.seed + i, device=ctx.device)
        models[position] = model
    return models


def extrapolation(models: dict[str, TransformerLM], scale: Scale, ctx: Context,
                  train: torch.Tensor, val: torch.Tensor) -> dict[str, dict[int, float]]:
    """Perplexity per method and window multiple."""
    L = scale.context
    ppl = {name: _perplexities(m, val, scale, ctx) for name, m in models.items()}
    rope = models["rope"]
    kinds = {"linear": "rope+linear", "ntk": "rope+ntk", "dynamic_ntk": "rope+dynamic_ntk",
             "yarn": "rope+yarn"}
    for kind, name in ctx.progress(list(kinds.items()), "rope: scaling", total=len(kinds)):
        # The factor is the window's extension: no scaling at L itself.
        ppl[name] = {m: ppl["rope"][1] if m == 1 else _perplexity(
            _with_scaling(rope, RopeScaling(kind, float(m), L)), val, scale, m, ctx)
            for m in EVAL_MULTIPLES}
    s = scale.finetune_factor
    tunes = {"rope+linear_ft": RopeScaling("linear", float(s), L),
             "rope+yarn_ft": RopeScaling("yarn", float(s), L),
             "rope_ft": None}
    for i, (name, scaling) in enumerate(ctx.progress(list(tunes.items()), "rope: fine-tune",
                                                     total=len(tunes))):
        tuned = _with_scaling(rope, scaling)
        train_lm(tuned, train, steps=scale.finetune_steps, batch_size=max(1, scale.batch // s),
                 seq_len=s * L, lr=scale.lr / 3, warmup=0, seed=ctx.seed + 10 + i,
                 device=ctx.device)
        ppl[name] = _perplexities(tuned, val, scale, ctx)
    return ppl


# ----------------------------------------------------------------------------- figures

def plot_decay(distances: torch.Tensor, curves: dict[str, torch.Tensor],
               trained: dict[str, torch.Tensor], rel: dict[str, list[float]], scale: Scale,
               ctx: Context) -> str:
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4.4))
    r = distances.numpy()
    bound = curves["bound"]
    ax1.plot(r, (bound / bound[0]).numpy(), label="RoFormer bound (1/(d/2)) sum |S_j|, / value at 0")
    ax1.plot(r, curves["rope_random"].numpy(), label="RoPE: mean <R_r v, R_0 v>/d, random v")
    ax1.plot(r, curves["sinusoidal"].numpy(), "--",
             label="sinusoidal: PE(r).PE(0)/(d/2) (same sum of cosines)")
    ax1.axhline(0, color="grey", lw=0.6)
    ax1.set_xlabel("relative distance m - n")
    ax1.set_ylabel("normalised score")
    ax1.set_title(f"Long-term decay, d={scale.decay_dim}, base 10000")
    ax1.legend(fontsize=8)

    for name, curve in trained.items():
        valid = ~torch.isnan(curve)
        ax2.plot(torch.arange(len(curve))[valid].numpy(), curve[valid].numpy(), label=name)
    ax2.axhline(0, color="grey", lw=0.6)
    ax2.axvline(scale.context, color="grey", lw=0.8, ls=":")
    ax2.text(scale.context, ax2.get_ylim()[1], " L (longest distance trained)", va="top",
             fontsize=8)
    ax2.set_xlabel("relative distance m - n (causal)")
    ax2.set_ylabel("mean q_m . k_n / sqrt(D), layer 1")
    ax2.set_title(f"Trained LMs (L={scale.context}), validation text")
    ax2.legend(fontsize=8)

    labels = {"fp32": "ours, fp32", "bf16": "ours, bf16 in and out",
              "hf_fp32_angles": "fp32 angles (Hugging Face's recipe)"}
    for kind, devs in rel.items():  # s = 0 is the reference: deviation 0, not drawn
        ax3.plot(SHIFTS[1:], [max(d, 1e-12) for d in devs[1:]], "o-", label=labels[kind])
    ax3.set_xscale("log")
    ax3.set_yscale("log")
    ax3.set_xlabel("shift s (positions s+7 and s)")
    ax3.set_ylabel("max |score(s) - score(0)| / (|q||k|)")
    ax3.set_title("Relative property: <R_(s+7) q, R_s k> vs s")
    ax3.legend(fontsize=8)
    fig.tight_layout()
    rel_path = ctx.save_figure(fig, "rope_decay_relative")
    return rel_path


LABELS = {
    "rope": "RoPE", "sinusoidal": "sinusoidal (absolute)",
    "learned": "learned (absolute; rows past L untrained)",
    "rope+linear": "RoPE + linear (PI), inference", "rope+ntk": "RoPE + NTK, inference",
    "rope+dynamic_ntk": "RoPE + dynamic NTK, inference", "rope+yarn": "RoPE + YaRN, inference",
    "rope+linear_ft": "RoPE + linear (PI), fine-tuned", "rope+yarn_ft": "RoPE + YaRN, fine-tuned",
    "rope_ft": "RoPE fine-tuned, no scaling (control)",
}


def plot_extrapolation(ppl: dict[str, dict[int, float]], scale: Scale, ctx: Context) -> str:
    fig, ax = plt.subplots(figsize=(11, 5))
    styles = {"rope": ("C0", "-", "o"), "sinusoidal": ("C1", "-", "s"),
              "learned": ("C2", "-", "^")}
    for i, (name, row) in enumerate(ppl.items()):
        color, ls, marker = styles.get(name, (f"C{3 + i % 7}", "--", "."))
        if name.endswith("_ft"):
            ls = ":"
        xs = [m * scale.context for m in EVAL_MULTIPLES]
        ax.plot(xs, [row[m] for m in EVAL_MULTIPLES], ls=ls, marker=marker, color=color,
                label=LABELS.get(name, name))
    ax.axvline(scale.context, color="grey", lw=0.8, ls=":")
    ax.text(scale.context, ax.get_ylim()[1], " trained at L", va="top", fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("evaluation window (tokens)")
    ax.set_ylabel("validation perplexity (bytes)")
    ax.set_title(f"Length extrapolation, trained at L={scale.context}\nscaling factor = "
                 f"window / L at inference; {scale.finetune_factor} when fine-tuned "
                 f"({scale.finetune_steps} steps at {scale.finetune_factor}L)", fontsize=10)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    rel = ctx.save_figure(fig, "rope_extrapolation")
    return rel


# --------------------------------------------------------------------------------- run

def verdict_from(metrics: dict[str, float]) -> tuple[str, dict[str, bool], list[str]]:
    """(verdict, checks, the methods that keep ppl(4L) within MAX_PPL_RATIO of RoPE's ppl(L))."""
    checks = {
        "relative": metrics["rel_dev_fp32"] <= MAX_REL_DEV_FP32,
        "decay": metrics["bound_ratio"] <= MAX_DECAY_RATIO
        and metrics["random_score_ratio"] <= MAX_DECAY_RATIO,
        "extrapolation": metrics["ppl_ratio_4L_rope"] <= MAX_PPL_RATIO,
    }
    # Scaling applied at inference only (the fine-tuned variants are reported apart).
    fixes = sorted(name.removeprefix("ppl_ratio_4L_rope+") for name, value in metrics.items()
                   if name.startswith("ppl_ratio_4L_rope+") and not name.endswith("_ft")
                   and value <= MAX_PPL_RATIO)
    if all(checks.values()):
        verdict = "supported"
    elif checks["relative"] and checks["decay"]:
        verdict = "partly"
    else:
        verdict = "not supported"
    return verdict, checks, fixes


def run(ctx: Context) -> Outcome:
    scale = scale_for(ctx)
    metrics: dict[str, float] = {}
    L = scale.context
    with _one_thread():
        # (a) decay, theory and random vectors
        distances = torch.arange(scale.decay_distance + 1)
        curves = {
            "bound": roformer_bound(distances, scale.decay_dim),
            "rope_random": random_self_score(distances, scale.decay_dim, scale.n_vectors,
                                             ctx.generator(1)),
            "sinusoidal": sinusoidal_score(distances, scale.decay_dim),
        }
        tail = slice(3 * len(distances) // 4, None)  # the last quarter of the distances
        metrics["bound_ratio"] = float(curves["bound"][-1] / curves["bound"][0])
        metrics["random_score_ratio"] = float(curves["rope_random"][tail].abs().mean()
                                              / curves["rope_random"][0])
        metrics["sinusoidal_score_ratio"] = float(curves["sinusoidal"][tail].abs().mean()
                                                  / curves["sinusoidal"][0])

        # (b) relative property
        rel = relative_deviation(scale.decay_dim, scale.n_vectors, ctx.generator(2))
        metrics["rel_dev_fp32"] = max(rel["fp32"])
        metrics["rel_dev_bf16"] = max(rel["bf16"])
        metrics["rel_dev_hf_fp32_angles"] = max(rel["hf_fp32_angles"])
        far = far_rotation_error(scale.n_vectors, ctx.generator(3))
        metrics["far_error_fp32"] = far["ours"]
        metrics["far_error_hf_fp32_angles"] = far["hf_fp32_angles"]

        # (c) extrapolation
        train, val = corpus_tokens()
        models = train_models(scale, ctx, train)
        ppl = extrapolation(models, scale, ctx, train, val)
        trained = {f"{name} LM": trained_scores(models[name], val, 4 * L, 4 * L).cpu()
                   for name in ("rope", "sinusoidal")}
    for name, row in ppl.items():
        # Against the model's own ppl at L; every RoPE variant is the RoPE model at L.
        at_L = ppl[name][1] if name in ("sinusoidal", "learned") else ppl["rope"][1]
        for m, value in row.items():
            metrics[f"ppl_{name}_{m}L"] = value
        metrics[f"ppl_ratio_4L_{name}"] = row[4] / at_L
        metrics[f"ppl_ratio_8L_{name}"] = row[8] / at_L

    figures = [plot_decay(distances, curves, trained, rel, scale, ctx),
               plot_extrapolation(ppl, scale, ctx)]
    verdict, checks, fixes = verdict_from(metrics)
    held = sum(checks.values())

    def row(name: str) -> str:
        return ", ".join(f"{ppl[name][m]:.2f}" for m in EVAL_MULTIPLES)

    scaled = "; ".join(f"{kind} {ppl['rope+' + kind][4]:.2f} "
                       f"({metrics['ppl_ratio_4L_rope+' + kind]:.2f}x)"
                       for kind in ("linear", "ntk", "dynamic_ntk", "yarn"))
    s = scale.finetune_factor
    tuned = "; ".join(f"{label} {ppl[name][s]:.2f} at {s}L, {ppl[name][8]:.2f} at 8L"
                      for name, label in (("rope+linear_ft", "linear (PI)"),
                                          ("rope+yarn_ft", "YaRN"),
                                          ("rope_ft", "no scaling (control)")))
    evidence = (
        f"Relative property: <R_(s+7) q, R_s k> moves by at most "
        f"{metrics['rel_dev_fp32']:.1e} of |q||k| over shifts up to 1e6 in fp32 "
        f"(need <= {MAX_REL_DEV_FP32:g}), {metrics['rel_dev_bf16']:.1e} in bf16 (input "
        f"rounding), {metrics['rel_dev_hf_fp32_angles']:.1e} with fp32 angles as Hugging Face "
        f"computes them [{'holds' if checks['relative'] else 'fails'}]; at position 1e6, base "
        f"5e5, our fp32 rotation is off by {metrics['far_error_fp32']:.1e} per element, fp32 "
        f"angles by {metrics['far_error_hf_fp32_angles']:.2f}. "
        f"Decay (d={scale.decay_dim}): RoFormer's bound falls to {metrics['bound_ratio']:.2f} "
        f"of its value at distance 0 by distance {scale.decay_distance}, the mean score of "
        f"random vectors to {metrics['random_score_ratio']:.2f} over the last quarter "
        f"(sinusoidal PE.PE: {metrics['sinusoidal_score_ratio']:.2f}; need <= "
        f"{MAX_DECAY_RATIO}) [{'holds' if checks['decay'] else 'fails'}]; the trained "
        f"models' mean first-layer q.k does not decay smoothly (figure). "
        f"Extrapolation, validation perplexity at L, 2L, 4L, 8L (L={L}, {scale.steps} steps, "
        f"same {scale.eval_tokens} tokens at each length): RoPE {row('rope')}; sinusoidal "
        f"{row('sinusoidal')}; learned {row('learned')} (rows past L untrained). Plain RoPE at "
        f"4L is {metrics['ppl_ratio_4L_rope']:.2f}x its perplexity at L (need <= "
        f"{MAX_PPL_RATIO}) [{'holds' if checks['extrapolation'] else 'fails'}]; sinusoidal "
        f"{metrics['ppl_ratio_4L_sinusoidal']:.2f}x and learned "
        f"{metrics['ppl_ratio_4L_learned']:.2f}x of their own, from a worse start. "
        f"Scaling at inference only (factor = window / L), ppl at 4L and ratio to RoPE's at "
        f"L: {scaled}. After {scale.finetune_steps} fine-tuning steps at {s}L (factor {s}): "
        f"{tuned}. "
        + (f"What keeps RoPE within {MAX_PPL_RATIO}x at 4L without training: "
           f"{', '.join(fixes)}. " if fixes
           else f"No inference-time scaling kept RoPE within {MAX_PPL_RATIO}x at 4L. ")
        + f"{held}/{len(checks)} checks hold."
    )
    return Outcome(metrics=metrics, verdict=verdict, evidence=evidence, figures=figures)


EXPERIMENT = Experiment(
    id="rope",
    card="DL0052",
    title="Rotary positional embedding",
    claim=(
        "RoPE encodes relative position: <R_m q, R_n k> depends only on m - n and decays "
        "with the distance; and a model trained with it extrapolates well to sequences "
        "longer than its training length."
    ),
    run=run,
)
