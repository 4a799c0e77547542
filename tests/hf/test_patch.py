"""blocklab.hf.patch: a patched Hugging Face model computes what the unpatched one does.

Logits, loss and every parameter's gradient to 1e-5 in fp32 (left padding included),
greedy ``generate`` tokens identical -- and the patched code really runs instead of
Hugging Face's.
"""

from __future__ import annotations

import inspect

import pytest
import torch

import blocklab.hf
from tests.conftest import assert_close
from tests.hf.models import FAMILIES, TRANSFORMERS_5, VOCAB, batch, hf_model, transformers, twin


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad for name, p in model.named_parameters()}


def _train_step(model, ids, mask, labels, **kwargs):
    model.train()
    model.zero_grad(set_to_none=True)
    out = model(ids, attention_mask=mask, labels=labels, **kwargs)
    out.loss.backward()
    return out


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("padded", [False, True])
def test_logits_equal(family, padded):
    ref = hf_model(family)
    ours = blocklab.hf.patch(twin(ref))
    ids, mask, _ = batch()
    if not padded:
        mask = torch.ones_like(mask)
    with torch.no_grad():
        expected = ref(ids, attention_mask=mask).logits
        got = ours(ids, attention_mask=mask).logits
    keep = mask.bool()  # padded positions' logits are nobody's business
    assert_close(got[keep], expected[keep])


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("first_label", [
    False, pytest.param(True, marks=pytest.mark.skipif(
        not TRANSFORMERS_5, reason="4.x's sdpa lets a query that sees no token attend "
                                   "everywhere; 5.x gives zeros, as blocklab"))])
def test_loss_and_every_gradient_equal_with_left_padding(family, first_label):
    ref = hf_model(family)
    ours = blocklab.hf.patch(twin(ref))
    ids, mask, labels = batch(first_label=first_label)
    expected = _train_step(ref, ids, mask, labels)
    got = _train_step(ours, ids, mask, labels)
    assert got.logits is None  # training with labels: the logits were never formed
    assert_close(got.loss, expected.loss)
    grads, ref_grads = _grads(ours), _grads(ref)
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        assert grad is not None, name
        assert_close(grad, ref_grads[name], atol=1e-5)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_greedy_generation_equal(family):
    ref = hf_model(family)
    ours = blocklab.hf.patch(twin(ref))
    ids, mask, _ = batch()
    prompt, prompt_mask = ids[:, :9], mask[:, :9]  # row 1 left-padded
    kwargs = dict(attention_mask=prompt_mask, max_new_tokens=12, do_sample=False)
    expected = ref.generate(prompt, **kwargs)
    got = ours.generate(prompt, **kwargs)
    assert got.shape == (2, 21)  # past Mistral's window of 8
    assert torch.equal(got, expected)


def test_eager_attention_masks_are_read_too():
    # eager builds additive float masks (finfo.min), sdpa boolean ones.
    ref = hf_model("mistral", attn_implementation="eager")
    ours = blocklab.hf.patch(twin(ref))
    ids, mask, labels = batch()  # (the first real token's label is -100: see batch)
    with torch.no_grad():
        assert_close(ours(ids, attention_mask=mask).logits[mask.bool()],
                     ref(ids, attention_mask=mask).logits[mask.bool()])
    expected = _train_step(ref, ids, mask, labels)
    got = _train_step(ours, ids, mask, labels)
    assert_close(got.loss, expected.loss)
    for name, grad in _grads(ours).items():
        assert_close(grad, _grads(ref)[name], atol=1e-5)


@pytest.mark.parametrize("parts", [
    dict(attention=False), dict(rope=False), dict(attention=False, rope=False),
    dict(rms_norm=False, mlp=False), dict(loss=False)])
def test_each_part_can_be_turned_off(parts):
    ref = hf_model("qwen2")
    ours = blocklab.hf.patch(twin(ref), **parts)
    ids, mask, labels = batch()
    expected = _train_step(ref, ids, mask, labels)
    got = _train_step(ours, ids, mask, labels)
    assert (got.logits is None) == parts.get("loss", True)
    assert_close(got.loss, expected.loss)
    for name, grad in _grads(ours).items():
        assert_close(grad, _grads(ref)[name], atol=1e-5)


