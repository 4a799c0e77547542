"""Byte-level tokenizer: a token is one byte of the text's UTF-8 encoding.

``encode(text) = list(text.encode("utf-8"))``, so the vocabulary is the 256 byte
values, nothing is ever out of vocabulary and no file has to be trained or
downloaded (the scheme of ByT5, Xue et al. 2022, arXiv:2105.13626). With
``specials=True`` three special tokens follow the bytes: ``bos`` = 256,
``eos`` = 257, ``pad`` = 258. Decoding drops special tokens and replaces byte
sequences that are not valid UTF-8 with U+FFFD (``errors="replace"``), so any
sequence a model samples decodes to a string.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

N_BYTES = 256


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
