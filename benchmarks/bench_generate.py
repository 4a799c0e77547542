"""Decoding: ``TransformerLM.generate``, eager and compiled, vs Hugging Face ``generate``.

Both models hold the same random Llama weights (ours converted with ``from_hf``) and
decode under ``torch.inference_mode``; greedy tokens must be identical or the
benchmark raises (fp32). Rate = new tokens per second of a whole ``generate`` call
(prefill included). Cases:

* the compiled-decoding case of issue 15: width 256, 4 layers, 8 query / 2 K/V
  heads, vocabulary 512, 16-token prompt, 200 new tokens, batch 1 -- ours eager,
  ours compiled (``generate(compile=True)``: the one-token step through Inductor)
  and Hugging Face, greedy; then the same with sampling (temperature, top-k, top-p)
  inside the compiled step against Hugging Face's sampling;
* a ~100M-parameter Llama (width 768, 12 layers, 12 / 4 heads, FFN 2048,
  vocabulary 32k), fp32 and bf16, batch 1, compiled, against its roofline;
* the older eager rows: width 256, vocabulary 32k, batch 1 and 4, and a tiny model.

The compile time (the first compiled call less a timed one) is reported apart, in
``extra`` and the notes, never in the medians: every compiled function is called
once before timing starts.

Machine limit: a decode step reads every weight once (the embedding only its B rows)
plus the KV cache written so far, so

    effective bandwidth = bytes read per step * steps per second

is set against the copy bandwidth measured in the same run (the roofline; a read
costs less than a copy's read + write, so > 100% is possible for weights that stay
in the last-level cache). Where a compiled step falls short, a ``torch.profiler`` run
of it splits the step into the LM head matmul, the other weight matmuls, attention
over the cache, Inductor's own fused kernels, Dynamo's guard checks and the Python
loop around the step; the computed shares are in the notes.
"""

from __future__ import annotations

import time

import torch

from benchmarks.harness import BenchResult, Case, machine_limits, time_interleaved
from blocklab.cost.memory import decode_step_bytes
from blocklab.lab.base import torch_threads
from blocklab.models import TransformerLM

NAME = "generate"

# The torch.compile backend of the compiled cases (tests swap in a tracing one).
BACKEND = "inductor"

ISSUE_SHAPES = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=8,
                    num_key_value_heads=2, intermediate_size=688, vocab_size=512)
ISSUE_PROMPT, ISSUE_NEW = 16, 200
QUICK_ISSUE_NEW, LM_NEW, QUICK_LM_NEW = 64, 48, 16  # new tokens of the other runs
SAMPLING = dict(temperature=0.8, top_k=50, top_p=0.9)
# Torch threads of the issue's case, both sides: its matmuls are small (256 x 384 to
# 256 x 688), and a second thread's fork/join per op costs more than it saves.
ISSUE_THREADS = 1
# ~100M parameters (124M with the 32k x 768 embedding, 100M read per step).
LM100M_SHAPES = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                     num_key_value_heads=4, intermediate_size=2048, vocab_size=32000)
QUICK_LM_SHAPES = dict(hidden_size=512, num_hidden_layers=4, num_attention_heads=8,
                       num_key_value_heads=4, intermediate_size=1376, vocab_size=8192)

SHAPES = dict(
    hidden_size=256,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=4,
    intermediate_size=688,
    vocab_size=32000,
)
QUICK_SHAPES = dict(SHAPES, num_hidden_layers=2, vocab_size=4096)
# A tiny model, where per-token framework overhead rather than the matmuls sets the
# speed (the case for speculative-decoding drafts and on-device models).
TINY_SHAPES = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, intermediate_size=344, vocab_size=1024)


