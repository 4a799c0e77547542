"""The ``blocklab`` command line, with a fake experiment in the lab registry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from blocklab.cli import all_commands, main
from blocklab.lab import experiments as registry
from blocklab.lab.base import Context, Experiment, Outcome
from blocklab.lab.estimate import Check, mean_ci


def _fake(ctx: Context) -> Outcome:
    return Outcome(metrics={"x": 1.0}, evidence="fine",
                   checks=[Check("x", mean_ci([1.0, 1.1, 0.9]), ">=", 0.5)])


def _broken(ctx: Context) -> Outcome:
    raise RuntimeError("broken on purpose")


@pytest.fixture(autouse=True)
def fakes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry._REGISTRY_OVERRIDES, "fake",
                        Experiment("fake", "DL9999", "A fake experiment", "Fakes work.", _fake))
    monkeypatch.setitem(registry._REGISTRY_OVERRIDES, "broken",
                        Experiment("broken", "DL9998", "A broken one", "Breaks.", _broken))


@pytest.mark.parametrize("argv", [["--help"], ["lab", "--help"]])
def test_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    assert "usage: blocklab" in capsys.readouterr().out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("blocklab ")


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: blocklab" in capsys.readouterr().err


def test_lab_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lab", "--list"]) == 0
    out = capsys.readouterr().out
    for experiment_id in registry.EXPERIMENT_IDS:
        assert experiment_id in out
    assert "DL9999" in out and "A fake experiment" in out


def test_lab_runs_fake(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lab", "fake", "--out", str(tmp_path), "--quiet"]) == 0
    assert (tmp_path / "index.html").exists() and (tmp_path / "results.json").exists()
    assert "supported" in capsys.readouterr().out


def test_lab_failure_exit_code(tmp_path: Path) -> None:
    assert main(["lab", "broken", "fake", "--out", str(tmp_path), "--quiet"]) == 1
    assert "broken on purpose" in (tmp_path / "index.html").read_text(encoding="utf-8")


def test_lab_check_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lab", "fake", "--out", str(tmp_path), "--quiet"]) == 0
    assert main(["lab", "--check", "--out", str(tmp_path)]) == 0
    assert "1 experiment(s), 0 problem(s)" in capsys.readouterr().out
    path = tmp_path / "results.json"
    results = json.loads(path.read_text(encoding="utf-8"))
    results["experiments"][0]["verdict"] = "not supported"
    results["experiments"][0]["checks"][0]["estimate"]["low"] = 0.1  # now straddles 0.5
    path.write_text(json.dumps(results), encoding="utf-8")
    assert main(["lab", "--check", "--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "says 'holds' but its estimate and threshold give 'inconclusive'" in out
    assert "verdict 'not supported' does not follow from its checks" in out
    assert main(["lab", "--check", "--out", str(tmp_path / "none")]) == 2


def test_lab_help_states_what_each_scale_costs(capsys: pytest.CaptureFixture[str]) -> None:
    from blocklab.cli import LAB_MINUTES

    with pytest.raises(SystemExit):
        main(["lab", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert f"all ten in about {LAB_MINUTES['quick']} min" in out
    assert f"all ten in about {LAB_MINUTES['full']} min" in out
    seconds = [registry.load_experiment(i).seconds for i in registry.EXPERIMENT_IDS]
    for scale in ("quick", "full"):
        total = sum(s[scale] for s in seconds) / 60
        assert abs(total - LAB_MINUTES[scale]) <= max(1.0, 0.1 * total), (scale, total)
    assert all(s["quick"] <= 60 for s in seconds)
    assert sum(s["quick"] for s in seconds) <= 8 * 60  # make lab's budget
    assert sum(s["full"] for s in seconds) <= 2 * 3600  # --full's budget


def test_lab_unknown_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lab", "nope", "--out", str(tmp_path)]) == 2
    assert "'nope'" in capsys.readouterr().err


def test_lab_cuda_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["lab", "fake", "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "index.html").exists()


def test_python_dash_m() -> None:
    done = subprocess.run([sys.executable, "-m", "blocklab", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    assert "usage: blocklab" in done.stdout


HEAVY = ("torch", "numpy", "matplotlib")


@pytest.mark.parametrize("argv", [["--help"], *([c.name, "--help"] for c in all_commands())],
                         ids=lambda argv: " ".join(argv))
def test_help_imports_no_torch(argv: list[str]) -> None:
    # Measures the import itself, in a fresh interpreter: -X importtime names every
    # module imported; sys.modules is the second witness.
    code = ("import sys\nfrom blocklab.cli import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", code],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0]
                for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "blocklab" in imported and "argparse" in imported  # the measurement works
    assert imported.isdisjoint(HEAVY), sorted(imported & set(HEAVY))
    assert done.stdout.strip().splitlines()[-1] == "[]"
