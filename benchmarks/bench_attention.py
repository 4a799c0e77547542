"""Attention: dot-product (ours vs Hugging Face eager and torch SDPA) and additive (Bahdanau).

Prefill attention, fp32, causal, grouped heads (GQA): B=1, H=32 query heads, H_kv=8
key/value heads, D=128, T = S in {1024, 2048} (quick: H=8, H_kv=2, D=64, T=256).
blocklab's ``scaled_dot_product_attention(q, k, v, causal=True)`` against

* Hugging Face's ``eager_attention_forward`` as ``LlamaAttention`` calls it (a module
  with ``num_key_value_groups`` and ``training``, an additive (B, 1, T, T) causal mask
  of ``finfo.min`` as ``create_causal_mask`` builds for eager, ``scaling = D ** -0.5``,
  dropout 0): ``repeat_kv`` copies K/V to every query head, the (B, H, T, T) scores and
  probabilities are materialised and the masked half is computed too;
* torch's ``F.scaled_dot_product_attention(is_causal=True, enable_gqa=True)``, the
  floor: ours dispatches to it for this case, so the ratio should be about 1.

Forward under ``torch.inference_mode`` and forward + backward (gradients of q, k, v
from one fixed random output gradient). Rate: tokens (B T) per second.

Additive attention, fp32: B=8, T_q = T_k = 256, d = 256, attention (tanh) width 256
(quick: B=4, 128, 128, 128). blocklab's ``AdditiveAttention`` against the textbook module
written below (Dive into Deep Learning's form: ``W_q``, ``W_k`` and ``w_v`` as
``nn.Linear(bias=False)``, ``w_v(tanh(W_q q[:, :, None] + W_k k[:, None])).squeeze(-1)``,
softmax, ``bmm`` with the values) holding the same weights; forward and fwd+bwd
(gradients of the inputs and of the three weights). Then the comparison the
Transformer paper makes (section 3.2.1): our dot-product attention vs our additive
attention on the same (B, T, d) inputs and the same W_q, W_k projections -- the
"peer" of that case is our own additive module, not another library.

Every pair is checked equal (outputs, and gradients for fwd+bwd) before timing;
ours and its peers are timed interleaved (fwd+bwd: two rounds fewer, at least 3).

Machine limits, measured in the same run:

* prefill: useful attention FLOPs (Q K^T and A V over the visible causal pairs,
  ``blocklab.cost.attention_cost(...).score_flops``; x3 for fwd+bwd) per second vs fp32
  matmul FLOP/s;
* additive: bytes of the (B, T_q, T_k, hidden) fp32 tanh tensor written once and read
  once (forward; fwd+bwd adds reading the saved tanh, writing its gradient and reading
  that: 5 passes) per second vs copy bandwidth -- the least traffic of any
  implementation that materialises it, as ours and the textbook's do;
* dot vs additive: matmul FLOPs of the dot-product path (projections, scores, weighted
  sum; x3 for fwd+bwd) per second vs fp32 matmul FLOP/s.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.harness import BenchResult, Case, Limits, machine_limits, time_interleaved
from blocklab.attention.additive import AdditiveAttention
from blocklab.attention.functional import scaled_dot_product_attention
from blocklab.cost import attention_cost

NAME = "attention"

PREFILL = dict(batch=1, heads=32, kv_heads=8, head_dim=128, lengths=(1024, 2048))
QUICK_PREFILL = dict(batch=1, heads=8, kv_heads=2, head_dim=64, lengths=(256,))
ADDITIVE = dict(batch=8, length=256, dim=256, hidden=256)
QUICK_ADDITIVE = dict(batch=4, length=128, dim=128, hidden=128)

# fp32 parity tolerances (see _check): ours vs torch SDPA is the same kernel call; vs
# Hugging Face eager the softmax is blockwise (online) on one side and whole-row on the
# other, and gradients of K/V sum over T queries and the group's heads.
TOL_SAME_KERNEL = dict(atol=1e-6, rtol=1e-5)
TOL_EAGER = dict(atol=1e-5, rtol=1e-4)
TOL_ADDITIVE = dict(atol=1e-5, rtol=1e-4)

PREFILL_NOTE = ("useful attention FLOPs (Q K^T + A V over visible causal pairs, x3 for "
                "fwd+bwd) / s vs fp32 matmul FLOP/s")
ADDITIVE_NOTE = ("(B, T_q, T_k, hidden) fp32 tanh tensor written + read once (fwd; 5 passes "
                 "fwd+bwd) / s vs copy bandwidth")
DOT_NOTE = ("dot-product path's matmul FLOPs (projections, scores, weighted sum; x3 for "
            "fwd+bwd) / s vs fp32 matmul FLOP/s")


def _check(label: str, got: Tensor, want: Tensor, tol: dict[str, float]) -> None:
    """assert_close with the case named in the error."""
    try:
        torch.testing.assert_close(got, want, **tol)
    except AssertionError as e:
        raise AssertionError(f"{label}: ours differs from the peer\n{e}") from None


def _max_err(got: Tensor, want: Tensor) -> float:
    return (got - want).abs().max().item()


# Prefill: dot-product attention -----------------------------------------------------
class _LlamaLike(nn.Module):
    """What ``eager_attention_forward`` reads from ``LlamaAttention``."""

    def __init__(self, num_key_value_groups: int) -> None:
        super().__init__()
        self.num_key_value_groups = num_key_value_groups


def llama_causal_mask(batch: int, T: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Additive (B, 1, T, T) mask: 0 where visible, ``finfo.min`` above the diagonal."""
    hidden = torch.ones(T, T, dtype=torch.bool).triu(1)
    mask = torch.zeros(T, T, dtype=dtype).masked_fill(hidden, torch.finfo(dtype).min)
    return mask.expand(batch, 1, T, T)