def make_models(shapes: dict[str, int], dtype: torch.dtype = torch.float32, seed: int = 0):
    """(ours, peer): a random-init Hugging Face Llama and TransformerLM.from_hf of it."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        **shapes,
        max_position_embeddings=2048,
        # No early stop: a random model may emit any id, so no eos; pad only silences
        # the "setting pad_token_id" warning.
        eos_token_id=None,
        bos_token_id=None,
        pad_token_id=0,
    )
    peer = transformers.LlamaForCausalLM(config).to(dtype).eval()
    peer.generation_config.eos_token_id = None
    peer.generation_config.pad_token_id = 0
    ours = TransformerLM.from_hf(peer).eval()
    return ours, peer


def bytes_per_step(model: TransformerLM, batch: int, context: float) -> float:
    """Bytes a decode step reads: all weights but the embedding table (B rows of it),
    plus the keys and values of ``context`` cached positions per row."""
    cfg = model.config
    elt = model.embed.weight.element_size()
    weights = sum(p.numel() for p in model.parameters()) - model.embed.weight.numel()
    weights += batch * cfg.d_model
    kv = 2 * cfg.n_layers * cfg.kv_heads * cfg.dim_head * context * batch
    return (weights + kv) * elt


def check_same(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    if got.shape != want.shape or not torch.equal(got, want):
        n = min(got.shape[1], want.shape[1])
        where = (got[:, :n] != want[:, :n]).nonzero()[:1].tolist()
        raise AssertionError(f"{what}: generated tokens differ (shapes {tuple(got.shape)} vs "
                             f"{tuple(want.shape)}, first mismatch {where})")


def first_call(fn) -> tuple[object, float]:
    """(result, seconds) of one call: the compiled cases' compile time lives here."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


# Profile of the compiled step ---------------------------------------------------------
_SDPA = ("scaled_dot_product", "_flash_attention")
_MATMUL = ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear", "mkldnn")


def _in_region(evt) -> bool:
    while evt is not None:
        if evt.name.startswith("Torch-Compiled Region"):
            return True
        evt = evt.cpu_parent
    return False


def profile_step(call, vocab_size: int) -> dict[str, float]:
    """Seconds per compiled step by part, from ``torch.profiler`` over one ``call()``
    (a compiled ``generate`` already warmed up), between the first and the last
    compiled step (the eager prefill left out):

    lm_head (matmuls producing ``vocab_size`` columns), matmul (the other weight
    matmuls), attention (SDPA over the cache), inductor (the graph's time outside
    those aten ops: Inductor's fused C++ kernels and its Python wrapper), guards
    (Dynamo's cache lookup before each step), loop (the rest of the window: the
    Python loop of ``generate`` between steps, noise, token writes), step (the whole
    window per step). The profiler adds its own overhead to every op; the shares,
    not the absolute values, are the point.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        call()
    events = list(prof.events())
    regions = [e for e in events if e.name.startswith("Torch-Compiled Region")
               and not _in_region(e.cpu_parent)]
    if not regions:
        raise RuntimeError("no compiled step in the profile: did the step compile?")
    start = min(e.time_range.start for e in regions)
    end = max(e.time_range.end for e in regions)
    parts = dict.fromkeys(("lm_head", "matmul", "attention", "ops_other"), 0.0)
    guards = 0.0
    for e in events:
        if e.name == "TorchDynamo Cache Lookup" and start <= e.time_range.start <= end:
            guards += e.cpu_time_total
            continue
        if not e.name.startswith("aten::") and not e.name.startswith("mkldnn"):
            continue
        parent = e.cpu_parent
        if parent is not None and (parent.name.startswith("aten::")
                                   or parent.name.startswith("mkldnn")):
            continue  # count top-level ops only, their children are inside them
        if not _in_region(e):
            continue
        if any(s in e.name for s in _SDPA):
            parts["attention"] += e.cpu_time_total
        elif any(e.name.startswith(s) for s in _MATMUL):
            shapes = [s for s in (e.input_shapes or []) if s]
            # mm(x, W^T) or linear(x, W): the LM head's weight has V rows.
            key = "lm_head" if any(vocab_size in s for s in shapes) else "matmul"
            parts[key] += e.cpu_time_total
        else:
            parts["ops_other"] += e.cpu_time_total
    n = len(regions)
    region = sum(e.cpu_time_total for e in regions)
    out = {k: v / n / 1e6 for k, v in parts.items()}
    out["inductor"] = (region - sum(parts.values())) / n / 1e6
    out["guards"] = guards / n / 1e6
    # From one step's start to the next's: its region, the guards and the loop.
    last = max(e.time_range.start for e in regions)
    out["step"] = ((last - start) / (n - 1) if n > 1 else region) / 1e6
    out["loop"] = max(out["step"] - region / n / 1e6 - out["guards"], 0.0)
    out["steps"] = n
    return out


def profile_note(label: str, prof: dict[str, float], *, lm_head_bytes: int,
                 weight_bytes: int, cache_bytes: float, copy_gbps: float) -> str:
    """One line: where a compiled step's time goes, and the bandwidth at which it reads
    the weights and the cache. When the one-row matmuls are Inductor's own reductions
    (batch 1 on a CPU, ``models/_inductor_gemv.py``) they are inside Inductor's
    kernels, whose whole time is then set against the weights."""
    step = prof["step"]
    share = {k: 100 * prof[k] / step for k in
             ("lm_head", "matmul", "attention", "inductor", "ops_other", "guards", "loop")}

    def gbps(nbytes: float, seconds: float) -> str:
        if not seconds:
            return "-"
        rate = nbytes / seconds / 1e9
        return f"{rate:.1f} GB/s = {100 * rate / copy_gbps:.0f}% of copy"

    head = f"profile, {label}, one compiled step ({step * 1e3:.2f} ms under the profiler): "
    tail = (f"attention over the cache {share['attention']:.0f}% (reads the cache at "
            f"{gbps(cache_bytes, prof['attention'])}), other aten ops "
            f"{share['ops_other']:.0f}%, guard checks {share['guards']:.0f}%, Python loop "
            f"between steps {share['loop']:.0f}%")
    mm = prof["lm_head"] + prof["matmul"]
    if mm:
        return head + (
            f"LM head matmul {share['lm_head']:.0f}% (reads its weight at "
            f"{gbps(lm_head_bytes, prof['lm_head'])}), other weight matmuls "
            f"{share['matmul']:.0f}% (all weights: {gbps(weight_bytes, mm)}), Inductor's "
            f"fused kernels + wrapper {share['inductor']:.0f}%, " + tail)
    return head + (
        f"Inductor's kernels + wrapper {share['inductor']:.0f}% (the weight matmuls are "
        f"its reductions there; they read the weights at "
        f"{gbps(weight_bytes, prof['inductor'])} or faster), " + tail)


def step_profile_note(label: str, model: TransformerLM, prof: dict[str, float], *,
                      batch: int, context: float, copy_gbps: float) -> str:
    """:func:`profile_note` with the byte counts of ``model``'s decode step."""
    elt = model.embed.weight.element_size()
    weights = bytes_per_step(model, batch, 0)
    return profile_note(label, prof, lm_head_bytes=model.lm_head.weight.numel() * elt,
                        weight_bytes=weights,
                        cache_bytes=bytes_per_step(model, batch, context) - weights,
                        copy_gbps=copy_gbps)


