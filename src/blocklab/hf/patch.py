"""Patching Hugging Face Llama/Mistral/Qwen2 models in place, and undoing it.

A patch replaces the ``forward`` of module *instances* (a
:class:`~blocklab.hf._state.PatchedForward` in the module's ``__dict__``, which
``nn.Module.__call__`` finds before the class's), never a class attribute nor a module:
parameters, buffers, their names, the state_dict, hooks, optimizers and
``save_pretrained`` see the same model, and ``deepcopy``/``torch.save`` keep the patch.
Each patched module also holds its :class:`~blocklab.hf._state.ModulePatch` record
(what it replaced), which ``unpatch`` uses to put back exactly what was there and then
deletes. A module that accelerate has hooked (its ``_old_forward``) gets the patch
there, under the hook.

The class-level patches (``patch_llama()`` etc., Liger-Kernel style) wrap the
``__init__`` of the family's ``ForCausalLM`` and base ``Model`` classes so that every
model built afterwards -- ``from_pretrained`` included -- is patched as it is built;
``unpatch_llama()`` puts the ``__init__`` back and unpatches the models it patched.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import types
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from torch import nn

from blocklab._checks import check_bool
from blocklab.hf._state import STATE, ModulePatch, PatchedForward
from blocklab.hf.attention import AttentionPatch, attention_forward
from blocklab.hf.layers import mlp_forward, rms_norm_forward
from blocklab.hf.loss import (
    HeadPatch,
    LossPatch,
    causal_lm_forward,
    default_chunk_size,
    head_forward,
)

__all__ = ["patch", "unpatch", "is_patched", "patch_family", "unpatch_family", "FAMILIES",
           "ModulePatch"]

# family -> (modeling module, class name prefix)
_MODULES = {
    "llama": ("transformers.models.llama.modeling_llama", "Llama"),
    "mistral": ("transformers.models.mistral.modeling_mistral", "Mistral"),
    "qwen2": ("transformers.models.qwen2.modeling_qwen2", "Qwen2"),
}
FAMILIES = tuple(_MODULES)
_ATTN_IMPLEMENTATIONS = ("sdpa", "eager")  # the 4-d masks blocklab's attention reads
_GATE_ACTIVATIONS = ("silu", "swish")

M = TypeVar("M", bound=nn.Module)


@dataclass(frozen=True)
class _Family:
    name: str
    module: types.ModuleType
    causal_lm: type
    base: type
    attention: type
    norm: type
    mlp: type


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


@functools.cache
def _family(name: str) -> _Family:
    path, prefix = _MODULES[name]
    module = importlib.import_module(path)
    names = {"causal_lm": "ForCausalLM", "base": "Model", "attention": "Attention",
             "norm": "RMSNorm", "mlp": "MLP"}
    missing = [prefix + suffix for suffix in names.values() if not hasattr(module, prefix + suffix)]
    if missing:
        raise TypeError(f"transformers {_transformers_version()} has no {', '.join(missing)} in "
                        f"{path}: blocklab.hf cannot patch {prefix} models of this version")
    classes = {key: getattr(module, prefix + suffix) for key, suffix in names.items()}
    return _Family(name=name, module=module, **classes)


def _family_of(model: object) -> _Family:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a Hugging Face nn.Module, got {type(model).__name__}")
    supported = []
    for name in FAMILIES:
        family = _family(name)
        if isinstance(model, (family.causal_lm, family.base)):
            return family
        supported += [family.causal_lm.__name__, family.base.__name__]
    raise TypeError(f"blocklab.hf.patch supports {', '.join(supported)}; got "
                    f"{type(model).__name__}")


def _check_attention_api(family: _Family) -> None:
    """The attention modules' forward is the transformers >= 4.48 one (cos/sin passed
    in, an attention-function registry), which the replacement mirrors."""
    params = inspect.signature(family.attention.forward).parameters
    have = all(hasattr(family.module, f) for f in ("apply_rotary_pos_emb",
                                                   "eager_attention_forward",
                                                   "ALL_ATTENTION_FUNCTIONS"))
    if "position_embeddings" not in params or not have:
        raise TypeError(
            f"{family.attention.__name__} of transformers {_transformers_version()} has an "
            "attention forward blocklab.hf does not know (it needs transformers >= 4.48); "
            "patch with attention=False, rope=False")


def _check_attention_config(config: Any) -> None:
    impl = getattr(config, "_attn_implementation", None)
    if impl not in _ATTN_IMPLEMENTATIONS:
        raise ValueError(
            f"attention=True reads Hugging Face's sdpa or eager masks, but the model uses "
            f"attn_implementation {impl!r}; load it with attn_implementation='sdpa' or patch "
            "with attention=False")
    dropout = float(getattr(config, "attention_dropout", 0.0) or 0.0)
    if dropout:
        raise ValueError(f"attention=True has no attention dropout, but the config's "
                         f"attention_dropout is {dropout}; patch with attention=False")
    if getattr(config, "output_attentions", False):
        raise ValueError("attention=True never forms the attention weights, but the config "
                         "has output_attentions=True; patch with attention=False")


def _check_mlp(config: Any) -> None:
    act = getattr(config, "hidden_act", "silu")
    if act not in _GATE_ACTIVATIONS:
        raise ValueError(f"mlp=True fuses a SiLU gate, but the config's hidden_act is {act!r}; "
                         "patch with mlp=False")


def _check_loss(model: nn.Module) -> nn.Linear:
    head = getattr(model, "lm_head", None)
    if not isinstance(head, nn.Linear) or head.bias is not None:
        raise ValueError(f"loss=True needs an lm_head nn.Linear without bias, "
                         f"{type(model).__name__} has {type(head).__name__}"
                         + (" with a bias" if isinstance(head, nn.Linear) else ""))
    fn = getattr(model, "loss_function", None)  # transformers >= 4.46
    if fn is not None and getattr(fn, "__name__", "") != "ForCausalLMLoss":
        raise ValueError(f"loss=True computes Hugging Face's ForCausalLMLoss, but the model's "
                         f"loss_function is {getattr(fn, '__name__', fn)!r}; patch with loss=False")
    return head


def _window_from_config(module: nn.Module) -> int | None:
    return getattr(module.config, "sliding_window", None)  # Mistral passes the config's


def _window_from_module(module: nn.Module) -> int | None:
    return getattr(module, "sliding_window", None)  # Qwen2: per layer type


_SLIDING_WINDOW: dict[str, Callable[[nn.Module], int | None] | None] = {
    "llama": None, "mistral": _window_from_config, "qwen2": _window_from_module}


def _install(module: nn.Module, kind: str, fn: Callable[..., Any], parts: Any) -> None:
    if STATE in module.__dict__:
        return  # patched already: not twice
    slot = "_old_forward" if "_old_forward" in module.__dict__ else "forward"
    module.__dict__[STATE] = ModulePatch(kind, slot, module.__dict__.get(slot), parts)
    module.__dict__[slot] = PatchedForward(fn, module)


def _patch_attention(module: nn.Module, family: _Family, attention: bool, rope: bool) -> None:
    state = module.__dict__.get(STATE)
    if state is not None:  # patched before: add what is asked now, never twice
        state.parts.attention |= attention
        state.parts.rope |= rope
        return
    params = inspect.signature(family.attention.forward).parameters
    parts = AttentionPatch(attention=attention, rope=rope, hf_module=family.module.__name__,
                           cache_kwargs_style="cache" in params,
                           sliding_window=_SLIDING_WINDOW[family.name])
    _install(module, "attention", attention_forward, parts)


def patch(model: M, *, attention: bool = True, rope: bool = True, rms_norm: bool = True,
          mlp: bool = True, loss: bool = True) -> M:
    """Patch a Hugging Face Llama/Mistral/Qwen2 model in place (see :mod:`blocklab.hf`).

    Args:
        model: a ``LlamaForCausalLM``, ``MistralForCausalLM``, ``Qwen2ForCausalLM`` or
            their base ``LlamaModel``, ``MistralModel``, ``Qwen2Model`` (or a subclass).
        attention: blocklab's grouped-head SDPA (K/V never repeated).
        rope: blocklab's in-place rotation of q and k.
        rms_norm: torch's fused RMSNorm, Hugging Face's numbers.
        mlp: the SwiGLU product as one autograd function keeping two activations.
        loss: in training with labels, the LM head fused with the loss, logits never
            formed and returned as None (ForCausalLM models only).

    Returns:
        ``model`` itself. Patching again adds the parts asked for and never patches a
        module twice.

    Raises:
        TypeError: not a supported model class, or a transformers version whose
            attention forward blocklab does not know.
        ValueError: a part cannot keep the model's behaviour (attention with a
            flash/flex implementation, attention dropout or output_attentions; a
            non-SiLU MLP; a custom loss or an LM head with a bias). Nothing is patched.
    """
    flags = {name: check_bool(name, value) for name, value in (
        ("attention", attention), ("rope", rope), ("rms_norm", rms_norm), ("mlp", mlp),
        ("loss", loss))}
    family = _family_of(model)
    config = model.config
    # Every check before any change: a refused patch leaves the model as it was.
    if flags["attention"] or flags["rope"]:
        _check_attention_api(family)
    if flags["attention"]:
        _check_attention_config(config)
    if flags["mlp"]:
        _check_mlp(config)
    head = None
    if flags["loss"] and isinstance(model, family.causal_lm):
        head = _check_loss(model)

    for module in model.modules():
        if isinstance(module, family.attention) and (flags["attention"] or flags["rope"]):
            _patch_attention(module, family, flags["attention"], flags["rope"])
        elif isinstance(module, family.norm) and flags["rms_norm"]:
            _install(module, "rms_norm", rms_norm_forward, None)
        elif isinstance(module, family.mlp) and flags["mlp"]:
            _install(module, "mlp", mlp_forward, None)
    if head is not None and STATE not in model.__dict__:
        _install(head, "head", head_forward, HeadPatch())
        forward = model.__dict__.get("forward") or type(model).forward.__get__(model)
        params = list(inspect.signature(forward).parameters)
        labels_position = params.index("labels") if "labels" in params else None
        chunk = default_chunk_size(head.in_features)
        _install(model, "loss", causal_lm_forward, LossPatch(head, labels_position, chunk))
    return model


def unpatch(model: M) -> M:
    """Undo :func:`patch`: every patched module gets back exactly the ``forward`` it had
    and loses its patch record. A model that was never patched is left alone.

    Returns:
        ``model`` itself.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    for module in model.modules():
        state = module.__dict__.pop(STATE, None)
        if state is None:
            continue
        if state.previous is None:
            module.__dict__.pop(state.slot, None)
        else:
            module.__dict__[state.slot] = state.previous
    return model


