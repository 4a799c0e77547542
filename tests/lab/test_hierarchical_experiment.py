"""The hierarchical lab experiment: plumbing at a seconds-long scale, and its helpers."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from blocklab.lab.base import VERDICTS, Context, card_rows
from blocklab.lab.estimate import Estimate, Timing, verdict_of
from blocklab.lab.experiments import hierarchical as hl
from blocklab.models.classifier import CLASSIFIER_KINDS


def test_run_smoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    smoke = hl.SCALES["smoke"]
    monkeypatch.setitem(hl.SCALES, "quick", smoke)
    outcome = hl.EXPERIMENT.run(Context(quick=True, out_dir=tmp_path))
    card_rows(hl.EXPERIMENT.card_items, outcome.checks)  # the card mapping fits the run

    assert outcome.verdict in VERDICTS
    assert outcome.verdict == verdict_of(outcome.checks)
    assert len(outcome.checks) == 2 * len(hl.TASKS) + 3
    assert all(c.counted for c in outcome.checks)
    for check in outcome.checks:
        est = check.estimate
        assert check.status in ("holds", "fails", "inconclusive")
        assert est.low <= est.value <= est.high
        assert est.n >= 2 and all(math.isfinite(x) for x in est.samples)
    acc_checks = outcome.checks[:2 * len(hl.TASKS)]
    assert all(c.estimate.n == smoke.seeds and c.threshold == -hl.MAX_ACC_DEFICIT
               for c in acc_checks)
    speed, gap, lift = (c.estimate for c in outcome.checks[-3:])
    assert speed.n == gap.n == smoke.repeats and lift.n == smoke.seeds

    m = outcome.metrics
    for task in hl.TASKS:
        for k in CLASSIFIER_KINDS:
            acc = m[f"acc_{task}_{k}"]
            assert isinstance(acc, Estimate) and acc.n == smoke.seeds
            assert all(0.0 <= a <= 1.0 for a in acc.samples)
        for k in hl.HIERARCHICAL_KINDS:
            diff = m[f"{k}_minus_flat_{task}"]
            assert diff.samples == pytest.approx(
                [a - b for a, b in zip(m[f"acc_{task}_{k}"].samples,
                                       m[f"acc_{task}_flat"].samples, strict=True)])
    lengths = [s * smoke.cost_words for s in smoke.cost_sentences]
    for k in CLASSIFIER_KINDS:
        assert m[f"time_slope_{k}"].n == smoke.repeats * len(lengths)
        for n in lengths:
            assert m[f"ms_{k}_L{n}"].n == smoke.repeats and m[f"ms_{k}_L{n}"].value > 0
            assert f"mem_{k}_L{n}" in m
    assert outcome.evidence
    assert len(outcome.figures) == 2
    for rel in outcome.figures:
        path = tmp_path / rel
        assert path.is_file() and path.suffix == ".png" and path.stat().st_size > 10_000


def test_time_exponents_pair_rounds() -> None:
    timings = {n: {"flat": Timing(wall=[n**2 * 1e-6, 2 * n**2 * 1e-6])} for n in (2, 4, 8, 16)}
    assert hl.time_exponents(timings, "flat") == pytest.approx([2.0, 2.0])


def test_identity_and_scales() -> None:
    assert hl.EXPERIMENT.id == "hierarchical" and hl.EXPERIMENT.card == "DL0041"
    assert hl.scale_for(Context(quick=True)) is hl.SCALES["quick"]
    assert hl.scale_for(Context(quick=False)) is hl.SCALES["full"]
    with pytest.raises(ValueError, match="cost_sentences needs at least four values"):
        dataclasses.replace(hl.SCALES["quick"], cost_sentences=(4, 8, 16))
    with pytest.raises(ValueError, match="batch must be positive, got 0"):
        dataclasses.replace(hl.SCALES["quick"], batch=0)


def test_synthetic_set_is_split_without_overlap() -> None:
    data = hl.synthetic_set(hl.SCALES["smoke"], seed=0)
    assert len(data.train_y) == 96 and len(data.test_y) == 24
    assert data.train_x.shape[1:] == (8, 12)
