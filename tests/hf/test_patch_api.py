"""blocklab.hf's patch life cycle: unpatch restores exactly, patching twice does not
double-patch, class-level patches affect later models and are undone, and what cannot
be patched faithfully is refused before anything changes."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import blocklab.hf
from tests.hf.models import batch, hf_model, transformers, twin


def _instance_state(model: torch.nn.Module) -> dict[str, dict[str, object]]:
    """Each module's own attributes (what an instance patch would change)."""
    return {name: dict(m.__dict__) for name, m in model.named_modules()}


def _train_outputs(model):
    ids, mask, labels = batch()
    model.train()
    model.zero_grad(set_to_none=True)
    out = model(ids, attention_mask=mask, labels=labels)
    out.loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.eval()
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits
    return out, grads, logits


@pytest.fixture
def class_patches():
    """Whatever a test switches on at class level is switched off after it."""
    yield
    for family in blocklab.hf.FAMILIES:
        blocklab.hf.unpatch_family(family)


def test_parameters_and_state_dict_are_untouched():
    model = hf_model("qwen2")
    before = model.state_dict()
    params = dict(model.named_parameters())
    blocklab.hf.patch(model)
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(after[k] is not None and after[k].data_ptr() == before[k].data_ptr() for k in before)
    assert dict(model.named_parameters()) == params


def test_unpatch_restores_bit_exact_behaviour_and_leaves_nothing():
    model = hf_model("mistral")
    state = _instance_state(model)
    out, grads, logits = _train_outputs(model)
    blocklab.hf.patch(model)
    assert blocklab.hf.is_patched(model)
    assert _instance_state(model) != state
    blocklab.hf.unpatch(model)
    assert not blocklab.hf.is_patched(model)
    assert _instance_state(model) == state  # no forward, no patch record left behind
    for module in model.modules():
        assert not any("blocklab" in type(v).__module__ for v in module.__dict__.values())
    out2, grads2, logits2 = _train_outputs(model)
    assert out2.logits is not None
    assert torch.equal(out2.loss, out.loss) and torch.equal(logits2, logits)
    assert all(torch.equal(a, b) for a, b in zip(grads2, grads, strict=True))


def test_unpatch_puts_back_an_instance_forward_that_was_there():
    model = hf_model("llama")
    norm = model.model.norm
    own = norm.forward.__func__.__get__(norm)  # a user's instance-level forward
    norm.forward = own
    blocklab.hf.patch(model)
    assert norm.forward is not own
    blocklab.hf.unpatch(model)
    assert norm.__dict__["forward"] is own


def test_a_hooked_module_is_patched_under_its_hook():
    # accelerate's hooks replace forward by a wrapper calling module._old_forward.
    model = hf_model("llama")
    norm = model.model.norm
    calls = []
    norm._old_forward = norm.forward
    norm.forward = lambda *a, **k: calls.append(1) or norm._old_forward(*a, **k)
    hook, old = norm.__dict__["forward"], norm.__dict__["_old_forward"]
    blocklab.hf.patch(model)
    assert norm.__dict__["forward"] is hook and norm.__dict__["_old_forward"] is not old
    ids, mask, _ = batch()
    with torch.no_grad():
        model(ids, attention_mask=mask)
    assert calls == [1]  # the hook still runs, around blocklab's norm
    blocklab.hf.unpatch(model)
    assert norm.__dict__["_old_forward"] is old and norm.__dict__["forward"] is hook


def test_patching_twice_patches_once():
    model = blocklab.hf.patch(hf_model("llama"))
    forwards = {name: m.__dict__.get("forward") for name, m in model.named_modules()}
    blocklab.hf.patch(model)
    assert {name: m.__dict__.get("forward") for name, m in model.named_modules()} == forwards
    ref = hf_model("llama")
    got, ref_out = _train_outputs(model)[0], _train_outputs(ref)[0]
    torch.testing.assert_close(got.loss, ref_out.loss, atol=1e-5, rtol=1e-4)
    blocklab.hf.unpatch(model)
    assert not blocklab.hf.is_patched(model)  # one unpatch undoes both


def test_patching_again_adds_parts_asked_for():
    model = blocklab.hf.patch(hf_model("llama"), rope=False, loss=False)
    attn = model.model.layers[0].self_attn
    assert (attn._blocklab_patch.parts.attention, attn._blocklab_patch.parts.rope) == (True, False)
    assert "forward" not in model.__dict__
    blocklab.hf.patch(model)
    assert attn._blocklab_patch.parts.rope and "forward" in model.__dict__


def test_generate_still_sees_forwards_signature():
    import inspect

    model = hf_model("llama")
    before = inspect.signature(model.forward)
    blocklab.hf.patch(model)
    assert inspect.signature(model.forward) == before  # logits_to_keep, cache, ...


def test_patched_model_saves_and_reloads_as_plain_hugging_face(tmp_path):
    model = blocklab.hf.patch(hf_model("qwen2"))
    model.save_pretrained(tmp_path)
    back = transformers.Qwen2ForCausalLM.from_pretrained(tmp_path).eval()
    assert not blocklab.hf.is_patched(back)
    ids, mask, _ = batch()
    keep = mask.bool()
    with torch.no_grad():
        torch.testing.assert_close(back(ids, attention_mask=mask).logits[keep],
                                   model(ids, attention_mask=mask).logits[keep],
                                   atol=1e-5, rtol=1e-4)


