"""The mqa lab experiment: plumbing at a seconds-long scale, and its helpers."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from blocklab.data import corpus_tokens
from blocklab.lab.base import VERDICTS, Context, card_rows
from blocklab.lab.estimate import Estimate, verdict_of
from blocklab.lab.experiments import mqa
from blocklab.models import TransformerLM
from blocklab.train.loop import cosine_lr


def test_run_smoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    smoke = mqa.SCALES["smoke"]
    monkeypatch.setitem(mqa.SCALES, "quick", smoke)
    threads = torch.get_num_threads()
    outcome = mqa.EXPERIMENT.run(Context(quick=True, out_dir=tmp_path))
    card_rows(mqa.EXPERIMENT.card_items, outcome.checks)  # the card mapping fits the run
    assert torch.get_num_threads() == threads  # one_thread() restores the setting

    assert outcome.verdict in VERDICTS
    assert outcome.verdict == verdict_of(outcome.checks)
    by_name = {c.name: c for c in outcome.checks}
    assert len(by_name) == len(outcome.checks) == 5
    counted = [c for c in outcome.checks if c.counted]
    assert len(counted) == 3
    for check in outcome.checks:
        est = check.estimate
        assert check.status in {"holds", "fails", "inconclusive"}, check
        assert est.n >= 1 and len(est.samples) == est.n
        assert est.low <= est.value <= est.high, check
        assert check.name in outcome.evidence
    n_top = max(smoke.contexts)
    assert by_name[f"decode speed-up, MQA over MHA at n={n_top}"].estimate.n == smoke.speed_repeats
    assert by_name["held-out loss, MQA / MHA"].estimate.n == smoke.seeds
    assert by_name["uptrained MQA / MHA control"].estimate.n == smoke.seeds
    # The cache check is exact at any scale: measured bytes equal the formula, and MHA
    # holds H times what MQA holds.
    assert by_name[f"KV cache bytes, MHA / MQA (H = {smoke.n_heads})"].status == "holds"

    metrics = outcome.metrics
    expected = {"cache_ratio_mha_mqa", "cache_measured_equals_formula", "copy_gbps",
                "quality_ratio_mqa", "converted_ratio_mqa_vs_control", "pooled_ratio_mqa",
                "uptrain_recovery_mqa", "param_mismatch", "val_loss_MHA", "val_loss_MQA",
                "val_loss_pooled_MQA", "val_loss_uptrained_MQA", "val_loss_MHA_control",
                "val_loss_uptrained_MQA_50pct", "decode_speedup_mqa_wall"}
    for n in smoke.contexts:
        expected |= {f"decode_speedup_mqa_n{n}", f"decode_tok_s_MHA_n{n}",
                     f"decode_tok_s_MQA_n{n}", f"cache_bytes_GQA-2_n{n}"}
    assert expected <= set(metrics)
    assert metrics["cache_measured_equals_formula"] == 1.0
    assert metrics["cache_ratio_mha_mqa"] == smoke.n_heads
    assert metrics["param_mismatch"] < 0.01
    assert isinstance(metrics["decode_speedup_mqa_wall"], Estimate)
    assert len(metrics["val_loss_MHA_control"]) == smoke.seeds
    assert all(math.isfinite(x) for x in metrics["val_loss_uptrained_MQA"])

    assert len(outcome.figures) == 2
    for rel in outcome.figures:
        path = tmp_path / rel
        assert path.is_file() and path.suffix == ".png" and path.stat().st_size > 10_000


def test_experiment_identity() -> None:
    assert mqa.EXPERIMENT.id == "mqa"
    assert mqa.EXPERIMENT.card == "DL0044"
    assert mqa.scale_for(Context(quick=True)) is mqa.SCALES["quick"]
    assert mqa.scale_for(Context(quick=False)) is mqa.SCALES["full"]
    assert set(mqa.EXPERIMENT.seconds) == {"quick", "full"}
    full = mqa.SCALES["full"]
    assert full.uptrain_eval_every == round(0.05 * full.steps)  # Ainslie et al.'s 5% is scored
    assert full.uptrain_steps == round(full.uptrain_fraction * full.steps)


def test_uptraining_continues_from_where_training_ended(monkeypatch: pytest.MonkeyPatch) -> None:
    """Uptraining starts at the learning rate the source's schedule ended at, not at a
    re-warmed peak, and is scored at the end."""
    smoke = mqa.SCALES["smoke"]
    seen: dict[str, object] = {}
    real = mqa.train_lm

    def spy(model, tokens, **kwargs):
        seen.update(kwargs)
        return real(model, tokens, **kwargs)

    monkeypatch.setattr(mqa, "train_lm", spy)
    torch.manual_seed(0)
    model = TransformerLM(mqa.quality_config(smoke, 1))
    curve = mqa.uptrain(model, smoke, 0, Context(), corpus_tokens())
    ended = cosine_lr(smoke.steps, steps=smoke.steps, lr=smoke.lr,
                      warmup=min(100, smoke.steps // 10))
    assert seen["lr"] == pytest.approx(ended)
    assert seen["lr"] < smoke.lr
    assert seen["steps"] == smoke.uptrain_steps
    assert smoke.uptrain_steps in curve and all(math.isfinite(v) for v in curve.values())


@pytest.mark.parametrize("name", ["quick", "full", "smoke"])
def test_quality_models_have_matched_parameters(name: str) -> None:
    scale = mqa.SCALES[name]
    with torch.device("meta"):
        counts = [TransformerLM(mqa.quality_config(scale, h)).num_parameters()
                  for h in scale.lm_kv_heads]
    assert max(counts) / min(counts) - 1 < 0.01


def test_kind_names() -> None:
    assert [mqa.kind(h, 8) for h in (8, 4, 1)] == ["MHA", "GQA-4", "MQA"]


def test_scale_validation() -> None:
    quick = mqa.SCALES["quick"]
    with pytest.raises(ValueError, match=r"kv_heads \[3\] do not divide n_heads \(8\)"):
        dataclasses.replace(quick, kv_heads=(8, 3, 1))
    with pytest.raises(ValueError, match=r"must run from n_heads \(8, MHA\) down to 1"):
        dataclasses.replace(quick, kv_heads=(8, 2))
    with pytest.raises(ValueError, match=r"lm_kv_heads \(\(4, 3, 1\)\)"):
        dataclasses.replace(quick, lm_kv_heads=(4, 3, 1))
    with pytest.raises(ValueError, match=r"steps must be positive, got 0"):
        dataclasses.replace(quick, steps=0)
    with pytest.raises(ValueError, match=r"uptrain_fraction must be in \(0, 1\], got 0"):
        dataclasses.replace(quick, uptrain_fraction=0)
