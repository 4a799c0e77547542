"""The rope experiment: plumbing at a seconds-long scale, and its checks."""

from __future__ import annotations

import math

import pytest
import torch

from blocklab.lab.base import VERDICTS, Context, card_rows
from blocklab.lab.estimate import Estimate, exact, ratio_ci
from blocklab.lab.experiments import load_experiment
from blocklab.lab.experiments import rope as rope_exp


@pytest.fixture
def smoke(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(rope_exp.SCALES, "quick", rope_exp.SCALES["smoke"])


def test_runs_at_smoke_scale(smoke, tmp_path):
    threads = torch.get_num_threads()
    experiment = load_experiment("rope")
    assert experiment.card == "DL0052"
    assert set(experiment.seconds) == {"quick", "full"}
    out = experiment.run(Context(quick=True, out_dir=tmp_path, seed=1))
    card_rows(experiment.card_items, out.checks)  # the card mapping fits the run
    assert out.verdict in VERDICTS
    assert torch.get_num_threads() == threads  # the one-thread section restores it
    assert len(out.figures) == 3
    for rel in out.figures:
        assert (tmp_path / rel).stat().st_size > 1000
    names = [c.name for c in out.checks]
    assert len(set(names)) == len(names)
    counted = [c for c in out.checks if c.counted]
    assert [c.name for c in counted] == ["plain RoPE, ppl(2L) / ppl(L)",
                                         "plain RoPE, ppl(4L) / ppl(L)"]
    seeds = rope_exp.SCALES["smoke"].seeds
    for c in out.checks:
        e = c.estimate
        assert c.status in ("holds", "fails", "inconclusive")
        assert e.low <= e.value <= e.high and e.samples
        if c.counted:  # one paired ratio per seed, a finite interval
            assert e.n == seeds and math.isfinite(e.low) and math.isfinite(e.high)
        assert c.text() in out.evidence or c.text(".2g") in out.evidence
    m = out.metrics
    for name in ("rope", "rope+ntk", "rope+yarn", "rope+linear", "rope+dynamic_ntk"):
        for mult in rope_exp.EVAL_MULTIPLES:
            est = m[f"ppl_{name}_{mult}L"]
            assert isinstance(est, Estimate) and est.n == seeds, (name, mult)
    for name in ("sinusoidal", "learned", "rope+linear_ft", "rope+yarn_ft", "rope_ft"):  # smoke: both
        for mult in rope_exp.EVAL_MULTIPLES:
            assert math.isfinite(m[f"ppl_{name}_{mult}L"]), (name, mult)
    assert m["rel_dev_fp32"] < rope_exp.MAX_REL_DEV_FP32  # exact even at smoke scale
    assert m["far_error_fp32"] < 1e-5 < 1e-2 < m["far_error_hf_fp32_angles"]
    assert m["abs_dependence_rope"] < rope_exp.MAX_ABS_DEPENDENCE < m["abs_dependence_sinusoidal"]
    assert "counted checks hold" in out.evidence


def test_decay_curves():
    r = torch.arange(0, 257)
    bound = rope_exp.roformer_bound(r, 128)
    assert bound[0].item() == pytest.approx((64 + 1) / 2)  # sum_j j / (d/2)
    assert bound[-1] < 0.5 * bound[0]
    score = rope_exp.random_self_score(r, 16, 64, torch.Generator().manual_seed(0))
    assert score[0].item() == pytest.approx(1.0, rel=0.2)  # E|v|^2 / d = 1
    # PE(r).PE(0) = sum_i cos(r w_i): the same function RoPE gives for q = k.
    sin = rope_exp.sinusoidal_score(r, 16)
    theta = 10000.0 ** (-torch.arange(0, 16, 2, dtype=torch.float64) / 16)
    assert torch.allclose(sin, torch.cos(r.double()[:, None] * theta).mean(-1), atol=1e-6)


def test_absolute_dependence_tells_relative_from_absolute_position():
    assert rope_exp.absolute_dependence(torch.full((5,), -3.0)) == 0.0
    # std (n - 1) of (1, 3) is sqrt(2), mean |score| 2
    assert rope_exp.absolute_dependence(torch.tensor([1.0, 3.0])) == pytest.approx(
        math.sqrt(2) / 2)
    for seed in range(3):
        for dim in (16, 128):
            scores = rope_exp.fixed_distance_scores(dim, torch.Generator().manual_seed(seed))
            assert scores["rope"].shape == scores["sinusoidal"].shape == (
                rope_exp.FIXED_POSITIONS,)
            # RoPE: the same score at every absolute position, to fp64 rounding.
            assert rope_exp.absolute_dependence(scores["rope"]) < 1e-12
            # Sinusoidal PE added to q and k: the cross terms q.PE(n) move with n.
            assert rope_exp.absolute_dependence(scores["sinusoidal"]) > 0.05
    # The RoPE curve is the score at distance 8 itself: <R_8 q, R_0 k> at n = 0.
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 1, 1, 16, generator=g, dtype=torch.float64)
    k = torch.randn(1, 1, 1, 16, generator=g, dtype=torch.float64)
    theta = 10000.0 ** (-torch.arange(0, 16, 2, dtype=torch.float64) / 16)
    c, s = torch.cos(8 * theta), torch.sin(8 * theta)
    q1, q2 = q[0, 0, 0, :8], q[0, 0, 0, 8:]  # half-split pairs (i, i + D/2)
    rq = torch.cat((q1 * c - q2 * s, q1 * s + q2 * c))
    expected = float(rq @ k[0, 0, 0])
    got = rope_exp.fixed_distance_scores(16, torch.Generator().manual_seed(0))["rope"][0]
    assert got.item() == pytest.approx(expected, rel=1e-12)


def _metrics(r2: list[float], r4: list[float]) -> dict:
    return {"ppl_ratio_2L_rope": ratio_ci(r2, [1.0] * len(r2)),
            "ppl_ratio_4L_rope": ratio_ci(r4, [1.0] * len(r4)),
            "rel_dev_fp32": 1e-8, "bound_ratio": 0.2, "sinusoidal_score_ratio": 0.3,
            "abs_dependence_rope": 1e-15, "abs_dependence_sinusoidal": 0.2}


def _verdict(metrics: dict) -> str:
    from blocklab.lab.estimate import verdict_of

    return verdict_of(rope_exp.make_checks(metrics))


def test_verdict_follows_the_intervals():
    assert _verdict(_metrics([1.05, 1.06, 1.04], [1.10, 1.12, 1.11])) == "supported"
    assert _verdict(_metrics([1.05, 1.06, 1.04], [1.8, 1.82, 1.79])) == "partly"
    assert _verdict(_metrics([1.5, 1.6, 1.55], [1.8, 1.82, 1.79])) == "not supported"
    # An interval straddling the threshold is inconclusive, not a coin flip.
    assert _verdict(_metrics([1.05, 1.06, 1.04], [1.0, 1.4, 1.2])) == "inconclusive"
    # Context checks never move the verdict, even when they fail.
    m = _metrics([1.05, 1.06, 1.04], [1.10, 1.12, 1.11])
    m["rel_dev_fp32"], m["bound_ratio"] = 1e-2, 0.9
    assert _verdict(m) == "supported"
    assert exact(1e-2).low == exact(1e-2).high
