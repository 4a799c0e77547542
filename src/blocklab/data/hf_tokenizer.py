"""A Hugging Face ``tokenizer.json`` tokenizer, read with the ``tokenizers`` library.

A Hugging Face model or tokenizer directory holds ``tokenizer.json`` (the whole
pipeline: normaliser, pre-tokeniser, BPE/Unigram/WordPiece/WordLevel model, decoder)
and ``tokenizer_config.json``, which names the special tokens (``bos_token``,
``eos_token``; a string or ``{"content": ...}``); ``special_tokens_map.json`` says
the same in older directories, and the model's ``config.json`` /
``generation_config.json`` give ``bos_token_id``/``eos_token_id`` as ids. The first
of these that names a token is used.

:meth:`HFTokenizer.encode` applies no post-processor template (``add_special_tokens
=False``): ``add_bos``/``add_eos`` frame the text explicitly, so training data and
prompts are framed the same way whatever the template says. :meth:`decode` drops
special tokens. :meth:`save` writes ``tokenizer.json`` and the side files back as
they were read (a minimal ``tokenizer_config.json`` when there was none), so
``transformers.AutoTokenizer`` loads the result and encodes alike.

``tokenizers`` is imported only when a tokenizer is loaded (``pip install tokenizers``;
it comes with ``transformers``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["HFTokenizer", "SIDE_FILES"]

TOKENIZER = "tokenizer.json"
CONFIG = "tokenizer_config.json"
# Files beside tokenizer.json that belong to the tokenizer; copied as they are.
SIDE_FILES = (CONFIG, "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
              "chat_template.json")


def _tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError as err:
        raise ImportError("a tokenizer.json tokenizer needs the 'tokenizers' library: "
                          "pip install tokenizers") from err
    return tokenizers


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"{path} is not readable JSON ({err})") from None
    return data if isinstance(data, dict) else {}


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class HFTokenizer:
    """A ``tokenizers.Tokenizer`` with the :class:`~blocklab.data.tokenizer.Tokenizer`
    interface.

    Args:
        tokenizer: a ``tokenizers.Tokenizer``.
        bos_token, eos_token: the special tokens' text (None: none); they must be in
            the vocabulary.
        side_files: ``{file name: text}`` of the files saved beside ``tokenizer.json``
            (``tokenizer_config.json`` ...), written back by :meth:`save`.
        source: where it was read from, for messages.
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        side_files: dict[str, str] | None = None,
        source: str | None = None,
    ) -> None:
        self._tok = tokenizer
        self.source = source
        self.side_files = dict(side_files or {})
        self.bos_token, self.eos_token = bos_token, eos_token
        self.bos_id = self._id_of("bos_token", bos_token)
        self.eos_id = self._id_of("eos_token", eos_token)
        self.pad_id: int | None = None
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        self._vocab_size = max(vocab.values()) + 1 if vocab else 0

    def _id_of(self, name: str, token: str | None) -> int | None:
        if token is None:
            return None
        found = self._tok.token_to_id(token)
        if found is None:
            raise ValueError(f"{name} {token!r} of {self.source or 'the tokenizer'} is not in "
                             "its vocabulary")
        return int(found)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_file(cls, path: str | Path) -> HFTokenizer:
        """From a ``tokenizer.json``; the side files and special tokens are read from
        its directory when it is named ``tokenizer.json``, none otherwise."""
        path = Path(path).expanduser()
        if path.name == TOKENIZER:
            return cls.from_dir(path.parent)
        return cls._build(path, side_dir=None)

    @classmethod
    def from_dir(cls, directory: str | Path) -> HFTokenizer:
        """From a directory holding ``tokenizer.json`` (and maybe ``tokenizer_config.json``)."""
        directory = Path(directory).expanduser()
        path = directory / TOKENIZER
        if not path.is_file():
            raise ValueError(f"{directory} holds no {TOKENIZER}")
        return cls._build(path, side_dir=directory)

    @classmethod
    def _build(cls, path: Path, side_dir: Path | None) -> HFTokenizer:
        tokenizers = _tokenizers()
        try:
            tok = tokenizers.Tokenizer.from_file(str(path))
        except Exception as err:  # noqa: BLE001 -- tokenizers raises its own Exception type
            raise ValueError(f"{path} is not a tokenizers tokenizer.json ({err})") from None
        side: dict[str, str] = {}
        specials: dict[str, str | None] = {"bos_token": None, "eos_token": None}
        if side_dir is not None:
            for name in SIDE_FILES:
                if (side_dir / name).is_file():
                    side[name] = (side_dir / name).read_text(encoding="utf-8")
            maps = [_read_json(side_dir / CONFIG), _read_json(side_dir / "special_tokens_map.json")]
            ids = [_read_json(side_dir / "generation_config.json"),
                   _read_json(side_dir / "config.json")]
            for key in specials:
                for data in maps:
                    if key in data:  # an explicit null says "none" (Qwen2's bos_token)
                        specials[key] = _token_text(data[key])
                        break
                else:
                    for data in ids:
                        value = data.get(f"{key}_id")
                        if isinstance(value, list):
                            value = value[0] if value else None
                        if isinstance(value, int) and not isinstance(value, bool):
                            specials[key] = tok.id_to_token(value)
                            break
        return cls(tok, **specials, side_files=side, source=str(path))

    # ---------------------------------------------------------------- interface
    @property
    def vocab_size(self) -> int:
        """One more than the largest id (added tokens included)."""
        return self._vocab_size

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"HFTokenizer({self.source or 'in memory'}, vocab_size={self.vocab_size})"

    def _frame(self, ids: list[int], add_bos: bool, add_eos: bool) -> list[int]:
        if add_bos and self.bos_id is None:
            raise ValueError(f"add_bos needs a bos token; {self!r} has none")
        if add_eos and self.eos_id is None:
            raise ValueError(f"add_eos needs an eos token; {self!r} has none")
        return ([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else [])

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of ``text`` (no template), optionally framed by bos/eos."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return self._frame(list(ids), add_bos, add_eos)

    def encode_batch(self, texts: Sequence[str], *, add_bos: bool = False,
                     add_eos: bool = False) -> list[list[int]]:
        """:meth:`encode` of each text, in parallel (the library's own threads)."""
        bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
        if bad:
            raise TypeError(f"texts must be str, got {bad[0]}")
        encoded = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return [self._frame(list(e.ids), add_bos, add_eos) for e in encoded]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; special tokens (bos and eos among them) are dropped.

        Raises:
            ValueError: an id outside ``[0, vocab_size)``.
        """
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        values = [int(i) for i in ids]
        bad = [i for i in values if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"ids must lie in [0, {self.vocab_size}) for {self!r}; got {bad[:5]}")
        # bos/eos are dropped even where tokenizer.json does not mark them special.
        framing = {self.bos_id, self.eos_id} - {None}
        return self._tok.decode([i for i in values if i not in framing],
                                skip_special_tokens=True)

    def save(self, directory: str | Path) -> list[Path]:
        """Write ``tokenizer.json`` and the side files into ``directory`` (created); a
        minimal ``tokenizer_config.json`` naming the special tokens when none was read.
        Returns the files written."""
        directory = Path(directory).expanduser()
        directory.mkdir(parents=True, exist_ok=True)
        written = [directory / TOKENIZER]
        self._tok.save(str(written[0]))
        files = dict(self.side_files)
        if CONFIG not in files:
            config = {"tokenizer_class": "PreTrainedTokenizerFast",
                      "bos_token": self.bos_token, "eos_token": self.eos_token}
            files[CONFIG] = json.dumps(config, indent=2) + "\n"
        for name, text in files.items():
            (directory / name).write_text(text, encoding="utf-8")
            written.append(directory / name)
        return written
