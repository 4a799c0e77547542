"""Hierarchical attention: its transformer layer vs torch's, and hierarchical vs flat.

1. The layer. blocklab's ``EncoderLayer`` (pre-norm, fused q/k/v projection, GELU
   FFN, a key-padding mask) against ``torch.nn.TransformerEncoderLayer(norm_first=True,
   activation="gelu", batch_first=True, dropout=0)`` holding the same weights; N=16
   segments of L=256 positions, C=256, 4 heads, a quarter of the segments padded to
   half length (quick: N=8, L=64, C=64). Forward under ``torch.inference_mode`` (torch
   may take its fused "fast path" there) and forward + backward (gradients of the
   input); the outputs at real positions and the input gradients are checked equal
   before timing. Rate: positions per second. Limit: the layer's matmul FLOPs
   (projections, FFN, scores and weighted sum over the real keys; x3 for fwd+bwd) per
   second vs fp32 matmul FLOP/s.
2. Hierarchical vs flat, the concept's claim. ``HierarchicalTransformerEncoder`` (one
   within-segment and one across-segment layer) on a document of S=64 segments of W=32
   words (2048 words, C=256, 4 heads; quick: 16 x 16, C=64) against a flat
   two-layer ``nn.TransformerEncoder`` of the same layer shape over the 2048 words:
   the same parameters per layer, attention over 32 words (+1 summary) and over 64
   summaries instead of over 2048 words. Different functions, so nothing to check equal:
   the ratio is how much faster the hierarchy is.
"""

from __future__ import annotations

import torch
from torch import nn

from benchmarks.harness import BenchResult, Case, machine_limits, time_interleaved
from blocklab.attention.hierarchical import EncoderLayer, HierarchicalTransformerEncoder

NAME = "hierarchical"

LAYER = dict(segments=16, length=256, d_model=256, heads=4)
QUICK_LAYER = dict(segments=8, length=64, d_model=64, heads=4)
DOC = dict(batch=1, sentences=64, words=32, d_model=256, heads=4)
QUICK_DOC = dict(batch=1, sentences=16, words=16, d_model=64, heads=4)


def torch_layer_like(ours: EncoderLayer, d: int, heads: int) -> nn.TransformerEncoderLayer:
    """``nn.TransformerEncoderLayer`` holding ``ours``' weights."""
    hidden = ours.ffn.w_out.in_features
    peer = nn.TransformerEncoderLayer(d, heads, dim_feedforward=hidden, dropout=0.0,
                                      activation="gelu", batch_first=True, norm_first=True)
    with torch.no_grad():
        peer.self_attn.in_proj_weight.copy_(ours.attn.wqkv.weight)  # rows: q, k, v
        peer.self_attn.in_proj_bias.copy_(ours.attn.wqkv.bias)
        peer.self_attn.out_proj.weight.copy_(ours.attn.wo.weight)
        peer.self_attn.out_proj.bias.copy_(ours.attn.wo.bias)
        peer.linear1.weight.copy_(ours.ffn.w_in.weight)
        peer.linear1.bias.copy_(ours.ffn.w_in.bias)
        peer.linear2.weight.copy_(ours.ffn.w_out.weight)
        peer.linear2.bias.copy_(ours.ffn.w_out.bias)
        for mine, theirs in ((ours.attn_norm, peer.norm1), (ours.ffn_norm, peer.norm2)):
            theirs.weight.copy_(mine.weight)
            theirs.bias.copy_(mine.bias)
    return peer.eval()


def _layer_flops(N: int, L: int, d: int, hidden: int, lengths: torch.Tensor) -> float:
    dense = 2 * N * L * (3 * d * d + d * d + 2 * d * hidden)
    scores = 4 * L * d * float(lengths.sum())  # QK^T and AV over the real keys
    return dense + scores


