"""The distillation lab experiment: its pieces, and a smoke-scale run end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from blocklab.lab.base import VERDICTS, Context, card_rows
from blocklab.lab.estimate import verdict_of
from blocklab.lab.experiments import distillation, load_experiment


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: a second thread only adds synchronisation
    yield
    torch.set_num_threads(threads)


def test_digit_split_and_models() -> None:
    data = distillation.load_split(0)
    assert [len(data.y[k]) for k in ("train", "val", "test")] == [1000, 297, 500]
    assert data.images["test"].shape == (500, 8, 8)
    cnn = distillation.DigitCNN((4, 8), 16)
    assert cnn(data.x["test"][:3]).shape == (3, 10)
    cnn.eval()
    assert torch.equal(cnn(data.x["test"][:3]), cnn(data.x["test"][:3]))  # no shift in eval
    mlp = distillation.student_mlp(8, seed=0)
    assert torch.equal(mlp[0].weight, distillation.student_mlp(8, seed=0)[0].weight)


def test_time_pair_gives_a_speedup_with_timings() -> None:
    slow = torch.nn.Sequential(*[torch.nn.Linear(64, 64) for _ in range(8)])
    fast = torch.nn.Linear(64, 64)
    est = distillation.time_pair(slow, fast, torch.randn(32, 64), 4, torch.device("cpu"))
    assert est.n == 4 and est.low <= est.value <= est.high
    assert set(est.extra["timings"]) == {"teacher", "student"}
    assert len(est.extra["timings"]["student"]["wall_s"]) == 4


def test_smoke_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(distillation.SCALES, "quick", distillation.SCALES["smoke"])
    experiment = load_experiment("distillation")
    assert experiment.card == "DL0050"
    outcome = experiment.run(Context(quick=True, out_dir=tmp_path, seed=0))
    card_rows(experiment.card_items, outcome.checks)  # the card mapping fits the run
    assert outcome.verdict in VERDICTS
    assert outcome.verdict == verdict_of(outcome.checks)
    assert len(outcome.checks) == 7 and sum(c.counted for c in outcome.checks) == 4
    for check in outcome.checks:
        e = check.estimate
        assert e.samples and e.low <= e.value <= e.high
        assert check.status in ("holds", "fails", "inconclusive") and check.why
    gain = outcome.checks[0].estimate
    assert gain.n == 2 and gain.method == "paired t"  # one pair per repetition
    m = outcome.metrics
    entropies = [m[f"entropy_T{t:g}"] for t in (1, 2, 4, 8, 20)]
    assert entropies == sorted(entropies)  # softer with temperature
    assert m["digits_param_ratio"] > 1 and m["lm_param_ratio"] > 1
    assert m["hinton_gap_recovered"] == pytest.approx((146 - 74) / (146 - 67))
    assert "Hinton" in outcome.evidence
    assert torch.get_num_threads() == 1  # restored to the fixture's setting
    assert len(outcome.figures) == 3
    for rel in outcome.figures:
        path = tmp_path / rel
        assert path.is_file() and path.read_bytes()[:4] == b"\x89PNG"
