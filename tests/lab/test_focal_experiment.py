"""The focal lab experiment: its pieces, and a smoke-scale run end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from blocklab.lab.base import VERDICTS, Context, card_rows
from blocklab.lab.estimate import verdict_of
from blocklab.lab.experiments import focal, load_experiment


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: a second thread only adds synchronisation
    yield
    torch.set_num_threads(threads)


def test_loss_curves_follow_the_formula() -> None:
    p = np.array([0.1, 0.5, 0.9, 0.968])
    curves = focal.loss_curves(p, (0.0, 2.0))
    ce = -np.log(p)
    np.testing.assert_allclose(curves["CE"], ce, rtol=1e-10)
    np.testing.assert_allclose(curves["FL gamma=2"], (1 - p) ** 2 * ce, rtol=1e-10)
    np.testing.assert_allclose(curves["WCE w=0.25"], 0.25 * ce, rtol=1e-10)
    assert curves["CE"][2] / curves["FL gamma=2"][2] == pytest.approx(100.0)


def test_label_noise_flips_to_another_class() -> None:
    y = torch.randint(10, (5000,))
    noisy = focal.add_label_noise(y, 10, 0.3, seed=0)
    flipped = noisy != y
    assert flipped.float().mean().item() == pytest.approx(0.3, abs=0.03)
    assert noisy.min() >= 0 and noisy.max() < 10
    assert torch.equal(focal.add_label_noise(y, 10, 0.0, seed=0), y)


def test_data_sets() -> None:
    scale = focal.SCALES["smoke"]
    digits = focal.long_tailed_digits(focal.SCALES["quick"], seed=0)
    counts = torch.bincount(digits.y["train"], minlength=10).tolist()
    assert counts[0] == 120 and counts[-1] == 2 and counts == sorted(counts, reverse=True)
    test_counts = torch.bincount(digits.y["test"], minlength=10)
    assert test_counts.min() >= 25  # balanced held-out images
    split = focal.synthetic(0.05, scale, seed=0)
    for part in ("train", "val", "test"):
        assert split.y[part].float().mean().item() == pytest.approx(0.05, abs=0.005)
    assert split.x["train"].mean(0).abs().max() < 1e-4  # standardised on train


def test_select_fl_uses_validation() -> None:
    def run(val: float, test: float) -> dict:
        return {"val": {"ap": val}, "test": {"ap": test}}
    results = {"CE": [run(0.9, 0.9)], "FL g=0 a=0.25": [run(0.95, 0.1)],
               "FL g=1 a=none": [run(0.5, 0.99)], "FL g=2 a=none": [run(0.6, 0.2)]}
    assert focal.select_fl(results) == "FL g=2 a=none"


def test_smoke_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(focal.SCALES, "quick", focal.SCALES["smoke"])
    experiment = load_experiment("focal")
    assert experiment.card == "DL0047"
    outcome = experiment.run(Context(quick=True, out_dir=tmp_path, seed=0))
    card_rows(experiment.card_items, outcome.checks)  # the card mapping fits the run
    assert outcome.verdict in VERDICTS
    assert outcome.verdict == verdict_of(outcome.checks)
    assert [c.counted for c in outcome.checks] == [False, False, True, True, True]
    for check in outcome.checks:
        e = check.estimate
        assert e.samples and e.low <= e.value <= e.high
        assert check.status in ("holds", "fails", "inconclusive") and check.why
    assert outcome.checks[0].status == "holds"  # the formula, through the library
    smoke = focal.SCALES["smoke"]
    assert [c.estimate.n for c in outcome.checks[2:]] == [smoke.repeats, smoke.repeats,
                                                          smoke.noise_repeats]
    m = outcome.metrics
    assert m["downweight_pt0.9"] == pytest.approx(100.0, rel=1e-6)
    for name in ("1:20", "digits-LT"):
        for metric in ("minority_recall", "balanced_accuracy", "ap"):
            e = m[f"{name}_CE_{metric}"]
            assert 0.0 <= e.value <= 1.0 and e.n == focal.SCALES["smoke"].repeats
    assert "noise_drop_WCE_inverse" in m and "100x at p_t=0.9" in outcome.evidence
    assert len(outcome.figures) == 4
    for rel in outcome.figures:
        path = tmp_path / rel
        assert path.is_file() and path.read_bytes()[:4] == b"\x89PNG"


class _Stop(Exception):
    pass


def test_data_do_not_depend_on_the_run_seed(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = focal.synthetic

    def spy(rate: float, scale: focal.Scale, seed: int) -> focal.Split:
        calls.append(seed)
        return real(rate, scale, seed)

    monkeypatch.setattr(focal, "synthetic", spy)
    def stop(*args: object, **kwargs: object) -> None:
        raise _Stop  # the data sets are drawn before any training

    monkeypatch.setattr(focal, "benchmark", stop)
    for seed in (0, 1):
        with pytest.raises(_Stop):
            focal._run(Context(quick=True, out_dir=tmp_path, seed=seed), focal.SCALES["smoke"])
    assert calls[0] == calls[1]