def test_patched_code_runs_instead_of_hugging_faces(monkeypatch):
    model = blocklab.hf.patch(hf_model("llama"))
    hf_module = transformers.models.llama.modeling_llama

    def forbidden(*args, **kwargs):
        raise AssertionError("Hugging Face's own function ran")

    for name in ("apply_rotary_pos_emb", "repeat_kv", "eager_attention_forward"):
        monkeypatch.setattr(hf_module, name, forbidden)
    monkeypatch.setattr(transformers.integrations.sdpa_attention, "sdpa_attention_forward",
                        forbidden)
    calls = []
    sdpa = blocklab.hf.attention.scaled_dot_product_attention
    monkeypatch.setattr(blocklab.hf.attention, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    logits_seen = []
    model.lm_head.register_forward_hook(lambda m, i, out: logits_seen.append(out.shape))
    ids, mask, labels = batch()
    _train_step(model, ids, mask, labels)
    assert len(calls) == 2  # one per layer
    assert logits_seen == [(2, ids.shape[1], 0)]  # the head only handed its input over


def test_loss_options_match_hugging_face():
    ref = hf_model("llama")
    ours = blocklab.hf.patch(twin(ref))
    ids, mask, labels = batch()
    shift = torch.roll(labels, -1, dims=1)
    shift[:, -1] = -100
    for kwargs in (dict(num_items_in_batch=torch.tensor(31)), dict(num_items_in_batch=7),
                   dict(shift_labels=shift)):
        expected = _train_step(ref, ids, mask, labels, **kwargs)
        got = _train_step(ours, ids, mask, labels, **kwargs)
        assert_close(got.loss, expected.loss)
        assert_close(ours.lm_head.weight.grad, ref.lm_head.weight.grad, atol=1e-5)


def test_skip_logits_and_eval_mode():
    ref = hf_model("llama")
    ours = blocklab.hf.patch(twin(ref))
    ids, mask, labels = batch()
    # skip_logits=False: Hugging Face's path in training, logits and all.
    got = _train_step(ours, ids, mask, labels, skip_logits=False)
    expected = _train_step(ref, ids, mask, labels)
    assert_close(got.logits[mask.bool()], expected.logits[mask.bool()])
    assert_close(got.loss, expected.loss)
    ours.eval()
    ref.eval()
    with torch.no_grad():
        # eval mode with labels: logits as usual (evaluation loops read them) ...
        evaluated = ours(ids, attention_mask=mask, labels=labels)
        assert_close(evaluated.logits[mask.bool()],
                     ref(ids, attention_mask=mask).logits[mask.bool()])
        # ... unless fusing is asked for.
        fused = ours(ids, attention_mask=mask, labels=labels, skip_logits=True)
    assert fused.logits is None
    assert_close(fused.loss, evaluated.loss)
    with pytest.raises(TypeError, match="skip_logits"):
        ours(ids, labels=labels, skip_logits="yes")


def test_tuple_outputs_and_positional_labels():
    ref = hf_model("llama").train()
    ours = blocklab.hf.patch(twin(ref)).train()
    ids, mask, labels = batch()
    expected = ref(ids, mask, labels=labels).loss
    out = ours(ids, mask, None, None, None, labels, return_dict=False)  # labels 6th
    assert isinstance(out, tuple)
    assert_close(out[0], expected)


def test_base_model_is_patched_without_a_loss():
    ref = hf_model("mistral", model_cls=transformers.MistralModel)
    ours = blocklab.hf.patch(twin(ref))
    assert blocklab.hf.is_patched(ours)
    ids, mask, _ = batch()
    with torch.no_grad():
        expected = ref(ids, attention_mask=mask).last_hidden_state
        got = ours(ids, attention_mask=mask).last_hidden_state
    assert_close(got[mask.bool()], expected[mask.bool()])


def test_tied_embeddings_get_both_gradients():
    ref = hf_model("qwen2", tie_word_embeddings=True)
    ours = blocklab.hf.patch(twin(ref))
    assert ours.lm_head.weight is ours.model.embed_tokens.weight
    ids, mask, labels = batch()
    _train_step(ref, ids, mask, labels)
    _train_step(ours, ids, mask, labels)
    assert_close(ours.lm_head.weight.grad, ref.lm_head.weight.grad, atol=1e-5)


def test_gradient_checkpointing_still_works():
    ref = hf_model("llama")
    ours = blocklab.hf.patch(twin(ref))
    for m in (ref, ours):
        # (renamed activation_checkpointing_enable in transformers 5.2x)
        getattr(m, "activation_checkpointing_enable", m.gradient_checkpointing_enable)()
    ids, mask, labels = batch()
    expected = _train_step(ref, ids, mask, labels)
    got = _train_step(ours, ids, mask, labels)
    assert_close(got.loss, expected.loss)
    for name, grad in _grads(ours).items():
        assert_close(grad, _grads(ref)[name], atol=1e-5)


def test_training_steps_track_the_unpatched_model():
    # A few AdamW steps: parameters stay together (the optimizer sees the same model).
    ref = hf_model("qwen2")
    ours = blocklab.hf.patch(twin(ref))
    ids, mask, labels = batch()
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-3) for m in (ref, ours)]
    for _ in range(3):
        for model, opt in zip((ref, ours), opts, strict=True):
            _train_step(model, ids, mask, labels)
            opt.step()
    for p, q in zip(ours.parameters(), ref.parameters(), strict=True):
        assert_close(p, q, atol=1e-5)


def test_in_place_rope_leaves_v_and_the_cache_consistent():
    # Decoding step by step with the cache equals one full forward (rotated keys are
    # cached once, rotated in place before they are stored).
    model = blocklab.hf.patch(hf_model("llama"))
    ids = torch.randint(1, VOCAB, (1, 12))
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else \
        "past_key_values"  # transformers 5.2x renamed it
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids[:, :6], use_cache=True)
        steps = [out.logits]
        for t in range(6, 12):
            out = model(ids[:, t:t + 1], use_cache=True, **{name: out[name]})
            steps.append(out.logits)
    assert_close(torch.cat(steps, dim=1), full)


@pytest.mark.parametrize(("kind", "extra"), [
    ("linear", {}), ("dynamic", {}), ("yarn", dict(original_max_position_embeddings=16)),
    ("llama3", dict(original_max_position_embeddings=16, low_freq_factor=1.0,
                    high_freq_factor=4.0)),
    ("longrope", dict(original_max_position_embeddings=16, short_factor=[1.0] * 8,
                      long_factor=[2.0] * 8)),
])
def test_every_rope_scaling_keeps_hugging_faces_angles(kind, extra):
    # The rotation is blocklab's, the cos/sin tables the model's own rotary_emb's: no
    # rope type needs to be known to blocklab. 80 positions: past every original length.
    ref = hf_model("llama", rope_scaling=dict(rope_type=kind, factor=4.0, rope_theta=1000.0,
                                              **extra))
    ours = blocklab.hf.patch(twin(ref))
    ids = torch.randint(1, VOCAB, (2, 80))
    with torch.no_grad():
        assert_close(ours(ids).logits, ref(ids).logits)
