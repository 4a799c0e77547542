"""Weight layouts (Meta interleaved vs Hugging Face half-split) and the rotary settings
read from and written to Hugging Face configs, checked on whole-model logits."""

import pytest
import torch

from blocklab.models import TransformerConfig, TransformerLM
from blocklab.position import RopeScaling, permute_qk_weights
from tests.conftest import assert_close

SMALL = dict(vocab_size=64, d_model=48, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=16)


def test_permute_round_trip_and_hugging_face_formula():
    n_heads, head_dim = 3, 8
    w = torch.randn(n_heads * head_dim, 5)
    half = permute_qk_weights(w, n_heads, head_dim, to="half")
    # convert_llama_weights_to_hf.permute, written out: Meta -> Hugging Face.
    hf = w.view(n_heads, head_dim // 2, 2, 5).transpose(1, 2).reshape(n_heads * head_dim, 5)
    assert torch.equal(half, hf)
    assert torch.equal(permute_qk_weights(half, n_heads, head_dim, to="interleaved"), w)
    bias = torch.randn(n_heads * head_dim)
    assert torch.equal(permute_qk_weights(permute_qk_weights(bias, n_heads, head_dim, to="half"),
                                          n_heads, head_dim, to="interleaved"), bias)
    # Partial rotary: the pass-through rows stay where they are.
    part = permute_qk_weights(w, n_heads, head_dim, to="half", rotary_dim=4)
    assert torch.equal(part.view(n_heads, head_dim, 5)[:, 4:], w.view(n_heads, head_dim, 5)[:, 4:])


def _meta_state_dict(model: TransformerLM) -> dict[str, torch.Tensor]:
    """The same weights with the q and k rows of every wqkv in the interleaved layout."""
    cfg = model.config
    H, H_kv, D = cfg.n_heads, cfg.kv_heads, cfg.dim_head
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for name, w in state.items():
        if name.endswith("attn.wqkv.weight") or name.endswith("attn.wqkv.bias"):
            q, k, v = w.split((H * D, H_kv * D, H_kv * D))
            q = permute_qk_weights(q, H, D, to="interleaved", rotary_dim=cfg.rotary_dim)
            k = permute_qk_weights(k, H_kv, D, to="interleaved", rotary_dim=cfg.rotary_dim)
            state[name] = torch.cat((q, k, v))
    return state


@pytest.mark.parametrize("rope_dim", [None, 8])
def test_meta_layout_checkpoint_gives_the_same_logits(rope_dim):
    hf_layout = TransformerLM(TransformerConfig(**SMALL, qkv_bias=True, rope_dim=rope_dim)).eval()
    meta_cfg = hf_layout.config.replace(rope_interleaved=True)
    meta_layout = TransformerLM(meta_cfg).eval()
    meta_layout.load_state_dict(_meta_state_dict(hf_layout))
    x = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        assert_close(meta_layout(x), hf_layout(x))
        # Without the permutation the logits differ: the classic silent porting bug.
        meta_layout.load_state_dict(hf_layout.state_dict())
        assert not torch.allclose(meta_layout(x), hf_layout(x), atol=1e-3)


transformers = pytest.importorskip("transformers")

HF_CASES = {
    "linear": dict(rope_type="linear", factor=2.0),
    "dynamic": dict(rope_type="dynamic", factor=2.0),
    "yarn": dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=8,
                 beta_fast=16.0, beta_slow=1.0),
    "llama3": dict(rope_type="llama3", factor=4.0, original_max_position_embeddings=8,
                   low_freq_factor=1.0, high_freq_factor=4.0),
}


def _hf_llama(rope_parameters: dict, max_pos: int = 8):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=96, max_position_embeddings=max_pos,
        rope_parameters=dict(rope_parameters, rope_theta=1000.0),
    )
    return transformers.LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("case", sorted(HF_CASES))
def test_from_hf_reads_each_scaling_kind(case):
    hf = _hf_llama(HF_CASES[case])
    ours = TransformerLM.from_hf(hf)
    expected_kind = {"dynamic": "dynamic_ntk"}.get(case, case)
    assert ours.config.rope_scaling.kind == expected_kind
    x = torch.randint(0, 64, (2, 40))  # 5x the original context of 8
    with torch.no_grad():
        assert_close(ours(x), hf(x).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("scaling", [
    RopeScaling("linear", 2.0, 8),
    RopeScaling("ntk", 4.0, 8),
    RopeScaling("dynamic_ntk", 2.0, 8),
    RopeScaling("yarn", 4.0, 8, attention_factor=1.2),
    RopeScaling("llama3", 4.0, 8),
])
def test_to_hf_writes_each_scaling_kind(scaling):
    cfg = TransformerConfig(**dict(SMALL, max_seq_len=32), rope_scaling=scaling, rope_base=1000.0)
    model = TransformerLM(cfg).eval()
    hf = model.to_hf().eval()
    x = torch.randint(0, 64, (1, 30))
    with torch.no_grad():
        assert_close(hf(x).logits, model(x), atol=1e-4, rtol=1e-4)
    back = TransformerLM.from_hf(hf).config
    if scaling.kind == "ntk":  # exported as the default rope with the scaled base
        assert back.rope_scaling is None and back.rope_base > cfg.rope_base
    elif scaling.kind == "linear":  # Hugging Face's linear has no original length
        assert (back.rope_scaling.kind, back.rope_scaling.factor) == ("linear", 2.0)
    else:
        assert back.rope_scaling == scaling


def test_transformers_4_style_rope_scaling():
    from blocklab.models.hf import config_from_hf

    class Old:  # transformers 4 kept rope_theta and rope_scaling as attributes
        model_type = "llama"
        vocab_size, hidden_size, num_hidden_layers, num_attention_heads = 50, 32, 1, 4
        num_key_value_heads, intermediate_size, max_position_embeddings = 2, 64, 128
        rms_norm_eps, hidden_act, rope_theta = 1e-5, "silu", 5e5
        rope_scaling = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}

    cfg = config_from_hf(Old())
    assert cfg.rope_base == 5e5
    assert cfg.rope_scaling == RopeScaling("yarn", 4.0, 32)
    Old.rope_scaling = {"rope_type": "dynamic", "factor": 2.0}
    assert config_from_hf(Old()).rope_scaling == RopeScaling("dynamic_ntk", 2.0, 128)
    Old.rope_scaling = {"type": "longrope", "factor": 2.0}
    with pytest.raises(ValueError, match="'longrope' is not supported"):
        config_from_hf(Old())


def test_to_hf_refuses_layouts_it_cannot_express():
    for extra, match in ((dict(rope_interleaved=True), "permute_qk_weights"),
                         (dict(rope_dim=8), "rotate the whole head")):
        with pytest.raises(ValueError, match=match):
            TransformerLM(TransformerConfig(**SMALL, **extra)).to_hf()
