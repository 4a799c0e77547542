"""``blocklab train`` refuses what would train on garbage or lose or mix a run, in one
line naming the key, path or step: nonsense config values, a non-finite loss, a
resume with another config, a run directory in use or holding another run, a
directory it cannot write; and ``distill --teacher`` takes a train run."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from blocklab.cli import main
from blocklab.data.text import corpus_tokens
from blocklab.models import TransformerLM
from blocklab.train import checkpoint as ckpt_mod
from blocklab.train import evaluate_lm
from blocklab.train.checkpoint import latest_checkpoint
from blocklab.train.config import ConfigError, load_train_config
from blocklab.train.distributed import World
from blocklab.train.rundir import RunLock
from blocklab.train.trainer import validation_loss

FAST = ["model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.n_kv_heads=1",
        "seq_len=32", "batch_size=4", "log_every=1", "eval_every=1000", "eval_batches=1"]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _train(out: Path, *args: str) -> int:
    return main(["train", "tiny", "--out", str(out), "--quiet", *FAST, *args])


def _one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("blocklab train: error: ")
    return lines[0]


def _files(run: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------ 1. values and loss

@pytest.mark.parametrize(
    "override",
    ["lr=.inf", "lr=nan", "lr=inf", "lr=-1e-3", "lr=0", "model.norm_eps=-1.0",
     "model.norm_eps=0", "model.init_std=0", "model.init_std=-0.02", "min_lr_ratio=-0.1",
     "min_lr_ratio=1.5", "weight_decay=-0.1", "weight_decay=.nan", "beta1=1.0", "beta2=-0.5",
     "grad_clip=0", "grad_clip=nan", "model.rope_base=0.5", "model.ffn_expansion=0"],
)
def test_nonsense_values_are_refused_up_front(override, tmp_path, capsys):
    key, raw = override.split("=")
    name, value = key.removeprefix("model."), float(raw.replace(".inf", "inf").replace(".nan", "nan"))
    with pytest.raises(ConfigError, match=rf"\b{name} \({value}\) must be "):
        load_train_config("tiny", [override])
    assert _train(tmp_path / "r", override) == 2
    assert f"{name} ({value}) must be " in _one_error_line(capsys)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("spelling", ["1e-3", "1E-3", "+1e-3", "0.001", "1_0e-4", " 1e-3", "1.e-3"])
def test_every_python_float_spelling_is_accepted(spelling, tmp_path):
    assert load_train_config("tiny", [f"lr={spelling}"]).lr == pytest.approx(1e-3)
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text(f"lr: {spelling.strip()}\nweight_decay: 1e-2\nmodel:\n"
                         f"  preset: tiny\n  norm_eps: 1e-6\n")
    config = load_train_config(yaml_file)
    assert (config.lr, config.weight_decay, config.model.norm_eps) == (
        pytest.approx(1e-3), 0.01, 1e-6)
    assert isinstance(config.lr, float) and isinstance(config.model.norm_eps, float)
    with pytest.raises(ConfigError, match="lr must be float"):
        load_train_config("tiny", ["lr=1e-3x"])


def test_non_finite_loss_stops_at_its_step(tmp_path, capsys):
    out = tmp_path / "r"
    # lr 1e30 is finite, so accepted, and blows the weights up after one update.
    code = _train(out, "lr=1e30", "warmup_steps=0", "--max-steps", "6", "--save-every", "1")
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert lines[-1].startswith("blocklab train: error: step 2: ") and " is nan" in lines[-1]
    assert "stopped before updating the weights, newest checkpoint ckpt-00000001" in lines[-1]
    assert [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())] == [1]
    assert latest_checkpoint(out).name == "ckpt-00000001"  # nothing non-finite was saved


# ------------------------------------------------------------------ 3. resume and config

@pytest.fixture
def run(tmp_path) -> Path:
    out = tmp_path / "run"
    assert _train(out, "--max-steps", "4", "--save-every", "2") == 0
    return out


@pytest.mark.parametrize(
    "changed,shape",
    [(["lr=1e-3"], False), (["seed=1"], False), (["seq_len=16"], False),
     (["batch_size=8"], False), (["--max-steps", "6"], False), (["model.norm_eps=1e-6"], False),
     (["model.d_model=64"], True), (["model.n_kv_heads=2"], True),
     (["model.tie_embeddings=true"], True)],
)
def test_resume_with_a_changed_config_is_refused_before_anything_is_written(
        run, capsys, changed, shape):
    capsys.readouterr()
    before = _files(run)
    assert _train(run, "--max-steps", "4", "--save-every", "2", *changed, "--resume") == 2
    line = _one_error_line(capsys)
    key = changed[-1].split("=")[0] if "=" in changed[-1] else "max_steps"
    assert key in line
    assert ("another model shape" in line) == shape
    assert ("--allow-config-change" in line) == (not shape)
    assert _files(run) == before  # config.yaml, metrics and checkpoints untouched
    flag = _train(run, "--max-steps", "4", "--save-every", "2", *changed, "--resume",
                  "--allow-config-change")
    assert flag == (2 if shape else 0)


def test_allowed_config_change_is_recorded(run, capsys):
    assert _train(run, "--max-steps", "6", "--save-every", "2", "lr=1e-3", "--resume",
                  "--allow-config-change") == 0
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    change = [r for r in records if "config_change" in r]
    assert change == [{"step": 4, "resumed_from": "ckpt-00000004",
                       "config_change": {"lr": [0.003, 0.001], "max_steps": [4, 6]}}]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert load_train_config(run / "config.yaml").lr == 1e-3
    # Keys that only say how often to log, score and save need no flag.
    assert _train(run, "--max-steps", "6", "lr=1e-3", "log_every=2", "--resume") == 0


# ------------------------------------------------------------------ 4. one run per directory

def test_non_empty_run_directory_needs_resume_or_overwrite(run, capsys):
    capsys.readouterr()
    before = _files(run)
    assert _train(run, "--max-steps", "2") == 2
    line = _one_error_line(capsys)
    assert str(run) in line and "not empty" in line and "--resume" in line and "--overwrite" in line
    assert _files(run) == before and not (run / ".lock").exists()
    assert _train(run, "--max-steps", "2", "--overwrite") == 0
    assert sorted(p.name for p in run.glob("ckpt-*")) == ["ckpt-00000002"]  # no old ckpt-4
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    (run.parent / "other").mkdir()
    (run.parent / "other" / "notes.txt").write_text("mine")
    assert _train(run.parent / "other") == 2


def test_second_process_on_one_run_directory_is_refused(run, capsys):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from blocklab.train.rundir import RunLock; "
         f"RunLock(__import__('pathlib').Path({str(run)!r})); print('locked', flush=True); "
         "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        capsys.readouterr()
        assert _train(run, "--max-steps", "4", "--save-every", "2", "--resume") == 2
        line = _one_error_line(capsys)
        assert "in use by another blocklab train" in line and f"pid {holder.pid}" in line
    finally:
        holder.kill()
        holder.wait()
    # Its lock file is left behind by the kill; the lock itself died with the process.
    assert (run / ".lock").read_text().strip() == str(holder.pid)
    assert _train(run, "--max-steps", "4", "--save-every", "2", "--resume") == 0
    assert not (run / ".lock").exists()


def test_lock_in_the_same_process_is_exclusive(tmp_path):
    first = RunLock(tmp_path)
    with pytest.raises(ValueError, match=f"in use .*pid {os.getpid()}"):
        RunLock(tmp_path)
    first.release()
    RunLock(tmp_path).release()


# ------------------------------------------------------------------ 5. unwritable --out

def test_out_that_is_a_file_or_cannot_be_created(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert _train(afile) == 2
    assert f"{afile}: not a directory" in _one_error_line(capsys)
    assert _train(afile / "sub") == 2
    assert f"{afile / 'sub'}: Not a directory" in _one_error_line(capsys)
    assert afile.read_text() == "x"


@pytest.mark.skipif(not Path("/sys").is_dir(), reason="needs a Linux /sys")
def test_out_on_a_filesystem_that_refuses_writes(capsys):
    assert _train(Path("/sys/blocklab-run")) == 2
    line = _one_error_line(capsys)
    assert "/sys/blocklab-run: " in line and "Traceback" not in line


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_run_directory(run, capsys):
    before = _files(run)
    run.chmod(0o555)
    try:
        capsys.readouterr()
        assert _train(run, "--max-steps", "6", "--resume", "--allow-config-change") == 2
        assert "Permission denied" in _one_error_line(capsys)
    finally:
        run.chmod(0o755)
    assert _files(run) == before


def test_full_disk_is_one_line_and_earlier_checkpoints_stay(tmp_path, capsys, monkeypatch):
    real, calls = ckpt_mod.save_file, []

    def fills_up(tensors, filename, *args, **kwargs):
        calls.append(filename)
        if len(calls) > 2:  # the second checkpoint's first file
            raise OSError(28, "No space left on device")
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(ckpt_mod, "save_file", fills_up)
    out = tmp_path / "r"
    assert _train(out, "--max-steps", "4", "--save-every", "2") == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == (f"blocklab train: error: {out / 'ckpt-00000004.tmp'}: No space left on device")
    assert sorted(p.name for p in out.iterdir()) == ["ckpt-00000002", "config.yaml", "metrics.jsonl"]
    monkeypatch.setattr(ckpt_mod, "save_file", real)
    assert _train(out, "--max-steps", "4", "--save-every", "2", "--resume") == 0
    assert latest_checkpoint(out).name == "ckpt-00000004"


# ------------------------------------------------------------------ 6. distill from a run

def test_distill_takes_a_train_run_or_one_of_its_checkpoints(run, tmp_path, capsys):
    common = ["--student-preset", "tiny", "--student-d-model", "32", "--student-layers", "1",
              "--steps", "1", "--batch-size", "2", "--seq-len", "16", "--eval-batches", "1"]
    for teacher in (run, run / "ckpt-00000002"):
        out = tmp_path / f"student-{teacher.name}"
        assert main(["distill", "--teacher", str(teacher), *common, "--out", str(out)]) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["teacher_source"] == str(teacher)
    (run / "ckpt-00000004" / "model.safetensors").unlink()
    (run / "ckpt-00000002" / "model.safetensors").write_bytes(b"")
    capsys.readouterr()
    assert main(["distill", "--teacher", str(run), *common, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "no intact blocklab train checkpoint" in err and "model.safetensors is missing" in err


def test_distill_seq_len_too_large_fails_before_the_teacher_trains(tmp_path, capsys):
    start = time.perf_counter()
    code = main(["distill", "--teacher-preset", "tiny", "--teacher-steps", "100000",
                 "--seq-len", "4096", "--steps", "1", "--out", str(tmp_path / "d")])
    assert code == 2 and time.perf_counter() - start < 30  # 100000 steps would take hours
    assert "--seq-len (4096) exceeds the teacher's max_seq_len (512)" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


# ------------------------------------------------------------------ 7. validation

def test_validation_loss_scores_eval_batches_of_the_global_batch():
    config = load_train_config("tiny", FAST + ["eval_batches=3", "batch_size=4", "grad_accum=2"])
    torch.manual_seed(0)
    model = TransformerLM(config.model)
    _, val = corpus_tokens(config.data, config.val_fraction)
    one = World(rank=0, local_rank=0, size=1, device=torch.device("cpu"))
    got = validation_loss(model, val, config, one)
    want = evaluate_lm(model, val, batch_size=4, seq_len=config.seq_len, max_batches=3)
    assert math.isclose(got, want, rel_tol=1e-6)


def test_distill_non_finite_loss_is_one_line(tmp_path, capsys):
    code = main(["distill", "--teacher-preset", "tiny", "--teacher-steps", "4", "--lr", "1e30",
                 "--steps", "1", "--batch-size", "2", "--seq-len", "16",
                 "--out", str(tmp_path / "d")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and lines[-1].startswith("blocklab distill: error: ")
    assert "is nan at step" in lines[-1]
