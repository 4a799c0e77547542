"""Decoding at long context with MHA, GQA and MQA: blocklab vs Hugging Face ``generate``.

For each number of K/V heads (8 = MHA, 2 = GQA, 1 = MQA) one random Hugging Face Llama
and ``TransformerLM.from_hf`` of it (same weights) decode greedily in fp32 after n
positions already cached, n from 1k to 8k. Both caches hold the same random keys and
values -- a decode step's work does not depend on them, and no prefill is timed -- so
both must produce the same tokens, which is checked before timing.

* ours: the decode loop of ``blocklab.models.generate`` (one token per row through
  ``model(tokens, cache=cache)``, argmax) on the preallocated ``KVCache``, rewound to n
  before each call;
* peer: ``LlamaForCausalLM.generate(ids, cache=DynamicCache, do_sample=False)`` with
  the cache cropped back to n before each call.

Rate = new tokens per second over the whole call. Machine limit: a step reads the
whole KV cache once (each K/V head once for its group of query heads), so

    cache bandwidth = KV-cache bytes per step * steps per second

is set against the copy bandwidth measured in the same run (``extra`` also carries
the weights + cache figure). Hugging Face's grouped attention expands K/V to every
query head (``repeat_kv``) and its ``DynamicCache`` grows by concatenation; ours reads
each K/V head once from a buffer written in place.
"""

from __future__ import annotations

import torch

from benchmarks.harness import BenchResult, Case, machine_limits, time_interleaved
from blocklab.cost.memory import decode_step_bytes, kv_cache_bytes
from blocklab.models import TransformerLM

NAME = "decode"

SHAPES = dict(
    hidden_size=256,
    num_hidden_layers=2,
    num_attention_heads=8,
    intermediate_size=688,
    vocab_size=4096,
)
KV_HEADS = (8, 2, 1)


def kind(h_kv: int, n_heads: int) -> str:
    return "MHA" if h_kv == n_heads else "MQA" if h_kv == 1 else f"GQA-{h_kv}"


def make_models(shapes: dict[str, int], n_kv_heads: int, max_len: int, seed: int = 0):
    """(ours, peer): a random-init Hugging Face Llama and TransformerLM.from_hf of it."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        **shapes, num_key_value_heads=n_kv_heads, max_position_embeddings=max_len,
        eos_token_id=None, bos_token_id=None, pad_token_id=0,
    )
    peer = transformers.LlamaForCausalLM(config).eval()
    peer.generation_config.eos_token_id = None
    peer.generation_config.pad_token_id = 0
    return TransformerLM.from_hf(peer).eval(), peer


def filled_caches(ours: TransformerLM, peer, batch: int, context: int, new_tokens: int,
                  g: torch.Generator):
    """Our KVCache and a Hugging Face DynamicCache holding the same random K/V."""
    from transformers import DynamicCache

    cfg = ours.config
    cache = ours.make_cache(batch, context + new_tokens)
    hf_cache = DynamicCache(config=peer.config)
    for layer in range(cfg.n_layers):
        k, v = (torch.randn(batch, cfg.kv_heads, context, cfg.dim_head, generator=g)
                for _ in range(2))  # (B, H_kv, n, D)
        cache.k[layer, :, :, :context] = k
        cache.v[layer, :, :, :context] = v
        hf_cache.update(k, v, layer)
    cache.length = context
    return cache, hf_cache


def run(quick: bool = False) -> BenchResult:
    contexts = (1024, 8192) if quick else (1024, 2048, 4096, 8192)
    new_tokens = 8 if quick else 32
    batch = 4
    repeats = 3 if quick else 5
    limits = machine_limits(copy_mib=64 if quick else 256, matmul_n=1024 if quick else 2048)
    g = torch.Generator().manual_seed(1)
    cases = []
    for h_kv in KV_HEADS:
        ours, peer = make_models(SHAPES, h_kv, max(contexts) + new_tokens + 1)
        cfg = ours.config
        for n in contexts:
            cache, hf_cache = filled_caches(ours, peer, batch, n, new_tokens, g)
            ids = torch.randint(0, cfg.vocab_size, (batch, n + 1), generator=g)
            mask = torch.ones_like(ids)

            @torch.inference_mode()
            def run_ours(cache=cache, ids=ids, n=n, ours=ours):
                cache.length = n
                tok = ids[:, -1:]  # (B, 1): the token at position n
                out = []
                for _ in range(new_tokens):
                    tok = ours(tok, cache=cache)[:, -1].argmax(-1, keepdim=True)
                    out.append(tok)
                return torch.cat(out, dim=1)

            @torch.inference_mode()
            def run_peer(hf_cache=hf_cache, ids=ids, mask=mask, n=n, peer=peer):
                extra = hf_cache.get_seq_length() - n
                if extra:
                    hf_cache.crop(-extra)
                out = peer.generate(ids, attention_mask=mask, cache=hf_cache,
                                    max_new_tokens=new_tokens, do_sample=False)
                return out[:, n + 1:]

            got, want = run_ours(), run_peer()
            if not torch.equal(got, want):
                where = (got != want).nonzero()[:1].tolist()
                raise AssertionError(
                    f"{kind(h_kv, cfg.n_heads)} n={n}: tokens differ from Hugging Face "
                    f"(first mismatch at {where})")
            t = time_interleaved({"ours": run_ours, "peer": run_peer}, warmup=1,
                                 repeats=repeats)
            # Mean context over the steps: n plus half the new tokens.
            mean_ctx = n + new_tokens // 2
            kv = kv_cache_bytes(n_layers=cfg.n_layers, n_kv_heads=cfg.kv_heads,
                                head_dim=cfg.dim_head, seq_len=mean_ctx, batch=batch,
                                dtype=torch.float32)
            total = decode_step_bytes(cfg, context=mean_ctx, batch=batch,
                                      dtype=torch.float32)["total"]
            steps_s = new_tokens / t["ours"].median_s
            cases.append(Case(
                name=f"{kind(h_kv, cfg.n_heads)} n{n}",
                ours=t["ours"],
                peer=t["peer"],
                work=batch * new_tokens,
                unit="new tok/s",
                limit_frac=kv * steps_s / 1e9 / limits.copy_gbps,
                limit_note="KV-cache bytes read per decode step x steps/s vs copy bandwidth",
                extra=dict(kv_heads=h_kv, context=n, kv_bytes_per_step=kv,
                           kv_gbps=kv * steps_s / 1e9, weights_kv_gbps=total * steps_s / 1e9,
                           peer_kv_gbps=kv * new_tokens / t["peer"].median_s / 1e9),
            ))
            del cache, hf_cache
    return BenchResult(
        name=NAME,
        peer="transformers LlamaForCausalLM.generate(cache=DynamicCache, do_sample=False)",
        dtype="float32",
        shapes=dict(SHAPES, kv_heads=list(KV_HEADS), contexts=list(contexts),
                    new_tokens=new_tokens, batch=batch),
        cases=cases,
        limits=limits,
        notes=[
            "both caches hold the same random K/V; tokens checked identical before timing",
            "no prefill is timed: decode steps only, after n cached positions",
        ],
    )


if __name__ == "__main__":
    from benchmarks.harness import print_result

    print_result(run())
