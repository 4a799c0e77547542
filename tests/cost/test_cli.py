"""``blocklab cost``: tables, the plot, config files and clear usage errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from blocklab.cli import main
from blocklab.cli.cost import load_config


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["cost", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_preset_table_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "llama.png"
    code, out, err = run(["llama-2-7b", "--seq-len", "4096", "--plot", str(png)], capsys)
    assert code == 0, err
    for part in ("q_proj", "k_proj", "v_proj", "scores", "av", "out_proj", "ffn_in", "ffn_out",
                 "lm_head", "matmul total", "softmax"):
        assert part in out
    assert "6.74 G parameters" in out
    assert "512 KiB per token" in out  # bf16 by default
    assert "n^2 d" in out and "n d^2" in out
    assert "n = 16,383" in out  # causal crossover 2 C (1 + 1) - 1
    assert png.is_file() and png.stat().st_size > 20_000
    assert f"plot: {png}" in out


def test_kv_heads_batch_dtype(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["llama-2-7b", "--seq-len", "1024", "--kv-heads", "8", "--batch", "4",
                          "--dtype", "fp32", "--no-plot"], capsys)
    assert code == 0, err
    assert "H_kv=8" in out
    assert "256 KiB per token" in out  # 2 * 32 * 8 * 128 * 4 bytes
    assert "1 GiB for 4 x 1024 tokens (MHA would need 4 GiB)" in out
    assert "batch 4 x 1024 tokens" in out and "float32" in out


def test_no_causal_counts_every_pair(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["gpt2", "--seq-len", "1024", "--no-causal", "--no-plot"], capsys)
    assert code == 0
    assert "every (query, key) pair" in out
    assert "n = 1,536" in out  # C (1 + H_kv / H) = 2 * 768


def test_config_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plain = tmp_path / "model.yaml"
    plain.write_text(yaml.safe_dump(dict(vocab_size=256, d_model=128, n_layers=2, n_heads=4,
                                         n_kv_heads=1)))
    code, out, err = run(["--config", str(plain), "--seq-len", "64", "--plot",
                          str(tmp_path / "p.png")], capsys)
    assert code == 0, err
    assert "H_kv=1" in out and (tmp_path / "p.png").is_file()

    train = tmp_path / "config.yaml"  # what 'blocklab train' writes: model: section
    train.write_text(yaml.safe_dump(dict(model=dict(preset="mistral-7b", n_layers=2),
                                         seq_len=128)))
    config = load_config(None, str(train))
    assert config.n_layers == 2 and config.kv_heads == 8 and config.sliding_window == 4096
    code, out, _ = run(["--config", str(train), "--seq-len", "128", "--no-plot"], capsys)
    assert code == 0 and "2 layers" in out


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--list"], capsys)
    assert code == 0
    for name in ("llama-2-7b", "llama-2-70b", "llama-3-8b", "mistral-7b", "falcon-7b",
                 "falcon-40b", "gpt-3-175b"):
        assert name in out


@pytest.mark.parametrize("argv,message", [
    (["llama-2-7b", "--seq-len", "0"], "seq_len (0) must be a positive int"),
    (["llama-2-7b", "--seq-len", "64", "--batch", "-2"], "batch (-2) must be a positive int"),
    (["llama-2-7b", "--seq-len", "64", "--kv-heads", "5"],
     "n_heads (32) must be divisible by n_kv_heads (5)"),
    (["llama-2-7b", "--seq-len", "64", "--kv-heads", "0"], "n_kv_heads (0)"),
    (["llama-2-7b", "--seq-len", "64", "--dtype", "fp7"], "dtype ('fp7')"),
    (["llama-9", "--seq-len", "64"], "unknown model 'llama-9'"),
    (["--seq-len", "64"], "give exactly one of MODEL or --config FILE"),
    (["llama-2-7b", "--config", "x.yaml"], "give exactly one of MODEL or --config FILE"),
    (["--config", "/nonexistent/x.yaml"], "does not exist"),
    (["gpt2", "--seq-len", "4096"], "exceeds the learned position table"),
])
def test_usage_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run([*argv, "--no-plot"], capsys)
    assert code == 2
    assert err.startswith("blocklab cost: error: ") and message in err
    assert out == ""


def test_help_does_not_import_torch() -> None:
    code = ("import sys, blocklab.cli.cost, blocklab.cost; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"
