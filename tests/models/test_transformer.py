import pytest
import torch

from blocklab.models import TransformerConfig, TransformerLM
from tests.conftest import assert_close


def _model(**overrides) -> TransformerLM:
    config = TransformerConfig.from_name("tiny", n_layers=2, d_model=64, n_heads=4, **overrides)
    return TransformerLM(config).eval()


@pytest.mark.parametrize("position", ["rope", "sinusoidal", "learned", "none"])
def test_forward_shapes_and_causality(position):
    model = _model(position=position)
    x = torch.randint(0, 256, (2, 12))
    logits = model(x)
    assert logits.shape == (2, 12, 256)
    x2 = x.clone()
    x2[:, 8:] = (x2[:, 8:] + 1) % 256  # changing the future leaves the past alone
    assert torch.equal(model(x2)[:, :8], logits[:, :8])


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_cached_decoding_equals_full_forward(n_kv_heads):
    model = _model(n_kv_heads=n_kv_heads)
    x = torch.randint(0, 256, (2, 10))
    full = model(x)
    cache = model.make_cache(2, 16)
    parts = [model(x[:, :6], cache=cache)] + [model(x[:, t : t + 1], cache=cache) for t in range(6, 10)]
    assert_close(torch.cat(parts, dim=1), full)


def test_generate_greedy_equals_argmax_of_full_forward():
    model = _model()
    prompt = torch.randint(0, 256, (2, 5))
    out = model.generate(prompt, 6)
    assert out.shape == (2, 11) and torch.equal(out[:, :5], prompt)
    for t in range(5, 11):
        assert torch.equal(model(out[:, :t])[:, -1].argmax(-1), out[:, t])


def test_generate_left_padding_equals_unpadded_rows():
    model = _model()
    a = torch.randint(0, 256, (1, 7))
    b = torch.randint(0, 256, (1, 4))
    batch = torch.cat([a, torch.cat([torch.zeros(1, 3, dtype=torch.long), b], dim=1)])
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, :3] = 0
    out = model.generate(batch, 5, attention_mask=mask)
    assert torch.equal(out[0], model.generate(a, 5)[0])
    assert torch.equal(out[1, 7:], model.generate(b, 5)[0, 4:])


def test_generate_eos_and_sampling():
    model = _model()
    prompt = torch.randint(0, 256, (1, 4))
    greedy = model.generate(prompt, 5)
    eos = int(greedy[0, 5])
    assert model.generate(prompt, 5, eos_token_id=eos).shape[1] == 6
    g = torch.Generator().manual_seed(1)
    s1 = model.generate(prompt, 5, temperature=1.0, top_k=5, top_p=0.9, generator=g)
    g = torch.Generator().manual_seed(1)
    s2 = model.generate(prompt, 5, temperature=1.0, top_k=5, top_p=0.9, generator=g)
    assert torch.equal(s1, s2)
    with pytest.raises(ValueError, match="top_p"):
        model.generate(prompt, 2, temperature=1.0, top_p=1.5)


def test_tied_embeddings_and_parameter_count():
    model = _model(tie_embeddings=True)
    assert model.lm_head.weight is model.embed.weight
    c = model.config
    per_layer = (
        2 * c.d_model
        + c.d_model * (c.n_heads + 2 * c.kv_heads) * c.dim_head
        + c.n_heads * c.dim_head * c.d_model
        + 3 * c.d_model * c.hidden_dim
    )
    expected = c.vocab_size * c.d_model + c.n_layers * per_layer + c.d_model
    assert model.num_parameters() == expected


def test_config_presets_yaml_and_validation(tmp_path):
    cfg = TransformerConfig.from_name("llama-2-7b", n_layers=2)
    assert cfg.hidden_dim == 11008 and cfg.n_layers == 2
    assert TransformerConfig.from_name("llama-3-8b").kv_heads == 8
    path = tmp_path / "c.yaml"
    cfg.to_yaml(path)
    assert TransformerConfig.from_yaml(path) == cfg
    with pytest.raises(ValueError, match=r"n_heads \(8\) must be divisible by n_kv_heads \(3\)"):
        TransformerConfig(n_heads=8, d_model=64, n_kv_heads=3)
    with pytest.raises(ValueError, match="unknown preset"):
        TransformerConfig.from_name("gpt-9")
    with pytest.raises(ValueError, match="unknown TransformerConfig keys"):
        TransformerConfig.from_dict({"d_model": 64, "widht": 3})
    with pytest.raises(TypeError, match="d_model must be an int"):
        TransformerConfig(d_model=64.0)


def test_bad_input_ids():
    model = _model()
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, vocab_size=256\)"):
        model(torch.tensor([[1, 300]]))
    with pytest.raises(TypeError, match="integer tensor"):
        model(torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"input_ids must be \(B, T\)"):
        model(torch.zeros(3, dtype=torch.long))


