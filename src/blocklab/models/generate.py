"""Autoregressive decoding with a preallocated KV cache.

The prompt is run once (prefill) and fills the cache; each further step runs one
token per row and reads the cached keys and values. Temperature 0 is greedy
(argmax); otherwise logits / temperature are filtered by top-k and nucleus (top-p,
Holtzman et al. 2020) and sampled by the Gumbel-max trick (Gumbel 1954; Maddison et
al. 2014):

    next = argmax_i (l_i / T + g_i),    g_i = -log(-log u_i),  u_i ~ U[0, 1)

which draws i with probability softmax(l / T)_i exactly (an exponential race: the
smallest of E_i / p_i, E_i = -log u_i ~ Exp(1), wins with probability p_i). The
uniforms are drawn from the caller's generator *outside* any compiled code, one
(B, V) tensor per step, and passed in, so eager and compiled decoding draw the same
stream and pick the same tokens (``torch.multinomial`` under ``torch.compile`` would
use Inductor's own random stream instead).

With ``compile`` the one-token step (:meth:`TransformerLM.decode_step`: the whole
static cache buffer, a key mask, the position a tensor) and the choice of the next
token run through ``torch.compile`` once per model shape and sampling setting, and
are reused for every token and position (gpt-fast's recipe); the prefill stays
eager, its length changes with the prompt. With Inductor, batch-1 steps on a CPU
compute their one-row matmuls as Inductor's own reductions
(``models/_inductor_gemv.py``), which read the weights faster than ATen's GEMV.
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


def _choose(
    logits: torch.Tensor,
    noise: torch.Tensor | None,
    temperature: float | torch.Tensor,
    top_k: int | None,
    top_p: float | torch.Tensor | None,
) -> torch.Tensor:
    """Next token ids (B,) from logits (B, V): argmax when ``noise`` is None, else the
    Gumbel-max draw with ``noise`` (B, V) uniforms in [0, 1). Pure tensor code, the
    same function eager and compiled; ``temperature`` and ``top_p`` may be 0-d
    tensors (graph inputs, not constants: a new value does not recompile); a
    ``top_p`` of None and a ``top_k`` of None or >= V filter nothing."""
    if noise is None:
        return logits.argmax(dim=-1)
    scores = logits.float() / temperature  # (B, V)
    top = None  # the kept scores in descending order, when known
    if top_k is not None and top_k < scores.shape[-1]:
        top = torch.topk(scores, top_k, dim=-1).values  # (B, k), sorted
        scores = scores.masked_fill(scores < top[:, -1:], float("-inf"))
    if top_p is not None:
        if top is None:
            top = torch.sort(scores, dim=-1, descending=True).values  # (B, V)
        probs = top.softmax(dim=-1)
        # Keep a token while the mass before it is under top_p (the first always).
        kept = (probs.cumsum(dim=-1) - probs) < top_p  # (B, k): a prefix of True
        last = top.gather(-1, kept.sum(dim=-1, keepdim=True) - 1)  # (B, 1)
        scores = scores.masked_fill(scores < last, float("-inf"))
    # u = 0 gives -inf: that token is never drawn.
    gumbel = -torch.log(-torch.log(noise))
    return (scores + gumbel).argmax(dim=-1)


def _noise(batch: int, vocab: int, generator: torch.Generator | None,
           device: torch.device) -> torch.Tensor:
    """One step's uniforms (B, V) for :func:`_choose`, from ``generator``."""
    return torch.rand(batch, vocab, generator=generator, device=device)


