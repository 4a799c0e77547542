"""The rope experiment: plumbing at a seconds-long scale, and its checks."""

from __future__ import annotations

import math

import pytest
import torch

from blocklab.lab.base import VERDICTS, Context
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
    assert out.verdict in VERDICTS
    assert torch.get_num_threads() == threads  # the one-thread section restores it
    assert len(out.figures) == 2
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


def _metrics(r2: list[float], r4: list[float]) -> dict:
    return {"ppl_ratio_2L_rope": ratio_ci(r2, [1.0] * len(r2)),
            "ppl_ratio_4L_rope": ratio_ci(r4, [1.0] * len(r4)),
            "rel_dev_fp32": 1e-8, "bound_ratio": 0.2, "sinusoidal_score_ratio": 0.3}


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
