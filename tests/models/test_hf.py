"""Parity with Hugging Face Llama, Mistral and Qwen2: same logits, same greedy tokens."""

import pytest
import torch

from blocklab.models import TransformerConfig, TransformerLM

transformers = pytest.importorskip("transformers")

FAMILIES = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, dict(attention_bias=True)),
    "llama-mqa": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
                  dict(num_key_value_heads=1, head_dim=24)),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM, dict(sliding_window=8)),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, dict(tie_word_embeddings=True)),
}


def _hf_model(family: str):
    config_cls, model_cls, extra = FAMILIES[family]
    kwargs = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
                  intermediate_size=96, vocab_size=120, max_position_embeddings=64, rope_theta=1000.0)
    kwargs.update(extra)
    torch.manual_seed(0)
    hf = model_cls(config_cls(**kwargs)).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(std=0.1)  # random biases too, so a dropped bias shows
    return hf


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_logits_and_greedy_tokens_match(family):
    hf = _hf_model(family)
    ours = TransformerLM.from_hf(hf)
    x = torch.randint(0, 120, (2, 24))  # longer than Mistral's window of 8
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(x).logits, atol=1e-4, rtol=1e-4)
    prompt = x[:, :5]
    hf.generation_config.eos_token_id = None  # compare all 12 steps, no early stop
    theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12,
                         do_sample=False, pad_token_id=0)
    assert torch.equal(ours.generate(prompt, 12), theirs)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_round_trip_to_hf(family):
    hf = _hf_model(family)
    back = TransformerLM.from_hf(hf).to_hf().eval()
    assert type(back) is type(hf)
    x = torch.randint(0, 120, (1, 10))
    with torch.no_grad():
        assert torch.equal(back(x).logits, hf(x).logits)


def test_our_config_exports_and_reloads():
    cfg = TransformerConfig.from_name("tiny", vocab_size=100, n_kv_heads=1, tie_embeddings=True)
    model = TransformerLM(cfg).eval()
    hf = model.to_hf().eval()
    x = torch.randint(0, 100, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x), atol=1e-5, rtol=1e-4)


def test_rope_parameters_from_transformers_4_style_config():
    from blocklab.models.hf import config_from_hf

    class Old:  # transformers 4 kept rope_theta and rope_scaling as attributes
        model_type = "llama"
        vocab_size, hidden_size, num_hidden_layers, num_attention_heads = 50, 32, 1, 4
        num_key_value_heads, intermediate_size, max_position_embeddings = 2, 64, 128
        rms_norm_eps, hidden_act, rope_theta = 1e-5, "silu", 5e5
        rope_scaling = {"type": "linear", "factor": 4.0}

    cfg = config_from_hf(Old())
    assert cfg.rope_base == 5e5 and cfg.rope_scaling.kind == "linear" and cfg.rope_scaling.factor == 4


def test_unsupported_family():
    from blocklab.models.hf import config_from_hf

    class GPT2:
        model_type = "gpt2"

    with pytest.raises(ValueError, match="model_type 'gpt2' is not supported"):
        config_from_hf(GPT2())
