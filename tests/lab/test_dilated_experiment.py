"""The dilated lab experiment: plumbing at a seconds-long scale, and its helpers."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from blocklab.lab.base import VERDICTS, Context, card_rows
from blocklab.lab.estimate import Estimate, Timing, verdict_of
from blocklab.lab.experiments import dilated as dl

STATUSES = {"holds", "fails", "inconclusive"}


def test_run_smoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    smoke = dl.SCALES["smoke"]
    monkeypatch.setitem(dl.SCALES, "quick", smoke)
    outcome = dl.EXPERIMENT.run(Context(quick=True, out_dir=tmp_path))
    card_rows(dl.EXPERIMENT.card_items, outcome.checks)  # the card mapping fits the run

    assert outcome.verdict in VERDICTS
    assert outcome.verdict == verdict_of(outcome.checks)
    names = [c.name for c in outcome.checks]
    assert len(names) == len(set(names)) == 8
    counted = [c for c in outcome.checks if c.counted]
    assert len(counted) == 4
    assert any("time per doubling" in c.name for c in counted)
    assert any("validation loss" in c.name for c in counted)
    for check in outcome.checks:
        est = check.estimate
        assert check.status in STATUSES, check
        assert est.n >= 1 and len(est.samples) == est.n
        if not math.isnan(est.value):
            assert est.low <= est.value <= est.high, check
        assert check.text().startswith(check.name)
        assert check.name in outcome.evidence
    # Repeated quantities carry every repetition: 4 lengths x repeats, seeds.
    by_name = {c.name: c for c in outcome.checks}
    assert by_name["dilated time per doubling of N"].estimate.n == len(smoke.lengths) * smoke.repeats
    assert by_name["validation loss, dilated / dense"].estimate.n == smoke.seeds
    # Implementation tests hold at any scale.
    assert by_name["counted / analytic FLOPs"].status == "holds"
    assert by_name["mixture gradient error vs autograd"].status == "holds"
    assert by_name["gradient error with no_grad weights"].status == "holds"

    metrics = outcome.metrics
    for n in smoke.lengths:
        for kind in dl.KINDS:
            assert isinstance(metrics[f"time_{kind}_N{n}"], Timing)
            assert len(metrics[f"time_{kind}_N{n}"].cpu) == smoke.repeats
            assert metrics[f"flops_{kind}_N{n}"] > 0
    assert isinstance(metrics["val_loss_ratio_last_quarter"], Estimate)
    assert all(math.isfinite(x) for kind in dl.KINDS for x in metrics[f"val_loss_{kind}"])
    assert len(outcome.figures) == 3
    for rel in outcome.figures:
        path = tmp_path / rel
        assert path.is_file() and path.suffix == ".png" and path.stat().st_size > 10_000


def test_identity_and_scales() -> None:
    assert dl.EXPERIMENT.id == "dilated" and dl.EXPERIMENT.card == "DL0029"
    assert dl.scale_for(Context(quick=True)) is dl.SCALES["quick"]
    assert dl.scale_for(Context(quick=False)) is dl.SCALES["full"]
    assert set(dl.EXPERIMENT.seconds) == {"quick", "full"}
    with pytest.raises(ValueError, match=r"lengths \(1024, 2048, 4096, 8192\) must all be >="):
        dataclasses.replace(dl.SCALES["quick"], lengths=(1024, 2048, 4096, 8192))
    with pytest.raises(ValueError, match="at least four distinct values"):
        dataclasses.replace(dl.SCALES["quick"], lengths=(4096, 8192, 16384))
    with pytest.raises(ValueError, match="steps must be positive, got 0"):
        dataclasses.replace(dl.SCALES["quick"], steps=0)


def test_growth_per_doubling_reads_a_known_exponent() -> None:
    lengths = [100, 200, 400, 800]
    times = {f"dilated@{n}": Timing(wall=[n * 1e-4, n * 1.1e-4], cpu=[n**2 * 1e-6] * 2)
             for n in lengths}
    cpu = dl.growth_per_doubling({"time": times}, "dilated", lengths, torch.device("cpu"))
    wall = dl.growth_per_doubling({"time": times}, "dilated", lengths, torch.device("cpu"),
                                  wall=True)
    assert cpu.value == pytest.approx(4.0) and cpu.n == 8
    assert wall.low < 2.0 < wall.high and wall.value == pytest.approx(2.0, rel=1e-6)


def test_dense_and_dilated_lm_start_from_the_same_weights() -> None:
    scale = dl.SCALES["smoke"]
    dense, dilated = dl.make_lm(scale, "dense", 0), dl.make_lm(scale, "dilated", 0)
    for a, b in zip(dense.state_dict().values(), dilated.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert type(dilated.layers[0].attn).__name__ == "DilatedAttention"


def test_peak_memory_counts_a_known_allocation() -> None:
    peak = dl.peak_memory_bytes(lambda: torch.empty(1 << 20).fill_(1.0), torch.device("cpu"))
    assert math.isnan(peak) or peak >= 4 * (1 << 20)