def _layer_cases(shape: dict, repeats: int, limits) -> list[Case]:
    N, L, d, H = shape["segments"], shape["length"], shape["d_model"], shape["heads"]
    torch.manual_seed(0)
    ours = EncoderLayer(d, H).eval()
    peer = torch_layer_like(ours, d, H)
    x = torch.randn(N, L, d)
    lengths = torch.full((N,), L)
    lengths[: N // 4] = L // 2
    real = torch.arange(L) < lengths[:, None]  # (N, L) True = real position
    with torch.inference_mode():
        a, b = ours(x, real), peer(x, src_key_padding_mask=~real)
    torch.testing.assert_close(a[real], b[real], rtol=1e-4, atol=1e-5)
    err = (a[real] - b[real]).abs().max().item()
    xo, xp = x.clone().requires_grad_(), x.clone().requires_grad_()
    g = torch.randn(N, L, d) * real[..., None]
    (ga,) = torch.autograd.grad(ours(xo, real), xo, g)
    (gb,) = torch.autograd.grad(peer(xp, src_key_padding_mask=~real), xp, g)
    torch.testing.assert_close(ga[real], gb[real], rtol=1e-4, atol=1e-5)
    with torch.inference_mode():
        t_fwd = time_interleaved({"ours": lambda: ours(x, real),
                                  "peer": lambda: peer(x, src_key_padding_mask=~real)},
                                 warmup=1, repeats=repeats)

    def step(module, call):
        def run() -> None:
            xi = x.clone().requires_grad_()
            torch.autograd.grad(call(module, xi), xi, g)
        return run

    t_bwd = time_interleaved({"ours": step(ours, lambda m, xi: m(xi, real)),
                              "peer": step(peer, lambda m, xi: m(xi, src_key_padding_mask=~real))},
                             warmup=1, repeats=repeats)
    hidden = ours.ffn.w_out.in_features
    flops = _layer_flops(N, L, d, hidden, lengths)
    note = "layer matmul FLOPs (real keys only) / s vs fp32 matmul FLOP/s"
    return [
        Case(name=f"layer N={N} L={L} C={d} fwd vs nn.TransformerEncoderLayer",
             ours=t_fwd["ours"], peer=t_fwd["peer"], work=N * L, unit="pos/s",
             limit_frac=flops / t_fwd["ours"].median_s / 1e9 / limits.matmul_gflops,
             limit_note=note, extra=dict(max_abs_err=err)),
        Case(name=f"layer N={N} L={L} C={d} fwd+bwd vs nn.TransformerEncoderLayer",
             ours=t_bwd["ours"], peer=t_bwd["peer"], work=N * L, unit="pos/s",
             limit_frac=3 * flops / t_bwd["ours"].median_s / 1e9 / limits.matmul_gflops,
             limit_note=note),
    ]


def _doc_cases(shape: dict, repeats: int) -> list[Case]:
    B, S, W, d, H = (shape[k] for k in ("batch", "sentences", "words", "d_model", "heads"))
    torch.manual_seed(0)
    ours = HierarchicalTransformerEncoder(d, H, n_layers=1).eval()
    flat = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(d, H, dim_feedforward=4 * d, dropout=0.0, activation="gelu",
                                   batch_first=True, norm_first=True),
        num_layers=2, enable_nested_tensor=False).eval()
    x = torch.randn(B, S, W, d)
    mask = torch.ones(B, S, W, dtype=torch.bool)
    with torch.inference_mode():
        t = time_interleaved({"ours": lambda: ours(x, mask),
                              "flat": lambda: flat(x.view(B, S * W, d))},
                             warmup=1, repeats=repeats)
    return [Case(name=f"hierarchical (ours) vs flat nn.TransformerEncoder, {S}x{W} words fwd",
                 ours=t["ours"], peer=t["flat"], work=B * S * W, unit="words/s")]


def run(quick: bool = False) -> BenchResult:
    layer = QUICK_LAYER if quick else LAYER
    doc = QUICK_DOC if quick else DOC
    repeats = 3 if quick else 7
    limits = machine_limits(copy_mib=64 if quick else 256, matmul_n=1024 if quick else 2048)
    cases = _layer_cases(layer, repeats, limits) + _doc_cases(doc, repeats)
    return BenchResult(
        name=NAME,
        peer="torch.nn.TransformerEncoderLayer / nn.TransformerEncoder (flat)",
        dtype="float32",
        shapes=dict(layer=layer, document=doc),
        cases=cases,
        limits=limits,
        notes=[
            "layer: same weights, outputs at real positions and input gradients checked "
            "equal (rtol 1e-4, atol 1e-5) before timing; torch may use its fused inference "
            "fast path in the fwd case",
            "hierarchical vs flat: different models of the same layer shape, nothing to "
            "check equal; the ratio is the speed-up of attending within 32-word segments "
            "and across 64 summaries instead of over all 2048 words",
        ],
    )


if __name__ == "__main__":
    from benchmarks.harness import print_result

    print_result(run())
