"""The FFN experiment (DL0045): matched GLU widths, and a smoke-scale run end to end."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from blocklab.ffn import FeedForward
from blocklab.lab import experiments as registry
from blocklab.lab.base import VERDICTS, Context, card_rows
from blocklab.lab.estimate import Estimate, verdict_of
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


def test_loss_slope_is_the_change_per_doubling():
    assert ffn.loss_slope([1, 2, 4, 8], [2.0, 1.9, 1.8, 1.7]) == pytest.approx(-0.1)
    assert ffn.loss_slope([1, 2, 4], [1.0, 1.0, 1.0]) == pytest.approx(0.0, abs=1e-12)


def test_scale_rejects_designs_without_an_interval():
    quick = ffn.SCALES["quick"]
    with pytest.raises(ValueError, match="seeds"):
        dataclasses.replace(quick, seeds=1)
    with pytest.raises(ValueError, match="plain and a gated"):
        dataclasses.replace(quick, activations=("gelu", "relu"))
    with pytest.raises(ValueError, match="at least 3"):
        dataclasses.replace(quick, ratios=(1, 4))


def test_smoke_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setitem(ffn.SCALES, "quick", ffn.SCALES["smoke"])
    scale = ffn.SCALES["smoke"]
    ctx = Context(quick=True, seed=0, out_dir=tmp_path)
    outcome = ffn.run(ctx)

    assert outcome.verdict in VERDICTS
    assert outcome.verdict == verdict_of(outcome.checks)
    names = [c.name.split(":")[0] for c in outcome.checks]
    assert names == ["expansion", "glu_gain", "param_mismatch"]
    assert [c.counted for c in outcome.checks] == [True, False, False]
    card_rows(ffn.EXPERIMENT.card_items, outcome.checks)  # the card mapping fits the run
    for check in outcome.checks:
        est = check.estimate
        assert check.status in ("holds", "fails", "inconclusive")
        assert est.low <= est.value <= est.high
        assert all(math.isfinite(x) for x in est.samples)
    slope, gain, mismatch = (c.estimate for c in outcome.checks)
    assert slope.n == gain.n == scale.seeds
    assert math.isfinite(slope.low) and math.isfinite(gain.high)  # >= 2 seeds: finite
    assert mismatch.low == mismatch.high < ffn.MAX_PARAM_MISMATCH

    m = outcome.metrics
    for r in scale.ratios:
        loss = m[f"loss_gelu_r{r}"]
        assert isinstance(loss, Estimate) and loss.n == scale.seeds
        assert loss.low <= loss.value <= loss.high
    # The slope's samples are the per-seed fits of the per-seed losses.
    ratios = list(scale.ratios)
    for i, s in enumerate(slope.samples):
        losses = [m[f"loss_gelu_r{r}"].samples[i] for r in ratios]
        assert s == pytest.approx(ffn.loss_slope(ratios, losses))
    # Wider FFN: more parameters, more FLOPs, a larger FFN share.
    for x, y in zip(scale.ratios, scale.ratios[1:], strict=False):
        assert m[f"params_gelu_r{y}"] > m[f"params_gelu_r{x}"]
        assert m[f"flops_per_token_gelu_r{y}"] > m[f"flops_per_token_gelu_r{x}"]
        assert m[f"ffn_share_gelu_r{y}"] > m[f"ffn_share_gelu_r{x}"]
    params = [m[f"params_{a}"] for a in scale.activations]
    assert max(params) / min(params) - 1 < ffn.MAX_PARAM_MISMATCH
    assert m["loss_gelu"].samples == m[f"loss_gelu_r{scale.expansion}"].samples
    assert -1 <= m["rank_corr_shazeer"] <= 1

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
