"""The ``blocklab`` command line, with a fake experiment in the lab registry."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from blocklab.cli import main
from blocklab.lab import experiments as registry
from blocklab.lab.base import Context, Experiment, Outcome


def _fake(ctx: Context) -> Outcome:
    return Outcome(metrics={"x": 1.0}, verdict="supported", evidence="fine")


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
