"""Fault injection: damage the newest checkpoint of a finished run every way a disk, a
kill or a hand can, and resume. Each damage is detected and named, the run falls back
to the newest intact checkpoint and ends bit-identical to the uninterrupted run."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from blocklab.cli import main
from blocklab.train import checkpoint as ckpt_mod
from blocklab.train.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    load_latest,
    save_checkpoint,
)

FAST = ["tiny", "model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.n_kv_heads=1",
        "seq_len=32", "batch_size=4", "log_every=1", "eval_every=2", "eval_batches=1",
        "max_steps=6", "save_every=2", "keep_last=3", "--quiet"]
NEWEST = "ckpt-00000006"
FILES = ("model.safetensors", "optimizer.safetensors", "state.json")


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models; and the same thread count for every run here
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> Path:
    """An uninterrupted run: checkpoints at steps 2, 4, 6."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("whole") / "run"
    assert main(["train", *FAST, "--out", str(run)]) == 0
    torch.set_num_threads(threads)
    return run


def _curve(run: Path) -> list[tuple]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r.get("val_loss")) for r in records]


def _tensors(ckpt: Path) -> dict[str, torch.Tensor]:
    return {**load_file(str(ckpt / "model.safetensors")),
            **{f"opt.{k}": v for k, v in load_file(str(ckpt / "optimizer.safetensors")).items()}}


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _change_a_digit(path: Path) -> None:
    """Still valid JSON, one number changed: only the checksum can tell."""
    text = path.read_text()
    i = next(i for i in range(len(text) // 2, len(text)) if text[i].isdigit())
    path.write_text(text[:i] + ("8" if text[i] == "9" else str(int(text[i]) + 1)) + text[i + 1:])


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _resign(ckpt: Path) -> None:
    """Record the files' current sizes and checksums, as if they had been saved so."""
    state = json.loads((ckpt / "state.json").read_text())
    state.pop("sha256")
    state["files"] = {name: ckpt_mod._file_digest(ckpt / name)
                      for name in ("model.safetensors", "optimizer.safetensors")}
    state["sha256"] = ckpt_mod._json_digest(state)
    (ckpt / "state.json").write_text(json.dumps(state))


def _poison(name: str) -> Callable[[Path], None]:
    """A NaN in the first floating tensor of ``name``, with consistent checksums."""
    def apply(ckpt: Path) -> None:
        tensors = load_file(str(ckpt / name))
        key = next(k for k, t in tensors.items() if t.is_floating_point() and t.numel() > 1)
        tensors[key] = tensors[key].clone()
        tensors[key].view(-1)[1] = float("nan")
        save_file(tensors, str(ckpt / name))
        _resign(ckpt)
    return apply


def _legacy(ckpt: Path) -> None:
    state = json.loads((ckpt / "state.json").read_text())
    del state["files"], state["sha256"]  # a checkpoint written before checksums existed
    (ckpt / "state.json").write_text(json.dumps(state))


def _rename_older(ckpt: Path) -> None:
    shutil.rmtree(ckpt)
    shutil.copytree(ckpt.with_name("ckpt-00000004"), ckpt)  # state.json says step 4


# (damage applied to the newest checkpoint directory, words of the reason printed)
FAULTS: dict[str, tuple[Callable[[Path], None], str]] = {
    **{f"corrupt-{f}": ((lambda c, f=f: _flip(c / f)),
                        "JSON" if f == "state.json" else "SHA-256") for f in FILES},
    "corrupt-state.json-number": (lambda c: _change_a_digit(c / "state.json"), "checksum"),
    "corrupt-model.safetensors-header": (
        lambda c: (c / "model.safetensors").write_bytes(
            (c / "model.safetensors").read_bytes().replace(b'"F32"', b'"F16"', 1)), "SHA-256"),
    **{f"truncate-{f}": ((lambda c, f=f: _truncate(c / f)),
                         "JSON" if f == "state.json" else "truncated") for f in FILES},
    **{f"delete-{f}": ((lambda c, f=f: (c / f).unlink()), "missing") for f in FILES},
    **{f"empty-{f}": ((lambda c, f=f: (c / f).write_bytes(b"")),
                      "JSON" if f == "state.json" else "truncated") for f in FILES},
    "state-json-{}": (lambda c: (c / "state.json").write_text("{}"), "lacks"),
    "state-json-garbage": (lambda c: (c / "state.json").write_bytes(b"\x00\xff garbage"), "JSON"),
    "state-json-list": (lambda c: (c / "state.json").write_text("[1, 2]"), "not an object"),
    "state-json-legacy": (_legacy, "older blocklab"),
    "nan-in-model": (_poison("model.safetensors"), "NaN or inf"),
    "nan-in-optimizer": (_poison("optimizer.safetensors"), "NaN or inf"),
    "wrong-step": (_rename_older, "step 4"),
    "empty-directory": (lambda c: [p.unlink() for p in c.iterdir()], "missing"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_damaged_newest_checkpoint_falls_back_and_ends_bit_identical(whole, tmp_path, capsys,
                                                                     fault):
    run = tmp_path / "run"
    shutil.copytree(whole, run)
    damage, reason = FAULTS[fault]
    damage(run / NEWEST)
    with pytest.raises(CheckpointError, match=reason):
        load_checkpoint(run / NEWEST)
    assert main(["train", *FAST, "--out", str(run), "--resume"]) == 0
    err = capsys.readouterr().err
    assert f"skipped {NEWEST}: " in err and reason in err
    assert "resuming from ckpt-00000004" in err
    assert _curve(run) == _curve(whole)
    a, b = _tensors(run / NEWEST), _tensors(whole / NEWEST)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert latest_checkpoint(run).name == NEWEST


@pytest.mark.parametrize("stray", ["ckpt-00000099/", "ckpt-00000099", "ckpt-latest/",
                                   "ckpt-00000008/state.json"])
def test_stray_checkpoint_entries_are_skipped(whole, tmp_path, capsys, stray):
    run = tmp_path / "run"
    shutil.copytree(whole, run)
    shutil.rmtree(run / NEWEST)  # so that the resume has work to do
    target = run / stray.rstrip("/")
    if stray.endswith("/"):
        target.mkdir()
    else:
        target.parent.mkdir(exist_ok=True)
        target.write_text("not a checkpoint")
    assert main(["train", *FAST, "--out", str(run), "--resume"]) == 0
    name = stray.split("/")[0]
    assert f"skipped {name}: " in capsys.readouterr().err
    assert _curve(run) == _curve(whole)
    a, b = _tensors(run / NEWEST), _tensors(whole / NEWEST)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_two_damaged_checkpoints_fall_back_twice(whole, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(whole, run)
    _truncate(run / NEWEST / "model.safetensors")
    (run / "ckpt-00000004" / "optimizer.safetensors").unlink()
    assert main(["train", *FAST, "--out", str(run), "--resume"]) == 0
    err = capsys.readouterr().err
    assert "skipped ckpt-00000006" in err and "skipped ckpt-00000004" in err
    assert "resuming from ckpt-00000002" in err
    assert _curve(run) == _curve(whole)
    a, b = _tensors(run / NEWEST), _tensors(whole / NEWEST)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_no_intact_checkpoint_is_one_error_and_touches_nothing(whole, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(whole, run)
    for ckpt in run.glob("ckpt-*"):
        _flip(ckpt / "model.safetensors")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert main(["train", *FAST, "--out", str(run), "--resume"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("blocklab train: error: no intact checkpoint to resume")
    assert all(f"ckpt-0000000{s}: model.safetensors does not match" in lines[-1] for s in (2, 4, 6))
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_load_latest_reports_what_it_skipped(tmp_path):
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model_state=model.state_dict(),
                        optimizer_state=opt.state_dict(), extra={"x": step})
    (tmp_path / "ckpt-00000003" / "optimizer.safetensors").unlink()
    path, loaded, skipped = load_latest(tmp_path)
    assert path.name == "ckpt-00000002" and loaded[2] == {"x": 2, "step": 2}
    assert [(p.name, r) for p, r in skipped] == [("ckpt-00000003", "optimizer.safetensors is missing")]
    with pytest.raises(ValueError, match="must not hold the keys"):
        save_checkpoint(tmp_path, 4, model_state=model.state_dict(),
                        optimizer_state=opt.state_dict(), extra={"files": 1})
