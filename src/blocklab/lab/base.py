"""The contract between the lab runner and its experiments.

An experiment is a short recipe: it receives a :class:`Context` (scale, device,
seed, where to write figures, a progress wrapper), measures, and returns an
:class:`Outcome` whose ``checks`` compare measured estimates (with their intervals,
:mod:`blocklab.lab.estimate`) with thresholds named in the experiment; the verdict
is computed from those checks by :func:`verdict_of` -- never a constant.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from blocklab.lab.estimate import Check, Verdict, verdict_of

VERDICTS: tuple[str, ...] = ("supported", "partly", "inconclusive", "not supported")
VERDICT_MEANING: dict[str, str] = {
    "supported": "every counted check holds: its whole 95% interval is on the claimed side "
                 "of the threshold",
    "partly": "some checks hold and some fail (their whole interval is on the wrong side)",
    "inconclusive": "no check fails, but at least one interval straddles its threshold: "
                    "this scale cannot tell; more repetitions or the full scale may",
    "not supported": "no check holds and at least one fails",
}

T = TypeVar("T")


def _no_progress(items: Iterable[T], desc: str = "", total: int | None = None) -> Iterator[T]:
    yield from items


@dataclass
class Context:
    """What an experiment gets from the runner.

    Attributes:
        quick: True for the quick scale (each experiment <= 60 s on 2 CPU cores).
        device: where to run.
        seed: base random seed; experiments derive their own seeds from it.
        out_dir: the report directory; figures go to ``out_dir / "figures"``.
        progress: wraps an iterable with a progress display (tqdm on a terminal,
            plain lines otherwise); call it as ``ctx.progress(it, "desc", total=n)``.
        threads: torch intra-op threads the runner sets around ``run`` (None: leave
            torch's default). The lab's models are small: on CPU one thread wastes no
            time spinning, and timings do not depend on the core count.
    """

    quick: bool = True
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    out_dir: Path = Path("lab-report")
    progress: Callable[..., Iterable[Any]] = _no_progress
    threads: int | None = None

    @property
    def figures_dir(self) -> Path:
        path = self.out_dir / "figures"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def figure_path(self, name: str) -> tuple[Path, str]:
        """Absolute path to save a PNG to, and the path relative to ``out_dir``."""
        if not name.endswith(".png"):
            name += ".png"
        path = self.figures_dir / name
        return path, str(path.relative_to(self.out_dir))

    def save_figure(self, fig: Any, name: str, dpi: int = 110) -> str:
        """Save a matplotlib figure as ``figures/<name>.png``, close it, and return its
        path relative to ``out_dir`` (what an Outcome lists)."""
        import matplotlib.pyplot as plt

        path, rel = self.figure_path(name)
        fig.savefig(path, dpi=dpi)
        plt.close(fig)
        return rel

    def generator(self, offset: int = 0) -> torch.Generator:
        """A CPU generator seeded from the run seed (offset tells streams apart)."""
        return torch.Generator().manual_seed(self.seed * 1000003 + offset)

    def seeds(self, n: int) -> list[int]:
        """``n`` independent repetition seeds derived from the run seed: runs at base
        seeds 0, 1, 2 get disjoint sets."""
        if n < 1:
            raise ValueError(f"n ({n}) must be >= 1")
        return [self.seed * 1000 + i for i in range(n)]


@dataclass
class Outcome:
    """What an experiment returns: numbers, the checks on them, figures. The verdict
    is :func:`verdict_of` over the checks, never given."""

    metrics: dict[str, Any]
    evidence: str
    checks: list[Check]
    figures: list[str] = field(default_factory=list)
    verdict: Verdict = field(init=False)

    def __post_init__(self) -> None:
        self.verdict = verdict_of(self.checks)


@dataclass(frozen=True)
class Experiment:
    """An experiment of the lab: one concept card, one claim, one ``run``."""

    id: str
    card: str
    title: str
    claim: str
    run: Callable[[Context], Outcome]
    # Seconds on 2 idle CPU cores, measured and written down by hand: the runner prints
    # their sum before a run and `blocklab lab --help` lists them.
    seconds: dict[str, float] = field(default_factory=dict)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run a block with ``n`` torch intra-op threads (None: unchanged), then restore."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
