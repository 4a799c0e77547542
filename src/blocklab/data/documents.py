"""Document classification data, offline: documents as sentences of words.

A document is a list of sentences and a sentence a list of lower-cased words. Batched,
documents become a word-id tensor (N, S, W) -- S sentences of W words, 0 = padding,
1 = unknown word -- the input of hierarchical models (HAN, Yang et al. 2016) and,
flattened, of flat ones. Three sources, none touching the network:

* ``"reference"`` -- real text shipped with the package: the Python language reference
  (``corpus/python_reference.txt``, the ``pydoc_data.topics`` pages of Python 3.11.7).
  Its 79 topics are labelled with the part of the documentation they belong to
  (:data:`TOPIC_FAMILIES`: statements, expressions, data model, built-in types, lexical
  analysis and execution model; the ``debugger`` page, a library tool, is left out),
  cut into documents of consecutive paragraphs of about ``words_per_doc`` words.
  Several topics repeat text of others (``compound`` holds ``if``, ``while``, ...), so a
  paragraph already seen earlier in the corpus is dropped: no text sits on both sides
  of the split. The split is deterministic: in each class every ``round(1 /
  test_fraction)``-th document, in corpus order, is a test document. Chunks of one
  topic can fall on both sides (as reviews of one business do in Yelp).
* ``"synthetic"`` -- a task whose label depends on sentence-level structure: some
  sentences carry a polar word (``good``/``bad``, ...), negated when a negator
  (``not``, ``never``, ...) comes earlier in the *same* sentence; the label is the
  majority polarity of the sentences. Negators also occur in sentences without a polar
  word, so counting words does not solve it: the sentence boundaries matter.
* a JSONL file of ``{"text": ..., "label": ...}`` lines (labels strings or ints).

Sentences are split at ``.``, ``!``, ``?`` followed by white space and at blank lines;
each line of a code or grammar paragraph is a sentence of its own. Words are runs of letters,
digits and underscores. The vocabulary comes from the training split only.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from blocklab.data.text import load_corpus

__all__ = [
    "PAD_ID",
    "UNK_ID",
    "TOPIC_FAMILIES",
    "DocumentSet",
    "split_sentences",
    "tokenize",
    "parse_document",
    "build_vocab",
    "encode_documents",
    "reference_documents",
    "synthetic_documents",
    "jsonl_documents",
    "load_documents",
]

PAD_ID = 0
UNK_ID = 1

# The shipped corpus's topics, in file order (sorted pydoc key order): (key, title, family).
FAMILY_NAMES = ("statements", "expressions", "data model", "built-in types",
                "lexical & execution")
_S, _E, _M, _B, _L = range(5)
TOPIC_FAMILIES: tuple[tuple[str, str, int | None], ...] = (
    ("assert", 'The "assert" statement', _S),
    ("assignment", "Assignment statements", _S),
    ("async", "Coroutines", _S),
    ("atom-identifiers", "Identifiers (Names)", _E),
    ("atom-literals", "Literals", _E),
    ("attribute-access", "Customizing attribute access", _M),
    ("attribute-references", "Attribute references", _E),
    ("augassign", "Augmented assignment statements", _S),
    ("await", "Await expression", _E),
    ("binary", "Binary arithmetic operations", _E),
    ("bitwise", "Binary bitwise operations", _E),
    ("bltin-code-objects", "Code Objects", _B),
    ("bltin-ellipsis-object", "The Ellipsis Object", _B),
    ("bltin-null-object", "The Null Object", _B),
    ("bltin-type-objects", "Type Objects", _B),
    ("booleans", "Boolean operations", _E),
    ("break", 'The "break" statement', _S),
    ("callable-types", "Emulating callable objects", _M),
    ("calls", "Calls", _E),
    ("class", "Class definitions", _S),
    ("comparisons", "Comparisons", _E),
    ("compound", "Compound statements", _S),
    ("context-managers", "With Statement Context Managers", _M),
    ("continue", 'The "continue" statement', _S),
    ("conversions", "Arithmetic conversions", _E),
    ("customization", "Basic customization", _M),
    ("debugger", '"pdb" -- The Python Debugger', None),
    ("del", 'The "del" statement', _S),
    ("dict", "Dictionary displays", _E),
    ("dynamic-features", "Interaction with dynamic features", _L),
    ("else", 'The "if" statement', _S),
    ("exceptions", "Exceptions", _L),
    ("execmodel", "Execution model", _L),
    ("exprlists", "Expression lists", _E),
    ("floating", "Floating point literals", _L),
    ("for", 'The "for" statement', _S),
    ("formatstrings", "Format String Syntax", _B),
    ("function", "Function definitions", _S),
    ("global", 'The "global" statement', _S),
    ("id-classes", "Reserved classes of identifiers", _L),
    ("identifiers", "Identifiers and keywords", _L),
    ("if", 'The "if" statement', _S),
    ("imaginary", "Imaginary literals", _L),
    ("import", 'The "import" statement', _S),
    ("in", "Membership test operations", _E),
    ("integers", "Integer literals", _L),
    ("lambda", "Lambdas", _E),
    ("lists", "List displays", _E),
    ("naming", "Naming and binding", _L),
    ("nonlocal", 'The "nonlocal" statement', _S),
    ("numbers", "Numeric literals", _L),
    ("numeric-types", "Emulating numeric types", _M),
    ("objects", "Objects, values and types", _M),
    ("operator-summary", "Operator precedence", _E),
    ("pass", 'The "pass" statement', _S),
    ("power", "The power operator", _E),
    ("raise", 'The "raise" statement', _S),
    ("return", 'The "return" statement', _S),
    ("sequence-types", "Emulating container types", _M),
    ("shifting", "Shifting operations", _E),
    ("slicings", "Slicings", _E),
    ("specialattrs", "Special Attributes", _B),
    ("specialnames", "Special method names", _M),
    ("string-methods", "String Methods", _B),
    ("strings", "String and Bytes literals", _L),
    ("subscriptions", "Subscriptions", _E),
    ("truth", "Truth Value Testing", _B),
    ("try", 'The "try" statement', _S),
    ("types", "The standard type hierarchy", _M),
    ("typesfunctions", "Functions", _B),
    ("typesmapping", 'Mapping Types -- "dict"', _B),
    ("typesmethods", "Methods", _B),
    ("typesmodules", "Modules", _B),
    ("typesseq", 'Sequence Types -- "list", "tuple", "range"', _B),
    ("typesseq-mutable", "Mutable Sequence Types", _B),
    ("unary", "Unary arithmetic and bitwise operations", _E),
    ("while", 'The "while" statement', _S),
    ("with", 'The "with" statement', _S),
    ("yield", 'The "yield" statement', _S),
)

_WORD = re.compile(r"[a-z0-9_]+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_RULE = re.compile(r"^[\s*=\-~^#+]+$")  # heading underlines and the like


# ------------------------------------------------------------------ text -> sentences

def tokenize(sentence: str) -> list[str]:
    """Lower-cased words: runs of letters, digits and underscores."""
    return _WORD.findall(sentence.lower())


def _is_code(lines: list[str]) -> bool:
    """An indented paragraph of code or grammar (not indented prose such as a method's
    description): it has a grammar rule or prompt, or no full stop at all."""
    if not lines[0].startswith("   ") or lines[0].lstrip().startswith(("* ", "- ")):
        return False
    text = " ".join(lines)
    return "::=" in text or ">>>" in text or not re.search(r"[a-z]\.(\s|$)", text)


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``: paragraphs split at blank lines, prose (bullets included) at
    ``.!?`` + white space; in a code or grammar paragraph (indented, with ``::=`` or
    ``>>>`` or no full stop) each line is a sentence. Rule lines (heading underlines) and sentences without a word are dropped."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    sentences: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        lines = [line for line in paragraph.split("\n") if line.strip() and not _RULE.match(line)]
        if not lines:
            continue
        if _is_code(lines):
            sentences += [line.strip() for line in lines]
        else:
            sentences += _SENTENCE_END.split(" ".join(line.strip() for line in lines))
    return [s for s in sentences if _WORD.search(s.lower())]


def parse_document(text: str) -> list[list[str]]:
    """A document as sentences of words."""
    return [tokenize(s) for s in split_sentences(text)]


# ------------------------------------------------------------------ words -> tensors

def build_vocab(documents: Sequence[Sequence[Sequence[str]]], *, max_size: int = 20000,
                min_count: int = 1) -> list[str]:
    """Id -> word: ``<pad>``, ``<unk>``, then the most frequent words (ties broken
    alphabetically) seen at least ``min_count`` times, ``max_size`` entries at most."""
    if max_size < 2:
        raise ValueError(f"max_size ({max_size}) must be >= 2 (pad and unknown)")
    if min_count < 1:
        raise ValueError(f"min_count ({min_count}) must be >= 1")
    counts = Counter(word for doc in documents for sentence in doc for word in sentence)
    ranked = sorted((w for w, c in counts.items() if c >= min_count),
                    key=lambda w: (-counts[w], w))
    return ["<pad>", "<unk>", *ranked[: max_size - 2]]


def encode_documents(documents: Sequence[Sequence[Sequence[str]]], vocab: Sequence[str], *,
                     max_sentences: int, max_words: int) -> torch.Tensor:
    """(N, S, W) word ids, S = ``max_sentences``, W = ``max_words``: longer documents and
    sentences are cut, shorter ones padded with 0; sentences without words are skipped
    (an empty document is all padding)."""
    if max_sentences < 1 or max_words < 1:
        raise ValueError(
            f"max_sentences ({max_sentences}) and max_words ({max_words}) must be >= 1"
        )
    index = {w: i for i, w in enumerate(vocab)}
    out = torch.zeros(len(documents), max_sentences, max_words, dtype=torch.long)
    for n, doc in enumerate(documents):
        sentences = [s for s in doc if len(s)][:max_sentences]
        for s, sentence in enumerate(sentences):
            ids = [index.get(w, UNK_ID) for w in sentence[:max_words]]
            out[n, s, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


@dataclass
class DocumentSet:
    """A document classification data set, split and encoded.

    Attributes:
        train_x, test_x: (N, S, W) word ids (0 = padding).
        train_y, test_y: (N,) class ids.
        vocab: id -> word.
        label_names: class id -> name.
        name: where it came from.
        test_texts: the test documents as sentences of words (for inspection).
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    vocab: list[str]
    label_names: list[str]
    name: str
    test_texts: list[list[list[str]]]

    @property
    def n_classes(self) -> int:
        return len(self.label_names)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def decode(self, x: torch.Tensor) -> list[list[str]]:
        """One encoded document (S, W) back to its sentences of words (padding dropped)."""
        return [[self.vocab[i] for i in row.tolist() if i != PAD_ID] for row in x
                if bool((row != PAD_ID).any())]


