"""Offline text corpora as byte tokens, split and batched for language modelling.

A corpus is a string: the one shipped inside the package (``"default"``, the
Python language reference, about 465 KB; see ``build_corpus.py``) or a user
file, plain text or JSONL with a ``"text"`` field per line. Tokens are the
UTF-8 bytes (:class:`ByteTokenizer`). The split is contiguous -- validation is
the tail of the token stream -- so no training window overlaps a validation
window except at the single boundary.

Next-token batches follow nanoGPT's ``get_batch``: pick windows of
``seq_len + 1`` tokens, ``x`` is the first ``seq_len`` and ``y`` the last
``seq_len``, so ``y[:, t] == x[:, t + 1]``. Training windows start at random
offsets drawn from a caller-supplied generator; evaluation walks the tokens in
non-overlapping windows, always the same ones.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import torch
from torch.utils.data import Dataset

from blocklab.data.tokenizer import ByteTokenizer

# Shipped corpora by name; "default" is an alias.
SHIPPED_CORPORA: dict[str, str] = {
    "default": "python_reference.txt",
    "python_reference": "python_reference.txt",
}


def _read_shipped(filename: str) -> str:
    text = resources.files("blocklab.data").joinpath("corpus", filename).read_text("utf-8")
    # The first line credits the source; it is not part of the text.
    if text.startswith("# "):
        text = text.split("\n", 1)[1].lstrip("\n") if "\n" in text else ""
    return text


def _read_jsonl(path: Path) -> list[str]:
    """The ``"text"`` field of every non-blank line (the path and line named on error)."""
    docs: list[str] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {lineno} is not valid JSON ({e.msg})") from e
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                got = (
                    f"keys {sorted(record)}" if isinstance(record, dict)
                    else type(record).__name__
                )
                raise ValueError(
                    f"{path}: line {lineno} must be a JSON object with a string "
                    f"\"text\" field, got {got}"
                )
            docs.append(record["text"])
    return docs


def corpus_documents(name: str | Path = "default") -> list[str]:
    """The documents of a shipped corpus or of a user file: one per JSONL record, else
    the whole text as one; :func:`load_corpus` joins them.

    Args:
        name: ``"default"`` (or another key of ``SHIPPED_CORPORA``), or a path:
            a ``.jsonl`` file is read as one JSON object per line whose ``"text"``
            fields are joined by blank lines (empty lines skipped); any other file
            is read as UTF-8 text.

    Raises:
        ValueError: the name is neither shipped nor an existing file, the file is
            not UTF-8, a JSONL line is malformed (the path and line number are
            named), or the corpus is empty.
    """
    if isinstance(name, str) and name in SHIPPED_CORPORA:
        return [_read_shipped(SHIPPED_CORPORA[name])]
    if not isinstance(name, (str, Path)):
        raise TypeError(f"name must be a str or Path, got {type(name).__name__}")
    path = Path(name).expanduser()
    if not path.is_file():
        raise ValueError(
            f"corpus {str(name)!r} is neither a shipped corpus ({', '.join(SHIPPED_CORPORA)}) "
            f"nor an existing file (looked for {path.resolve()})"
        )
    try:
        docs = _read_jsonl(path) if path.suffix.lower() == ".jsonl" else [path.read_text("utf-8")]
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    if not any(doc.strip() for doc in docs):
        raise ValueError(f"{path}: the corpus is empty")
    return docs


def load_corpus(name: str | Path = "default") -> str:
    """The text of a shipped corpus or of a user file: :func:`corpus_documents` joined
    by blank lines (a JSONL file's records; any other file read as UTF-8 text)."""
    return "\n\n".join(corpus_documents(name))


def split_tokens(
    tokens: torch.Tensor, val_fraction: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Contiguous train/validation split of a 1-D token tensor; validation is the tail.

    Returns:
        ``(train, val)``, 1-D ``torch.long`` views with ``len(val) ==
        round(len(tokens) * val_fraction)``.
    """
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 1:
        shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise ValueError(f"tokens must be a 1-D tensor, got {shape}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    tokens = tokens.long()
    n_val = round(tokens.numel() * val_fraction)
    n_train = tokens.numel() - n_val
    return tokens[:n_train], tokens[n_train:]


def _check_windows(tokens: torch.Tensor, batch_size: int, seq_len: int) -> None:
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 1:
        shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise ValueError(f"tokens must be a 1-D tensor, got {shape}")
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size ({batch_size}) and seq_len ({seq_len}) must be >= 1")
    if tokens.numel() < seq_len + 1:
        raise ValueError(
            f"tokens ({tokens.numel()}) must hold at least seq_len + 1 ({seq_len + 1}) tokens"
        )


def random_batches(
    tokens: torch.Tensor,
    batch_size: int,
    seq_len: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of next-token pairs from windows at random offsets.

    Args:
        tokens: 1-D token tensor of length N >= seq_len + 1.
        generator: CPU generator for the offsets (the global RNG when None).

    Returns:
        ``(x, y)``, each (B, T) ``torch.long`` on ``tokens``' device, with
        ``y[:, t] == x[:, t + 1]`` and ``y[:, -1]`` the token after ``x``'s window.
    """
    _check_windows(tokens, batch_size, seq_len)
    starts = torch.randint(0, tokens.numel() - seq_len, (batch_size,), generator=generator)
    index = starts[:, None] + torch.arange(seq_len + 1)  # (B, T + 1)
    windows = tokens[index.to(tokens.device)].long()
    return windows[:, :-1], windows[:, 1:]


def iterate_eval_batches(
    tokens: torch.Tensor, batch_size: int, seq_len: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """All non-overlapping windows of ``tokens`` in order, as ``(x, y)`` batches.

    Window ``i`` has ``x = tokens[i*T : (i+1)*T]`` and ``y`` the same shifted by one;
    there are ``(N - 1) // T`` of them, so every token but the last ``(N - 1) % T``
    is predicted exactly once. The last batch may hold fewer than ``batch_size``.

    Yields:
        ``(x, y)``, each (b, T) ``torch.long``, b <= batch_size.
    """
    _check_windows(tokens, batch_size, seq_len)
    n_windows = (tokens.numel() - 1) // seq_len
    for first in range(0, n_windows, batch_size):
        count = min(batch_size, n_windows - first)
        start, stop = first * seq_len, (first + count) * seq_len
        x = tokens[start:stop].long().view(count, seq_len)  # (b, T)
        y = tokens[start + 1 : stop + 1].long().view(count, seq_len)  # (b, T)
        yield x, y


class TokenDataset(Dataset):
    """Fixed-length next-token windows over a 1-D token tensor, for a ``DataLoader``.

    Args:
        tokens: 1-D token tensor of length N >= seq_len + 1.
        seq_len: T, the window length.
        stride: distance between window starts (default ``seq_len``: non-overlapping,
            the same windows as :func:`iterate_eval_batches`).

    Item ``i`` is ``(x, y)``, each (T,), ``x = tokens[i*stride : i*stride + T]`` and
    ``y`` the same shifted by one.
    """

    def __init__(self, tokens: torch.Tensor, seq_len: int, stride: int | None = None) -> None:
        _check_windows(tokens, 1, seq_len)
        stride = seq_len if stride is None else stride
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.tokens = tokens.long()
        self.seq_len = seq_len
        self.stride = stride

    def __len__(self) -> int:
        return (self.tokens.numel() - 1 - self.seq_len) // self.stride + 1

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} windows")
        start = (i % n) * self.stride
        window = self.tokens[start : start + self.seq_len + 1]
        return window[:-1], window[1:]


@functools.lru_cache(maxsize=8)
def corpus_tokens(
    name: str | Path = "default", val_fraction: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Byte tokens of a corpus, split into ``(train, val)``; cached per process.

    The tensors are shared between callers: treat them as read-only. A file
    path is read once per process, so later edits to the file are not seen.
    """
    tokens = ByteTokenizer().encode_tensor(load_corpus(name))
    return split_tokens(tokens, val_fraction)
