"""RoPE on q and k together: ``RotaryEmbedding`` vs its peers, fp32.

Peers, each fed the same q, k (B, H, T, D) and its own precomputed cos/sin or freqs:

* Hugging Face ``apply_rotary_pos_emb`` (half-split layout, ``q * cos + rotate_half(q) * sin``);
* rotary-embedding-torch ``apply_rotary_emb`` (interleaved layout);
* ``torch.compile`` (Inductor) of the same textbook formula, half-split.

Cases: forward in place and out of place (under ``torch.inference_mode``), and
forward + backward (``torch.autograd.grad`` of both outputs, out of place). Every
output is checked against Hugging Face's (or rotary-embedding-torch's) before timing.

Machine limit: a plain copy of the same bytes (q and k into existing buffers), timed
interleaved with the contestants; ``% limit`` = copy time / our time, so 100% is
copy speed and 33% is 3x a copy. Rate = bytes read + written once (q and k in and
out), in GB/s.
"""

from __future__ import annotations

import torch

from benchmarks.harness import BenchResult, Case, Timing, machine_limits, time_interleaved
from blocklab.position import RotaryEmbedding

NAME = "rope"

SHAPES = dict(batch=4, heads=32, seq=1024, head_dim=128)
QUICK_SHAPES = dict(batch=2, heads=16, seq=512, head_dim=128)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def textbook(q, k, cos, sin):
    """The formula as Hugging Face writes it; cos, sin (T, D) with each angle twice."""
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def _peers(T: int, D: int, base: float = 10000.0):
    """(HF apply, rotary-embedding-torch apply, HF-style cos/sin): None where not installed."""
    inv = 1.0 / base ** (torch.arange(0, D, 2, dtype=torch.float32) / D)
    ang = torch.arange(T, dtype=torch.float32)[:, None] * inv  # Hugging Face's fp32 recipe
    emb = torch.cat((ang, ang), dim=-1)
    cos, sin = emb.cos(), emb.sin()  # (T, D)
    hf = ret = None
    try:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        def hf(q, k):
            return apply_rotary_pos_emb(q, k, cos[None], sin[None])  # (1, T, D), unsqueeze_dim=1
    except ImportError:
        pass
    try:
        from rotary_embedding_torch import RotaryEmbedding as RETRotary
        from rotary_embedding_torch import apply_rotary_emb

        freqs = RETRotary(dim=D, theta=base)(torch.arange(T))  # (T, D), interleaved

        def ret(q, k):
            return apply_rotary_emb(freqs, q), apply_rotary_emb(freqs, k)
    except ImportError:
        pass
    return hf, ret, cos, sin


def _check(name: str, got, want, T: int) -> None:
    # The peers round the angle m * theta to fp32 (ours is exact): their error grows
    # with the position, ~6e-8 * m per unit of input; allow 1e-6 * T.
    for a, b in zip(got, want, strict=True):
        err = (a - b).abs().max().item()
        if err > 1e-6 * T:
            raise AssertionError(f"{name}: output differs from the peer's by {err:.2e}")


def _grad_fn(fn, q, k, gq, gk):
    def step():
        rq, rk = fn(q, k)
        return torch.autograd.grad((rq, rk), (q, k), (gq, gk))

    return step


