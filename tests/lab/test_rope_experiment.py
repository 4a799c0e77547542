"""The rope experiment: plumbing at a seconds-long scale, and its verdict rule."""

from __future__ import annotations

import math

import pytest
import torch

from blocklab.lab.base import VERDICTS, Context
from blocklab.lab.experiments import load_experiment
from blocklab.lab.experiments import rope as rope_exp


@pytest.fixture
def smoke(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(rope_exp.SCALES, "quick", rope_exp.SCALES["smoke"])


def test_runs_at_smoke_scale(smoke, tmp_path):
    threads = torch.get_num_threads()
    experiment = load_experiment("rope")
    assert experiment.card == "DL0052"
    out = experiment.run(Context(quick=True, out_dir=tmp_path, seed=1))
    assert out.verdict in VERDICTS
    assert torch.get_num_threads() == threads  # the one-thread section restores it
    for rel in out.figures:
        assert (tmp_path / rel).stat().st_size > 1000
    m = out.metrics
    for name in ("rope", "sinusoidal", "learned", "rope+ntk", "rope+yarn", "rope+linear",
                 "rope+dynamic_ntk", "rope+linear_ft", "rope+yarn_ft", "rope_ft"):
        for mult in rope_exp.EVAL_MULTIPLES:
            assert math.isfinite(m[f"ppl_{name}_{mult}L"]), (name, mult)
    assert m["rel_dev_fp32"] < rope_exp.MAX_REL_DEV_FP32  # exact even at smoke scale
    assert m["far_error_fp32"] < 1e-5 < 1e-2 < m["far_error_hf_fp32_angles"]
    assert "checks hold" in out.evidence


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


def _metrics(**overrides: float) -> dict[str, float]:
    m = {"rel_dev_fp32": 1e-8, "bound_ratio": 0.2, "random_score_ratio": 0.3,
         "ppl_ratio_4L_rope": 1.1, "ppl_ratio_4L_rope+ntk": 1.05,
         "ppl_ratio_4L_rope+linear": 2.0, "ppl_ratio_4L_rope+yarn_ft": 0.9}
    m.update(overrides)
    return m


def test_verdict_follows_the_numbers():
    assert rope_exp.verdict_from(_metrics())[0] == "supported"
    verdict, checks, fixes = rope_exp.verdict_from(_metrics(ppl_ratio_4L_rope=1.4))
    assert verdict == "partly" and not checks["extrapolation"]
    assert fixes == ["ntk"]  # inference-only methods; fine-tuned ones are reported apart
    assert rope_exp.verdict_from(_metrics(rel_dev_fp32=1e-2))[0] == "not supported"
    assert rope_exp.verdict_from(_metrics(bound_ratio=0.9, ppl_ratio_4L_rope=1.4))[0] == (
        "not supported")
