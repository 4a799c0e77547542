"""Document data sets: sentence splitting, encoding, the shipped real set, the synthetic
task's labels, JSONL, and errors."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from blocklab.data.documents import (
    FAMILY_NAMES,
    PAD_ID,
    TOPIC_FAMILIES,
    UNK_ID,
    build_vocab,
    encode_documents,
    jsonl_documents,
    load_documents,
    parse_document,
    reference_documents,
    split_sentences,
    synthetic_documents,
    tokenize,
)


def test_split_sentences_prose_code_and_headings():
    text = (
        'The "assert" statement\n**********************\n\n'
        "Assert statements are a convenient way. They help debugging!\n"
        "A third one? Yes.\n\n"
        '   assert_stmt ::= "assert" expression\n   other ::= thing\n\n'
        "   Indented prose continues here. And ends.\n\n"
        "* a bullet item. Second sentence.\n\n\n   \n"
    )
    assert split_sentences(text) == [
        'The "assert" statement',
        "Assert statements are a convenient way.", "They help debugging!",
        "A third one?", "Yes.",
        'assert_stmt ::= "assert" expression', "other ::= thing",
        "Indented prose continues here.", "And ends.",
        "* a bullet item.", "Second sentence.",
    ]
    assert split_sentences("") == [] and split_sentences("... !!! ???") == []
    assert tokenize("Hello, World_2 x.y!") == ["hello", "world_2", "x", "y"]
    with pytest.raises(TypeError, match="text must be a str"):
        split_sentences(None)


def test_vocab_and_encoding():
    docs = [parse_document("b a a. c a b."), parse_document("d.")]
    vocab = build_vocab(docs, min_count=2)
    assert vocab == ["<pad>", "<unk>", "a", "b"]
    assert build_vocab(docs, max_size=3) == ["<pad>", "<unk>", "a"]
    x = encode_documents(docs + [[], [[], ["a"]]], vocab, max_sentences=1, max_words=2)
    assert x.shape == (4, 1, 2)
    assert x[0].tolist() == [[3, 2]]  # cut to 1 sentence of 2 words
    assert x[1].tolist() == [[UNK_ID, PAD_ID]]
    assert x[2].tolist() == [[PAD_ID, PAD_ID]]  # empty document
    assert x[3].tolist() == [[2, PAD_ID]]  # the empty sentence is skipped
    with pytest.raises(ValueError, match=r"max_sentences \(0\) and max_words \(2\) must be >= 1"):
        encode_documents(docs, vocab, max_sentences=0, max_words=2)
    with pytest.raises(ValueError, match=r"max_size \(1\) must be >= 2"):
        build_vocab(docs, max_size=1)


def test_reference_documents_are_real_labelled_and_deduplicated():
    texts, labels, names = reference_documents()
    assert names == list(FAMILY_NAMES)
    assert (texts, labels) == reference_documents()[:2]  # deterministic
    assert len(texts) >= 250
    counts = Counter(labels)
    assert set(counts) == set(range(5)) and min(counts.values()) >= 20
    paragraphs = [" ".join(p.split()) for t in texts for p in t.split("\n\n") if p.strip()]
    assert len(paragraphs) == len(set(paragraphs))  # no text on both sides of a split
    docs = [parse_document(t) for t in texts]
    assert sorted(len(d) for d in docs)[len(docs) // 2] >= 8  # documents of many sentences
    assert {key for key, _, fam in TOPIC_FAMILIES if fam is None} == {"debugger"}


def test_load_reference_split_is_stratified_and_vocab_from_train():
    ds = load_documents("reference", max_sentences=80, max_words=240)  # nothing cut
    assert ds.n_classes == 5 and ds.train_x.shape[1:] == (80, 240)
    n_test = Counter(ds.test_y.tolist())
    n_train = Counter(ds.train_y.tolist())
    for c in range(5):
        assert 0.15 < n_test[c] / (n_test[c] + n_train[c]) < 0.3
    train_words = {w for t in range(len(ds.train_y)) for s in ds.decode(ds.train_x[t])
                   for w in s}
    assert set(ds.vocab[2:]) <= train_words
    assert ds.decode(ds.test_x[0])[0][0] in ds.vocab


def _label_from_text(text: str) -> int:
    """The synthetic label recomputed from the words: per sentence, a polar word flipped
    by an earlier negator; the majority wins."""
    positive = "good great excellent wonderful pleasant superb lovely delightful".split()
    negative = "bad poor awful terrible unpleasant dreadful horrible mediocre".split()
    votes = 0
    for sentence in parse_document(text):
        for i, w in enumerate(sentence):
            if w in positive or w in negative:
                sign = 1 if w in positive else -1
                if {"not", "never", "hardly"} & set(sentence[:i]):
                    sign = -sign
                votes += sign
    return int(votes > 0)


def test_synthetic_labels_follow_sentence_structure():
    texts, labels, names = synthetic_documents(300, seed=3)
    assert names == ["negative", "positive"]
    assert [_label_from_text(t) for t in texts] == labels
    assert 0.4 < sum(labels) / len(labels) < 0.6
    assert texts == synthetic_documents(300, seed=3)[0]
    assert texts != synthetic_documents(300, seed=4)[0]
    # Negators also sit in sentences without a polar word, so a document-level bag of
    # words cannot read the negation.
    polar = set("good great excellent wonderful pleasant superb lovely delightful bad poor "
                "awful terrible unpleasant dreadful horrible mediocre".split())
    distractors = sum(
        any({"not", "never", "hardly"} & set(s) and not polar & set(s) for s in parse_document(t))
        for t in texts)
    assert distractors > 200
    with pytest.raises(ValueError, match=r"polar \(2, 2\) must include an odd count"):
        synthetic_documents(2, polar=(2, 2))
    with pytest.raises(ValueError, match="negation_rate"):
        synthetic_documents(2, negation_rate=1.5)


def test_jsonl_documents(tmp_path: Path):
    path = tmp_path / "docs.jsonl"
    rows = [{"text": f"Doc {i}. It has words.", "label": ["spam", "ham"][i % 2]}
            for i in range(10)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    texts, labels, names = jsonl_documents(path)
    assert names == ["ham", "spam"] and labels[:2] == [1, 0] and len(texts) == 10
    ds = load_documents(path, min_count=1)
    assert ds.name == "docs.jsonl" and len(ds.train_y) + len(ds.test_y) == 10

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n')
    with pytest.raises(ValueError, match=r"line 1 must be a JSON object with a string \"text\""):
        jsonl_documents(bad)
    bad.write_text("{nope\n")
    with pytest.raises(ValueError, match="line 1 is not valid JSON"):
        jsonl_documents(bad)
    bad.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": "x"}\n')
    with pytest.raises(ValueError, match="labels mix strings and integers"):
        jsonl_documents(bad)
    bad.write_text("\n")
    with pytest.raises(ValueError, match="holds no documents"):
        jsonl_documents(bad)
    with pytest.raises(ValueError, match="must be 'reference', 'synthetic' or a JSONL file"):
        load_documents(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match=r"test_fraction \(1.5\) must lie in \(0, 1\)"):
        load_documents("synthetic", test_fraction=1.5)


def test_synthetic_set_loads():
    ds = load_documents("synthetic", n_synthetic=100, max_sentences=8, max_words=12)
    assert len(ds.train_y) + len(ds.test_y) == 100
    assert ds.train_x.dtype == torch.long and ds.vocab_size < 100