def run(quick: bool = False) -> BenchResult:
    shapes = QUICK_SHAPES if quick else SHAPES
    B, H, T, D = shapes["batch"], shapes["heads"], shapes["seq"], shapes["head_dim"]
    repeats = 3 if quick else 7
    limits = machine_limits(copy_mib=64 if quick else 256, matmul_n=1024 if quick else 2048)
    torch.manual_seed(0)
    q, k = torch.randn(B, H, T, D), torch.randn(B, H, T, D)
    bufq, bufk = torch.empty_like(q), torch.empty_like(k)
    gq, gk = torch.randn_like(q), torch.randn_like(k)
    work = 2 * (q.nbytes + k.nbytes) / 1e9  # GB read + written
    hf, ret, cos, sin = _peers(T, D)
    half = RotaryEmbedding(D, max_seq_len=T)
    inter = RotaryEmbedding(D, interleaved=True, max_seq_len=T)
    notes = [f"q and k: (B, H, T, D) = {(B, H, T, D)} each, {q.nbytes / 2**20:.0f} MiB each",
             f"torch threads: {torch.get_num_threads()}"]

    compiled = None
    if not quick:
        try:
            compiled = torch.compile(textbook, dynamic=False)
            with torch.inference_mode():
                compiled(q, k, cos, sin)
        except Exception as e:  # no C++ compiler, unsupported platform
            compiled = None
            notes.append(f"torch.compile unavailable here ({type(e).__name__}); its cases skipped")
    else:
        notes.append("quick: torch.compile cases skipped (compilation takes tens of seconds)")

    # Outputs agree before anything is timed.
    with torch.inference_mode():
        if hf is not None:
            _check("ours vs Hugging Face", half(q, k), hf(q, k), T)
            _check("ours in place vs Hugging Face", half(q.clone(), k.clone(), inplace=True),
                   hf(q, k), T)
        if ret is not None:
            _check("ours vs rotary-embedding-torch", inter(q, k), ret(q, k), T)
        if compiled is not None:
            _check("ours vs torch.compile", half(q, k), compiled(q, k, cos, sin), T)

    def copy():
        bufq.copy_(q)
        bufk.copy_(k)

    fwd = {"copy": copy,
           "ours in place (half)": lambda: half(bufq, bufk, inplace=True),
           "ours (half)": lambda: half(q, k),
           "ours in place (interleaved)": lambda: inter(bufq, bufk, inplace=True),
           "ours (interleaved)": lambda: inter(q, k)}
    if hf is not None:
        fwd["hf"] = lambda: hf(q, k)
    if ret is not None:
        fwd["ret"] = lambda: ret(q, k)
    if compiled is not None:
        fwd["compile"] = lambda: compiled(q, k, cos, sin)
    with torch.inference_mode():
        t_fwd = time_interleaved(fwd, warmup=1, repeats=repeats)

    ql, kl = q.clone().requires_grad_(), k.clone().requires_grad_()
    bwd = {"copy": copy,
           "ours (half)": _grad_fn(half, ql, kl, gq, gk),
           "ours (interleaved)": _grad_fn(inter, ql, kl, gq, gk)}
    if hf is not None:
        bwd["hf"] = _grad_fn(hf, ql, kl, gq, gk)
    if ret is not None:
        bwd["ret"] = _grad_fn(ret, ql, kl, gq, gk)
    if compiled is not None:
        bwd["compile"] = _grad_fn(lambda a, b: compiled(a, b, cos, sin), ql, kl, gq, gk)
    t_bwd = time_interleaved(bwd, warmup=1, repeats=repeats)

    def case(name: str, timings: dict[str, Timing], ours: str, peer: str, peer_name: str,
             passes: float = 1.0) -> Case | None:
        if peer not in timings:
            return None
        # passes: how many times the step moves q and k (fwd 1, fwd+bwd 2).
        copy_s = timings["copy"].median_s * passes
        return Case(
            name=name, ours=timings[ours], peer=timings[peer], work=work * passes, unit="GB/s",
            limit_frac=copy_s / timings[ours].median_s,
            limit_note="copy of the same bytes into existing buffers (same run) / our time",
            extra=dict(peer=peer_name, copy_ms=1e3 * timings["copy"].median_s,
                       x_copy=timings[ours].median_s / copy_s),
        )

    specs = [
        ("fwd in place, half-split", t_fwd, "ours in place (half)", "hf", "transformers"),
        ("fwd out of place, half-split", t_fwd, "ours (half)", "hf", "transformers"),
        ("fwd in place, half-split", t_fwd, "ours in place (half)", "compile", "torch.compile"),
        ("fwd out of place, half-split", t_fwd, "ours (half)", "compile", "torch.compile"),
        ("fwd in place, interleaved", t_fwd, "ours in place (interleaved)", "ret",
         "rotary-embedding-torch"),
        ("fwd out of place, interleaved", t_fwd, "ours (interleaved)", "ret",
         "rotary-embedding-torch"),
        ("fwd+bwd, half-split", t_bwd, "ours (half)", "hf", "transformers"),
        ("fwd+bwd, half-split", t_bwd, "ours (half)", "compile", "torch.compile"),
        ("fwd+bwd, interleaved", t_bwd, "ours (interleaved)", "ret", "rotary-embedding-torch"),
    ]
    cases = []
    for name, timings, ours, peer, peer_name in specs:
        c = case(f"{name} vs {peer_name}", timings, ours, peer, peer_name,
                 passes=2.0 if timings is t_bwd else 1.0)
        if c is not None:
            cases.append(c)
    return BenchResult(
        name=NAME,
        peer="transformers apply_rotary_pos_emb, rotary-embedding-torch apply_rotary_emb, "
             "torch.compile(textbook formula)",
        dtype="float32",
        shapes=dict(shapes),
        cases=cases,
        limits=limits,
        notes=notes + ["outputs checked against the peers' before timing",
                       "fwd+bwd: torch.autograd.grad of both outputs, out of place"],
    )


if __name__ == "__main__":
    from benchmarks.harness import print_result

    print_result(run())