def sample_next(
    logits: torch.Tensor,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next token ids (B,) from last-position logits (B, V): argmax at temperature 0,
    else a draw from softmax(logits / temperature) restricted to the top-k tokens and
    the smallest top set of mass >= top_p (Gumbel-max, one (B, V) uniform tensor from
    ``generator``)."""
    if temperature == 0.0:
        return _choose(logits, None, 0.0, None, None)
    noise = _noise(logits.shape[0], logits.shape[-1], generator, logits.device)
    return _choose(logits, noise, temperature, top_k,
                   None if top_p is None or top_p >= 1.0 else top_p)


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


def _step_logits(model, tokens, cache, position_ids, padding_mask) -> torch.Tensor:
    """Last-position logits (B, V) of one decoding step."""
    return model.decode_step(
        tokens, cache, position_ids=position_ids, padding_mask=padding_mask)[:, -1]


def _step(model, tokens, cache, position_ids, padding_mask, noise, temperature, top_k,
          top_p) -> torch.Tensor:
    """Next token ids (B,) of one decoding step: :func:`_step_logits` then
    :func:`_choose`, one graph when compiled (no (B, V) logits back to Python)."""
    logits = _step_logits(model, tokens, cache, position_ids, padding_mask)
    return _choose(logits, noise, temperature, top_k, top_p)


class _CompiledStep:
    """``fn`` through ``torch.compile``; on the first failure (no compiler, an
    unsupported op) a one-line warning, and eager calls of ``fn`` from then on.

    One instance serves one ``generate`` call, whose shapes and settings do not
    change: only its first call can compile. That call may add a graph beside those
    of earlier calls (other cache lengths, batches, models, sampling settings) up to
    ``RECOMPILE_LIMIT`` per process instead of Dynamo's default 8, past which Dynamo
    would run the step eagerly for good.
    """

    RECOMPILE_LIMIT = 64

    def __init__(self, backend: str | Callable, fn: Callable = _step) -> None:
        self.eager = fn
        options = None
        if backend == "inductor":
            from blocklab.models._inductor_gemv import one_row_matmul_pass

            # Batch-1 steps: one-row matmuls as Inductor's reductions on a CPU, which
            # read the weights near the copy bandwidth (ATen's GEMV: about half).
            # Speed only: without Inductor's pattern matcher the step compiles as is.
            try:
                options = {"post_grad_custom_post_pass": one_row_matmul_pass()}
            except (ImportError, AttributeError):
                options = None
        # fullgraph: a graph break would leave part of the step (and its cache writes)
        # outside the graph; dynamic=False: the shapes are static, guard on them as such.
        self.fn = torch.compile(fn, backend=backend, fullgraph=True, dynamic=False,
                                options=options)
        self.calls = 0

    @property
    def compiled(self) -> bool:
        """False once a failure has switched to eager calls."""
        return self.fn is not self.eager

    def __call__(self, *args) -> torch.Tensor:
        if self.compiled:
            try:
                self.calls += 1
                if self.calls > 1:
                    return self.fn(*args)
                limit = max(self.RECOMPILE_LIMIT, torch._dynamo.config.recompile_limit)
                with torch._dynamo.config.patch(recompile_limit=limit):
                    return self.fn(*args)
            except torch._dynamo.exc.RecompileError:
                raise  # error_on_recompile: the caller asked for this error
            except Exception as e:  # noqa: BLE001 -- any compile failure falls back
                # fullgraph compiles before anything runs: the cache is untouched.
                first = (str(e).strip().splitlines() or [""])[0][:200]
                warnings.warn(f"generate: torch.compile failed ({type(e).__name__}: {first}); "
                              "decoding eagerly", RuntimeWarning, stacklevel=3)
                self.fn = self.eager
        return self.eager(*args)


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
        generator: random generator for sampling: each step draws one (B, V) tensor
            of uniforms from it (Gumbel-max, see the module docstring), so a seeded
            generator gives the same tokens eagerly and compiled.
        compile: run the one-token step and the choice of the next token through
            ``torch.compile`` (compiled once, on the first generated token, then
            reused; again for a new sampling setting): True, False (the default: no
            compile time for short runs) or "auto" (when :func:`compiler_available`
            on a CPU or CUDA model). Without a working compiler a warning is given
            and decoding goes on eagerly; the tokens are the same either way (up to
            float rounding deciding a near-tie).
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
        top_k = check_int("top_k", top_k, min=1)
    if top_p is not None:
        top_p = check_float("top_p", top_p, gt=0, le=1)
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
    # Sampling settings, fixed for the run: top_k a constant of the compiled graph,
    # temperature and top_p 0-d tensors (another value does not compile again).
    choice: tuple = (0.0, None, None)
    if temperature > 0.0:
        vocab_size = model.config.vocab_size
        choice = (
            torch.tensor(temperature, device=input_ids.device),
            None if top_k is None or top_k >= vocab_size else top_k,
            None if top_p is None or top_p >= 1.0 else torch.tensor(top_p, device=input_ids.device),
        )

    out = torch.empty(B, T + max_new_tokens, dtype=input_ids.dtype, device=input_ids.device)
    out[:, :T] = input_ids
    finished = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
    tokens = input_ids
    n = 0
    try:
        for n in range(max_new_tokens):
            noise = None
            if temperature > 0.0:  # drawn here, never inside compiled code
                noise = _noise(B, vocab_size, generator, input_ids.device)
            if step is not None and n > 0:
                nxt = step(model, tokens, cache, position_ids, padding_mask, noise, *choice)
            else:
                pm = None if padding_mask is None else padding_mask[:, : cache.length + tokens.shape[1]]
                h = model.hidden_states(tokens, position_ids=position_ids, padding_mask=pm,
                                        cache=cache)
                logits = model.lm_head(h[:, -1])  # (B, V): the prompt's other positions need none
                nxt = _choose(logits, noise, *choice)  # (B,)
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
