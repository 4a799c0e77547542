"""How the shipped corpus ``corpus/python_reference.txt`` was made (run once, offline).

The text is the Python language reference as plain text, which every Python
install carries in :mod:`pydoc_data.topics` (the pages ``help("if")`` shows).
The topics are written in sorted key order, typographic punctuation is mapped
to ASCII (curly quotes, dashes, ellipsis), tabs are expanded and trailing
spaces stripped; other non-ASCII characters stay as UTF-8. The first line
credits the source, its licence and the Python version it came from. The
output depends only on that Python version, so rebuilding with the same one
gives the same bytes::

    python -m blocklab.data.build_corpus            # rewrites the shipped file
    python -m blocklab.data.build_corpus out.txt    # writes elsewhere

The library never runs this: :func:`blocklab.data.load_corpus` reads the
shipped file.
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path

CORPUS_FILE = Path(__file__).with_name("corpus") / "python_reference.txt"

# Typographic characters that have a plain ASCII spelling.
_ASCII = str.maketrans({
    "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
    "\u2013": "-", "\u2014": "--", "\u2026": "...", "\u00a0": " ",
})


def normalise(text: str) -> str:
    """ASCII punctuation, expanded tabs, no trailing spaces, ``\\n`` line ends."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").translate(_ASCII)
    return "\n".join(line.expandtabs(8).rstrip() for line in text.split("\n")).strip("\n")


def build() -> str:
    """The corpus text, header line included."""
    from pydoc_data import topics

    header = (
        "# blocklab default corpus: the Python language reference topics "
        f"(pydoc_data.topics of Python {platform.python_version()}), "
        "Copyright (c) Python Software Foundation, PSF License Agreement; "
        "made by blocklab/data/build_corpus.py."
    )
    body = "\n\n\n".join(normalise(topics.topics[key]) for key in sorted(topics.topics))
    return header + "\n\n" + body + "\n"


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else CORPUS_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    text = build()
    out.write_bytes(text.encode("utf-8"))
    print(f"wrote {out} ({len(text.encode('utf-8'))} bytes)")


if __name__ == "__main__":
    main()