# Cases -----------------------------------------------------------------------------
def _peer_call(peer, prompt, new_tokens, **sampling):
    mask = torch.ones_like(prompt)

    @torch.inference_mode()
    def call():
        return peer.generate(prompt, attention_mask=mask, max_new_tokens=new_tokens,
                             do_sample=bool(sampling), **sampling)

    return call


def _ours_call(ours, prompt, new_tokens, *, compile: bool, **sampling):
    g = torch.Generator().manual_seed(0)

    @torch.inference_mode()
    def call():
        g.manual_seed(0)
        return ours.generate(prompt, new_tokens, compile=compile,
                             backend=BACKEND, generator=g, **sampling)

    return call


def issue_cases(limits, repeats: int, notes: list[str], new_tokens: int = ISSUE_NEW):
    """The issue's case: ours eager, ours compiled, HF; greedy, then sampled."""
    with torch_threads(ISSUE_THREADS):
        return _issue_cases(limits, repeats, notes, new_tokens)


def _issue_cases(limits, repeats: int, notes: list[str], new_tokens: int):
    ours, peer = make_models(ISSUE_SHAPES)
    prompt = torch.randint(0, ISSUE_SHAPES["vocab_size"], (1, ISSUE_PROMPT))
    label = (f"{_shape_label(ISSUE_SHAPES)} prompt{ISSUE_PROMPT} new{new_tokens} b1, "
             f"{torch.get_num_threads()} thread(s)")
    cases = []
    for mode, sampling in (("greedy", {}), ("sampled", SAMPLING)):
        eager = _ours_call(ours, prompt, new_tokens, compile=False, **sampling)
        compiled = _ours_call(ours, prompt, new_tokens, compile=True, **sampling)
        hf = _peer_call(peer, prompt, new_tokens, **sampling)
        torch._dynamo.reset()
        got, first_s = first_call(compiled)
        check_same(got, eager(), f"{label} {mode}: compiled vs eager")
        if not sampling:
            check_same(got, hf(), f"{label}: ours vs Hugging Face")
        t = time_interleaved({"compiled": compiled, "eager": eager, "hf": hf},
                             warmup=1, repeats=repeats)
        compile_s = first_s - t["compiled"].median_s
        step_bytes = bytes_per_step(ours, 1, ISSUE_PROMPT + new_tokens / 2)
        per_tok = {k: v.median_s / new_tokens * 1e3 for k, v in t.items()}
        for which in ("compiled", "eager"):
            achieved = step_bytes * new_tokens / t[which].median_s / 1e9
            cases.append(Case(
                name=f"{_shape_label(ISSUE_SHAPES)} {mode} {which}",
                ours=t[which],
                peer=t["hf"],
                work=new_tokens,
                unit="new tok/s",
                limit_frac=achieved / limits.copy_gbps,
                limit_note="(weights + KV bytes read per decode step) x steps/s vs copy "
                           "bandwidth",
                extra=dict(shapes=label, threads=torch.get_num_threads(),
                           compile_s=compile_s if which == "compiled" else None,
                           first_call_s=first_s if which == "compiled" else None,
                           ms_per_token=per_tok[which], hf_ms_per_token=per_tok["hf"],
                           bytes_per_step=step_bytes, sampling=sampling or None),
            ))
        what = "tokens identical to eager and to Hugging Face" if not sampling else \
            "tokens identical to eager for the same seed (HF samples its own stream)"
        notes.append(
            f"issue case {mode} ({label}): compiled {per_tok['compiled']:.2f} ms/token, "
            f"eager {per_tok['eager']:.2f}, HF {per_tok['hf']:.2f} -> compiled "
            f"{t['hf'].median_s / t['compiled'].median_s:.2f}x HF (target >= 3x), eager "
            f"{t['hf'].median_s / t['eager'].median_s:.2f}x; {what}; compile time "
            f"{compile_s:.1f} s (first call {first_s:.1f} s, not in the medians)")
        if not sampling:
            prof = profile_step(compiled, ours.config.vocab_size)
            notes.append(step_profile_note(
                "issue case", ours, prof, batch=1, context=ISSUE_PROMPT + new_tokens / 2,
                copy_gbps=limits.copy_gbps))
    return cases


