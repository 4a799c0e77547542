"""Hugging Face directories in and out without transformers, checked against transformers'
own save_pretrained / from_pretrained: same logits, same greedy tokens."""

import json

import pytest
import torch

import blocklab
from blocklab.models import TransformerConfig, TransformerLM

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

VOCAB = 100
FAMILIES = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
              dict(attention_bias=True, mlp_bias=True)),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM, dict(sliding_window=8)),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, dict(tie_word_embeddings=True)),
}
ROPE_KINDS = {
    "linear": {"factor": 2.0},
    "dynamic": {"factor": 2.0},
    "yarn": {"factor": 4.0, "original_max_position_embeddings": 16},
    "llama3": {"factor": 8.0, "original_max_position_embeddings": 16, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0},
}


def _hf_model(family: str, **extra):
    config_cls, model_cls, kwargs = FAMILIES[family]
    kwargs = dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                  num_hidden_layers=2, intermediate_size=48, vocab_size=VOCAB,
                  max_position_embeddings=32, rope_theta=1000.0, **kwargs)
    kwargs.update(extra)
    torch.manual_seed(0)
    hf = model_cls(config_cls(**kwargs)).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(std=0.1)  # random biases and norms too, so a dropped one shows
    return hf


def _hf_logits(hf, x):
    with torch.no_grad():
        return hf(x).logits


def _ours_logits(model, x):
    with torch.no_grad():
        return model(x)


X = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_transformers_directory_loads_with_equal_logits_and_tokens(family, tmp_path):
    hf = _hf_model(family)
    hf.save_pretrained(tmp_path)
    ours = TransformerLM.from_pretrained(tmp_path)
    assert not ours.training and ours.embed.weight.dtype == torch.float32
    torch.testing.assert_close(_ours_logits(ours, X), _hf_logits(hf, X), atol=1e-5, rtol=1e-5)
    prompt = X[:, :4]
    hf.generation_config.eos_token_id = None  # all steps, no early stop
    theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8,
                         do_sample=False, pad_token_id=0)
    assert torch.equal(ours.generate(prompt, 8), theirs)
    if family == "qwen2":
        assert ours.lm_head.weight is ours.embed.weight


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sharded_half_precision_directory_loads_bit_exact(dtype, tmp_path):
    hf = _hf_model("qwen2", tie_word_embeddings=False).to(dtype)
    hf.save_pretrained(tmp_path, max_shard_size="10KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) > 2
    ours = TransformerLM.from_pretrained(tmp_path)
    expected = TransformerLM.from_hf(hf).state_dict()
    assert all(t.dtype == dtype for t in ours.state_dict().values())
    for name, tensor in ours.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    widened = TransformerLM.from_pretrained(tmp_path, dtype=torch.float32)
    torch.testing.assert_close(_ours_logits(widened, X), _hf_logits(hf.float(), X),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_our_directory_loads_in_transformers_with_equal_logits(family, tmp_path):
    ours = TransformerLM.from_hf(_hf_model(family))
    ours.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(hf) is FAMILIES[family][1]
    torch.testing.assert_close(_hf_logits(hf, X), _ours_logits(ours, X), atol=1e-5, rtol=1e-5)
    back = TransformerLM.from_pretrained(tmp_path)
    assert back.config == ours.config
    assert torch.equal(_ours_logits(back, X), _ours_logits(ours, X))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_our_sharded_half_precision_directory(dtype, tmp_path):
    cfg = TransformerConfig.from_name("tiny", vocab_size=VOCAB, n_kv_heads=1, tie_embeddings=True)
    ours = TransformerLM(cfg).eval()
    ours.save_pretrained(tmp_path, max_shard_size=20_000, dtype=dtype)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    files = set(index["weight_map"].values())
    assert len(files) > 1 and files == {p.name for p in tmp_path.glob("model-*.safetensors")}
    assert ours.embed.weight.dtype == torch.float32  # the model itself is not converted
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=dtype).eval()
    assert hf.dtype == dtype
    back = TransformerLM.from_pretrained(tmp_path)
    for name, tensor in TransformerLM.from_hf(hf).state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name
    torch.testing.assert_close(_hf_logits(hf.float(), X), _ours_logits(back.float(), X),
                               atol=1e-5, rtol=1e-5)


def _rewrite_rope(path, kind: str, style: str) -> None:
    """config.json with rope scaling ``kind`` in transformers 4 or 5 keys."""
    raw = json.loads((path / "config.json").read_text())
    for key in ("rope_parameters", "rope_scaling", "rope_theta"):
        raw.pop(key, None)
    if style == "v5":
        raw["rope_parameters"] = {"rope_type": kind, "rope_theta": 1000.0, **ROPE_KINDS[kind]}
    else:  # transformers 4, with the oldest spelling "type"
        raw["rope_theta"] = 1000.0
        raw["rope_scaling"] = {"type": kind, **ROPE_KINDS[kind]}
    (path / "config.json").write_text(json.dumps(raw))


@pytest.mark.parametrize("style", ["v4", "v5"])
@pytest.mark.parametrize("kind", sorted(ROPE_KINDS))
def test_rope_scaling_kinds_in_both_key_styles(kind, style, tmp_path):
    hf = _hf_model("llama")
    with torch.no_grad():
        for layer in hf.model.layers:  # sharp scores, so that positions matter in the logits
            layer.self_attn.q_proj.weight.mul_(8.0)
            layer.self_attn.k_proj.weight.mul_(8.0)
        hf.lm_head.weight.mul_(10.0)
    hf.save_pretrained(tmp_path)
    long = torch.randint(0, VOCAB, (1, 48))  # past max_position_embeddings (32): dynamic acts
    unscaled = _ours_logits(TransformerLM.from_pretrained(tmp_path), long)
    _rewrite_rope(tmp_path, kind, style)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ours = TransformerLM.from_pretrained(tmp_path)
    assert ours.config.rope_base == 1000.0
    assert ours.config.rope_scaling.kind == {"dynamic": "dynamic_ntk"}.get(kind, kind)
    logits = _ours_logits(ours, long)
    assert (logits - unscaled).abs().max() > 1e-3  # the scaling changes the logits...
    torch.testing.assert_close(logits, _hf_logits(hf, long), atol=1e-5, rtol=1e-5)  # ...as HF's
    out = tmp_path / "ours"
    ours.save_pretrained(out)
    again = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    torch.testing.assert_close(_hf_logits(again, long), _hf_logits(hf, long), atol=1e-5, rtol=1e-5)
    assert TransformerLM.from_pretrained(out).config == ours.config


def test_missing_config_json(tmp_path):
    with pytest.raises(ValueError, match="config.json is missing"):
        TransformerLM.from_pretrained(tmp_path)


def test_unsupported_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match=r"config.json: model_type 'gpt2' is not supported"):
        TransformerLM.from_pretrained(tmp_path)