# ---------------------------------------------------------------------------- sources

def _topics(text: str) -> list[tuple[str, str, int | None]]:
    """Cut the shipped corpus into (key, text, family) by the titles of TOPIC_FAMILIES."""
    starts = []
    pos = 0
    for key, title, family in TOPIC_FAMILIES:
        at = 0 if pos == 0 and text.startswith(title + "\n") else text.find(f"\n\n\n{title}\n", pos)
        if at < 0:
            raise ValueError(
                f"the shipped corpus lacks topic {key!r} (title {title!r}) after offset {pos}; "
                "was corpus/python_reference.txt rebuilt with another Python?"
            )
        starts.append((at, key, family))
        pos = at + 1
    bounds = [s for s, _, _ in starts] + [len(text)]
    return [(key, text[bounds[i]:bounds[i + 1]].strip("\n"), family)
            for i, (_, key, family) in enumerate(starts)]


def reference_documents(*, words_per_doc: int = 150) -> tuple[list[str], list[int], list[str]]:
    """The shipped Python reference cut into labelled documents (see the module docstring).

    Returns:
        texts, labels (ids into the names), label names.
    """
    if words_per_doc < 10:
        raise ValueError(f"words_per_doc ({words_per_doc}) must be >= 10")
    seen: set[str] = set()
    texts: list[str] = []
    labels: list[int] = []
    for _, topic, family in _topics(load_corpus("default")):
        if family is None:
            continue
        chunks: list[list[str]] = [[]]
        words = [0]
        for paragraph in re.split(r"\n\s*\n", topic):
            key = " ".join(paragraph.split())
            if not key or key in seen:
                continue  # repeated text of another topic (compound vs if, ...)
            seen.add(key)
            if words[-1] >= words_per_doc:
                chunks.append([])
                words.append(0)
            chunks[-1].append(paragraph)
            words[-1] += len(tokenize(paragraph))
        if len(chunks) > 1 and words[-1] < words_per_doc // 3:
            tail, n_tail = chunks.pop(), words.pop()  # a short tail joins the chunk before it
            chunks[-1] += tail
            words[-1] += n_tail
        for chunk, n in zip(chunks, words, strict=True):
            if n >= 20:
                texts.append("\n\n".join(chunk))
                labels.append(family)
    return texts, labels, list(FAMILY_NAMES)


