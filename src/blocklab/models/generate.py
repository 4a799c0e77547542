"""Autoregressive decoding with a preallocated KV cache.

The prompt is run once (prefill) and fills the cache; each further step runs one
token per row and reads the cached keys and values. Temperature 0 is greedy
(argmax); otherwise logits / temperature are filtered by top-k and nucleus (top-p,
Holtzman et al. 2020) and sampled.
"""

from __future__ import annotations

import torch

__all__ = ["generate", "sample_next"]


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
) -> torch.Tensor:
    """Continue ``input_ids`` (B, T) by up to ``max_new_tokens`` tokens.

    Args:
        model: a TransformerLM.
        input_ids: (B, T) prompt; left-padded when rows differ in length.
        max_new_tokens: tokens to add (>= 0).
        temperature: 0 for greedy decoding.
        top_k, top_p: sampling filters (ignored when greedy).
        eos_token_id: a row stops at this token; finished rows are padded with it and
            decoding stops when every row has finished.
        attention_mask: (B, T) 1 for real prompt tokens, 0 for left padding.
        generator: random generator for sampling.

    Returns:
        (B, T + n) with n <= max_new_tokens.
    """
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens ({max_new_tokens!r}) must be an int >= 0")
    if temperature < 0:
        raise ValueError(f"temperature ({temperature}) must be >= 0")
    if top_k is not None and top_k <= 0:
        raise ValueError(f"top_k ({top_k}) must be positive")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p ({top_p}) must be in (0, 1]")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (B, T), got shape {tuple(input_ids.shape)}")
    if max_new_tokens == 0:
        return input_ids
    was_training = model.training
    model.eval()
    B, T = input_ids.shape
    cache = model.make_cache(B, T + max_new_tokens)
    padding_mask = position_ids = None
    if attention_mask is not None:
        if attention_mask.shape != (B, T):
            raise ValueError(
                f"attention_mask must be (B, T) = {(B, T)}, got {tuple(attention_mask.shape)}"
            )
        padding_mask = torch.ones(B, T + max_new_tokens, dtype=torch.bool, device=input_ids.device)
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
            pm = None if padding_mask is None else padding_mask[:, : cache.length + tokens.shape[1]]
            h = model.hidden_states(tokens, position_ids=position_ids, padding_mask=pm, cache=cache)
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
