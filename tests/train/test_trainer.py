"""The trainer: config errors up front, atomic checkpoints, bit-exact resume after
SIGKILL, and 1 vs 2 processes (torchrun, gloo) giving the same loss curve."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from blocklab.cli import main
from blocklab.models import TransformerConfig, TransformerLM
from blocklab.train import checkpoint as ckpt_mod
from blocklab.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from blocklab.train.config import ConfigError, load_train_config
from blocklab.train.trainer import train

FAST = ["model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.n_kv_heads=1",
        "seq_len=32", "batch_size=4", "log_every=1", "eval_every=1000", "eval_batches=1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def _losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().split("\n")[:-1])]


def _val_losses(run: Path) -> list[tuple[int, float]]:
    records = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    return [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "blocklab", "train", "tiny", *args, *FAST]


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["lerning_rate=1"], "unknown config key 'lerning_rate'"),
        (["lr=fast"], "lr must be float"),
        (["lr=.inf"], r"lr \(inf\) must be finite and positive"),
        (["model.norm_eps=-1.0"], r"norm_eps \(-1.0\) must be positive"),
        (["model.n_layers=two"], "model.n_layers must be int"),
        (["model.widht=3"], "unknown model key 'widht'"),
        (["batch_size=6", "grad_accum=4"], r"batch_size \(6\) must be divisible by grad_accum \(4\)"),
        (["precision=fp8"], "precision must be one of"),
        (["model.n_kv_heads=3"], r"n_heads \(4\) must be divisible by n_kv_heads \(3\)"),
    ],
)
def test_bad_config_is_one_clear_error(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_train_config("tiny", overrides)


def test_bad_world_and_data_errors(tmp_path, capsys):
    config = load_train_config("tiny", ["batch_size=6"])
    with pytest.raises(ConfigError, match=r"batch_size \(6\) must be divisible by processes \(4\)"):
        config.check_world(4)
    code = main(["train", "tiny", "--out", str(tmp_path / "r"), f"data={tmp_path}/missing.txt"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "missing.txt" in err[0] and "does not exist" in err[0]
    assert not (tmp_path / "r").exists()  # nothing started


def test_yaml_config_and_user_text(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 400)
    cfg = load_train_config("tiny", FAST + [f"data={text}", "max_steps=4"])
    cfg.to_yaml(tmp_path / "run.yaml")
    again = load_train_config(tmp_path / "run.yaml")
    assert again == cfg
    result = train(again, tmp_path / "run", progress=False)
    assert result.final_loss is not None and result.final_loss < 5.6
    assert (tmp_path / "run" / "config.yaml").is_file()
    assert latest_checkpoint(tmp_path / "run").name == "ckpt-00000004"


def test_checkpoint_round_trip_with_tied_weights(tmp_path):
    model = TransformerLM(TransformerConfig.from_name("tiny", tie_embeddings=True, d_model=32,
                                                      n_heads=2, n_kv_heads=1, n_layers=1))
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randint(0, 256, (1, 4))).sum().backward()
    opt.step()
    path = save_checkpoint(tmp_path, 7, model_state=model.state_dict(),
                           optimizer_state=opt.state_dict(), extra={"x": 1})
    m, o, state = load_checkpoint(path)
    fresh = TransformerLM(model.config)
    fresh.load_state_dict(m)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values(), strict=True))
    opt2 = torch.optim.AdamW(fresh.parameters())
    opt2.load_state_dict(o)
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert state["step"] == 7 and state["x"] == 1


def test_failed_write_leaves_no_checkpoint_to_resume(tmp_path, monkeypatch):
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    save_checkpoint(tmp_path, 1, model_state=model.state_dict(), optimizer_state=opt.state_dict(), extra={})

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt_mod, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(tmp_path, 2, model_state=model.state_dict(), optimizer_state=opt.state_dict(), extra={})
    assert latest_checkpoint(tmp_path).name == "ckpt-00000001"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-00000001"]
    (tmp_path / "ckpt-00000005.tmp").mkdir()  # debris of a killed save is never picked
    assert latest_checkpoint(tmp_path).name == "ckpt-00000001"


def test_sigkill_at_any_moment_then_resume_is_bit_exact(tmp_path):
    steps = ["--max-steps", "24", "--save-every", "3", "--quiet"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    subprocess.run(_cli("--out", str(whole), *steps), check=True, env=ENV, capture_output=True)
    proc = subprocess.Popen(_cli("--out", str(cut), *steps), env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill mid-run, between or inside checkpoint writes
        metrics = cut / "metrics.jsonl"
        if metrics.exists() and metrics.read_text().count("\n") >= 10:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert latest_checkpoint(cut) is not None and latest_checkpoint(cut).name != "ckpt-00000024"
    subprocess.run(_cli("--out", str(cut), *steps, "--resume"), check=True, env=ENV,
                   capture_output=True)
    assert _losses(cut) == _losses(whole)  # every step, bit for bit, data order included
    assert [s for s, _ in _losses(cut)] == list(range(1, 25))


@pytest.mark.skipif(shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
                    reason="torchrun not installed")
@pytest.mark.parametrize("fsdp", [False, True])
def test_two_processes_match_one(tmp_path, fsdp):
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    args = ["-m", "blocklab", "train", "tiny", *FAST, "--max-steps", "6", "--quiet", f"fsdp={fsdp}"]
    subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one")], check=True, env=ENV,
                   capture_output=True)
    run = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", *args,
                          "--out", str(tmp_path / "two")], env=ENV, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert [s for s, _ in one] == [s for s, _ in two]
    for (_, a), (_, b) in zip(one, two, strict=True):
        assert abs(a - b) < 1e-4 * max(1.0, abs(a))  # reduction order only
    # Validation scores the same windows, split over the processes and summed across them.
    val = [_val_losses(tmp_path / name) for name in ("one", "two")]
    assert [s for s, _ in val[0]] == [s for s, _ in val[1]] == [6]
    assert abs(val[0][0][1] - val[1][0][1]) < 1e-4 * abs(val[0][0][1])


def test_grad_accumulation_and_bf16(tmp_path):
    base = FAST + ["max_steps=3"]
    one = train(load_train_config("tiny", base), tmp_path / "a", progress=False)
    accum = train(load_train_config("tiny", base + ["grad_accum=2"]), tmp_path / "b", progress=False)
    assert abs(one.final_loss - accum.final_loss) < 1e-4
    bf16 = train(load_train_config("tiny", base + ["precision=bf16"]), tmp_path / "c", progress=False)
    assert abs(bf16.final_loss - one.final_loss) < 0.1
