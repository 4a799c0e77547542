"""load_tokenizer / find_tokenizer: bytes, tokenizer.json files and directories, special
tokens from the side files, save -> load round trips, and the refusals."""

from __future__ import annotations

import json
import sys

import pytest

from blocklab.data.tokenizer import (
    BYTES_FILE,
    ByteTokenizer,
    Tokenizer,
    find_tokenizer,
    is_plain_bytes,
    load_tokenizer,
)
from tests.data.tiny_hf import BOS_ID, EOS_ID, N_TOKENS, word_id, word_tokenizer

pytest.importorskip("tokenizers")


def test_bytes_is_the_default_and_saves_nothing(tmp_path):
    for spec in ("bytes", None):
        tok = load_tokenizer(spec)
        assert tok == ByteTokenizer() and is_plain_bytes(tok) and isinstance(tok, Tokenizer)
    assert ByteTokenizer().save(tmp_path) == [] and not any(tmp_path.iterdir())
    assert find_tokenizer(tmp_path) is None  # nothing there: bytes, by convention
    written = ByteTokenizer(specials=True).save(tmp_path)
    assert [p.name for p in written] == [BYTES_FILE]
    again = find_tokenizer(tmp_path)
    assert again == ByteTokenizer(specials=True) and again.eos_id == 257
    assert load_tokenizer(tmp_path / BYTES_FILE) == ByteTokenizer(specials=True)


def test_tokenizer_json_directory(tmp_path):
    from tokenizers import Tokenizer as Raw

    word_tokenizer(tmp_path)
    tok = load_tokenizer(tmp_path)
    raw = Raw.from_file(str(tmp_path / "tokenizer.json"))
    assert tok.vocab_size == N_TOKENS
    assert (tok.bos_id, tok.eos_id) == (BOS_ID, EOS_ID)
    text = "the lazy dog sat on a red mat"
    ids = tok.encode(text)
    assert ids == raw.encode(text, add_special_tokens=False).ids
    assert ids == [word_id(w) for w in text.split()]
    assert tok.encode(text, add_bos=True, add_eos=True) == [BOS_ID, *ids, EOS_ID]
    assert tok.decode([BOS_ID, *ids, EOS_ID]) == text  # specials dropped
    assert tok.encode_batch([text, "the fox"]) == [ids, tok.encode("the fox")]
    # the file itself, named tokenizer.json, reads its directory's side files
    assert load_tokenizer(tmp_path / "tokenizer.json").eos_id == EOS_ID


def test_special_tokens_fall_back_to_the_model_config(tmp_path):
    word_tokenizer(tmp_path, config=False)
    assert (load_tokenizer(tmp_path).bos_id, load_tokenizer(tmp_path).eos_id) == (None, None)
    (tmp_path / "config.json").write_text(json.dumps({"bos_token_id": BOS_ID,
                                                     "eos_token_id": [EOS_ID, 0]}))
    tok = load_tokenizer(tmp_path)
    assert (tok.bos_id, tok.eos_id) == (BOS_ID, EOS_ID)
    # an explicit null in tokenizer_config.json (Qwen2's bos_token) wins over config.json
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": None,
                                                               "eos_token": {"content": "</s>"}}))
    tok = load_tokenizer(tmp_path)
    assert (tok.bos_id, tok.eos_id) == (None, EOS_ID)
    with pytest.raises(ValueError, match="add_bos needs a bos token"):
        tok.encode("the", add_bos=True)


def test_a_tokenizer_json_under_another_name_has_no_side_files(tmp_path):
    word_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").rename(tmp_path / "words.json")
    tok = load_tokenizer(tmp_path / "words.json")
    assert tok.eos_id is None and tok.encode("the fox") == [word_id("the"), word_id("fox")]


def test_save_round_trip_and_transformers_reads_it(tmp_path):
    transformers = pytest.importorskip("transformers")
    tok = load_tokenizer(word_tokenizer(tmp_path / "src"))
    written = tok.save(tmp_path / "out")
    assert {p.name for p in written} == {"tokenizer.json", "tokenizer_config.json"}
    again = load_tokenizer(tmp_path / "out")
    text = "a big blue cat ran far away in the rain"
    assert again.encode(text) == tok.encode(text) and again.eos_id == tok.eos_id
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert theirs(text, add_special_tokens=False)["input_ids"] == tok.encode(text)
    assert theirs.eos_token_id == tok.eos_id and theirs.bos_token_id == tok.bos_id
    # without a tokenizer_config.json, save writes a minimal one naming the specials
    word_tokenizer(tmp_path / "bare", config=False)
    bare = load_tokenizer(tmp_path / "bare")
    bare.save(tmp_path / "bare-out")
    config = json.loads((tmp_path / "bare-out" / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast" and config["eos_token"] is None


def test_refusals(tmp_path):
    with pytest.raises(ValueError, match="neither 'bytes' nor an existing tokenizer.json"):
        load_tokenizer(tmp_path / "missing")
    with pytest.raises(ValueError, match="holds no tokenizer.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(b"\x00")
    with pytest.raises(ValueError, match="SentencePiece tokenizer.model but no tokenizer.json"):
        load_tokenizer(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="is not a tokenizers tokenizer.json"):
        load_tokenizer(bad)
    with pytest.raises(TypeError, match="tokenizer must be"):
        load_tokenizer(3)  # type: ignore[arg-type]
    word_tokenizer(tmp_path / "w", eos="</nope>")
    with pytest.raises(ValueError, match="eos_token '</nope>' .* is not in its vocabulary"):
        load_tokenizer(tmp_path / "w")
    tok = load_tokenizer(word_tokenizer(tmp_path / "ok"))
    with pytest.raises(ValueError, match=rf"ids must lie in \[0, {tok.vocab_size}\)"):
        tok.decode([3, tok.vocab_size])


def test_missing_tokenizers_library_says_what_to_install(tmp_path, monkeypatch):
    word_tokenizer(tmp_path)
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # import tokenizers -> ImportError
    with pytest.raises(ImportError, match="pip install tokenizers"):
        load_tokenizer(tmp_path)
