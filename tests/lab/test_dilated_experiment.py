"""The dilated lab experiment: plumbing at a seconds-long scale, and its helpers."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from blocklab.lab.base import VERDICTS, Context
from blocklab.lab.experiments import dilated as dl


def test_run_smoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    smoke = dl.SCALES["smoke"]
    monkeypatch.setitem(dl.SCALES, "quick", smoke)
    outcome = dl.EXPERIMENT.run(Context(quick=True, out_dir=tmp_path))

    assert outcome.verdict in VERDICTS
    expected = {"time_per_doubling_dense", "time_per_doubling_dilated", "speedup_at_max",
                "flops_ratio_at_max", "counted_over_analytic_flops", "val_loss_dense",
                "val_loss_dilated", "val_loss_ratio", "grad_rel_error_ours",
                "grad_rel_error_nograd_weights"}
    for n in smoke.lengths:
        expected |= {f"{k}_{kind}_N{n}" for k in ("flops", "ms", "mem")
                     for kind in ("dense", "dilated")}
    assert expected <= set(outcome.metrics)
    for key, value in outcome.metrics.items():
        assert isinstance(value, (int, float)), (key, value)
        assert math.isfinite(value) or key.startswith("mem"), (key, value)
    assert outcome.metrics["counted_over_analytic_flops"] == 1.0
    assert outcome.metrics["grad_rel_error_ours"] < 1e-9
    assert outcome.metrics["grad_rel_error_nograd_weights"] > 0.01
    assert outcome.evidence
    assert len(outcome.figures) == 2
    for rel in outcome.figures:
        path = tmp_path / rel
        assert path.is_file() and path.suffix == ".png" and path.stat().st_size > 10_000


def test_identity_and_scales() -> None:
    assert dl.EXPERIMENT.id == "dilated" and dl.EXPERIMENT.card == "DL0029"
    assert dl.scale_for(Context(quick=True)) is dl.SCALES["quick"]
    assert dl.scale_for(Context(quick=False)) is dl.SCALES["full"]
    with pytest.raises(ValueError, match=r"lengths \(1024, 2048\) must all be >= the longest"):
        dataclasses.replace(dl.SCALES["quick"], lengths=(1024, 2048))
    with pytest.raises(ValueError, match="steps must be positive, got 0"):
        dataclasses.replace(dl.SCALES["quick"], steps=0)


def test_dense_and_dilated_lm_start_from_the_same_weights() -> None:
    scale = dl.SCALES["smoke"]
    dense, dilated = dl.make_lm(scale, "dense", 0), dl.make_lm(scale, "dilated", 0)
    for a, b in zip(dense.state_dict().values(), dilated.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert type(dilated.layers[0].attn).__name__ == "DilatedAttention"


def test_peak_memory_counts_a_known_allocation() -> None:
    peak = dl.peak_memory_bytes(lambda: torch.empty(1 << 20).fill_(1.0), torch.device("cpu"))
    assert math.isnan(peak) or peak >= 4 * (1 << 20)
