"""The cost lab experiment: its checks at a seconds-long scale, and its helpers."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from blocklab.cost.presets import REAL_MODELS
from blocklab.lab.base import VERDICTS, Context, card_rows
from blocklab.lab.estimate import Estimate, verdict_of
from blocklab.lab.experiments import cost


def _assert_estimate(est: Estimate) -> None:
    assert est.n >= 1 and len(est.samples) == est.n
    assert est.low <= est.value <= est.high


def test_run_smoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    smoke = cost.SCALES["smoke"]
    monkeypatch.setitem(cost.SCALES, "quick", smoke)
    outcome = cost.EXPERIMENT.run(Context(quick=True, out_dir=tmp_path))
    card_rows(cost.EXPERIMENT.card_items, outcome.checks)  # the card mapping fits the run

    names = {c.name for c in outcome.checks}
    expected = {f"{p} time exponent in {a}" for a, p in cost.EXPONENTS} | {
        f"{p} measured / predicted time" for p in cost.PARTS} | {
        "crossover measured / analytic", "multi-head / single-head layer time",
        "counted / analytic FLOPs - 1 (worst model)"}
    assert names == expected
    for check in outcome.checks:
        assert check.status in ("holds", "fails", "inconclusive") and check.why
        _assert_estimate(check.estimate)
    context = [c for c in outcome.checks if not c.counted]
    assert [c.name for c in context] == ["counted / analytic FLOPs - 1 (worst model)"]
    assert context[0].status == "holds"  # exact at any scale: why it is context
    by_name = {c.name: c for c in outcome.checks}
    # Slopes: one point per round at each of the >= 4 sizes.
    slope = by_name["scores time exponent in n"].estimate
    assert slope.n == smoke.repeats * len(smoke.n_sweep)
    assert by_name["scores measured / predicted time"].estimate.n == smoke.repeats * (
        len(smoke.n_sweep) + len(smoke.d_sweep))
    assert by_name["multi-head / single-head layer time"].estimate.n == smoke.repeats
    assert outcome.verdict in VERDICTS
    assert outcome.verdict == verdict_of(outcome.checks)

    m = outcome.metrics
    assert m["counted_mismatch"] == 0.0
    assert m["crossover_analytic"] == 2 * smoke.d_fixed  # MHA: n = 2 d
    for part in cost.PARTS:
        for axis in ("n", "d"):
            assert math.isfinite(m[f"slope_{part}_vs_{axis}"].value)
        assert m[f"measured_over_predicted_{part}"].value > 0
    assert set(m["real_models"]) == set(REAL_MODELS)
    row = m["real_models"]["llama-2-7b"]
    assert row["kv_kib_per_token_bf16"] == 512
    assert 0 < row["score_share_n2048"] < 0.1
    for c in m["counted"].values():
        assert c["counted_attention"] == c["analytic_attention"] > 0
    assert outcome.evidence and "counted checks hold" in outcome.evidence

    assert len(outcome.figures) == 3
    for rel in outcome.figures:
        path = tmp_path / rel
        assert path.is_file() and path.suffix == ".png" and path.stat().st_size > 10_000


def test_experiment_identity() -> None:
    assert cost.EXPERIMENT.id == "cost"
    assert cost.EXPERIMENT.card == "DL0042"
    assert set(cost.EXPERIMENT.seconds) == {"quick", "full"}
    assert cost.scale_for(Context(quick=True)) is cost.SCALES["quick"]
    assert cost.scale_for(Context(quick=False)) is cost.SCALES["full"]


def test_crossing() -> None:
    ns = [100, 200, 400, 800]
    assert cost.crossing(ns, [0.25, 0.5, 1.0, 2.0]) == pytest.approx(400)
    assert cost.crossing(ns, [0.25, 0.5, 2.0, 4.0]) == pytest.approx(200 * math.sqrt(2))
    assert cost.crossing(ns, [0.1, 0.2, 0.3, 0.4]) is None
    assert cost.crossing(ns, [1.5, 2.0, 3.0, 4.0]) is None


def test_crossings_per_round_and_beyond_the_sweep() -> None:
    ns = [100, 200, 400, 800]
    # Round 0: scores + av reach the projections at 400; round 1 never does.
    t = {"mm": [1.0, 1.0]}
    for n, (r0, r1) in zip(ns, [(0.25, 0.1), (0.5, 0.1), (1.0, 0.1), (2.0, 0.1)], strict=True):
        t[f"n={n}/projections"] = [1.0, 1.0]
        t[f"n={n}/scores"] = [r0 / 2, r1 / 2]
        t[f"n={n}/av"] = [r0 / 2, r1 / 2]
    assert cost.crossings(t, ns, ("scores", "av")) == [pytest.approx(400), 1600.0]


def test_part_work_matches_the_formulas() -> None:
    scale = cost.SCALES["quick"]
    w = cost.part_work(512, 256, scale)
    flops, nbytes = w["flops"], w["bytes"]
    assert flops["projections"] == 8 * 512 * 256**2  # q, k, v, out: 4 x 2 n d^2
    assert flops["scores"] == flops["av"] == 2 * 512**2 * 256  # 2 n^2 d (H D = d)
    assert flops["softmax"] == 0
    matrix = 4 * 512**2 * 4  # one (H, n, n) fp32 matrix, H = 4
    assert nbytes["softmax"] == 2 * matrix  # read the scores, write the probabilities
    assert nbytes["scores"] == nbytes["av"] == matrix + 2 * 512 * 256 * 4
    assert nbytes["projections"] == 4 * (6 * 512 * 256 + 4 * 256**2)
    single = cost.part_work(512, 256, scale, heads=1)
    assert single["flops"] == flops  # the same matmul FLOPs with one head ...
    assert single["bytes"]["softmax"] == nbytes["softmax"] / 4  # ... H times fewer bytes


def test_part_fns_compute_attention() -> None:
    scale = cost.SCALES["smoke"]
    fns = cost.part_fns(16, 32, 2, scale, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert set(fns) == set(cost.PARTS)
    for fn in fns.values():
        fn()


def test_scale_validation() -> None:
    quick = cost.SCALES["quick"]
    with pytest.raises(ValueError, match=r"widths \[100\] must be multiples of head_dim"):
        dataclasses.replace(quick, d_sweep=(100, 256, 512, 1024))
    with pytest.raises(ValueError, match=r"at least four sizes"):
        dataclasses.replace(quick, n_sweep=(256, 512, 1024))
    with pytest.raises(ValueError, match=r"repeats must be positive, got 0"):
        dataclasses.replace(quick, repeats=0)
    with pytest.raises(ValueError, match=r"must be >= 3 for intervals"):
        dataclasses.replace(quick, repeats=2)
    with pytest.raises(ValueError, match=r"d_fixed \(256\) must be in d_sweep"):
        dataclasses.replace(quick, d_sweep=(128, 512, 1024, 2048))
