"""Pruned vs dense: blocklab's masks vs ``torch.nn.utils.prune``, and real speed-ups.

The model is an FFN-shaped pair ``Linear(d, h) -> ReLU -> Linear(h, d)`` on N tokens,
fp32. Before anything is timed, ``magnitude_prune`` and ``torch.nn.utils.prune``
(``l1_unstructured`` per layer, ``global_unstructured``) must zero exactly the same
weights for the same amount, or the benchmark raises.

Cases (ours vs peer; ratio > 1: ours faster):

* ``mask fwd``: inference with masks, ours (the weight holds the zeros; a version
  check per forward) vs torch's (``weight = weight_orig * weight_mask`` recomputed
  before every forward). Neither is faster than dense: the dense kernel runs over
  the zeros; dense time is in ``extra``.
* ``mask train``: forward, backward and an AdamW step with masks in force, ours
  (gradient hook + step post-hook) vs torch's.
* ``physical``: hidden units physically removed (``prune_linear_pair``) vs dense.
* ``csr``: CSR weights (``torch.sparse.mm``) vs dense, unstructured masks.
* ``2:4``: fp16 semi-structured weights vs dense fp16 on CUDA (sm80+), skipped
  without such a GPU.

Machine limit: the multiply-adds actually left (2 FLOPs each: dense for masks, kept
units for physical, non-zeros for CSR) per second, against the fp32 matmul FLOP/s
measured in the same run.
"""

from __future__ import annotations

import copy
import functools

import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

from benchmarks.harness import BenchResult, Case, machine_limits, time_interleaved
from blocklab.sparsity import (
    keep_pruned,
    magnitude_prune,
    prune_linear_pair,
    semi_structured_available,
    to_csr,
    to_semi_structured,
)

NAME = "sparsity"

SHAPES = dict(d=1024, hidden=4096, tokens=256)
QUICK_SHAPES = dict(d=512, hidden=2048, tokens=64)
SPARSITIES = (0.5, 0.9, 0.98)


def make_pair(d: int, hidden: int, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, d))


def check_same_masks(d: int, hidden: int, amount: float) -> None:
    """Our masks must equal torch.nn.utils.prune's, layer and global scope."""
    for scope in ("layer", "global"):
        ours, theirs = make_pair(d, hidden), make_pair(d, hidden)
        magnitude_prune(ours, amount, scope=scope)
        if scope == "layer":
            for m in (theirs[0], theirs[2]):
                torch_prune.l1_unstructured(m, "weight", amount=amount)
        else:
            torch_prune.global_unstructured([(theirs[0], "weight"), (theirs[2], "weight")],
                                            pruning_method=torch_prune.L1Unstructured,
                                            amount=amount)
        for a, b in ((ours[0], theirs[0]), (ours[2], theirs[2])):
            if not torch.equal(a.weight != 0, b.weight_mask.bool()):
                raise AssertionError(f"{scope} masks at amount {amount} differ from "
                                     "torch.nn.utils.prune's")


def torch_pruned(model: nn.Module, amount: float) -> nn.Module:
    peer = copy.deepcopy(model)
    for m in (peer[0], peer[2]):
        torch_prune.l1_unstructured(m, "weight", amount=amount)
    return peer


def train_step(model: nn.Module, x: torch.Tensor, *, ours: bool):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    if ours:
        keep_pruned(opt, model)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
        opt.step()

    return step


