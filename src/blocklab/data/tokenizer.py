"""Tokenizers: the byte-level one, and how any tokenizer is named and found.

Byte level: a token is one byte of the text's UTF-8 encoding.
``encode(text) = list(text.encode("utf-8"))``, so the vocabulary is the 256 byte
values, nothing is ever out of vocabulary and no file has to be trained or
downloaded (the scheme of ByT5, Xue et al. 2022, arXiv:2105.13626). With
``specials=True`` three special tokens follow the bytes: ``bos`` = 256,
``eos`` = 257, ``pad`` = 258. Decoding drops special tokens and replaces byte
sequences that are not valid UTF-8 with U+FFFD (``errors="replace"``), so any
sequence a model samples decodes to a string.

Every tokenizer has the interface of :class:`Tokenizer`: ``encode``, ``decode``,
``vocab_size``, ``bos_id``/``eos_id`` (None when it has none) and ``save(directory)``.
:func:`load_tokenizer` takes a spec -- ``"bytes"``, a ``tokenizer.json`` file or a
directory holding one (the Hugging Face layout, read by
:class:`blocklab.data.hf_tokenizer.HFTokenizer` through the ``tokenizers`` library)
-- and :func:`find_tokenizer` says what a directory holds. The plain byte tokenizer
saves nothing: a directory without tokenizer files means bytes. The byte tokenizer
with specials saves ``byte_tokenizer.json`` (``{"type": "bytes", "specials": true}``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

__all__ = ["ByteTokenizer", "Tokenizer", "load_tokenizer", "find_tokenizer", "is_plain_bytes",
           "BYTES_FILE", "N_BYTES"]

N_BYTES = 256
BYTES_FILE = "byte_tokenizer.json"


@runtime_checkable
class Tokenizer(Protocol):
    """What training, ``generate`` and ``export`` need of a tokenizer."""

    bos_id: int | None
    eos_id: int | None

    @property
    def vocab_size(self) -> int:
        """One more than the largest id it can produce (the embedding rows it needs)."""
        ...

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        ...

    def decode(self, ids: Sequence[int]) -> str:
        ...

    def save(self, directory: str | Path) -> list[Path]:
        """Write the files :func:`find_tokenizer` reads back; returns them (maybe none)."""
        ...


class ByteTokenizer:
    """UTF-8 bytes as tokens, with optional ``bos``/``eos``/``pad`` specials.

    Args:
        specials: append ``bos`` (256), ``eos`` (257) and ``pad`` (258) to the
            256 byte tokens; ``vocab_size`` is then 259 instead of 256.
    """

    def __init__(self, specials: bool = False) -> None:
        self.specials = bool(specials)
        self.bos_id: int | None = N_BYTES if self.specials else None
        self.eos_id: int | None = N_BYTES + 1 if self.specials else None
        self.pad_id: int | None = N_BYTES + 2 if self.specials else None

    @property
    def vocab_size(self) -> int:
        return N_BYTES + 3 if self.specials else N_BYTES

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"ByteTokenizer(specials={self.specials})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ByteTokenizer) and other.specials == self.specials

    def __hash__(self) -> int:
        return hash((ByteTokenizer, self.specials))

    def save(self, directory: str | Path) -> list[Path]:
        """Nothing for the plain byte tokenizer (no tokenizer files means bytes);
        ``byte_tokenizer.json`` with specials. Returns the files written."""
        if not self.specials:
            return []
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / BYTES_FILE
        path.write_text(json.dumps({"type": "bytes", "specials": True}) + "\n")
        return [path]

    def _check_specials(self, add_bos: bool, add_eos: bool) -> None:
        if (add_bos or add_eos) and not self.specials:
            raise ValueError(
                f"add_bos ({add_bos}) / add_eos ({add_eos}) need a tokenizer built with "
                "specials=True; this one has specials=False"
            )

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of ``text``: its UTF-8 bytes, optionally framed by bos/eos."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        self._check_specials(add_bos, add_eos)
        ids = list(text.encode("utf-8"))
        if add_bos:
            ids.insert(0, self.bos_id)  # type: ignore[arg-type]
        if add_eos:
            ids.append(self.eos_id)  # type: ignore[arg-type]
        return ids

    def encode_tensor(
        self, text: str, *, add_bos: bool = False, add_eos: bool = False
    ) -> torch.Tensor:
        """Like :meth:`encode`, as a 1-D ``torch.long`` tensor (fast for long texts)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        self._check_specials(add_bos, add_eos)
        data = text.encode("utf-8")
        ids = (
            torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
            if data
            else torch.empty(0, dtype=torch.long)
        )
        parts = [ids]
        if add_bos:
            parts.insert(0, torch.tensor([self.bos_id], dtype=torch.long))
        if add_eos:
            parts.append(torch.tensor([self.eos_id], dtype=torch.long))
        return torch.cat(parts) if len(parts) > 1 else ids

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Text of a 1-D sequence of ids; specials are dropped, bad UTF-8 becomes U+FFFD.

        Raises:
            ValueError: ``ids`` is a tensor with more than one dimension, or holds an
                id outside ``[0, vocab_size)``.
        """
        if isinstance(ids, torch.Tensor):
            if ids.dim() > 1:
                raise ValueError(f"ids must be 0-D or 1-D, got shape {tuple(ids.shape)}")
            if ids.is_floating_point() or ids.is_complex():
                raise TypeError(f"ids must be an integer tensor, got dtype {ids.dtype}")
            values = ids.reshape(-1).tolist()
        else:
            values = [int(i) for i in ids]
        bad = [i for i in values if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(
                f"ids must lie in [0, {self.vocab_size}) for {self!r}; got {bad[:5]}"
                + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            )
        return bytes(i for i in values if i < N_BYTES).decode("utf-8", errors="replace")


def is_plain_bytes(tokenizer: object) -> bool:
    """Whether ``tokenizer`` is the default byte tokenizer (nothing to save or copy)."""
    return isinstance(tokenizer, ByteTokenizer) and not tokenizer.specials


def _read_bytes_file(path: Path) -> ByteTokenizer:
    try:
        spec = json.loads(path.read_text())
        if not isinstance(spec, dict) or spec.get("type") != "bytes":
            raise ValueError("not a byte tokenizer description")
        return ByteTokenizer(specials=bool(spec.get("specials", False)))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"{path}: not a blocklab byte tokenizer file ({err})") from None


def find_tokenizer(directory: str | Path) -> Tokenizer | None:
    """The tokenizer saved in ``directory``: its ``tokenizer.json`` (with
    ``tokenizer_config.json``, Hugging Face's layout) or ``byte_tokenizer.json``;
    None when it holds neither.

    Raises:
        ValueError: the directory holds only a SentencePiece ``tokenizer.model`` (which
            needs converting to ``tokenizer.json``), or a tokenizer file is unreadable.
        ImportError: a ``tokenizer.json`` is there but ``tokenizers`` is not installed.
    """
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        return None
    if (directory / "tokenizer.json").is_file():
        from blocklab.data.hf_tokenizer import HFTokenizer

        return HFTokenizer.from_dir(directory)
    if (directory / BYTES_FILE).is_file():
        return _read_bytes_file(directory / BYTES_FILE)
    if (directory / "tokenizer.model").is_file():
        raise ValueError(
            f"{directory} holds a SentencePiece tokenizer.model but no tokenizer.json; write "
            "one with transformers (AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR)) "
            "or name another tokenizer"
        )
    return None


def load_tokenizer(spec: str | Path | Tokenizer | None = "bytes") -> Tokenizer:
    """The tokenizer a spec names.

    Args:
        spec: ``"bytes"`` (or None): the byte tokenizer; a ``tokenizer.json`` file, or a
            directory holding one (a Hugging Face model or tokenizer directory, a
            ``blocklab export``): a :class:`~blocklab.data.hf_tokenizer.HFTokenizer`,
            bos/eos from the ``tokenizer_config.json`` beside it; ``byte_tokenizer.json``
            (or a directory holding it); or a tokenizer object, returned as it is.

    Raises:
        ValueError: the spec is none of these (the path looked for is named), the file
            is not a tokenizer, or the directory holds no tokenizer file.
        ImportError: a ``tokenizer.json`` needs ``tokenizers`` (``pip install tokenizers``).
    """
    if spec is None or (isinstance(spec, str) and spec == "bytes"):
        return ByteTokenizer()
    if isinstance(spec, Tokenizer) and not isinstance(spec, (str, Path)):
        return spec
    if not isinstance(spec, (str, Path)):
        raise TypeError(f"tokenizer must be 'bytes', a path or a tokenizer, got "
                        f"{type(spec).__name__}")
    path = Path(spec).expanduser()
    if path.is_dir():
        found = find_tokenizer(path)
        if found is None:
            raise ValueError(f"tokenizer directory {str(spec)!r} holds no tokenizer.json "
                             f"(nor {BYTES_FILE})")
        return found
    if path.is_file():
        if path.name == BYTES_FILE:
            return _read_bytes_file(path)
        from blocklab.data.hf_tokenizer import HFTokenizer

        return HFTokenizer.from_file(path)
    raise ValueError(f"tokenizer {str(spec)!r} is neither 'bytes' nor an existing tokenizer.json "
                     f"file or directory (looked for {path.resolve()})")
