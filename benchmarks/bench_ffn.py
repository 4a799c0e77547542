"""Feed-forward block: ``FeedForward`` vs Hugging Face ``LlamaMLP`` and a plain ``nn.Sequential``.

Two blocks, each against a peer holding the same weights, fp32, no biases in the
gated one (as in LLaMA), biases in the plain one (``nn.Linear``'s default):

* SwiGLU, ``FeedForward(d, hidden_dim=h, activation="swiglu", bias=False)``: gate
  and up projections fused into one ``w_in`` matrix (gate rows first), so two
  matmuls; peer: ``transformers``' ``LlamaMLP`` (``hidden_act="silu"``,
  ``mlp_bias=False``), three matmuls, ``gate_proj``/``up_proj`` = the two halves of
  our ``w_in``, ``down_proj`` = our ``w_out``;
* plain GELU, ``FeedForward(d, hidden_dim=4 d, activation="gelu")``; peer:
  ``nn.Sequential(nn.Linear(d, 4 d), nn.GELU(), nn.Linear(4 d, d))``.

Cases: forward under ``torch.inference_mode`` and forward + backward
(``torch.autograd.grad`` of the output against a fixed random output gradient,
w.r.t. the input and every weight), for B*T = 512 and 2048 tokens at d = 512,
h = 1376 (LLaMA's 2/3 * 4 d rounded; GELU hidden 2048, the same parameter count to
1%). Quick: d = 128, h = 352 (GELU 512), 256 tokens. Outputs and gradients are
checked against the peer's before timing. Rate = tokens per second.

Machine limit: the matmul FLOPs, ``2 * tokens * (weights of the matmuls)`` forward,
three times that forward + backward (input and weight gradients), divided by our
time and set against the fp32 matmul FLOP/s measured in the same run.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from benchmarks.harness import BenchResult, Case, machine_limits, time_interleaved
from blocklab.ffn import FeedForward

NAME = "ffn"

SHAPES = dict(d_model=512, hidden_dim=1376, gelu_hidden=2048, tokens=[(4, 128), (8, 256)])
QUICK_SHAPES = dict(d_model=128, hidden_dim=352, gelu_hidden=512, tokens=[(2, 128)])

# fp32 parity: torch.testing's defaults (rtol 1.3e-6, atol 1e-5). Outputs and weight
# gradients come out bit-equal; only SwiGLU's input gradient differs (ours is one
# matmul over 2h, the peer's a sum of two over h each), by ~4e-7 at d = 512.


def make_swiglu(d: int, h: int) -> tuple[FeedForward, nn.Module]:
    """(ours, LlamaMLP) with the same weights."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP

    ours = FeedForward(d, hidden_dim=h, activation="swiglu", bias=False)
    config = LlamaConfig(hidden_size=d, intermediate_size=h, hidden_act="silu", mlp_bias=False)
    peer = LlamaMLP(config)
    with torch.no_grad():
        gate, up = ours.w_in.weight.chunk(2, dim=0)  # gate rows first, as ffn.py chunks
        peer.gate_proj.weight.copy_(gate)
        peer.up_proj.weight.copy_(up)
        peer.down_proj.weight.copy_(ours.w_out.weight)
    return ours, peer


def make_gelu(d: int, h: int) -> tuple[FeedForward, nn.Module]:
    """(ours, nn.Sequential(Linear, GELU, Linear)) with the same weights and biases."""
    ours = FeedForward(d, hidden_dim=h, activation="gelu")
    peer = nn.Sequential(nn.Linear(d, h), nn.GELU(), nn.Linear(h, d))
    with torch.no_grad():
        for ours_lin, peer_lin in ((ours.w_in, peer[0]), (ours.w_out, peer[2])):
            peer_lin.weight.copy_(ours_lin.weight)
            peer_lin.bias.copy_(ours_lin.bias)
    return ours, peer