def _shape_label(shapes: dict[str, int]) -> str:
    """"d768 L12 12/4 heads v32k": width, layers, query / K/V heads, vocabulary."""
    v = shapes["vocab_size"]
    return (f"d{shapes['hidden_size']} L{shapes['num_hidden_layers']} "
            f"{shapes['num_attention_heads']}/{shapes['num_key_value_heads']} heads "
            + (f"v{v // 1000}k" if v >= 8000 else f"v{v}"))


def lm100m_cases(shapes, limits, repeats: int, notes: list[str], new_tokens: int,
                 with_peer: bool):
    """The ~100M model, fp32 and bf16, compiled, against the roofline."""
    cases = []
    prompt_len = 16
    for dtype in (torch.float32, torch.bfloat16):
        ours, peer = make_models(shapes, dtype=dtype)
        prompt = torch.randint(0, shapes["vocab_size"], (1, prompt_len))
        compiled = _ours_call(ours, prompt, new_tokens, compile=True)
        torch._dynamo.reset()
        got, first_s = first_call(compiled)
        fns = {"compiled": compiled}
        if with_peer:
            fns["hf"] = _peer_call(peer, prompt, new_tokens)
            if dtype == torch.float32:
                check_same(got, fns["hf"](), f"{_shape_label(shapes)}: ours vs Hugging Face")
        t = time_interleaved(fns, warmup=1, repeats=repeats)
        compile_s = first_s - t["compiled"].median_s
        cfg = ours.config
        dt = str(dtype).removeprefix("torch.")
        context = prompt_len + new_tokens / 2
        step = decode_step_bytes(cfg, context=int(context), dtype=dtype)
        steps_s = new_tokens / t["compiled"].median_s
        frac = step["total"] * steps_s / 1e9 / limits.copy_gbps
        params = ours.num_parameters()
        label = f"{_shape_label(shapes)} {dt}"
        cases.append(Case(
            name=f"{label} compiled b1",
            ours=t["compiled"],
            peer=t.get("hf"),
            work=new_tokens,
            unit="new tok/s",
            limit_frac=frac,
            limit_note="(weights + KV bytes read per decode step) x steps/s vs copy bandwidth",
            extra=dict(params=params, dtype=dt, threads=torch.get_num_threads(),
                       prompt_len=prompt_len, new_tokens=new_tokens,
                       bytes_per_step=step["total"], weight_bytes=step["weights"],
                       kv_bytes=step["kv_cache"], tokens_per_s=steps_s, compile_s=compile_s,
                       first_call_s=first_s),
        ))
        peer_txt = ""
        if "hf" in t:
            peer_txt = f", {t['hf'].median_s / t['compiled'].median_s:.2f}x HF"
        notes.append(
            f"{label} ({params / 1e6:.0f}M parameters, {step['total'] / 1e6:.0f} MB read "
            f"per step), b1: {steps_s:.1f} tok/s compiled = {100 * frac:.0f}% of the "
            f"roofline (target >= 50%){peer_txt}; compile time {compile_s:.1f} s (first "
            f"call {first_s:.1f} s, not in the medians)")
        prof = profile_step(compiled, cfg.vocab_size)
        notes.append(step_profile_note(label, ours, prof, batch=1, context=context,
                                       copy_gbps=limits.copy_gbps))
        del ours, peer
    return cases


