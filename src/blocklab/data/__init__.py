"""Offline data: byte tokenizer, the shipped text corpus, user text files, batching,
labelled documents for classification.

Nothing here touches the network: the default corpus ships inside the package
and user data is read from plain text or JSONL files.
"""

from blocklab.data.documents import (
    DocumentSet,
    jsonl_documents,
    load_documents,
    reference_documents,
    synthetic_documents,
)
from blocklab.data.text import (
    SHIPPED_CORPORA,
    TokenDataset,
    corpus_tokens,
    iterate_eval_batches,
    load_corpus,
    random_batches,
    split_tokens,
)
from blocklab.data.tokenizer import ByteTokenizer, Tokenizer, load_tokenizer
from blocklab.data.tokens import TokenFile

__all__ = [
    "SHIPPED_CORPORA",
    "ByteTokenizer",
    "Tokenizer",
    "TokenFile",
    "load_tokenizer",
    "TokenDataset",
    "corpus_tokens",
    "iterate_eval_batches",
    "load_corpus",
    "random_batches",
    "split_tokens",
    "DocumentSet",
    "load_documents",
    "reference_documents",
    "synthetic_documents",
    "jsonl_documents",
]
