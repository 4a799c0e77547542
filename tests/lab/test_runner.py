"""The lab runner and report, driven by fake experiments put into the registry."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from blocklab.lab import experiments as registry
from blocklab.lab.base import Context, Experiment, Outcome
from blocklab.lab.estimate import Check, exact, mean_ci
from blocklab.lab.report import _format, flatten
from blocklab.lab.runner import estimated_seconds, run_lab, to_jsonable


def _ok(ctx: Context) -> Outcome:
    for _ in ctx.progress(range(10), "training"):
        pass
    path, rel = ctx.figure_path("fake_ok")
    path.write_bytes(b"\x89PNG\r\n\x1a\n")
    metrics = {
        "loss": torch.tensor(0.123456789),
        "curve": torch.tensor([1.0, float("nan"), 3.0]),
        "gap": float("inf"),
        "ratio": np.float32(0.5),
        "steps": np.int64(7),
        "nested": {"a": {"b": 1.0}},
    }
    return Outcome(metrics=metrics, checks=[Check("ratio", mean_ci([0.5, 0.6, 0.55]), ">=", 0.1)],
                   evidence="ratio 0.5 <script>alert(1)</script>", figures=[rel])


def _fail(ctx: Context) -> Outcome:
    raise RuntimeError("boom <b>bold</b>")


def _random(ctx: Context) -> Outcome:
    value = torch.rand(1).item()
    return Outcome(metrics={"value": value, "device": ctx.device,
                            "threads": torch.get_num_threads()},
                   checks=[Check("value", exact(value), "<=", 2.0),
                           Check("never", exact(value), ">=", 2.0)], evidence="random draw")


FAKES = {
    "fake_ok": Experiment("fake_ok", "DL9999", "Fake that works", "It works.", _ok),
    "fake_fail": Experiment("fake_fail", "DL9998", "Fake that fails", "It fails.", _fail),
    "fake_random": Experiment("fake_random", "DL9997", "Fake random", "Seeded.", _random),
}


@pytest.fixture(autouse=True)
def fakes(monkeypatch: pytest.MonkeyPatch) -> None:
    for experiment_id, experiment in FAKES.items():
        monkeypatch.setitem(registry._REGISTRY_OVERRIDES, experiment_id, experiment)


def _run(ids: list[str], out: Path, **kwargs) -> tuple:
    result = run_lab(ids, out_dir=out, progress=False, **kwargs)
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    html = (out / "index.html").read_text(encoding="utf-8")
    return result, results, html


def test_registry_order_and_overrides() -> None:
    assert registry.EXPERIMENT_IDS == ("rope", "sparsity", "distillation", "focal", "ffn",
                                       "mqa", "cost", "hierarchical", "dot_product", "dilated")
    assert registry.known_ids()[:10] == registry.EXPERIMENT_IDS
    available = registry.available_experiments()
    assert available[-3:] == ["fake_ok", "fake_fail", "fake_random"]
    assert registry.load_experiment("fake_ok") is FAKES["fake_ok"]


def test_results_json_structure(tmp_path: Path) -> None:
    result, results, _ = _run(["fake_ok"], tmp_path)
    assert result.ok
    env = results["environment"]
    for key in ("torch", "python", "platform", "device", "cpu", "threads", "git_commit",
                "date", "blocklab", "scale", "seed"):
        assert key in env
    assert env["scale"] == "quick" and env["seed"] == 0 and env["device"] == "cpu"
    (record,) = results["experiments"]
    assert set(record) >= {"id", "card", "title", "claim", "verdict", "evidence", "metrics",
                           "figures", "seconds", "command"}
    assert record["verdict"] == "supported"
    assert record["card"] == "DL9999" and record["claim"] == "It works."
    assert record["command"] == f"blocklab lab fake_ok --quick --out {tmp_path}"
    assert record["run"]["seed"] == 0 and record["run"]["scale"] == "quick"
    assert record["run"]["date"] and "load_average" in record["run"]
    assert record["seconds"] >= 0
    assert result.records == results["experiments"]


def test_full_scale_and_seed_in_command(tmp_path: Path) -> None:
    _, results, _ = _run(["fake_ok"], tmp_path, quick=False, seed=3)
    assert results["environment"]["scale"] == "full"
    assert results["experiments"][0]["command"] == (
        f"blocklab lab fake_ok --full --out {tmp_path} --seed 3")


def test_failure_does_not_stop_the_next(tmp_path: Path) -> None:
    result, results, html = _run(["fake_fail", "fake_ok"], tmp_path)
    assert not result.ok
    failed, passed = results["experiments"]
    assert failed["verdict"] == "error"
    assert "RuntimeError: boom" in failed["error"]["message"]
    assert "Traceback" in failed["error"]["traceback"]
    assert passed["verdict"] == "supported" and passed["error"] is None
    assert "RuntimeError: boom &lt;b&gt;bold&lt;/b&gt;" in html
    assert "<pre>" in html


def test_unimplemented_id_is_a_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "EXPERIMENT_IDS", registry.EXPERIMENT_IDS + ("ghost",))
    assert "ghost" not in registry.available_experiments()
    result, results, _ = _run(["ghost", "fake_ok"], tmp_path)
    assert not result.ok
    assert "not yet implemented" in results["experiments"][0]["error"]["message"]
    assert results["experiments"][1]["verdict"] == "supported"


def test_figures_are_relative(tmp_path: Path) -> None:
    _, results, html = _run(["fake_ok"], tmp_path)
    assert results["experiments"][0]["figures"] == ["figures/fake_ok.png"]
    assert (tmp_path / "figures" / "fake_ok.png").exists()
    assert '<a href="figures/fake_ok.png"><img src="data:image/png;base64,iVBORw0KGgo' in html


def test_metrics_become_json(tmp_path: Path) -> None:
    _, results, _ = _run(["fake_ok"], tmp_path)
    assert "NaN" not in (tmp_path / "results.json").read_text(encoding="utf-8")
    metrics = results["experiments"][0]["metrics"]
    assert math.isclose(metrics["loss"], 0.123456789, rel_tol=1e-6)
    assert metrics["curve"] == [1.0, None, 3.0]
    assert metrics["gap"] is None
    assert metrics["ratio"] == 0.5 and metrics["steps"] == 7
    assert metrics["nested"] == {"a": {"b": 1.0}}


def test_to_jsonable() -> None:
    value = {1: (np.array([1.5, np.nan]), torch.tensor(True)), "d": torch.device("cpu")}
    assert to_jsonable(value) == {"1": [[1.5, None], True], "d": "cpu"}
    json.dumps(to_jsonable({"x": float("-inf")}), allow_nan=False)


def test_unknown_id(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'nope'.*rope, sparsity"):
        run_lab(["nope"], out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="nope"):
        registry.load_experiment("nope")
    assert not (tmp_path / "results.json").exists()


def test_unavailable_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device"):
        run_lab(["fake_ok"], out_dir=tmp_path, device="cuda", progress=False)


def test_html_escapes_text(tmp_path: Path) -> None:
    _, _, html = _run(["fake_ok"], tmp_path)
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert 'href="#exp-fake_ok"' in html and 'id="exp-fake_ok"' in html


def test_seeded_before_each_experiment(tmp_path: Path) -> None:
    _, results, _ = _run(["fake_random", "fake_ok"], tmp_path / "a", seed=5)
    torch.rand(100)
    _, again, _ = _run(["fake_random"], tmp_path / "b", seed=5)
    first = results["experiments"][0]["metrics"]["value"]
    assert first == again["experiments"][0]["metrics"]["value"]
    assert results["experiments"][0]["metrics"]["device"] == "cpu"


def test_progress_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_lab(["fake_ok"], out_dir=tmp_path, progress=True)
    err = capsys.readouterr().err
    assert "[1/1] fake_ok: running" in err
    assert "fake_ok: training 1/10" in err and "fake_ok: training 10/10" in err
    assert "fake_ok: supported (" in err


def test_report_formatting() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": [{"f": 3}]}) == {
        "a.b": 1, "a.c.d": 2, "e.0.f": 3}
    assert _format(0.123456) == "0.1235"
    assert _format(None) == "—"
    long = _format([float(i) for i in range(100)])
    assert long.startswith("[0, 1, 2") and "…" in long and long.endswith("(n=100)")


def test_threads_set_around_each_experiment_and_restored(tmp_path):
    before = torch.get_num_threads()
    quick = run_lab(["fake_random"], out_dir=tmp_path / "q", progress=False)
    assert quick.records[0]["metrics"]["threads"] == 1  # quick CPU default
    two = run_lab(["fake_random"], out_dir=tmp_path / "t", progress=False, threads=2)
    assert two.records[0]["metrics"]["threads"] == 2
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match=r"threads \(0\) must be >= 1"):
        run_lab(["fake_random"], out_dir=tmp_path / "z", progress=False, threads=0)


def _checked(ctx: Context) -> Outcome:
    """Two counted checks (one holds, one inconclusive) and one context check."""
    clear = mean_ci([1.0, 1.1, 0.9, 1.05])
    wide = mean_ci([0.2, 1.8, 1.0])
    checks = [Check("clear", clear, ">=", 0.5, why="half the effect"),
              Check("wide", wide, ">=", 0.5, why="same"),
              Check("formula", exact(2.0), "in", (1.9, 2.1), counted=False)]
    return Outcome(metrics={"clear": clear}, evidence="two checks", checks=checks)


def test_checks_stored_with_intervals_and_rendered(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry._REGISTRY_OVERRIDES, "fake_checked",
                        Experiment("fake_checked", "DL9996", "Checked", "Checks.", _checked))
    _, results, html = _run(["fake_checked"], tmp_path)
    (record,) = results["experiments"]
    assert record["verdict"] == "inconclusive"
    clear, wide, formula = record["checks"]
    assert clear["status"] == "holds" and wide["status"] == "inconclusive"
    assert formula["counted"] is False and formula["threshold"] == [1.9, 2.1]
    assert clear["estimate"]["samples"] == [1.0, 1.1, 0.9, 1.05]
    assert clear["estimate"]["low"] < clear["estimate"]["value"] < clear["estimate"]["high"]
    assert record["metrics"]["clear"]["n"] == 4
    assert "formula (context)" in html and "estimate [95% interval]" in html
    assert ">inconclusive<" in html and "half the effect" in html
    for verdict in ("supported", "partly", "inconclusive", "not supported"):
        assert f">{verdict}</span></td><td>" in html  # the legend explains each verdict


def test_rerun_updates_the_report_and_keeps_the_rest(tmp_path: Path) -> None:
    _run(["fake_random", "fake_ok"], tmp_path, seed=1)
    first = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    _, results, html = _run(["fake_random"], tmp_path, seed=2)
    ids = [r["id"] for r in results["experiments"]]
    assert ids == ["fake_random", "fake_ok"]
    rerun, kept = results["experiments"]
    assert rerun["run"]["seed"] == 2 and kept["run"]["seed"] == 1
    assert kept == first["experiments"][1]
    assert rerun["metrics"]["value"] != first["experiments"][0]["metrics"]["value"]
    assert 'id="exp-fake_ok"' in html and "seed 1" in html and "seed 2" in html


def test_unreadable_report_is_replaced_with_a_message(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "results.json").write_text("{not json", encoding="utf-8")
    run_lab(["fake_ok"], out_dir=tmp_path, progress=True)
    assert "cannot be read" in capsys.readouterr().err
    results = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert [r["id"] for r in results["experiments"]] == ["fake_ok"]


def test_expected_time_printed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    timed = Experiment("fake_timed", "DL9995", "Timed", "T.", _ok,
                       seconds={"quick": 30.0, "full": 1800.0})
    monkeypatch.setitem(registry._REGISTRY_OVERRIDES, "fake_timed", timed)
    assert estimated_seconds(["fake_timed"], quick=False) == 1800.0
    assert estimated_seconds(["fake_timed", "fake_ok"], quick=True) is None
    run_lab(["fake_timed"], out_dir=tmp_path, quick=False, progress=True)
    assert "expected about 30 min" in capsys.readouterr().err
