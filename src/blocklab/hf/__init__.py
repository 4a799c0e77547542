"""blocklab blocks inside Hugging Face Llama, Mistral and Qwen2 models: a drop-in patch.

Use it the way Liger-Kernel is used::

    import blocklab.hf
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa")
    blocklab.hf.patch(model)            # this model, in place (returns it)
    ...                                 # train, generate, save_pretrained as before
    blocklab.hf.unpatch(model)          # exactly as it was

    blocklab.hf.patch_llama()           # every Llama model built from now on
    blocklab.hf.unpatch_llama()         # and back (those models unpatched too)

``patch(model, attention=True, rope=True, rms_norm=True, mlp=True, loss=True)`` takes a
``LlamaForCausalLM``, ``MistralForCausalLM``, ``Qwen2ForCausalLM`` or their base
``*Model``. What each part swaps, module by module (only ``forward`` changes;
parameters, their names and the state_dict stay Hugging Face's):

* attention -- blocklab's grouped-head SDPA (:mod:`blocklab.attention.functional`):
  each K/V head is read once for its group of query heads, never repeated, under the
  mask Hugging Face built (causal, sliding window, padding). A query that sees no
  token at all (a left-padding position) gets zeros, as with transformers 5's sdpa.
* rope -- q and k rotated in their own storage (:func:`blocklab.position.apply_rotary`
  with ``inplace=True``) by the model's own cos/sin, so every rope type Hugging Face
  computes (default, linear, dynamic, yarn, llama3, longrope) keeps its angles and
  none has to be refused.
* rms_norm -- torch's fused ``F.rms_norm`` with Hugging Face's float32 rounding.
* mlp -- ``silu(gate) * up`` as one autograd function that keeps two of the three
  (B, T, I) activations Hugging Face keeps.
* loss -- in training, with ``labels``: the LM head fused with the cross entropy
  (:func:`blocklab.losses.linear_cross_entropy`), chunk by chunk, so the (B*T, V)
  logits are never formed; Hugging Face's shift by one, ``ignore_index`` -100, mean
  over counted tokens or ``num_items_in_batch``. The output's ``logits`` is then None
  (as Liger's); pass ``skip_logits=False`` to the forward for Hugging Face's own path,
  or ``skip_logits=True`` to fuse outside training too. Without labels, or in eval
  mode, logits as usual (``generate`` is unaffected).

Equal to the unpatched model in fp32 (logits, loss and every parameter's gradient to
1e-5, greedy ``generate`` tokens identical with Hugging Face's DynamicCache), tested in
``tests/hf/``; timed against it in ``benchmarks/bench_hf_patch.py``.

Refused with an error, before anything is changed: any other model class (TypeError),
a transformers version older than the 4.48 attention API for attention/rope
(TypeError); attention with an implementation other than sdpa/eager (flash, flex),
attention dropout or ``output_attentions``; an MLP activation other than SiLU; the loss
with a custom ``loss_function`` or an LM head with a bias (ValueError -- turn that part
off). Patching twice never patches a module twice.

``transformers`` is an optional dependency (``blocklab[peers]``): it is imported when a
patch is applied, not by ``import blocklab`` or ``import blocklab.hf``.
"""

from __future__ import annotations

from blocklab.hf.loss import causal_lm_loss
from blocklab.hf.patch import FAMILIES, is_patched, patch, patch_family, unpatch, unpatch_family

__all__ = [
    "patch",
    "unpatch",
    "is_patched",
    "patch_llama",
    "unpatch_llama",
    "patch_mistral",
    "unpatch_mistral",
    "patch_qwen2",
    "unpatch_qwen2",
    "patch_family",
    "unpatch_family",
    "causal_lm_loss",
    "FAMILIES",
]


def patch_llama(*, attention: bool = True, rope: bool = True, rms_norm: bool = True,
                mlp: bool = True, loss: bool = True) -> None:
    """Patch every ``LlamaForCausalLM`` / ``LlamaModel`` built from now on."""
    patch_family("llama", attention=attention, rope=rope, rms_norm=rms_norm, mlp=mlp, loss=loss)


def unpatch_llama() -> None:
    """Undo :func:`patch_llama` (the models it patched are unpatched too)."""
    unpatch_family("llama")


def patch_mistral(*, attention: bool = True, rope: bool = True, rms_norm: bool = True,
                  mlp: bool = True, loss: bool = True) -> None:
    """Patch every ``MistralForCausalLM`` / ``MistralModel`` built from now on."""
    patch_family("mistral", attention=attention, rope=rope, rms_norm=rms_norm, mlp=mlp,
                 loss=loss)


def unpatch_mistral() -> None:
    """Undo :func:`patch_mistral` (the models it patched are unpatched too)."""
    unpatch_family("mistral")


def patch_qwen2(*, attention: bool = True, rope: bool = True, rms_norm: bool = True,
                mlp: bool = True, loss: bool = True) -> None:
    """Patch every ``Qwen2ForCausalLM`` / ``Qwen2Model`` built from now on."""
    patch_family("qwen2", attention=attention, rope=rope, rms_norm=rms_norm, mlp=mlp, loss=loss)


def unpatch_qwen2() -> None:
    """Undo :func:`patch_qwen2` (the models it patched are unpatched too)."""
    unpatch_family("qwen2")
