"""The README's tour runs as written, each snippet on its own."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
TEXT = README.read_text()
# Each block padded with the newlines before it, so a traceback names its README line.
BLOCKS = ["\n" * TEXT.count("\n", 0, m.start(1)) + m.group(1)
          for m in re.finditer(r"```python\n(.*?)```", TEXT, re.S)]


def test_readme_has_python_blocks():
    assert BLOCKS, "README has no python examples"


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_python_block_runs_alone(block: str) -> None:
    # A fresh namespace per block: a reader may copy any one snippet alone.
    namespace: dict = {"__name__": "__readme__"}
    exec(compile(block, str(README), "exec"), namespace)
    if "FeedForward(4096" in block:
        assert namespace["ffn"].hidden_dim == 11008