def _peer_grads_as_ours(kind: str, grads: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """The peer's (input, weight...) gradients laid out like ours'."""
    if kind == "swiglu":
        gx, g_gate, g_up, g_down = grads
        return [gx, torch.cat((g_gate, g_up), dim=0), g_down]
    return list(grads)  # gelu: x, w_in.weight, w_in.bias, w_out.weight, w_out.bias


def _grad_fn(model: nn.Module, x: torch.Tensor, g: torch.Tensor) -> Callable[[], tuple]:
    params = list(model.parameters())

    def step() -> tuple[torch.Tensor, ...]:
        return torch.autograd.grad(model(x), (x, *params), g)

    return step


def _check(name: str, got, want) -> None:
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        try:
            torch.testing.assert_close(a, b)
        except AssertionError as e:
            raise AssertionError(f"{name}: tensor {i} differs from the peer's\n{e}") from None


def run(quick: bool = False) -> BenchResult:
    shapes = QUICK_SHAPES if quick else SHAPES
    d, h, hg = shapes["d_model"], shapes["hidden_dim"], shapes["gelu_hidden"]
    repeats = 3 if quick else 11
    limits = machine_limits(copy_mib=64 if quick else 256, matmul_n=1024 if quick else 2048)
    torch.manual_seed(0)
    models = {
        "swiglu": (*make_swiglu(d, h), "LlamaMLP", 3 * d * h),
        "gelu": (*make_gelu(d, hg), "nn.Sequential(Linear, GELU, Linear)", 2 * d * hg),
    }
    note = ("2 x tokens x matmul weights FLOPs (x3 for fwd+bwd) / our time "
            "vs fp32 matmul FLOP/s")
    cases: list[Case] = []
    for b, t in shapes["tokens"]:
        n_tok = b * t
        x = torch.randn(b, t, d)
        g = torch.randn(b, t, d)
        xg = x.clone().requires_grad_()

        # Parity before timing: outputs, then input and weight gradients.
        for kind, (ours, peer, _, _) in models.items():
            with torch.inference_mode():
                _check(f"{kind} fwd, {n_tok} tokens", [ours(x)], [peer(x)])
            _check(f"{kind} fwd+bwd, {n_tok} tokens", _grad_fn(ours, xg, g)(),
                   _peer_grads_as_ours(kind, _grad_fn(peer, xg, g)()))

        fwd = {f"{kind} {who}": (lambda m=m, x=x: m(x))
               for kind, (ours, peer, _, _) in models.items()
               for who, m in (("ours", ours), ("peer", peer))}
        with torch.inference_mode():
            t_fwd = time_interleaved(fwd, warmup=1, repeats=repeats)
        bwd = {f"{kind} {who}": _grad_fn(m, xg, g)
               for kind, (ours, peer, _, _) in models.items()
               for who, m in (("ours", ours), ("peer", peer))}
        t_bwd = time_interleaved(bwd, warmup=1, repeats=repeats)

        for mode, timings, passes in (("fwd", t_fwd, 1), ("fwd+bwd", t_bwd, 3)):
            for kind, (_, _, peer_name, weights) in models.items():
                ours_t = timings[f"{kind} ours"]
                flops = 2 * n_tok * weights * passes
                gflops = flops / ours_t.median_s / 1e9
                cases.append(Case(
                    name=f"{kind} {mode} tokens={n_tok} vs {peer_name.split('(')[0]}",
                    ours=ours_t, peer=timings[f"{kind} peer"], work=n_tok, unit="tok/s",
                    limit_frac=gflops / limits.matmul_gflops, limit_note=note,
                    extra=dict(peer=peer_name, batch=b, seq=t, flops=flops,
                               effective_gflops=gflops),
                ))
    return BenchResult(
        name=NAME,
        peer="transformers LlamaMLP (SwiGLU), nn.Sequential(Linear, GELU, Linear)",
        dtype="float32",
        shapes=dict(d_model=d, hidden_dim=h, gelu_hidden=hg,
                    tokens=[list(bt) for bt in shapes["tokens"]]),
        cases=cases,
        limits=limits,
        notes=[
            "same weights in ours and the peer; outputs and input/weight gradients checked "
            "(torch.testing.assert_close, fp32 defaults) before timing",
            "fwd under torch.inference_mode; fwd+bwd = torch.autograd.grad w.r.t. input and "
            "weights with a fixed random output gradient",
            f"torch threads: {torch.get_num_threads()}",
        ],
    )


if __name__ == "__main__":
    from benchmarks.harness import print_result

    print_result(run())
