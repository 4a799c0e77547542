"""The contract between the lab runner and its experiments.

An experiment is a short recipe: it receives a :class:`Context` (scale, device,
seed, where to write figures, a progress wrapper), measures, and returns an
:class:`Outcome` whose ``checks`` compare measured estimates (with their intervals,
:mod:`blocklab.lab.estimate`) with thresholds named in the experiment; the verdict
is computed from those checks by :func:`verdict_of` -- never a constant.
"""

from __future__ import annotations

import contextlib
import fnmatch
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

# The report shows figures at most 1100 px wide (its page width); save_figure writes
# them at dpi 110, so a wider figure would be shrunk and its text become unreadable.
MAX_FIGURE_INCHES = 10.0


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

        width = fig.get_figwidth()
        if width > MAX_FIGURE_INCHES:
            plt.close(fig)
            raise ValueError(f"figure {name!r} is {width:g} inches wide; the report shows at "
                             f"most MAX_FIGURE_INCHES ({MAX_FIGURE_INCHES:g}) without "
                             "shrinking its text")
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
class CardItem:
    """One numbered characteristic or claim of the concept card, and what answers it.

    Attributes:
        text: the item, in the card's words or close to them.
        checks: names of the :class:`Check` s the experiment produces for it (counted
            ones decide the verdict; context ones show a property that holds by
            construction); a ``*`` stands for what changes with the scale (a length).
        untested: why the item has no counted check -- it is a definition, holds by
            construction (then it lives in the test suite), or cannot be measured at
            this scale. Required when ``checks`` is empty or names no counted check
            (see :func:`card_rows`).
    """

    text: str
    checks: tuple[str, ...] = ()
    untested: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text.strip():
            raise ValueError(f"text ({self.text!r}) must be a non-empty string")
        if isinstance(self.checks, str) or not all(isinstance(c, str) for c in self.checks):
            raise TypeError(f"checks ({self.checks!r}) must be a tuple of check names")
        if not self.checks and not self.untested.strip():
            raise ValueError(f"card item {self.text!r} needs checks or an untested reason")


def card_rows(items: Iterable[CardItem], checks: Iterable[Check]) -> list[dict[str, Any]]:
    """The card items with the status of the checks that answer them, for the report.

    Raises:
        ValueError: an item names a check the run did not produce; a counted check
            answers no item (a verdict must rest on the card's claims only); an item
            whose checks are all context has no ``untested`` reason.
    """
    by_name = {c.name: c for c in checks}
    rows: list[dict[str, Any]] = []
    used: set[str] = set()
    for item in items:
        answered: list[Check] = []
        for pattern in item.checks:
            found = [c for name, c in by_name.items() if fnmatch.fnmatchcase(name, pattern)]
            if not found:
                raise ValueError(f"card item {item.text!r} names checks the run did not "
                                 f"produce: {pattern!r}; produced: {sorted(by_name)}")
            answered += [c for c in found if c not in answered]
        used.update(c.name for c in answered)
        if not any(c.counted for c in answered) and not item.untested.strip():
            raise ValueError(f"card item {item.text!r} has only context checks and no "
                             "untested reason")
        rows.append({"item": item.text, "untested": item.untested,
                     "checks": [{"name": c.name, "counted": c.counted, "status": c.status}
                                for c in answered]})
    orphans = [c.name for c in by_name.values() if c.counted and c.name not in used]
    if orphans:
        raise ValueError(f"counted checks answer no card item: {orphans}")
    return rows


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
    # The card's items, each mapped to the checks that answer it or to why none does;
    # the runner validates the mapping against every run (:func:`card_rows`).
    card_items: tuple[CardItem, ...] = ()


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