def eager_cases(main_shapes, limits, repeats: int, prompt_len: int, new_tokens: int):
    """The older rows: ours eager vs HF, width 256 with vocabulary 32k, and tiny."""
    cases = []
    runs = [("", main_shapes, b) for b in (1, 4)] + [("tiny ", TINY_SHAPES, 1)]
    for label, shapes, batch in runs:
        ours, peer = make_models(shapes)
        prompt = torch.randint(0, shapes["vocab_size"], (batch, prompt_len))
        run_ours = _ours_call(ours, prompt, new_tokens, compile=False)
        run_peer = _peer_call(peer, prompt, new_tokens)
        check_same(run_ours(), run_peer(), f"batch {batch}: ours vs Hugging Face")
        t = time_interleaved({"ours": run_ours, "peer": run_peer}, warmup=1, repeats=repeats)
        # Mean context over the decode steps: prompt plus half the new tokens.
        step_bytes = bytes_per_step(ours, batch, prompt_len + new_tokens / 2)
        achieved = step_bytes * new_tokens / t["ours"].median_s / 1e9  # GB/s
        cases.append(Case(
            name=f"{label}b{batch} prompt{prompt_len} new{new_tokens}",
            ours=t["ours"],
            peer=t["peer"],
            work=batch * new_tokens,
            unit="new tok/s",
            limit_frac=achieved / limits.copy_gbps,
            limit_note="(weights + KV bytes read per decode step) x steps/s vs copy bandwidth",
            extra=dict(bytes_per_step=step_bytes, effective_gbps=achieved),
        ))
    return cases


def run(quick: bool = False) -> BenchResult:
    main_shapes = QUICK_SHAPES if quick else SHAPES
    prompt_len, new_tokens = (16, 32) if quick else (32, 128)
    repeats = 3 if quick else 5
    limits = machine_limits(copy_mib=64 if quick else 256, matmul_n=1024 if quick else 2048)
    notes: list[str] = []
    issue_new = QUICK_ISSUE_NEW if quick else ISSUE_NEW
    cases = issue_cases(limits, repeats, notes, new_tokens=issue_new)
    lm_shapes = QUICK_LM_SHAPES if quick else LM100M_SHAPES
    cases += lm100m_cases(lm_shapes, limits, 2 if quick else 3, notes,
                          new_tokens=QUICK_LM_NEW if quick else LM_NEW, with_peer=True)
    cases += eager_cases(main_shapes, limits, repeats, prompt_len, new_tokens)
    notes += [
        "fp32 tokens checked identical to the peer's before timing (bf16: not checked, "
        "rounding may pick other near-tied tokens)",
        "compiled steps attend over the whole static cache buffer (its length rounded up "
        "to a power of two), the bytes above count only the filled part",
        "copy bandwidth is measured on a tensor larger than most caches; weights that "
        "stay in the last-level cache between steps can be read faster (> 100%)",
    ]
    return BenchResult(
        name=NAME,
        peer="transformers LlamaForCausalLM.generate (greedy; sampled rows do_sample=True)",
        dtype="float32 (the ~100M rows also bfloat16)",
        shapes=dict(issue=dict(ISSUE_SHAPES, prompt_len=ISSUE_PROMPT,
                               new_tokens=issue_new, sampling=SAMPLING),
                    lm100m=lm_shapes, eager=dict(main_shapes, prompt_len=prompt_len,
                                                 new_tokens=new_tokens, batches=[1, 4]),
                    tiny=TINY_SHAPES),
        cases=cases,
        limits=limits,
        notes=notes,
    )


if __name__ == "__main__":
    from benchmarks.harness import print_result

    print_result(run())
