"""Autoregressive decoding with a preallocated KV cache.

The prompt is run once (prefill) and fills the cache; each further step runs one
token per row and reads the cached keys and values. Temperature 0 is greedy
(argmax); otherwise logits / temperature are filtered by top-k and nucleus (top-p,
Holtzman et al. 2020) and sampled.

With ``compile`` the one-token step (:meth:`TransformerLM.decode_step`: the whole
static cache buffer, a key mask, the position a tensor) runs through ``torch.compile``
once per model shape and is reused for every token and position (gpt-fast's recipe);
the prefill stays eager, its length changes with the prompt.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Callable
from typing import Literal

import torch

from blocklab._checks import check_float, check_ids, check_int, check_tensor

__all__ = ["compiler_available", "generate", "sample_next"]


def sample_next(
    logits: torch.Tensor,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next token ids (B,) from last-position logits (B, V)."""
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token when the mass before it already reaches top_p (keeps at least one).
        drop = (cum - sorted_logits.softmax(dim=-1)) >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def compiler_available(device: torch.device | str) -> bool:
    """Whether Inductor can generate code here: a C++ compiler on CPU, Triton on CUDA."""
    kind = torch.device(device).type
    if kind == "cpu":
        names = [os.environ.get("CXX"), "c++", "g++", "clang++"]
        return any(name and shutil.which(name) for name in names)
    if kind == "cuda":
        from torch.utils._triton import has_triton

        return has_triton()
    return False


def _step(model, tokens, cache, position_ids, padding_mask) -> torch.Tensor:
    """Last-position logits (B, V) of one decoding step."""
    return model.decode_step(
        tokens, cache, position_ids=position_ids, padding_mask=padding_mask)[:, -1]


class _CompiledStep:
    """:func:`_step` through ``torch.compile``; on the first failure (no compiler, an
    unsupported op) a one-line warning, and eager steps from then on."""

    def __init__(self, backend: str | Callable) -> None:
        # fullgraph: a graph break would leave part of the step (and its cache writes)
        # outside the graph; dynamic=False: the shapes are static, guard on them as such.
        self.fn = torch.compile(_step, backend=backend, fullgraph=True, dynamic=False)

    def __call__(self, *args) -> torch.Tensor:
        if self.fn is not _step:
            try:
                return self.fn(*args)
            except Exception as e:  # noqa: BLE001 -- any compile failure falls back
                # fullgraph compiles before anything runs: the cache is untouched.
                first = (str(e).strip().splitlines() or [""])[0][:200]
                warnings.warn(f"generate: torch.compile failed ({type(e).__name__}: {first}); "
                              "decoding eagerly", RuntimeWarning, stacklevel=3)
                self.fn = _step
        return _step(*args)


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | None = None,
    attention_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    compile: bool | Literal["auto"] = False,
    backend: str | Callable = "inductor",
) -> torch.Tensor:
    """Continue ``input_ids`` (B, T) by up to ``max_new_tokens`` tokens.

    Args:
        model: a TransformerLM.
        input_ids: (B, T) prompt; left-padded when rows differ in length.
        max_new_tokens: tokens to add (>= 0).
        temperature: 0 for greedy decoding.
        top_k, top_p: sampling filters (ignored when greedy).
        eos_token_id: a row stops at this token (in [0, vocab_size)); finished rows are
            padded with it and decoding stops when every row has finished.
        attention_mask: (B, T) 1 for real prompt tokens, 0 for left padding.
        generator: random generator for sampling.
        compile: run the one-token step through ``torch.compile`` (compiled once, on
            the first generated token, then reused): True, False (the default: no
            compile time for short runs) or "auto" (when :func:`compiler_available`
            on a CPU or CUDA model). Without a working compiler a warning is given
            and decoding goes on eagerly; the tokens are the same either way.
        backend: the ``torch.compile`` backend ("inductor" generates code; "eager"
            and "aot_eager" only trace, for tests), or a backend callable.

    Returns:
        (B, T + n) with n <= max_new_tokens. An empty batch (B = 0) comes back as it
        is; a prompt must hold at least one token (T >= 1), there is nothing to
        continue otherwise.
    """
    max_new_tokens = check_int("max_new_tokens", max_new_tokens, min=0)
    temperature = check_float("temperature", temperature, ge=0)
    if top_k is not None:
        check_int("top_k", top_k, min=1)
    if top_p is not None:
        check_float("top_p", top_p, gt=0, le=1)
    check_tensor("input_ids", input_ids, dim=2, layout="(B, T)")
    if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
        raise TypeError(f"input_ids must be an integer tensor (B, T), got {input_ids.dtype}")
    B, T = input_ids.shape
    if T == 0:
        raise ValueError(
            f"input_ids must hold at least one prompt token per row, got shape {(B, T)}"
        )
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab is not None:
        check_ids("input_ids", input_ids, vocab, bound="vocab_size", what="token")
    if eos_token_id is not None:
        check_int("eos_token_id", eos_token_id, min=0)
        if vocab is not None and eos_token_id >= vocab:
            raise ValueError(f"eos_token_id ({eos_token_id}) must lie in [0, vocab_size={vocab})")
    if attention_mask is not None:
        check_tensor("attention_mask", attention_mask)
        if attention_mask.shape != (B, T):
            raise ValueError(
                f"attention_mask must be (B, T) = {(B, T)}, got {tuple(attention_mask.shape)}"
            )
    if compile not in (True, False, "auto"):
        raise ValueError(f"compile must be True, False or 'auto', got {compile!r}")
    if max_new_tokens == 0 or B == 0:
        return input_ids
    if compile == "auto":
        compile = compiler_available(input_ids.device)
    step = _CompiledStep(backend) if compile else None
    was_training = model.training
    model.eval()
    S = T + max_new_tokens
    if step is not None:
        # The step compiles per cache shape: lengths rounded up to a power of two let
        # runs of nearby lengths share one graph (keys past S stay masked).
        limit = getattr(getattr(model, "config", None), "max_seq_len", S)
        S = min(1 << (S - 1).bit_length(), max(S, limit))
    cache = model.make_cache(B, S)
    padding_mask = position_ids = None
    if attention_mask is not None:
        padding_mask = torch.ones(B, S, dtype=torch.bool, device=input_ids.device)
        padding_mask[:, :T] = attention_mask.bool()
        # Positions count real tokens only, as Hugging Face does for left padding.
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        next_pos = position_ids[:, -1:] + 1  # (B, 1)

    out = torch.empty(B, T + max_new_tokens, dtype=input_ids.dtype, device=input_ids.device)
    out[:, :T] = input_ids
    finished = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
    tokens = input_ids
    n = 0
    try:
        for n in range(max_new_tokens):
            if step is not None and n > 0:
                logits = step(model, tokens, cache, position_ids, padding_mask)  # (B, V)
            else:
                pm = None if padding_mask is None else padding_mask[:, : cache.length + tokens.shape[1]]
                h = model.hidden_states(tokens, position_ids=position_ids, padding_mask=pm,
                                        cache=cache)
                logits = model.lm_head(h[:, -1])  # (B, V): the prompt's other positions need none
            nxt = sample_next(
                logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator,
            )
            if eos_token_id is not None:
                nxt = torch.where(finished, torch.full_like(nxt, eos_token_id), nxt)
                finished |= nxt == eos_token_id
            out[:, T + n] = nxt
            tokens = nxt.unsqueeze(1)  # (B, 1)
            if position_ids is not None:
                position_ids = next_pos
                next_pos = next_pos + 1
            if eos_token_id is not None and bool(finished.all()):
                break
    finally:
        model.train(was_training)
    return out[:, : T + n + 1]
