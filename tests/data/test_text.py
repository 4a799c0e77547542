"""Byte tokenizer, the shipped corpus, user text files, splits and batches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from blocklab.data import (
    ByteTokenizer,
    TokenDataset,
    corpus_tokens,
    iterate_eval_batches,
    load_corpus,
    random_batches,
    split_tokens,
)

SAMPLES = ["", "hello, world", "naïve café — ß ° 日本語 🙂", "tab\tnew\nline\r\n"]


# --- tokenizer -----------------------------------------------------------------


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip(text: str) -> None:
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert all(0 <= i < 256 for i in ids)
    assert tok.decode(ids) == text
    tensor = tok.encode_tensor(text)
    assert tensor.dtype == torch.long and tensor.tolist() == ids
    assert tok.decode(tensor) == text


def test_specials() -> None:
    tok = ByteTokenizer(specials=True)
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id) == (259, 256, 257, 258)
    assert ByteTokenizer().vocab_size == len(ByteTokenizer()) == 256
    ids = tok.encode("é", add_bos=True, add_eos=True)
    assert ids == [256, 0xC3, 0xA9, 257]
    assert tok.encode_tensor("é", add_bos=True, add_eos=True).tolist() == ids
    assert tok.decode([*ids, tok.pad_id]) == "é"  # specials are not text


def test_decode_invalid_utf8_is_replaced() -> None:
    assert ByteTokenizer().decode([0x68, 0xC3]) == "h\ufffd"
    assert ByteTokenizer().decode(torch.tensor(0x41)) == "A"


def test_tokenizer_errors() -> None:
    with pytest.raises(ValueError, match=r"\[0, 256\).*256"):
        ByteTokenizer().decode([65, 256])
    with pytest.raises(ValueError, match="specials=True"):
        ByteTokenizer().encode("a", add_bos=True)
    with pytest.raises(ValueError, match="shape"):
        ByteTokenizer().decode(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="str"):
        ByteTokenizer().encode(b"bytes")  # type: ignore[arg-type]


# --- corpus --------------------------------------------------------------------


def test_default_corpus_offline_and_deterministic() -> None:
    text = load_corpus()
    assert len(text.encode("utf-8")) >= 300_000
    assert text == load_corpus("default") == load_corpus("python_reference")
    assert not text.startswith("#")  # the credit line is not part of the text
    assert "statement" in text[:2000]
    # Pinned: the shipped file is fixed, so its tokens are too.
    train, val = corpus_tokens()
    assert train.numel() + val.numel() == len(text.encode("utf-8"))
    assert corpus_tokens() is corpus_tokens()  # cached per process


def test_shipped_file_credits_its_source() -> None:
    path = Path(__file__).parents[2] / "src/blocklab/data/corpus/python_reference.txt"
    header = path.read_text("utf-8").split("\n", 1)[0]
    assert "Python Software Foundation" in header and "PSF License" in header


def test_user_txt(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("some text ünïcode\n", encoding="utf-8")
    assert load_corpus(path) == "some text ünïcode\n"
    assert load_corpus(str(path)) == "some text ünïcode\n"


def test_user_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    lines = [json.dumps({"text": "first", "id": 1}), "", json.dumps({"text": "second"})]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert load_corpus(path) == "first\n\nsecond"
    train, val = corpus_tokens(str(path), 0.5)
    assert ByteTokenizer().decode(torch.cat([train, val])) == "first\n\nsecond"


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="missing.txt"):
        load_corpus(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="neither a shipped corpus"):
        load_corpus("no-such-corpus")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl: line 2 is not valid JSON"):
        load_corpus(bad)
    no_field = tmp_path / "nofield.jsonl"
    no_field.write_text('{"text": "ok"}\n\n{"body": "x"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"nofield\.jsonl: line 3 .*\"text\".*body"):
        load_corpus(no_field)
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty"):
        load_corpus(empty)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("café".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8"):
        load_corpus(latin)


# --- splits and batches --------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "fraction", "n_val"), [(1000, 0.1, 100), (1001, 0.25, 250), (10, 0.0, 0)]
)
def test_split_sizes(n: int, fraction: float, n_val: int) -> None:
    tokens = torch.arange(n)
    train, val = split_tokens(tokens, fraction)
    assert (train.numel(), val.numel()) == (n - n_val, n_val)
    assert torch.equal(torch.cat([train, val]), tokens)  # contiguous, val is the tail
    assert train.dtype == val.dtype == torch.long


def test_split_errors() -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        split_tokens(torch.arange(10), 1.0)
    with pytest.raises(ValueError, match="1-D"):
        split_tokens(torch.zeros(2, 5), 0.1)


def test_random_batches_shift_and_determinism() -> None:
    tokens = torch.arange(500)
    x, y = random_batches(tokens, 8, 32, torch.Generator().manual_seed(1))
    assert x.shape == y.shape == (8, 32) and x.dtype == torch.long
    assert torch.equal(y[:, :-1], x[:, 1:])
    assert torch.equal(y, x + 1)  # consecutive windows of an arange
    x2, _ = random_batches(tokens, 8, 32, torch.Generator().manual_seed(1))
    assert torch.equal(x, x2)
    # The very last token can be a target.
    x, y = random_batches(torch.arange(5), 64, 4, torch.Generator().manual_seed(0))
    assert int(y.max()) == 4 and int(x.min()) == 0
    with pytest.raises(ValueError, match=r"seq_len \+ 1 \(11\)"):
        random_batches(torch.arange(10), 2, 10)


def test_eval_batches_cover_tokens_once() -> None:
    tokens = torch.arange(103)
    batches = list(iterate_eval_batches(tokens, 4, 10))
    assert [x.shape[0] for x, _ in batches] == [4, 4, 2]  # (103 - 1) // 10 = 10 windows
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert torch.equal(x.reshape(-1), torch.arange(100))
    assert torch.equal(y, x + 1)
    again = torch.cat([b[0] for b in iterate_eval_batches(tokens, 4, 10)])
    assert torch.equal(x, again)


def test_token_dataset() -> None:
    ds = TokenDataset(torch.arange(103), 10)
    assert len(ds) == 10
    x, y = ds[9]
    assert torch.equal(x, torch.arange(90, 100)) and torch.equal(y, x + 1)
    assert torch.equal(ds[-1][0], x)
    overlapping = TokenDataset(torch.arange(21), 10, stride=5)
    assert len(overlapping) == 3 and torch.equal(overlapping[2][1], torch.arange(11, 21))
    with pytest.raises(IndexError):
        ds[10]


def test_shipped_corpus_rebuilds_byte_for_byte() -> None:
    import platform

    from blocklab.data import build_corpus

    shipped = build_corpus.CORPUS_FILE.read_bytes()
    if f"Python {platform.python_version()})" not in shipped.split(b"\n", 1)[0].decode():
        pytest.skip("the shipped corpus was built from another Python version's pydoc_data")
    assert build_corpus.build().encode("utf-8") == shipped
