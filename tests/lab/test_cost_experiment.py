"""The cost lab experiment: plumbing at a seconds-long scale, and its helpers."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from blocklab.cost.presets import REAL_MODELS
from blocklab.lab.base import VERDICTS, Context
from blocklab.lab.experiments import cost


def test_run_smoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    smoke = cost.SCALES["smoke"]
    monkeypatch.setitem(cost.SCALES, "quick", smoke)
    outcome = cost.EXPERIMENT.run(Context(quick=True, out_dir=tmp_path))

    assert outcome.verdict in VERDICTS
    m = outcome.metrics
    assert m["counted_equals_analytic"] == 1.0  # exact at any scale
    for part in cost.PARTS:
        for axis in ("n", "d"):
            assert math.isfinite(m[f"slope_{part}_vs_{axis}"])
        assert m[f"measured_over_predicted_{part}"] > 0
    assert m["crossover_analytic"] == 2 * smoke.d_fixed  # MHA: n = 2 d
    assert set(m["real_models"]) == set(REAL_MODELS)
    row = m["real_models"]["llama-2-7b"]
    assert row["kv_kib_per_token_bf16"] == 512
    assert 0 < row["score_share_n2048"] < 0.1
    for c in m["counted"].values():
        assert c["counted_attention"] == c["analytic_attention"] > 0
    assert outcome.evidence and "checks hold" in outcome.evidence

    assert len(outcome.figures) == 3
    for rel in outcome.figures:
        path = tmp_path / rel
        assert path.is_file() and path.suffix == ".png" and path.stat().st_size > 10_000


def test_experiment_identity() -> None:
    assert cost.EXPERIMENT.id == "cost"
    assert cost.EXPERIMENT.card == "DL0042"
    assert cost.scale_for(Context(quick=True)) is cost.SCALES["quick"]
    assert cost.scale_for(Context(quick=False)) is cost.SCALES["full"]


def test_crossing() -> None:
    ns = [100, 200, 400, 800]
    assert cost.crossing(ns, [0.25, 0.5, 1.0, 2.0]) == pytest.approx(400)
    assert cost.crossing(ns, [0.25, 0.5, 2.0, 4.0]) == pytest.approx(200 * math.sqrt(2))
    assert cost.crossing(ns, [0.1, 0.2, 0.3, 0.4]) is None
    assert cost.crossing(ns, [1.5, 2.0, 3.0, 4.0]) is None


def test_slope() -> None:
    xs = [1.0, 2.0, 4.0, 8.0]
    assert cost.slope(xs, [3 * x**2 for x in xs]) == pytest.approx(2.0)


def test_part_work_matches_the_formulas() -> None:
    scale = cost.SCALES["quick"]
    w = cost.part_work(512, 256, scale)
    assert w["projections"] == 8 * 512 * 256**2  # q, k, v, out: 4 x 2 n d^2
    assert w["scores"] == w["av"] == 2 * 512**2 * 256  # 2 n^2 d (H D = d)
    assert w["softmax"] == 2 * 4 * 512**2 * 4  # read and write (H, n, n) fp32


def test_scale_validation() -> None:
    quick = cost.SCALES["quick"]
    with pytest.raises(ValueError, match=r"widths \[100\] must be multiples of head_dim"):
        dataclasses.replace(quick, d_sweep=(100, 256, 512))
    with pytest.raises(ValueError, match=r"at least three sizes"):
        dataclasses.replace(quick, n_sweep=(128, 256))
    with pytest.raises(ValueError, match=r"repeats must be positive, got 0"):
        dataclasses.replace(quick, repeats=0)
