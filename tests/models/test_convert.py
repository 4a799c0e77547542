"""MHA -> GQA/MQA conversion by mean-pooling K/V heads, and ``blocklab convert``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from blocklab.cli.convert import COMMAND
from blocklab.models import TransformerConfig, TransformerLM
from blocklab.models.convert import convert_kv_heads, load_model, save_model
from tests.conftest import assert_close


def make(n_kv_heads: int | None = None, **kw) -> TransformerLM:
    cfg = dict(vocab_size=61, d_model=64, n_layers=2, n_heads=8, n_kv_heads=n_kv_heads,
               max_seq_len=64)
    cfg.update(kw)
    return TransformerLM(TransformerConfig(**cfg)).eval()


def pooled_oracle(w: torch.Tensor, H: int, H_kv: int, D: int, G: int) -> torch.Tensor:
    """Loop-style: new K/V head g is the mean of old heads g r .. g r + r - 1."""
    k = w[H * D : (H + H_kv) * D]
    v = w[(H + H_kv) * D :]
    r = H_kv // G
    rows = [w[: H * D]]
    for part in (k, v):
        for g in range(G):
            heads = [part[(g * r + j) * D : (g * r + j + 1) * D] for j in range(r)]
            rows.append(sum(heads) / r)
    return torch.cat(rows)


def equalise_groups(model: TransformerLM, G: int) -> None:
    """Make the K/V heads of each of G groups identical, so pooling loses nothing."""
    cfg = model.config
    H, H_kv, D = cfg.n_heads, cfg.kv_heads, cfg.dim_head
    r = H_kv // G
    with torch.no_grad():
        for layer in model.layers:
            w = layer.attn.wqkv.weight
            for start in (H * D, (H + H_kv) * D):
                part = w[start : start + H_kv * D].view(G, r, D, -1)
                part.copy_(part[:, :1].expand_as(part).clone())


@pytest.mark.parametrize("src,dst", [(None, 8), (4, 4), (1, 1)])
def test_same_heads_is_identity(src, dst) -> None:
    model = make(src)
    x = torch.randint(0, 61, (2, 12))
    converted = convert_kv_heads(model, dst)
    assert converted is not model
    assert torch.equal(converted(x), model(x))


@pytest.mark.parametrize("src,dst", [(None, 4), (None, 2), (None, 1), (4, 2), (4, 1), (2, 1)])
@pytest.mark.parametrize("qkv_bias", [False, True])
def test_weights_are_group_means(src, dst, qkv_bias) -> None:
    model = make(src, qkv_bias=qkv_bias)
    cfg = model.config
    converted = convert_kv_heads(model, dst)
    assert converted.config.kv_heads == dst
    assert converted.config.n_heads == cfg.n_heads
    for old, new in zip(model.layers, converted.layers, strict=True):
        assert_close(new.attn.wqkv.weight,
                     pooled_oracle(old.attn.wqkv.weight, 8, cfg.kv_heads, 8, dst))
        if qkv_bias:
            b = old.attn.wqkv.bias[:, None]
            assert_close(new.attn.wqkv.bias, pooled_oracle(b, 8, cfg.kv_heads, 8, dst)[:, 0])
        assert torch.equal(new.attn.wo.weight, old.attn.wo.weight)
        assert torch.equal(new.ffn.w_in.weight, old.ffn.w_in.weight)
    assert torch.equal(converted.embed.weight, model.embed.weight)
    removed = 2 * (cfg.kv_heads - dst) * 8 * (64 + qkv_bias) * cfg.n_layers
    assert converted.num_parameters() == model.num_parameters() - removed


@pytest.mark.parametrize("src,dst", [(None, 2), (None, 1), (4, 1)])
def test_exact_when_group_heads_agree(src, dst) -> None:
    model = make(src)
    equalise_groups(model, dst)
    x = torch.randint(0, 61, (2, 20))
    converted = convert_kv_heads(model, dst)
    assert_close(converted(x), model(x))
    # and the converted model decodes with its (smaller) cache as it runs in full
    cache = converted.make_cache(2, 24)
    assert cache.nbytes * model.config.kv_heads == model.make_cache(2, 24).nbytes * dst
    steps = [converted(x[:, :15], cache=cache)[:, -1]]
    for t in range(15, 20):
        steps.append(converted(x[:, t : t + 1], cache=cache)[:, -1])
    full = converted(x)
    assert_close(torch.stack(steps[1:], 1), full[:, 15:])


def test_cache_shrinks_by_the_group_size() -> None:
    model = make(None)
    for G in (8, 4, 2, 1):
        assert convert_kv_heads(model, G).make_cache(1, 32).nbytes * 8 == \
            model.make_cache(1, 32).nbytes * G


def test_tied_dtype_mode_and_rng_are_kept() -> None:
    model = make(None, tie_embeddings=True).to(torch.float64).train()
    state = torch.random.get_rng_state()
    converted = convert_kv_heads(model, 2)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert converted.lm_head.weight is converted.embed.weight
    assert converted.embed.weight.dtype == torch.float64 and converted.training
    assert not model.layers[0].attn.wqkv.weight.shape == converted.layers[0].attn.wqkv.weight.shape


def test_refuses_impossible_heads() -> None:
    model = make(4)
    with pytest.raises(ValueError, match=r"n_kv_heads \(3\) must divide the model's key/value "
                                         r"heads \(4\)"):
        convert_kv_heads(model, 3)
    with pytest.raises(ValueError, match=r"n_kv_heads \(8\) must divide"):
        convert_kv_heads(model, 8)  # more heads than it has: nothing to pool
    with pytest.raises(ValueError, match=r"n_kv_heads \(0\) must be positive"):
        convert_kv_heads(model, 0)
    with pytest.raises(TypeError, match=r"n_kv_heads must be an int, got float"):
        convert_kv_heads(model, 2.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"model must be a TransformerLM"):
        convert_kv_heads(torch.nn.Linear(2, 2), 1)  # type: ignore[arg-type]


@pytest.mark.parametrize("tied", [False, True])
def test_save_load_round_trip(tmp_path: Path, tied: bool) -> None:
    model = convert_kv_heads(make(None, tie_embeddings=tied), 2)
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m").eval()
    assert loaded.config == model.config
    x = torch.randint(0, 61, (2, 9))
    assert torch.equal(loaded(x), model(x))
    assert (loaded.lm_head.weight is loaded.embed.weight) == tied
    with pytest.raises(ValueError, match=r"holds no model.safetensors"):
        load_model(tmp_path)


# ------------------------------------------------------------------------- the CLI

def run_convert(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    COMMAND.add_arguments(parser)
    return COMMAND.run(parser.parse_args(argv))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from blocklab.train.config import load_train_config
    from blocklab.train.trainer import train

    out = tmp_path_factory.mktemp("run")
    config = load_train_config("tiny", ["max_steps=4", "save_every=4", "eval_every=4",
                                        "model.n_kv_heads=4", "batch_size=4", "seq_len=32"])
    train(config, out, progress=False)
    return out


def test_cli_converts_and_uptrains(trained_run: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mqa"
    code = run_convert([str(trained_run), "--kv-heads", "1", "--out", str(out),
                        "--uptrain-steps", "3", "--eval-batches", "2", "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert "converted 4 -> 1 K/V heads" in capsys.readouterr().out
    report = json.loads((out / "convert.json").read_text())
    assert report["from_kv_heads"] == 4 and report["to_kv_heads"] == 1
    assert set(report["val_loss"]) >= {"source", "converted", "uptrained"}
    assert report["kv_cache_bytes_per_token"]["source"] == \
        4 * report["kv_cache_bytes_per_token"]["converted"]
    model = load_model(out)
    assert model.config.kv_heads == 1 and model.config.d_model == 64
    # a converted directory converts again (here: to the same heads, no uptraining)
    assert run_convert([str(out), "--kv-heads", "1", "--out", str(tmp_path / "again"),
                        "--quiet"]) == 0


def test_cli_without_uptraining_matches_the_function(trained_run: Path, tmp_path: Path) -> None:
    from blocklab.train.sources import load_source

    ckpt = sorted(trained_run.glob("ckpt-*"))[-1]
    assert run_convert([str(ckpt), "--kv-heads", "2", "--out", str(tmp_path / "g"),
                        "--quiet"]) == 0
    source, settings = load_source(ckpt)
    assert settings["seq_len"] == 32
    expected = convert_kv_heads(source, 2)
    got = load_model(tmp_path / "g")
    for name, tensor in expected.state_dict().items():
        assert torch.equal(got.state_dict()[name], tensor), name


@pytest.mark.parametrize("argv,message", [
    (["--kv-heads", "3"], "n_kv_heads (3) must divide the model's key/value heads (4)"),
    (["--kv-heads", "1", "--uptrain-steps", "-1"], "--uptrain-steps (-1) must be >= 0"),
    (["--kv-heads", "1", "--lr", "0"], "--lr (0.0) must be > 0"),
])
def test_cli_errors(trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                    argv: list[str], message: str) -> None:
    assert run_convert([str(trained_run), "--out", str(tmp_path / "x"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("blocklab convert: error: ") and message in err
    assert not (tmp_path / "x").exists()


def test_cli_errors_on_sources(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_convert([str(tmp_path / "nope"), "--kv-heads", "1", "--out", "o"]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert run_convert([str(tmp_path), "--kv-heads", "1", "--out", "o"]) == 2
    assert "holds no checkpoint" in capsys.readouterr().err
