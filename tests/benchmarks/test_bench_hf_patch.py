"""benchmarks/bench_hf_patch.py: its memory meter, and a tiny run of the whole benchmark."""

from __future__ import annotations

import json

import benchmarks.bench_hf_patch as bench_hf_patch
import pytest
import torch
from benchmarks.harness import machine_limits

pytest.importorskip("transformers")  # the benchmark itself imports it lazily


def test_peak_bytes_sees_the_largest_moment():
    def fn():
        a = torch.ones(2**20)  # 4 MiB
        b = torch.ones(2 * 2**20)  # 8 MiB: 12 MiB held together
        del a
        c = torch.ones(2**19)  # 2 MiB once a is gone: 10 MiB
        return b, c

    peak = bench_hf_patch.peak_bytes(fn)
    if peak is None:
        pytest.skip("this torch's profiler gives no raw memory events")
    assert 12 * 2**20 <= peak < 13 * 2**20


def test_tiny_run_writes_every_case(tmp_path, monkeypatch):
    tiny = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                num_key_value_heads=2, intermediate_size=64, vocab_size=2048)
    monkeypatch.setattr(bench_hf_patch, "QUICK_SHAPES", tiny)
    monkeypatch.setattr(bench_hf_patch, "machine_limits",
                        lambda **_: machine_limits(copy_mib=1, matmul_n=64, repeats=2))
    result = bench_hf_patch.run(quick=True)
    data = json.loads(result.write(tmp_path).read_text())
    names = [c["name"] for c in data["cases"]]
    assert [n.split()[0] for n in names] == ["train", "loss", "generate"]
    assert all(r > 0 for r in data["ratios"].values())
    loss = data["cases"][1]["extra"]
    assert loss["analytic_bytes_peer"] == 4 * 2 * 128 * 2048 * 4  # 4 N V fp32 buffers
    notes = " ".join(data["notes"])
    assert "target >= 1.2x" in notes and "loss peak memory" in notes
