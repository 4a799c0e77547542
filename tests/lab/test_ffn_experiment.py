"""The FFN experiment (DL0045): matched GLU widths, and a smoke-scale run end to end."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from blocklab.ffn import FeedForward
from blocklab.lab import experiments as registry
from blocklab.lab.base import VERDICTS, Context
from blocklab.lab.experiments import ffn
from blocklab.models import TransformerLM


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("d_model", [24, 48, 64, 96, 100, 192])
def test_glu_hidden_width_matches_plain_parameters(d_model):
    plain = FeedForward(d_model, hidden_dim=ffn.hidden_width(d_model, 4, "gelu"),
                        activation="gelu", bias=False)
    for activation in ffn.GATED:
        h = ffn.hidden_width(d_model, 4, activation)
        assert h == int(2 * 4 * d_model / 3)
        glu = FeedForward(d_model, hidden_dim=h, activation=activation, bias=False)
        assert _n_params(glu) == ffn.ffn_params(d_model, h, activation) == 3 * d_model * h
        assert abs(_n_params(glu) - _n_params(plain)) / _n_params(plain) < 0.01


@pytest.mark.parametrize("name", ["quick", "full", "smoke"])
def test_scales_give_matched_models(name):
    scale = ffn.SCALES[name]
    counts = {}
    for activation in ffn.PLAIN + ffn.GATED:
        model = TransformerLM(ffn.make_config(scale, activation, scale.expansion))
        counts[activation] = ffn.body_params(model)
        ffn_weights = ffn.model_ffn_params(model)
        h = model.config.hidden_dim
        assert ffn_weights == scale.n_layers * ffn.ffn_params(scale.d_model, h, activation)
    base = counts["gelu"]
    assert all(abs(n - base) / base < ffn.MAX_PARAM_MISMATCH for n in counts.values()), counts


def test_flops_per_token_counts_matmuls_and_attention():
    scale = ffn.SCALES["smoke"]
    model = TransformerLM(ffn.make_config(scale, "gelu", 4))
    total, matmul = ffn.forward_flops_per_token(model, scale.seq_len)
    # Every weight matrix is used once per token, 2 FLOPs per multiply-add.
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert matmul == 2 * weights
    assert total - matmul == pytest.approx(
        scale.n_layers * 2 * (scale.seq_len + 1) * scale.d_model)


def test_models_of_one_seed_differ_only_in_their_ffns():
    scale = ffn.SCALES["smoke"]
    a = ffn.init_model(ffn.make_config(scale, "gelu", 1), seed=3)
    b = ffn.init_model(ffn.make_config(scale, "swiglu", 8), seed=3)
    c = ffn.init_model(ffn.make_config(scale, "gelu", 1), seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    shared = [k for k in sa if ".ffn." not in k]
    assert shared and all(torch.equal(sa[k], sb[k]) for k in shared)
    assert not torch.equal(sa["embed.weight"], sc["embed.weight"])
    assert sa["layers.0.ffn.w_in.weight"].shape != sb["layers.0.ffn.w_in.weight"].shape


def test_rank_correlation():
    assert ffn.rank_correlation([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert ffn.rank_correlation([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_smoke_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setitem(ffn.SCALES, "quick", ffn.SCALES["smoke"])
    scale = ffn.SCALES["smoke"]
    ctx = Context(quick=True, seed=0, out_dir=tmp_path)
    outcome = ffn.run(ctx)

    assert outcome.verdict in VERDICTS
    m = outcome.metrics
    keys = ["plain_mean", "glu_mean", "glu_gain", "glu_gain_min_seed", "glu_beats_all_plain",
            "seed_spread", "param_mismatch", "rank_corr_shazeer"]
    for a in ffn.SWEEP_ACTIVATIONS:
        keys += [f"sweep_{a}_gain", f"sweep_{a}_decreasing_steps"]
        for r in scale.ratios:
            keys += [f"loss_{a}_r{r}", f"params_{a}_r{r}", f"ffn_share_{a}_r{r}",
                     f"flops_per_token_{a}_r{r}"]
    for a in ffn.PLAIN + ffn.GATED:
        keys += [f"loss_{a}", f"params_{a}", f"hidden_{a}"]
    # The baseline ran with more seeds than the rest: its spread is the measured noise.
    assert scale.baseline_seeds > scale.seeds
    keys.append("loss_gelu_spread")
    assert "loss_swiglu_spread" not in m
    for key in keys:
        assert key in m, key
        assert math.isfinite(float(m[key])), (key, m[key])
    assert m["seed_spread"] == m["loss_gelu_spread"] >= 0

    assert m["param_mismatch"] < 0.01
    params = [m[f"params_{a}"] for a in ffn.PLAIN + ffn.GATED]
    assert max(params) / min(params) - 1 < 0.01
    # Wider FFN: more parameters, more FLOPs, a larger FFN share; SwiGLU matches GELU.
    for a in ffn.SWEEP_ACTIVATIONS:
        for x, y in zip(scale.ratios, scale.ratios[1:], strict=False):
            assert m[f"params_{a}_r{y}"] > m[f"params_{a}_r{x}"]
            assert m[f"flops_per_token_{a}_r{y}"] > m[f"flops_per_token_{a}_r{x}"]
            assert m[f"ffn_share_{a}_r{y}"] > m[f"ffn_share_{a}_r{x}"]
    for r in scale.ratios:
        assert m[f"params_swiglu_r{r}"] == pytest.approx(m[f"params_gelu_r{r}"], rel=0.01)
    assert m["loss_gelu"] == m[f"loss_gelu_r{scale.expansion}"]

    assert len(outcome.figures) == 3
    for rel in outcome.figures:
        path = tmp_path / rel
        assert path.is_file() and path.stat().st_size > 1000
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Shazeer" in outcome.evidence


def test_registered():
    experiment = registry.load_experiment("ffn")
    assert experiment.card == "DL0045"
    assert experiment.run is ffn.run