def run(quick: bool = False) -> BenchResult:
    shapes = QUICK_SHAPES if quick else SHAPES
    d, hidden, tokens = shapes["d"], shapes["hidden"], shapes["tokens"]
    repeats = 5 if quick else 10
    limits = machine_limits(copy_mib=64 if quick else 256, matmul_n=1024 if quick else 2048)
    dense_flops = 2 * tokens * 2 * d * hidden
    x = torch.randn(tokens, d)
    dense = make_pair(d, hidden).eval()
    cases: list[Case] = []

    def case(name: str, t, peer_key: str, flops: float, **extra) -> None:
        achieved = flops / t["ours"].median_s / 1e9
        cases.append(Case(name=name, ours=t["ours"], peer=t[peer_key], work=tokens,
                          unit="tok/s", limit_frac=achieved / limits.matmul_gflops,
                          limit_note="multiply-adds left x 2 / s vs fp32 matmul FLOP/s",
                          extra=dict(extra, gflops=achieved)))

    for amount in SPARSITIES:
        check_same_masks(d, hidden, amount)
        ours = copy.deepcopy(dense)
        magnitude_prune(ours, amount, scope="layer")
        peer = torch_pruned(dense, amount)
        first, second, _ = prune_linear_pair(dense[0], dense[2], amount)
        physical = nn.Sequential(first, nn.ReLU(), second).eval()
        csr = nn.Sequential(to_csr(ours[0]), nn.ReLU(), to_csr(ours[2]))
        with torch.inference_mode():
            want = ours(x)
            for label, model in (("torch prune", peer), ("csr", csr)):
                if not torch.allclose(model(x), want, rtol=1e-4, atol=1e-4):
                    raise AssertionError(f"{label} output differs from the masked model's")
            contestants = {"ours": ours, "peer": peer, "dense": dense, "physical": physical,
                           "csr": csr}
            t = time_interleaved({k: functools.partial(m, x) for k, m in contestants.items()},
                                 warmup=1, repeats=repeats)
        dense_ms = t["dense"].median_s * 1e3
        case(f"mask fwd s={amount:g}", t, "peer", dense_flops,
             dense_ms=dense_ms, vs_dense=t["dense"].median_s / t["ours"].median_s,
             vs_dense_cpu=t["dense"].cpu_s / t["ours"].cpu_s)
        kept = first.out_features
        case(f"physical s={amount:g}", {"ours": t["physical"], "dense": t["dense"]}, "dense",
             2 * tokens * 2 * d * kept, kept_units=kept)
        nnz = csr[0].nnz + csr[2].nnz
        case(f"csr s={amount:g}", {"ours": t["csr"], "dense": t["dense"]}, "dense",
             2 * tokens * nnz, nnz=nnz)

        train_ours = copy.deepcopy(dense).train()
        magnitude_prune(train_ours, amount, scope="layer")
        train_peer = torch_pruned(dense, amount).train()
        t = time_interleaved({"ours": train_step(train_ours, x, ours=True),
                              "peer": train_step(train_peer, x, ours=False)},
                             warmup=1, repeats=repeats)
        # Forward + backward: about 3x the forward's multiply-adds.
        case(f"mask train s={amount:g}", t, "peer", 3 * dense_flops)

    notes = ["masks checked identical to torch.nn.utils.prune's (l1_unstructured per layer, "
             "global_unstructured) before timing; outputs checked equal",
             "mask fwd: extra.vs_dense(_cpu) is dense / masked wall (CPU) time: about 1, masks "
             "buy no speed",
             "physical / csr: peer is the dense pair"]
    if semi_structured_available():
        dense16 = make_pair(d, hidden).half().cuda().eval()
        sparse16 = copy.deepcopy(dense16)
        magnitude_prune(sparse16, 0.5, pattern="2:4")
        for layer in (sparse16[0], sparse16[2]):
            to_semi_structured(layer)
        x16 = torch.randn(max(tokens, 128), d, dtype=torch.float16, device="cuda")

        def sync(fn):
            def call():
                fn()
                torch.cuda.synchronize()
            return call

        with torch.inference_mode():
            t = time_interleaved({"ours": sync(functools.partial(sparse16, x16)),
                                  "dense": sync(functools.partial(dense16, x16))}, warmup=3,
                                 repeats=repeats * 2)
        cases.append(Case(name="2:4 fp16 cuda", ours=t["ours"], peer=t["dense"],
                          work=x16.shape[0], unit="tok/s"))
        notes.append("2:4: torch.sparse.to_sparse_semi_structured vs dense fp16, same GPU")
    else:
        notes.append("2:4 semi-structured case skipped: needs a CUDA GPU with compute "
                     "capability >= 8.0")
    return BenchResult(
        name=NAME,
        peer="torch.nn.utils.prune (mask cases); dense nn.Linear (physical, csr, 2:4)",
        dtype="float32",
        shapes=dict(shapes, sparsities=list(SPARSITIES)),
        cases=cases,
        limits=limits,
        notes=notes,
    )


if __name__ == "__main__":
    from benchmarks.harness import print_result

    print_result(run())
