"""Token streams for language-model training: text through any tokenizer, or a flat
token file read in place.

A flat token file is nanoGPT's ``.bin``: token ids back to back, no header, as
little-endian ``uint16`` (nanoGPT's choice, enough for GPT-2's 50257 tokens) or
``uint32`` (larger vocabularies; ``data_dtype=uint32``). It is opened with
``np.memmap`` and never read whole: a batch copies only its windows (B rows of T + 1
tokens) out of the page cache, so a corpus larger than memory trains, as in
nanoGPT's ``get_batch``. The split is nanoGPT's too: a directory holding
``train.bin`` and ``val.bin`` (``prepare.py``'s output), or one file whose tail
``val_fraction`` is held out (validation is contiguous, as for text).

Text (the shipped corpus, ``.txt``, ``.jsonl``) with the byte tokenizer goes through
:func:`blocklab.data.text.corpus_tokens`, unchanged. With another tokenizer each
document (a ``.jsonl`` record, or the whole text file) is encoded and framed by the
tokenizer's bos/eos where it has them, then split the same way. Text is encoded
whole, in memory: a corpus larger than memory is tokenised once into a ``.bin`` file
(``np.array(ids, dtype=np.uint16).tofile("train.bin")``, as nanoGPT's ``prepare.py``).

Both kinds answer :func:`sample_batch` (the training windows of a step, the same
offsets for a tensor and a file) and :func:`take_windows` (fixed windows, for
validation).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from blocklab.data.text import (
    SHIPPED_CORPORA,
    corpus_documents,
    corpus_tokens,
    random_batches,
    split_tokens,
)
from blocklab.data.tokenizer import Tokenizer, is_plain_bytes

__all__ = ["TokenFile", "Tokens", "TOKEN_DTYPES", "token_file_split", "load_token_data",
           "sample_batch", "take_windows", "encode_documents", "is_token_data"]

TOKEN_DTYPES: dict[str, type[np.unsignedinteger]] = {"uint16": np.uint16, "uint32": np.uint32}
TRAIN_BIN, VAL_BIN = "train.bin", "val.bin"


class TokenFile:
    """Tokens ``[start, stop)`` of a flat token file, read through ``np.memmap``.

    Args:
        path: the ``.bin`` file.
        dtype: ``"uint16"`` or ``"uint32"``.
        start, stop: the token range (default: the whole file).

    Raises:
        ValueError: the file is missing or empty, its size is not a multiple of the
            dtype's size (another dtype, or a cut-off write), or the range is outside.
    """

    def __init__(self, path: str | Path, dtype: str = "uint16", start: int = 0,
                 stop: int | None = None) -> None:
        if dtype not in TOKEN_DTYPES:
            raise ValueError(f"dtype must be one of {sorted(TOKEN_DTYPES)}, got {dtype!r}")
        self.path, self.dtype = Path(path), dtype
        size = check_token_file(self.path, dtype)
        stop = size if stop is None else stop
        if not 0 <= start <= stop <= size:
            raise ValueError(f"{self.path}: token range [{start}, {stop}) is outside "
                             f"[0, {size})")
        self.start, self.stop = start, stop
        # mode "r": read-only pages, nothing is loaded until a window touches it.
        self.array = np.memmap(self.path, dtype=TOKEN_DTYPES[dtype], mode="r")[start:stop]

    def numel(self) -> int:
        return self.stop - self.start

    def __len__(self) -> int:
        return self.numel()

    def __repr__(self) -> str:
        return f"TokenFile({str(self.path)!r}, {self.dtype}, [{self.start}, {self.stop}))"

    def windows(self, starts: torch.Tensor, length: int) -> torch.Tensor:
        """(B, length) ``torch.long``: row b is tokens ``[starts[b], starts[b] + length)``,
        copied out of the map (only these B * length tokens are read)."""
        rows = [self.array[s : s + length] for s in starts.tolist()]
        if any(len(r) != length for r in rows):
            raise ValueError(f"{self!r}: a window of {length} tokens runs past its end")
        out = np.empty((len(rows), length), dtype=np.int64)
        for i, row in enumerate(rows):
            out[i] = row
        return torch.from_numpy(out)

    def split(self, val_fraction: float) -> tuple[TokenFile, TokenFile]:
        """(train, val): the tail ``round(n * val_fraction)`` tokens are validation."""
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        n_val = round(self.numel() * val_fraction)
        cut = self.stop - n_val
        return (TokenFile(self.path, self.dtype, self.start, cut),
                TokenFile(self.path, self.dtype, cut, self.stop))


Tokens = torch.Tensor | TokenFile  # what the trainer samples from


def check_token_file(path: str | Path, dtype: str = "uint16") -> int:
    """The number of tokens in a flat token file, checked without reading it.

    Raises:
        ValueError: missing, empty, or a size that is not a multiple of the dtype's.
    """
    path = Path(path)
    if dtype not in TOKEN_DTYPES:
        raise ValueError(f"data_dtype must be one of {sorted(TOKEN_DTYPES)}, got {dtype!r}")
    if not path.is_file():
        raise ValueError(f"token file {str(path)!r} does not exist")
    nbytes = path.stat().st_size
    width = np.dtype(TOKEN_DTYPES[dtype]).itemsize
    if nbytes == 0:
        raise ValueError(f"token file {path} is empty")
    if nbytes % width:
        raise ValueError(f"token file {path} has {nbytes} bytes, not a multiple of {width} "
                         f"({dtype}): another dtype (data_dtype=uint16|uint32), or a cut-off "
                         "write")
    return nbytes // width


def is_token_data(data: str | Path) -> bool:
    """Whether ``data`` names flat token files: a ``.bin`` file, or a directory."""
    if isinstance(data, str) and data in SHIPPED_CORPORA:
        return False
    path = Path(data).expanduser()
    return path.suffix.lower() == ".bin" or path.is_dir()


def token_file_split(data: str | Path, dtype: str = "uint16",
                     val_fraction: float = 0.1) -> tuple[TokenFile, TokenFile]:
    """(train, val) token files of ``data``: a directory with ``train.bin`` and
    ``val.bin`` (or ``train.bin`` alone, split as a file), or one ``.bin`` file whose
    tail ``val_fraction`` is validation."""
    path = Path(data).expanduser()
    if path.is_dir():
        if not (path / TRAIN_BIN).is_file():
            raise ValueError(f"data directory {str(data)!r} holds no {TRAIN_BIN} "
                             f"(nanoGPT's layout: {TRAIN_BIN} and {VAL_BIN})")
        if (path / VAL_BIN).is_file():
            return TokenFile(path / TRAIN_BIN, dtype), TokenFile(path / VAL_BIN, dtype)
        path = path / TRAIN_BIN
    return TokenFile(path, dtype).split(val_fraction)


def encode_documents(data: str | Path, tokenizer: Tokenizer) -> torch.Tensor:
    """All documents of ``data`` encoded by ``tokenizer`` and concatenated, each
    framed by bos/eos where the tokenizer has them; 1-D ``torch.long``."""
    docs = corpus_documents(data)
    bos, eos = tokenizer.bos_id is not None, tokenizer.eos_id is not None
    if hasattr(tokenizer, "encode_batch"):
        encoded = tokenizer.encode_batch(docs, add_bos=bos, add_eos=eos)
    else:
        encoded = [tokenizer.encode(d, add_bos=bos, add_eos=eos) for d in docs]
    flat = [i for ids in encoded for i in ids]
    return torch.tensor(flat, dtype=torch.long)


def load_token_data(
    data: str | Path,
    tokenizer: Tokenizer,
    *,
    val_fraction: float = 0.1,
    dtype: str = "uint16",
) -> tuple[Tokens, Tokens]:
    """(train, val) tokens of a training data source.

    Args:
        data: a shipped corpus name, a ``.txt``/``.jsonl`` file (encoded by
            ``tokenizer``), a ``.bin`` token file or a directory of ``train.bin`` +
            ``val.bin`` (read in place, ``tokenizer`` unused).
        tokenizer: for text.
        val_fraction: the held-out tail, where no ``val.bin`` is given.
        dtype: of token files.

    Returns:
        Two 1-D ``torch.long`` tensors for text, two :class:`TokenFile` for token files.
    """
    if is_token_data(data):
        return token_file_split(data, dtype, val_fraction)
    if is_plain_bytes(tokenizer):
        return corpus_tokens(data, val_fraction)
    return split_tokens(encode_documents(data, tokenizer), val_fraction)


def sample_batch(
    tokens: Tokens, batch_size: int, seq_len: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`blocklab.data.text.random_batches` for a tensor or a :class:`TokenFile`:
    the same offsets from the same generator, ``(x, y)`` each (B, T) ``torch.long``."""
    if isinstance(tokens, torch.Tensor):
        return random_batches(tokens, batch_size, seq_len, generator)
    if tokens.numel() < seq_len + 1:
        raise ValueError(f"tokens ({tokens.numel()}) must hold at least seq_len + 1 "
                         f"({seq_len + 1}) tokens")
    starts = torch.randint(0, tokens.numel() - seq_len, (batch_size,), generator=generator)
    windows = tokens.windows(starts, seq_len + 1)  # (B, T + 1)
    return windows[:, :-1], windows[:, 1:]


def take_windows(tokens: Tokens, starts: torch.Tensor, length: int) -> torch.Tensor:
    """(B, length) ``torch.long``: the windows of ``tokens`` starting at ``starts`` (B,)."""
    if isinstance(tokens, torch.Tensor):
        index = starts[:, None] + torch.arange(length)  # (B, length)
        return tokens[index].long()
    return tokens.windows(starts, length)