def hf_eager(module: nn.Module, mask: Tensor, scaling: float) -> Callable[..., Tensor]:
    """(q, k, v) -> (B, T, H, D), as LlamaAttention calls the eager attention."""
    from transformers.models.llama.modeling_llama import eager_attention_forward

    def attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        dropout = 0.0  # LlamaConfig.attention_dropout defaults to 0
        return eager_attention_forward(module, q, k, v, mask, scaling=scaling,
                                       dropout=dropout)[0]

    return attend


def _prefill_cases(shapes: dict, repeats: int, limits: Limits,
                   g: torch.Generator) -> list[Case]:
    return [c for T in shapes["lengths"] for c in _prefill_at(T, shapes, repeats, limits, g)]


def _prefill_at(T: int, shapes: dict, repeats: int, limits: Limits,
                g: torch.Generator) -> list[Case]:
    B, H, H_kv, D = shapes["batch"], shapes["heads"], shapes["kv_heads"], shapes["head_dim"]
    module = _LlamaLike(H // H_kv).eval()
    cases: list[Case] = []
    q = torch.randn(B, H, T, D, generator=g)
    k, v = (torch.randn(B, H_kv, T, D, generator=g) for _ in range(2))
    # Contestants take (q, k, v) and return (B, H, T, D) or, HF, (B, T, H, D).
    eager = hf_eager(module, llama_causal_mask(B, T), D**-0.5)
    fns: dict[str, Callable[..., Tensor]] = {
        "ours": lambda q, k, v: scaled_dot_product_attention(q, k, v, causal=True),
        "HF eager": eager,
        "torch SDPA": lambda q, k, v: F.scaled_dot_product_attention(
            q, k, v, is_causal=True, enable_gqa=True),
    }
    hf_layout = {"HF eager"}
    tols = {"HF eager": TOL_EAGER, "torch SDPA": TOL_SAME_KERNEL}
    cost = attention_cost(seq_len=T, d_model=H * D, n_heads=H, n_kv_heads=H_kv,
                          head_dim=D, batch=B, causal=True, dtype=torch.float32)
    flops = cost.score_flops
    errors: dict[str, float] = {}

    # Forward.
    with torch.inference_mode():
        outs = {n: f(q, k, v) for n, f in fns.items()}
        outs = {n: o.transpose(1, 2) if n in hf_layout else o for n, o in outs.items()}
        for n in tols:
            _check(f"prefill T={T} fwd vs {n}", outs["ours"], outs[n], tols[n])
            errors[f"fwd_max_abs_err_{n}"] = _max_err(outs["ours"], outs[n])
        del outs
        t = time_interleaved({n: (lambda f=f: f(q, k, v)) for n, f in fns.items()},
                             warmup=1, repeats=repeats)
    gflops = flops / t["ours"].median_s / 1e9
    for peer in tols:
        cases.append(Case(
            name=f"prefill T={T} fwd vs {peer}", ours=t["ours"], peer=t[peer], work=B * T,
            limit_frac=gflops / limits.matmul_gflops, limit_note=PREFILL_NOTE,
            extra=dict(ours_gflops=gflops, useful_flops=flops, causal_pairs=cost.pairs,
                       peer_useful_gflops=flops / t[peer].median_s / 1e9,
                       max_abs_err=errors[f"fwd_max_abs_err_{peer}"]),
        ))

    # Forward + backward: gradients of q, k, v from one fixed output gradient.
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    gout = torch.randn(B, H, T, D, generator=g)
    gout_hf = gout.transpose(1, 2).contiguous()

    def train(f: Callable[..., Tensor], grad: Tensor) -> Callable[[], None]:
        def call() -> None:
            for x in leaves:
                x.grad = None
            f(*leaves).backward(grad)
        return call

    steps = {n: train(f, gout_hf if n in hf_layout else gout) for n, f in fns.items()}
    grads: dict[str, list[Tensor]] = {}
    for n, step in steps.items():
        step()
        grads[n] = [x.grad.clone() for x in leaves]
    for n in tols:
        for name, got, want in zip("qkv", grads["ours"], grads[n], strict=True):
            _check(f"prefill T={T} fwd+bwd vs {n}: grad {name}", got, want, tols[n])
            errors[f"bwd_max_abs_err_{n}_d{name}"] = _max_err(got, want)
    del grads
    t = time_interleaved(steps, warmup=1, repeats=max(3, repeats - 2))
    gflops = 3 * flops / t["ours"].median_s / 1e9
    for peer in tols:
        cases.append(Case(
            name=f"prefill T={T} fwd+bwd vs {peer}", ours=t["ours"], peer=t[peer],
            work=B * T, limit_frac=gflops / limits.matmul_gflops, limit_note=PREFILL_NOTE,
            extra=dict(ours_gflops=gflops, useful_flops=3 * flops,
                       peer_useful_gflops=3 * flops / t[peer].median_s / 1e9,
                       **{f"max_abs_err_d{x}": errors[f"bwd_max_abs_err_{peer}_d{x}"]
                          for x in "qkv"}),
        ))
    return cases


# Additive (Bahdanau) attention ------------------------------------------------------
class TextbookAdditive(nn.Module):
    """Additive attention as Dive into Deep Learning (section 11.3) writes it."""

    def __init__(self, query_dim: int, key_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.W_q = nn.Linear(query_dim, hidden_dim, bias=False)
        self.W_k = nn.Linear(key_dim, hidden_dim, bias=False)
        self.w_v = nn.Linear(hidden_dim, 1, bias=False)

    @classmethod
    def like(cls, ours: AdditiveAttention) -> TextbookAdditive:
        """The same weights as ``ours`` (w_v is ours' score vector as a 1-row matrix)."""
        m = cls(ours.query_dim, ours.key_dim, ours.hidden_dim)
        with torch.no_grad():
            m.W_q.weight.copy_(ours.w_q.weight)
            m.W_k.weight.copy_(ours.w_k.weight)
            m.w_v.weight.copy_(ours.v[None])
        return m

    def forward(self, queries: Tensor, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        queries, keys = self.W_q(queries), self.W_k(keys)
        features = torch.tanh(queries.unsqueeze(2) + keys.unsqueeze(1))  # (B, T, S, H)
        scores = self.w_v(features).squeeze(-1)  # (B, T, S)
        weights = F.softmax(scores, dim=-1)
        return torch.bmm(weights, values), weights


def dot_product_like(mod: AdditiveAttention, query: Tensor, keys: Tensor,
                     values: Tensor) -> Tensor:
    """Scaled dot-product attention with the additive module's W_q and W_k: one head."""
    qp, kp = mod.w_q(query)[:, None], mod.w_k(keys)[:, None]  # (B, 1, T, hidden)
    return scaled_dot_product_attention(qp, kp, values[:, None])[:, 0]  # (B, T, Dv)


def _additive_cases(shapes: dict, repeats: int, limits: Limits,
                    g: torch.Generator) -> list[Case]:
    B, T, d, hid = shapes["batch"], shapes["length"], shapes["dim"], shapes["hidden"]
    torch.manual_seed(0)
    ours = AdditiveAttention(d, d, hid)
    textbook = TextbookAdditive.like(ours)
    query, keys, values = (torch.randn(B, T, d, generator=g) for _ in range(3))
    gout = torch.randn(B, T, d, generator=g)
    tanh_bytes = B * T * T * hid * 4
    # Dot-product path: W_q, W_k projections, Q K^T, A V.
    dot_flops = 2 * 2 * B * T * d * hid + 2 * B * T * T * hid + 2 * B * T * T * d
    fns: dict[str, Callable[..., Tensor]] = {
        "ours": lambda q, k, v: ours(q, k, v)[0],
        "textbook": lambda q, k, v: textbook(q, k, v)[0],
        "dot": lambda q, k, v: dot_product_like(ours, q, k, v),
    }
    cases: list[Case] = []

    # Forward.
    with torch.inference_mode():
        got, got_w = ours(query, keys, values)
        want, want_w = textbook(query, keys, values)
        _check("additive fwd vs textbook: context", got, want, TOL_ADDITIVE)
        _check("additive fwd vs textbook: weights", got_w, want_w, TOL_ADDITIVE)
        fwd_err = _max_err(got, want)
        if fns["dot"](query, keys, values).shape != got.shape:
            raise AssertionError("dot-product and additive contexts differ in shape")
        t = time_interleaved({n: (lambda f=f: f(query, keys, values)) for n, f in fns.items()},
                             warmup=1, repeats=repeats)
    gbps = 2 * tanh_bytes / t["ours"].median_s / 1e9
    cases.append(Case(
        name=f"additive B={B} T={T} d={d} fwd vs textbook", ours=t["ours"], peer=t["textbook"],
        work=B * T, limit_frac=gbps / limits.copy_gbps, limit_note=ADDITIVE_NOTE,
        extra=dict(effective_gbps=gbps, tanh_tensor_bytes=tanh_bytes, max_abs_err=fwd_err),
    ))
    gflops = dot_flops / t["dot"].median_s / 1e9
    cases.append(Case(
        name=f"dot-product (ours) vs additive (ours, as peer) T={T} fwd", ours=t["dot"],
        peer=t["ours"], work=B * T, limit_frac=gflops / limits.matmul_gflops,
        limit_note=DOT_NOTE, extra=dict(dot_gflops=gflops, dot_flops=dot_flops),
    ))

    # Forward + backward: gradients of the inputs and of the weights.
    leaves = [x.clone().requires_grad_() for x in (query, keys, values)]
    # (W_q, W_k, score vector) of each module, in that order.
    params = {"ours": [ours.w_q.weight, ours.w_k.weight, ours.v],
              "textbook": [textbook.W_q.weight, textbook.W_k.weight, textbook.w_v.weight]}

    def train(name: str) -> Callable[[], None]:
        f = fns[name]

        def call() -> None:
            for x in (*leaves, *params["ours"], *params["textbook"]):
                x.grad = None
            f(*leaves).backward(gout)
        return call

    steps = {n: train(n) for n in fns}
    grads: dict[str, dict[str, Tensor]] = {}
    for n in ("ours", "textbook"):
        steps[n]()
        gr = {x: t_.grad.clone() for x, t_ in zip(("query", "keys", "values"), leaves,
                                                   strict=True)}
        w_q, w_k, v = params[n]
        gr.update(w_q=w_q.grad.clone(), w_k=w_k.grad.clone(), v=v.grad.reshape(-1).clone())
        grads[n] = gr
    bwd_err = {}
    for x in grads["ours"]:
        _check(f"additive fwd+bwd vs textbook: grad {x}", grads["ours"][x],
               grads["textbook"][x], TOL_ADDITIVE)
        bwd_err[f"max_abs_err_d{x}"] = _max_err(grads["ours"][x], grads["textbook"][x])
    t = time_interleaved(steps, warmup=1, repeats=max(3, repeats - 2))
    gbps = 5 * tanh_bytes / t["ours"].median_s / 1e9
    cases.append(Case(
        name=f"additive B={B} T={T} d={d} fwd+bwd vs textbook", ours=t["ours"],
        peer=t["textbook"], work=B * T, limit_frac=gbps / limits.copy_gbps,
        limit_note=ADDITIVE_NOTE, extra=dict(effective_gbps=gbps, **bwd_err),
    ))
    gflops = 3 * dot_flops / t["dot"].median_s / 1e9
    cases.append(Case(
        name=f"dot-product (ours) vs additive (ours, as peer) T={T} fwd+bwd", ours=t["dot"],
        peer=t["ours"], work=B * T, limit_frac=gflops / limits.matmul_gflops,
        limit_note=DOT_NOTE, extra=dict(dot_gflops=gflops, dot_flops=3 * dot_flops),
    ))
    return cases


def run(quick: bool = False) -> BenchResult:
    prefill = QUICK_PREFILL if quick else PREFILL
    additive = QUICK_ADDITIVE if quick else ADDITIVE
    repeats = 3 if quick else 5
    limits = machine_limits(copy_mib=64 if quick else 256, matmul_n=1024 if quick else 2048)
    g = torch.Generator().manual_seed(0)
    cases = _prefill_cases(prefill, repeats, limits, g) + _additive_cases(
        additive, repeats, limits, g)
    return BenchResult(
        name=NAME,
        peer="transformers' Llama eager_attention_forward, torch SDPA (is_causal, "
             "enable_gqa), textbook additive attention (Dive into Deep Learning)",
        dtype="float32",
        shapes=dict(prefill=dict(prefill, lengths=list(prefill["lengths"]), causal=True),
                    additive=additive),
        cases=cases,
        limits=limits,
        notes=[
            "prefill: ours dispatches to torch SDPA (is_causal, enable_gqa) for this case, "
            "so ~1x vs torch SDPA is expected; HF eager copies K/V per head (repeat_kv) and "
            "materialises the full (B, H, T, T) scores, masked half included",
            "dot-product vs additive: same inputs and W_q, W_k; the 'peer' there is our own "
            "AdditiveAttention (the textbook's speed point, Vaswani et al. 2017 sec. 3.2.1), "
            "so the ratio is how much faster the dot product is",
            "outputs and gradients checked equal (fp32 assert_close) before timing; max abs "
            "errors in each case's extra",
        ],
    )


if __name__ == "__main__":
    from benchmarks.harness import print_result

    print_result(run())