def test_deepcopy_of_a_patched_model_is_patched_on_its_own():
    model = blocklab.hf.patch(hf_model("llama"))
    copy = twin(model)
    blocklab.hf.unpatch(model)
    assert blocklab.hf.is_patched(copy) and not blocklab.hf.is_patched(model)
    assert _train_outputs(copy)[0].logits is None


def test_a_pickled_patched_model_comes_back_patched(tmp_path):
    model = blocklab.hf.patch(hf_model("mistral"))
    torch.save(model, tmp_path / "model.pt")
    back = torch.load(tmp_path / "model.pt", weights_only=False)
    got, ref = _train_outputs(back)[0], _train_outputs(hf_model("mistral"))[0]
    assert got.logits is None  # the fused loss, not the class's forward
    torch.testing.assert_close(got.loss, ref.loss, atol=1e-5, rtol=1e-4)
    blocklab.hf.unpatch(back)
    assert "forward" not in back.__dict__ and _train_outputs(back)[0].logits is not None


def test_class_patch_affects_models_built_afterwards(class_patches):
    before = hf_model("llama")
    init = transformers.LlamaForCausalLM.__init__
    blocklab.hf.patch_llama()
    blocklab.hf.patch_llama()  # twice: still one wrapper
    assert transformers.LlamaForCausalLM.__init__ is not init
    after = hf_model("llama")
    assert blocklab.hf.is_patched(after) and not blocklab.hf.is_patched(before)
    assert not blocklab.hf.is_patched(hf_model("qwen2"))  # other families untouched
    got, ref = _train_outputs(after)[0], _train_outputs(before)[0]
    assert got.logits is None
    torch.testing.assert_close(got.loss, ref.loss, atol=1e-5, rtol=1e-4)

    blocklab.hf.unpatch_llama()
    assert transformers.LlamaForCausalLM.__init__ is init
    assert not blocklab.hf.is_patched(after)  # undone for the models it patched too
    assert not blocklab.hf.is_patched(hf_model("llama"))


@pytest.mark.parametrize("family", ["mistral", "qwen2"])
def test_class_patch_options_and_base_models(family, class_patches):
    getattr(blocklab.hf, f"patch_{family}")(loss=False, mlp=False)
    base = hf_model(family, model_cls=getattr(transformers, f"{family.capitalize()}Model"))
    lm = hf_model(family)
    assert blocklab.hf.is_patched(base)
    assert "forward" not in lm.__dict__ and "forward" not in lm.model.layers[0].mlp.__dict__
    assert "forward" in lm.model.layers[0].self_attn.__dict__
    getattr(blocklab.hf, f"unpatch_{family}")()
    assert not blocklab.hf.is_patched(base) and not blocklab.hf.is_patched(lm)


def test_unknown_models_are_refused():
    with pytest.raises(TypeError, match="LlamaForCausalLM.*got Linear"):
        blocklab.hf.patch(torch.nn.Linear(2, 2))
    cls = transformers.LlamaForSequenceClassification
    with pytest.raises(TypeError, match="LlamaForSequenceClassification"):
        blocklab.hf.patch(hf_model("llama", model_cls=cls))
    with pytest.raises(TypeError, match="nn.Module"):
        blocklab.hf.patch("llama")
    with pytest.raises(ValueError, match="family"):
        blocklab.hf.patch_family("gpt2")


@pytest.mark.parametrize(("make", "match"), [
    (lambda: hf_model("llama", attn_implementation="flex_attention"), "flex_attention"),
    (lambda: hf_model("llama", attention_dropout=0.1), "attention_dropout"),
    (lambda: hf_model("llama", output_attentions=True), "output_attentions"),
    (lambda: hf_model("llama", hidden_act="gelu"), "hidden_act"),
])
def test_unfaithful_parts_are_refused_and_nothing_is_patched(make, match):
    model = make()
    with pytest.raises(ValueError, match=match):
        blocklab.hf.patch(model)
    assert not blocklab.hf.is_patched(model)


def test_refused_parts_can_be_turned_off():
    model = hf_model("llama", attn_implementation="flex_attention", hidden_act="gelu")
    blocklab.hf.patch(model, attention=False, mlp=False)
    assert "forward" in model.model.layers[0].self_attn.__dict__  # rope still patched


def test_custom_loss_and_biased_head_are_refused():
    model = hf_model("llama")
    model.loss_function = lambda *a, **k: torch.zeros(())
    with pytest.raises(ValueError, match="loss_function"):
        blocklab.hf.patch(model)
    blocklab.hf.patch(model, loss=False)
    model = hf_model("llama")
    model.lm_head = torch.nn.Linear(64, model.config.vocab_size, bias=True)
    with pytest.raises(ValueError, match="bias"):
        blocklab.hf.patch(model)


def test_bad_flags_and_output_attentions_at_call_time():
    model = hf_model("llama")
    with pytest.raises(TypeError, match="rope must be a bool"):
        blocklab.hf.patch(model, rope=1)
    blocklab.hf.patch(model)
    ids, mask, _ = batch()
    with pytest.raises(ValueError, match="output_attentions"):
        model(ids, attention_mask=mask, output_attentions=True)


def test_importing_blocklab_does_not_import_transformers():
    code = ("import sys, blocklab, blocklab.hf; "
            "assert 'transformers' not in sys.modules, 'transformers imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
