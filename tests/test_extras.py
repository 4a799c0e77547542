"""Optional extras: the blocks import without them, and the features that need them say
which extra to install."""

from __future__ import annotations

import subprocess
import sys

import pytest

from blocklab._extras import EXTRAS, missing_extra
from blocklab.cli import main


def test_missing_extra_names_the_modules_and_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    assert missing_extra("lab", "x") is None  # the dev set holds it
    monkeypatch.setitem(sys.modules, "sklearn", None)
    message = missing_extra("lab", "blocklab lab")
    assert message == ("blocklab lab needs sklearn (the 'lab' extra): "
                       "pip install 'blocklab[lab]'")
    with pytest.raises(ValueError, match="extra .'nope'. must be one of"):
        missing_extra("nope", "x")


def test_lab_without_its_extra_is_a_usage_error(monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["lab", "rope", "--out", str(tmp_path), "--quiet"]) == 2
    assert "pip install 'blocklab[lab]'" in capsys.readouterr().err
    assert not (tmp_path / "results.json").exists()


def test_cost_without_matplotlib_reports_and_skips_the_plot(monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.chdir(tmp_path)
    assert main(["cost", "llama-2-7b", "--seq-len", "1024"]) == 0
    out = capsys.readouterr().out
    assert "no plot: the plot needs matplotlib" in out
    assert not list(tmp_path.glob("*.png"))


def test_the_blocks_import_without_the_lab_extra() -> None:
    lab_modules = [m for extra in ("lab",) for m in EXTRAS[extra]]
    code = (
        "import sys\n"
        "import blocklab, blocklab.attention, blocklab.ffn, blocklab.norm, blocklab.losses, "
        "blocklab.position, blocklab.models, blocklab.sparsity, blocklab.cost, blocklab.train\n"
        f"print(sorted(m for m in {lab_modules!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