def test_config_lacking_a_shape_key(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 32}))
    with pytest.raises(ValueError, match=r"config.json lacks the keys \['vocab_size'"):
        TransformerLM.from_pretrained(tmp_path)


def test_missing_weights_file(tmp_path):
    _hf_model("llama").save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="neither model.safetensors nor"):
        TransformerLM.from_pretrained(tmp_path)


def test_missing_tensor_is_named(tmp_path):
    _hf_model("mistral").save_pretrained(tmp_path)
    file = tmp_path / "model.safetensors"
    tensors = safetensors_torch.load_file(str(file))
    del tensors["model.layers.1.self_attn.k_proj.weight"]
    safetensors_torch.save_file(tensors, str(file))
    with pytest.raises(ValueError, match=r"model.safetensors lacks .*layers.1.self_attn.k_proj"):
        TransformerLM.from_pretrained(tmp_path)


def test_shape_mismatch_is_named(tmp_path):
    _hf_model("qwen2").save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    raw["intermediate_size"] = 40
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=r"model.safetensors: tensor 'model.layers.0.mlp.down_proj"
                                         r".weight' has shape \(32, 48\), config.json implies "
                                         r"\(32, 40\)"):
        TransformerLM.from_pretrained(tmp_path)


def test_unmappable_model_is_refused_on_save(tmp_path):
    model = TransformerLM(TransformerConfig.from_name("tiny", norm="layernorm"))
    with pytest.raises(ValueError, match="norm='layernorm'"):
        model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="max_shard_size"):
        TransformerLM(TransformerConfig.from_name("tiny")).save_pretrained(tmp_path,
                                                                          max_shard_size="big")


def test_blocklab_load_reads_both_formats(tmp_path):
    from blocklab.train.checkpoint import save_checkpoint

    ours = TransformerLM.from_hf(_hf_model("llama"))
    ours.save_pretrained(tmp_path / "hf")
    assert torch.equal(_ours_logits(blocklab.load(tmp_path / "hf"), X), _ours_logits(ours, X))
    run = tmp_path / "run"
    extra = {"rng": {"torch": []}, "config": {"model": ours.config.to_dict()}}
    for step in (1, 2):
        with torch.no_grad():
            ours.norm.weight.add_(1.0)
        save_checkpoint(run, step, model_state=ours.state_dict(),
                        optimizer_state={"state": {}, "param_groups": []}, extra=extra)
    assert torch.equal(_ours_logits(blocklab.load(run), X), _ours_logits(ours, X))  # newest
    with pytest.raises(ValueError, match="not found"):
        blocklab.load(tmp_path / "nothing")


def test_missing_shard_is_named(tmp_path):
    _hf_model("llama").save_pretrained(tmp_path, max_shard_size="10KB")
    shard = sorted(tmp_path.glob("model-*-of-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(ValueError, match=f"{shard.name}, listed in .*index.json, is missing"):
        TransformerLM.from_pretrained(tmp_path)


def test_longrope_is_refused_on_export(tmp_path) -> None:
    from blocklab.models import TransformerConfig, TransformerLM
    from blocklab.position import RopeScaling

    half = 8  # head_dim 16 -> 8 frequencies
    scaling = RopeScaling("longrope", 4.0, 32, short_factor=(1.0,) * half,
                          long_factor=(2.0,) * half)
    model = TransformerLM(TransformerConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2,
                                            max_seq_len=128, rope_scaling=scaling))
    with pytest.raises(ValueError, match="'longrope' cannot be exported"):
        model.save_pretrained(tmp_path / "out")