def is_patched(model: nn.Module) -> bool:
    """Whether any module of ``model`` carries a blocklab patch."""
    return any(STATE in module.__dict__ for module in model.modules())


# -------------------------------------------------------------------- class level

@dataclass
class _ClassPatch:
    options: dict[str, bool]
    inits: list[tuple[type, Callable[..., None]]]  # (class, its own __init__)
    models: weakref.WeakSet  # the models patched as they were built


_CLASS_PATCHES: dict[str, _ClassPatch] = {}


def _patching_init(family: str, original: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(original)
    def __init__(self: nn.Module, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        entry = _CLASS_PATCHES.get(family)
        if entry is not None:
            patch(self, **entry.options)
            entry.models.add(self)

    return __init__


def patch_family(family: str, *, attention: bool = True, rope: bool = True,
                 rms_norm: bool = True, mlp: bool = True, loss: bool = True) -> None:
    """Patch every ``family`` model built from now on (what ``patch_llama`` etc. call).

    Calling it again only changes the parts later models get."""
    if family not in _MODULES:
        raise ValueError(f"family ({family!r}) must be one of {FAMILIES}")
    options = {name: check_bool(name, value) for name, value in (
        ("attention", attention), ("rope", rope), ("rms_norm", rms_norm), ("mlp", mlp),
        ("loss", loss))}
    fam = _family(family)
    if options["attention"] or options["rope"]:
        _check_attention_api(fam)
    entry = _CLASS_PATCHES.get(family)
    if entry is not None:
        entry.options = options
        return
    entry = _ClassPatch(options=options, inits=[], models=weakref.WeakSet())
    for cls in (fam.base, fam.causal_lm):
        original = cls.__dict__.get("__init__")
        if original is None:
            raise TypeError(f"{cls.__name__} defines no __init__ of its own to wrap")
        entry.inits.append((cls, original))
    for cls, original in entry.inits:
        cls.__init__ = _patching_init(family, original)
    _CLASS_PATCHES[family] = entry


def unpatch_family(family: str) -> None:
    """Undo :func:`patch_family`: the classes get their ``__init__`` back and the models
    built while it was on are unpatched. Nothing happens if it was not on."""
    if family not in _MODULES:
        raise ValueError(f"family ({family!r}) must be one of {FAMILIES}")
    entry = _CLASS_PATCHES.pop(family, None)
    if entry is None:
        return
    for cls, original in entry.inits:
        cls.__init__ = original
    for model in list(entry.models):
        unpatch(model)
