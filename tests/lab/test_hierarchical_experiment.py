"""The hierarchical lab experiment: plumbing at a seconds-long scale, and its helpers."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from blocklab.lab.base import VERDICTS, Context
from blocklab.lab.experiments import hierarchical as hl
from blocklab.models.classifier import CLASSIFIER_KINDS


def test_run_smoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    smoke = hl.SCALES["smoke"]
    monkeypatch.setitem(hl.SCALES, "quick", smoke)
    outcome = hl.EXPERIMENT.run(Context(quick=True, out_dir=tmp_path))

    assert outcome.verdict in VERDICTS
    expected = {"speedup_hierarchical_vs_flat", "memory_ratio_hierarchical_vs_flat",
                "han_polar_attention_lift", "han_polar_sentence_share"}
    for task in ("real", "synthetic"):
        expected |= {f"acc_{task}_{k}" for k in CLASSIFIER_KINDS}
        expected |= {f"majority_baseline_{task}", f"flat_minus_best_hierarchical_{task}"}
    lengths = [s * smoke.cost_words for s in smoke.cost_sentences]
    expected |= {f"{m}_{k}_L{n}" for m in ("ms", "mem") for k in CLASSIFIER_KINDS
                 for n in lengths}
    expected |= {f"time_slope_{k}" for k in CLASSIFIER_KINDS}
    assert expected <= set(outcome.metrics)
    for key, value in outcome.metrics.items():
        assert isinstance(value, (int, float)), (key, value)
        assert math.isfinite(value) or key.startswith("mem"), (key, value)
    for task in ("real", "synthetic"):
        for k in CLASSIFIER_KINDS:
            assert 0.0 <= outcome.metrics[f"acc_{task}_{k}"] <= 1.0
    assert outcome.evidence
    assert len(outcome.figures) == 2
    for rel in outcome.figures:
        path = tmp_path / rel
        assert path.is_file() and path.suffix == ".png" and path.stat().st_size > 10_000


def test_identity_and_scales() -> None:
    assert hl.EXPERIMENT.id == "hierarchical" and hl.EXPERIMENT.card == "DL0041"
    assert hl.scale_for(Context(quick=True)) is hl.SCALES["quick"]
    assert hl.scale_for(Context(quick=False)) is hl.SCALES["full"]
    with pytest.raises(ValueError, match="cost_sentences needs at least two values"):
        dataclasses.replace(hl.SCALES["quick"], cost_sentences=(4,))
    with pytest.raises(ValueError, match="batch must be positive, got 0"):
        dataclasses.replace(hl.SCALES["quick"], batch=0)


def test_synthetic_set_is_split_without_overlap() -> None:
    data = hl.synthetic_set(hl.SCALES["smoke"], seed=0)
    assert len(data.train_y) == 96 and len(data.test_y) == 24
    assert data.train_x.shape[1:] == (8, 12)