_FILLER = (
    "the a this that report review service staff room food place time day night team "
    "price menu table order visit city street music window door car train trip week "
    "morning evening friend family group people manager owner guest area view hall floor "
    "we they it was is were had has saw went came ordered asked said found took"
).split()
_POSITIVE = "good great excellent wonderful pleasant superb lovely delightful".split()
_NEGATIVE = "bad poor awful terrible unpleasant dreadful horrible mediocre".split()
_NEGATORS = "not never hardly".split()


def synthetic_documents(n: int, *, seed: int = 0, sentences: tuple[int, int] = (4, 8),
                        words: tuple[int, int] = (5, 10), polar: tuple[int, int] = (1, 3),
                        negation_rate: float = 0.3, distractor_rate: float = 0.5
                        ) -> tuple[list[str], list[int], list[str]]:
    """``n`` documents whose label is the majority polarity of their sentences.

    Each document has ``sentences`` (min, max) sentences of ``words`` (min, max) filler
    words; an odd number in ``polar`` of them carries one polar word, flipped when a
    negator stands earlier in the same sentence (a ``negation_rate`` share of them); a
    ``distractor_rate`` share of the other sentences carries a negator with nothing to
    negate. Labels are balanced by construction (the majority sign is a fair coin).
    Polar words alone get about ``1 - negation_rate`` right; the rest needs each
    negator matched to its own sentence.

    Returns:
        texts, labels (0 = negative, 1 = positive), label names.
    """
    if n < 0:
        raise ValueError(f"n ({n}) must be >= 0")
    if not (1 <= sentences[0] <= sentences[1]) or not (2 <= words[0] <= words[1]):
        raise ValueError(f"sentences {sentences} and words {words} must be (min, max) "
                         "ranges with min >= 1 and 2")
    if not (0 <= negation_rate <= 1 and 0 <= distractor_rate <= 1):
        raise ValueError(f"negation_rate ({negation_rate}) and distractor_rate "
                         f"({distractor_rate}) must lie in [0, 1]")
    if not (1 <= polar[0] <= polar[1] <= sentences[0]):
        raise ValueError(f"polar {polar} must be a range within [1, {sentences[0]}]")
    g = torch.Generator().manual_seed(seed)

    def randint(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    def pick(options: Sequence[str]) -> str:
        return options[randint(0, len(options) - 1)]

    odd = [k for k in range(polar[0], polar[1] + 1) if k % 2]
    if not odd:
        raise ValueError(f"polar {polar} must include an odd count (a strict majority)")
    texts, labels = [], []
    for _ in range(n):
        n_sent = randint(*sentences)
        n_polar = odd[randint(0, len(odd) - 1)]
        label = randint(0, 1)
        # Sentence polarities with the chosen majority: more of `label` than of its opposite.
        n_major = randint(n_polar // 2 + 1, n_polar)
        signs = [label] * n_major + [1 - label] * (n_polar - n_major)
        order = torch.randperm(n_sent, generator=g).tolist()
        polar_at = dict(zip(order[:n_polar], signs, strict=True))
        sentences_out = []
        for s in range(n_sent):
            ws = [pick(_FILLER) for _ in range(randint(*words))]
            if s in polar_at:
                negate = float(torch.rand((), generator=g)) < negation_rate
                surface = polar_at[s] ^ negate  # the word's own polarity before negation
                at = randint(1, len(ws))
                ws.insert(at, pick(_POSITIVE if surface else _NEGATIVE))
                if negate:
                    ws.insert(randint(0, at), pick(_NEGATORS))
            elif float(torch.rand((), generator=g)) < distractor_rate:
                ws.insert(randint(0, len(ws)), pick(_NEGATORS))
            sentences_out.append(" ".join(ws).capitalize() + ".")
        texts.append(" ".join(sentences_out))
        labels.append(label)
    return texts, labels, ["negative", "positive"]


def jsonl_documents(path: str | Path) -> tuple[list[str], list[int], list[str]]:
    """Documents from a JSONL file, one ``{"text": str, "label": str | int}`` per line.

    Labels are mapped to ids in sorted order of their distinct values (ints sort as
    numbers). Blank lines are skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"documents file {str(path)!r} does not exist")
    texts, raw = [], []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {lineno} is not valid JSON ({e.msg})") from e
            if not isinstance(record, dict) or not isinstance(record.get("text"), str) or \
                    not isinstance(record.get("label"), (str, int)) or \
                    isinstance(record.get("label"), bool):
                raise ValueError(
                    f"{path}: line {lineno} must be a JSON object with a string \"text\" and "
                    f"a string or integer \"label\", got {line.strip()[:80]!r}"
                )
            texts.append(record["text"])
            raw.append(record["label"])
    if not texts:
        raise ValueError(f"{path} holds no documents")
    if len({type(x) for x in raw}) > 1:
        raise ValueError(f"{path}: labels mix strings and integers")
    names = sorted(set(raw))
    index = {name: i for i, name in enumerate(names)}
    return texts, [index[x] for x in raw], [str(name) for name in names]


def _split(labels: Sequence[int], test_fraction: float) -> tuple[list[int], list[int]]:
    """Deterministic stratified split: every k-th document of each class is a test one."""
    every = max(2, round(1 / test_fraction))
    seen: Counter[int] = Counter()
    train, test = [], []
    for i, y in enumerate(labels):
        (test if seen[y] % every == every - 1 else train).append(i)
        seen[y] += 1
    return train, test


def load_documents(
    source: str | Path = "reference",
    *,
    max_sentences: int = 24,
    max_words: int = 40,
    vocab_size: int = 8000,
    min_count: int = 2,
    test_fraction: float = 0.2,
    n_synthetic: int = 2000,
    seed: int = 0,
    words_per_doc: int = 150,
) -> DocumentSet:
    """A split, encoded :class:`DocumentSet`.

    Args:
        source: ``"reference"`` (shipped real text), ``"synthetic"`` (``n_synthetic``
            documents drawn with ``seed``) or the path of a JSONL file.
        max_sentences, max_words: S and W of the encoded tensors.
        vocab_size, min_count: vocabulary from the training split.
        test_fraction: share of each class held out (deterministically).
        words_per_doc: target document length for ``"reference"``.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction ({test_fraction}) must lie in (0, 1)")
    if source == "reference":
        texts, labels, names = reference_documents(words_per_doc=words_per_doc)
        name = "python reference"
    elif source == "synthetic":
        texts, labels, names = synthetic_documents(n_synthetic, seed=seed)
        name = "synthetic negation-majority"
    else:
        path = Path(source)
        if not path.is_file():
            raise ValueError(
                f"source ({str(source)!r}) must be 'reference', 'synthetic' or a JSONL file"
            )
        texts, labels, names = jsonl_documents(path)
        name = path.name
    docs = [parse_document(t) for t in texts]
    train, test = _split(labels, test_fraction)
    if not train or not test:
        raise ValueError(f"{len(texts)} documents are too few to split with "
                         f"test_fraction {test_fraction}")
    vocab = build_vocab([docs[i] for i in train], max_size=vocab_size, min_count=min_count)
    kw = dict(max_sentences=max_sentences, max_words=max_words)
    y = torch.tensor(labels, dtype=torch.long)
    return DocumentSet(
        train_x=encode_documents([docs[i] for i in train], vocab, **kw),
        train_y=y[train],
        test_x=encode_documents([docs[i] for i in test], vocab, **kw),
        test_y=y[test],
        vocab=vocab,
        label_names=names,
        name=name,
        test_texts=[docs[i] for i in test],
    )