def test_fully_padded_row_gives_finite_logits():
    model = _model()
    x = torch.randint(0, 256, (2, 5))
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1] = False
    assert torch.isfinite(model(x, padding_mask=mask)).all()


def test_fused_loss_equals_cross_entropy_of_logits():
    model = _model().train()
    x = torch.randint(0, 256, (2, 12))
    y = torch.randint(0, 256, (2, 12))
    y[0, :3] = -100
    fused = model.loss(x, y)
    fused.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    plain = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
    plain.backward()
    assert_close(fused.detach(), plain.detach())
    for n, p in model.named_parameters():
        assert_close(grads[n], p.grad, atol=1e-5)  # summation order differs per chunk


# ------------------------------------------------------- bad input at the boundary (#13)

def test_targets_must_match_input_ids_and_the_vocabulary():
    model = _model()
    x = torch.randint(0, 256, (2, 3))
    with pytest.raises(ValueError, match=r"targets must have input_ids' shape \(B, T\) = \(2, 3\), "
                                         r"got \(3, 2\)"):
        model(x, targets=x.T.contiguous())  # (T, B) once gave a wrong loss silently
    with pytest.raises(ValueError, match=r"targets must lie in \[0, vocab_size=256\) or be "
                                         r"ignore_index \(-100\), got token 256"):
        model(x, targets=torch.full((2, 3), 256))
    with pytest.raises(TypeError, match="targets must be an integer tensor"):
        model(x, targets=x.float())


def test_empty_batch_or_length_gives_empty_logits():
    model = _model()
    assert model(torch.zeros(0, 3, dtype=torch.long)).shape == (0, 3, 256)
    assert model(torch.zeros(2, 0, dtype=torch.long)).shape == (2, 0, 256)
    loss = model(torch.zeros(2, 0, dtype=torch.long), targets=torch.zeros(2, 0, dtype=torch.long))
    assert loss.isnan()  # no token counted: NaN, as F.cross_entropy


def test_cache_of_another_shape_is_refused_up_front():
    model = _model()
    x = torch.randint(0, 256, (2, 3))
    cfg = model.config
    sizes = dict(n_layers=cfg.n_layers, batch=2, n_kv_heads=cfg.kv_heads, head_dim=cfg.dim_head,
                 max_seq_len=8)
    from blocklab.attention import KVCache

    for change, match in (({"head_dim": cfg.dim_head + 1}, "input_ids and the model have"),
                          ({"n_kv_heads": cfg.kv_heads * 2}, "input_ids and the model have"),
                          ({"batch": 1}, "input_ids and the model have"),
                          ({"n_layers": 1}, "cache has n_layers=1, fewer than the model's 2")):
        with pytest.raises(ValueError, match=match):
            model(x, cache=KVCache(**{**sizes, **change}))


@pytest.mark.parametrize(("kw", "error", "match"), [
    ({"max_new_tokens": True}, TypeError, "max_new_tokens must be an int, got bool"),
    ({"temperature": float("nan")}, ValueError, r"temperature \(nan\) must be finite"),
    ({"eos_token_id": 256}, ValueError, r"eos_token_id \(256\) must lie in \[0, vocab_size=256\)"),
    ({"eos_token_id": True}, TypeError, "eos_token_id must be an int"),
    ({"top_k": True}, TypeError, "top_k must be an int"),
])
def test_generate_checks_its_arguments(kw, error, match):
    with pytest.raises(error, match=match):
        _model().generate(torch.zeros(1, 2, dtype=torch.long), kw.pop("max_new_tokens", 2), **kw)


def test_generate_on_empty_input():
    model = _model()
    empty = torch.zeros(0, 3, dtype=torch.long)
    assert torch.equal(model.generate(empty, 4), empty)  # no row: nothing to continue
    with pytest.raises(ValueError, match="at least one prompt token"):
        model.generate(torch.zeros(2, 0, dtype=torch.long), 4)


@pytest.mark.parametrize("field", ["tie_embeddings", "rope_interleaved", "qkv_bias"])
def test_config_booleans_are_bools(field):
    with pytest.raises(TypeError, match=f"{field} must be a bool, got str"):
        TransformerConfig(**{field: "no"})


@pytest.mark.parametrize("field", ["n_kv_heads", "head_dim", "rope_dim", "sliding_window"])
def test_config_sizes_are_not_bools(field):
    with pytest.raises(TypeError, match=f"{field} must be an int, got bool"):
        TransformerConfig(**{field: True})


@pytest.mark.parametrize("field", ["norm_eps", "init_std", "ffn_expansion"])
def test_config_floats_are_positive(field):
    with pytest.raises(ValueError, match=field):
        TransformerConfig(**{field: -1.0})
