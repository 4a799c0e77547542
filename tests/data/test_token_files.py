"""Flat token files (nanoGPT's .bin) read in place, and text through any tokenizer."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from blocklab.data.text import random_batches
from blocklab.data.tokenizer import ByteTokenizer
from blocklab.data.tokens import (
    TokenFile,
    encode_documents,
    load_token_data,
    sample_batch,
    take_windows,
    token_file_split,
)


def _bin(path: Path, n: int, dtype=np.uint16, high: int = 50_000, seed: int = 0) -> np.ndarray:
    data = np.random.default_rng(seed).integers(0, high, n).astype(dtype)
    data.tofile(path)
    return data


@pytest.mark.parametrize("dtype,high", [("uint16", 65_535), ("uint32", 200_000)])
def test_windows_are_the_file_tokens(tmp_path, dtype, high):
    data = _bin(tmp_path / "t.bin", 1000, np.dtype(dtype).type, high)
    tf = TokenFile(tmp_path / "t.bin", dtype)
    assert tf.numel() == len(tf) == 1000
    starts = torch.tensor([0, 5, 990])
    got = tf.windows(starts, 10)
    assert got.dtype == torch.long and got.shape == (3, 10)
    for row, s in zip(got, starts.tolist(), strict=True):
        assert row.tolist() == data[s : s + 10].astype(np.int64).tolist()
    with pytest.raises(ValueError, match="runs past its end"):
        tf.windows(torch.tensor([995]), 10)


def test_split_and_the_nanogpt_directory(tmp_path):
    data = _bin(tmp_path / "all.bin", 1000)
    train, val = token_file_split(tmp_path / "all.bin", val_fraction=0.1)
    assert (train.numel(), val.numel()) == (900, 100)
    assert val.windows(torch.tensor([0]), 100)[0].tolist() == data[900:].tolist()
    run = tmp_path / "shakespeare"
    run.mkdir()
    _bin(run / "train.bin", 700, seed=1)
    only_train = token_file_split(run, val_fraction=0.2)
    assert [t.numel() for t in only_train] == [560, 140]  # no val.bin: the tail of train.bin
    val_data = _bin(run / "val.bin", 300, seed=2)
    train, val = token_file_split(run, val_fraction=0.2)
    assert (train.path.name, train.numel(), val.path.name, val.numel()) == \
        ("train.bin", 700, "val.bin", 300)
    assert take_windows(val, torch.tensor([3]), 4)[0].tolist() == val_data[3:7].tolist()
    loaded = load_token_data(run, ByteTokenizer())
    assert all(isinstance(t, TokenFile) for t in loaded)


def test_sample_batch_draws_the_offsets_of_a_tensor(tmp_path):
    data = _bin(tmp_path / "t.bin", 5000)
    tf = TokenFile(tmp_path / "t.bin")
    tensor = torch.from_numpy(data.astype(np.int64))
    for seed in range(3):
        x, y = sample_batch(tf, 4, 32, torch.Generator().manual_seed(seed))
        ex, ey = random_batches(tensor, 4, 32, torch.Generator().manual_seed(seed))
        assert torch.equal(x, ex) and torch.equal(y, ey)
        assert torch.equal(x[:, 1:], y[:, :-1])
    starts = torch.tensor([7, 100])
    assert torch.equal(take_windows(tf, starts, 9), take_windows(tensor, starts, 9))


def test_bad_files_are_refused(tmp_path):
    odd = tmp_path / "odd.bin"
    odd.write_bytes(b"\x01\x00\x02")
    with pytest.raises(ValueError, match=r"has 3 bytes, not a multiple of 2 \(uint16\)"):
        TokenFile(odd)
    (tmp_path / "six.bin").write_bytes(b"\x00" * 6)
    with pytest.raises(ValueError, match=r"not a multiple of 4 \(uint32\)"):
        TokenFile(tmp_path / "six.bin", "uint32")
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="is empty"):
        TokenFile(tmp_path / "empty.bin")
    with pytest.raises(ValueError, match="does not exist"):
        TokenFile(tmp_path / "missing.bin")
    with pytest.raises(ValueError, match="dtype must be one of"):
        TokenFile(tmp_path / "six.bin", "int8")
    with pytest.raises(ValueError, match="holds no train.bin"):
        token_file_split(tmp_path)
    with pytest.raises(ValueError, match="outside"):
        TokenFile(tmp_path / "six.bin", "uint16", 2, 9)


def test_a_token_file_is_never_read_whole(tmp_path, monkeypatch):
    n = 4_000_000  # 8 MB of uint16
    _bin(tmp_path / "big.bin", n)
    # Every whole-file reader numpy and pathlib have is a failure here.
    for name in ("fromfile", "load", "loadtxt"):
        monkeypatch.setattr(np, name, lambda *a, **k: pytest.fail("read the whole file"))
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail("read the whole file"))
    tracemalloc.start()
    try:
        train, val = load_token_data(tmp_path / "big.bin", ByteTokenizer(), val_fraction=0.05)
        for step in range(50):
            x, _ = sample_batch(train, 8, 64, torch.Generator().manual_seed(step))
        window = take_windows(val, torch.arange(8) * 64, 65)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(train.array, np.memmap) and isinstance(val.array, np.memmap)
    assert train.numel() + val.numel() == n and x.shape == (8, 64) and window.shape == (8, 65)
    # A whole copy would be 8 MB (32 MB as int64); the batches are 4 KB each.
    assert peak < 1_000_000, peak


def test_text_through_a_tokenizer_frames_each_document(tmp_path):
    pytest.importorskip("tokenizers")
    from blocklab.data.tokenizer import load_tokenizer
    from tests.data.tiny_hf import word_tokenizer

    tok = load_tokenizer(word_tokenizer(tmp_path / "tok"))
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": t}) for t in ("the fox", "", "a cat sat")))
    ids = encode_documents(corpus, tok).tolist()
    b, e = tok.bos_id, tok.eos_id
    assert ids == [b, *tok.encode("the fox"), e, b, e, b, *tok.encode("a cat sat"), e]
    text = tmp_path / "plain.txt"
    text.write_text("the fox ran")
    assert encode_documents(text, tok).tolist() == [b, *tok.encode("the fox ran"), e]
    train, val = load_token_data(text, tok, val_fraction=0.2)
    assert torch.cat([train, val]).tolist() == [b, *tok.encode("the fox ran"), e]
    # the byte tokenizer keeps today's path (and cache): the text's bytes
    btrain, bval = load_token_data(text, ByteTokenizer(), val_fraction=0.2)
    assert bytes(torch.cat([btrain, bval]).tolist()) == b"the fox ran"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": 1}\n')
    with pytest.raises(ValueError, match="line 2 must be a JSON object"):
        encode_documents(bad, tok)
