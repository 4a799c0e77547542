"""One-row matmuls as Inductor reductions, for compiled decoding on a CPU.

At batch 1 a decoding step multiplies one row by every weight matrix,
y = x W^T with x (1, K) and W (N, K): a matrix-vector product that reads W once and
does 2 flops per weight, so its speed is the speed at which W is read. ATen's CPU
kernels for it (MKL / oneDNN GEMV) read W at about half the copy bandwidth in fp32
and a third in bf16 (``benchmarks/bench_generate.py`` profiles the step), while the
reduction Inductor generates itself,

    y_n = sum_k x_k W_nk        (vectorised over k, fp32 accumulation),

reads it near the copy bandwidth. This post-grad pass rewrites ``aten.mm`` and
``aten.addmm`` with one row on a CPU into that multiply-and-sum: the decomposition
Inductor already applies to small CPU matmuls (``decompose_mm_pass`` in
``torch/_inductor/fx_passes/decompose_mem_bound_mm.py``, K and N <= 2048 there),
without the size bound, so it reaches the LM head and the FFN too.
"""

from __future__ import annotations

import functools

import torch

__all__ = ["one_row_matmul_pass"]

aten = torch.ops.aten


def _mm(mat1: torch.Tensor, mat2: torch.Tensor) -> torch.Tensor:
    return torch.sum(mat1[:, :, None] * mat2[None, :, :], dim=-2).to(mat1.dtype)  # (1, N)


def _addmm(bias: torch.Tensor, mat1: torch.Tensor, mat2: torch.Tensor) -> torch.Tensor:
    return (bias + torch.sum(mat1[:, :, None] * mat2[None, :, :], dim=-2)).to(mat1.dtype)


def _one_row_on_cpu(mat1, mat2) -> bool:
    vals = [getattr(node, "meta", {}).get("val") for node in (mat1, mat2)]
    if any(not isinstance(v, torch.Tensor) for v in vals):
        return False
    a, b = vals
    return (a.dim() == b.dim() == 2 and a.shape[0] == 1 and a.device.type == "cpu"
            and b.device.type == "cpu" and a.is_floating_point() and a.dtype == b.dtype)


@functools.cache
def one_row_matmul_pass():
    """The pass, an Inductor ``CustomGraphPass`` for ``post_grad_custom_post_pass``
    (built on first use: importing Inductor costs seconds)."""
    from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files
    from torch._inductor.pattern_matcher import (
        Arg,
        CallFunction,
        PatternMatcherPass,
        register_graph_pattern,
    )

    patterns = PatternMatcherPass()

    def realize(nodes) -> None:
        # As Inductor's own decomposition: keep the inputs' strides as they are.
        for node in nodes:
            node.meta["inductor_realize_to_strides"] = True

    @register_graph_pattern(CallFunction(aten.mm, Arg(), Arg()), pass_dict=patterns)
    def mm(match, mat1, mat2):
        if _one_row_on_cpu(mat1, mat2):
            match.replace_by_example(_mm, [mat1, mat2])
            realize([mat1, mat2])

    @register_graph_pattern(CallFunction(aten.addmm, Arg(), Arg(), Arg()), pass_dict=patterns)
    def addmm(match, bias, mat1, mat2):
        if _one_row_on_cpu(mat1, mat2):
            match.replace_by_example(_addmm, [bias, mat1, mat2])
            realize([bias, mat1, mat2])

    class OneRowMatmulPass(CustomGraphPass):
        def __call__(self, graph: torch.fx.Graph) -> None:
            patterns.apply(graph)

        def uuid(self) -> bytes:
            # Inductor's graph cache keys on this: a change to this file recompiles.
            return get_hash_for_files((__file__,))

    return OneRowMatmulPass()
