"""Run lab experiments and record what they measured.

:func:`run_lab` runs each experiment in registry order with a fresh seed, times it,
and keeps going when one fails (its record gets the verdict ``"error"`` and the
traceback). After every experiment it rewrites ``out_dir/results.json`` and the
HTML report ``out_dir/index.html``, so an interrupted run still leaves a report of
what finished. A report already in ``out_dir`` is updated, not replaced: the
experiments run now take the place of their earlier records, the others are kept,
and every record carries its own date, scale, seed and commit.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import math
import os
import platform
import random
import shlex
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

import blocklab
from blocklab.lab import experiments as registry
from blocklab.lab.base import Context, Experiment, Outcome, card_rows, torch_threads
from blocklab.lab.estimate import Check, Estimate, Timing
from blocklab.lab.report import write_html

T = TypeVar("T")


@dataclass
class LabResult:
    """The records of one lab run and where its files were written."""

    records: list[dict[str, Any]]
    results_path: Path
    html_path: Path

    @property
    def ok(self) -> bool:
        """False if any experiment ended in an error."""
        return all(r["verdict"] != "error" for r in self.records)


def to_jsonable(value: Any) -> Any:
    """Convert metrics to plain JSON: tensors and numpy values to numbers and lists,
    NaN and infinities to ``None``, mapping keys to strings, other objects to ``str``."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, (Estimate, Check, Timing)):
        return to_jsonable(value.to_json())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, torch.Tensor):
        return to_jsonable(value.detach().cpu().tolist())
    if isinstance(value, (np.ndarray, np.generic)):
        return to_jsonable(value.tolist())
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in value]
    return str(value)


def blocklab_version() -> str:
    try:
        return importlib.metadata.version("blocklab")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def rerun_command(experiment_id: str, *, quick: bool, device: str, seed: int,
                  out_dir: str | os.PathLike[str] = "lab-report") -> str:
    """The ``blocklab`` command line that reruns one experiment into the same report."""
    parts = ["blocklab", "lab", experiment_id, "--quick" if quick else "--full"]
    if Path(out_dir) != Path("lab-report"):
        parts += ["--out", shlex.quote(str(out_dir))]
    if device != "cpu":
        parts += ["--device", device]
    if seed != 0:
        parts += ["--seed", str(seed)]
    return " ".join(parts)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(blocklab.__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment(*, device: str, quick: bool, seed: int) -> dict[str, Any]:
    """What the numbers depend on: software versions, machine, scale and seed."""
    env: dict[str, Any] = {
        "blocklab": blocklab_version(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        "cpu": _cpu_name(),
        "threads": torch.get_num_threads(),
        "git_commit": _git_commit(),
        "date": _now(),
        "scale": "quick" if quick else "full",
        "seed": seed,
    }
    if torch.device(device).type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (timing checks are read beside them)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _line_progress(prefix: str) -> Callable[..., Iterator[Any]]:
    """Progress as plain lines: about every 10% when the total is known, else at
    powers of two, and always at the end."""

    def progress(items: Iterable[T], desc: str = "", total: int | None = None) -> Iterator[T]:
        if total is None and hasattr(items, "__len__"):
            total = len(items)  # type: ignore[arg-type]
        label = _label(prefix, desc)
        count, last_decile = 0, 0
        for item in items:
            yield item
            count += 1
            if total:
                decile = count * 10 // total
                if decile > last_decile and count < total:
                    last_decile = decile
                    _say(f"{label} {count}/{total}")
            elif count & (count - 1) == 0:
                _say(f"{label} {count}")
        _say(f"{label} {count}/{total}" if total else f"{label} {count} done")

    return progress


def _tqdm_progress(prefix: str) -> Callable[..., Iterator[Any]]:
    from tqdm.auto import tqdm

    def progress(items: Iterable[T], desc: str = "", total: int | None = None) -> Iterator[T]:
        yield from tqdm(items, desc=_label(prefix, desc), total=total,
                        file=sys.stderr, leave=False, dynamic_ncols=True)

    return progress


def _label(prefix: str, desc: str) -> str:
    """``id: desc``, without doubling an id the experiment already wrote."""
    return desc if desc.startswith(f"{prefix}:") else f"{prefix}: {desc}".rstrip()


def _progress_for(experiment_id: str) -> Callable[..., Iterable[Any]]:
    if sys.stderr.isatty():
        return _tqdm_progress(experiment_id)
    return _line_progress(experiment_id)


def _normalise_figures(figures: list[str], out_dir: Path) -> list[str]:
    """Figure paths relative to ``out_dir``, with forward slashes (they become URLs)."""
    paths = []
    for figure in figures:
        path = Path(figure)
        if path.is_absolute():
            try:
                path = path.resolve().relative_to(out_dir.resolve())
            except ValueError as err:
                raise ValueError(
                    f"figure ({figure!r}) must lie under the report directory ({out_dir})"
                ) from err
        paths.append(path.as_posix())
    return paths


def _run_one(experiment_id: str, ctx: Context, show: bool,
             run_info: dict[str, Any]) -> dict[str, Any]:
    quick, seed = ctx.quick, ctx.seed
    record: dict[str, Any] = {
        "id": experiment_id, "card": None, "title": None, "claim": None,
        "verdict": "error", "evidence": "", "checks": [], "metrics": {}, "figures": [],
        "seconds": 0.0,
        "command": rerun_command(experiment_id, quick=quick, device=str(ctx.device), seed=seed,
                                 out_dir=ctx.out_dir),
        "run": run_info, "error": None,
    }
    start = time.perf_counter()
    try:
        experiment: Experiment = registry.load_experiment(experiment_id)
        record.update(card=experiment.card, title=experiment.title, claim=experiment.claim)
        _seed_everything(seed)
        with torch_threads(ctx.threads):
            outcome = experiment.run(ctx)
        if not isinstance(outcome, Outcome):
            raise TypeError(
                f"experiment {experiment_id!r} must return an Outcome, "
                f"got {type(outcome).__name__}"
            )
        rows = card_rows(experiment.card_items, outcome.checks) if experiment.card_items \
            else []
        record.update(
            verdict=outcome.verdict,
            evidence=outcome.evidence,
            card_items=rows,
            checks=to_jsonable(outcome.checks),
            metrics=to_jsonable(outcome.metrics),
            figures=_normalise_figures(outcome.figures, ctx.out_dir),
        )
    except Exception as err:  # one failing experiment must not stop the others
        record["verdict"] = "error"
        record["error"] = {
            "message": f"{type(err).__name__}: {err}",
            "traceback": traceback.format_exc(),
        }
    record["seconds"] = round(time.perf_counter() - start, 3)
    record["run"] = {**run_info, "date": _now(), "load_average": _load_average()}
    if show:
        outcome_text = record["verdict"]
        if record["error"]:
            outcome_text += f": {record['error']['message']}"
        _say(f"{experiment_id}: {outcome_text} ({record['seconds']:.1f} s)")
    return record


def _earlier_records(out_dir: Path) -> list[dict[str, Any]]:
    """The records of an existing ``out_dir/results.json``. An unreadable file is
    reported and left out, never silently merged."""
    path = out_dir / "results.json"
    if not path.exists():
        return []
    try:
        earlier = json.loads(path.read_text(encoding="utf-8"))
        records = earlier["experiments"]
        if not isinstance(records, list) or not all(
                isinstance(r, dict) and "id" in r for r in records):
            raise ValueError("'experiments' is not a list of records")
    except (OSError, ValueError, KeyError, TypeError) as err:
        _say(f"lab: the report in {out_dir} cannot be read ({type(err).__name__}: {err}); "
             "starting a new one")
        return []
    env = earlier.get("environment") or {}
    for record in records:
        # Records written before each record carried its own run information.
        record.setdefault("run", {k: env.get(k) for k in ("date", "scale", "seed",
                                                         "git_commit", "device")})
    return records


def _merged(earlier: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``earlier`` with each record of ``new`` in the place of the record of the same id
    (appended when there was none)."""
    by_id = {r["id"]: r for r in new}
    merged = [by_id.pop(r["id"], r) for r in earlier]
    return merged + [r for r in new if r["id"] in by_id]


def estimated_seconds(ids: list[str], *, quick: bool) -> float | None:
    """The expected seconds of a run (each experiment's written-down figure for the
    scale); None when an experiment gives none."""
    key = "quick" if quick else "full"
    total = 0.0
    for experiment_id in ids:
        try:
            seconds = registry.load_experiment(experiment_id).seconds.get(key)
        except Exception:  # an unloadable experiment is an error record later
            seconds = None
        if seconds is None:
            return None
        total += seconds
    return total


def _write(results: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    results_path = out_dir / "results.json"
    results_path.write_text(json.dumps(results, indent=2, allow_nan=False) + "\n",
                            encoding="utf-8")
    return results_path, write_html(results, out_dir)


def run_lab(
    ids: list[str] | None = None,
    *,
    quick: bool = True,
    out_dir: str | os.PathLike[str] = "lab-report",
    device: str = "cpu",
    seed: int = 0,
    progress: bool | None = None,
    threads: int | None = None,
) -> LabResult:
    """Run lab experiments and write ``results.json`` and ``index.html`` to ``out_dir``.

    Args:
        ids: experiment ids to run, in the order given; ``None`` runs every
            implemented experiment in registry order. A requested id whose module
            does not exist yet is recorded as an error.
        quick: the quick scale (each experiment about a minute on a laptop CPU)
            rather than the full one.
        out_dir: report directory; figures go to ``out_dir/figures``.
        device: ``"cpu"`` or a CUDA device such as ``"cuda"``.
        seed: seeds ``random``, numpy and torch before each experiment.
        progress: ``True`` or ``None`` reports progress on stderr (tqdm bars on a
            terminal, plain lines otherwise) and one line per experiment;
            ``False`` is silent.
        threads: torch threads per experiment; default 1 for the quick scale on CPU
            (the lab's small models run fastest and time most steadily on one), the
            torch default otherwise.

    Raises:
        ValueError: an id is unknown, or the device is not available.
    """
    if ids is None:
        ids = registry.available_experiments()
    for experiment_id in ids:
        registry.check_id(experiment_id)
    ids = list(dict.fromkeys(ids))
    torch_device = torch.device(device)
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device ({device!r}) is not available: torch "
                         f"{torch.__version__} sees no CUDA device")
    if threads is None and quick and torch_device.type == "cpu":
        threads = 1
    if threads is not None and threads < 1:
        raise ValueError(f"threads ({threads}) must be >= 1")
    show = progress is not False
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    env = {**environment(device=str(torch_device), quick=quick, seed=seed),
           **({"threads": threads} if threads is not None else {})}
    run_info = {k: env[k] for k in ("scale", "seed", "device", "threads", "git_commit")}
    earlier = _earlier_records(out)
    results: dict[str, Any] = {"environment": env, "experiments": earlier}
    if show:
        kept = [r["id"] for r in earlier if r["id"] not in ids]
        if kept:
            _say(f"lab: updating the report in {out}; keeping {', '.join(kept)}")
        expected = estimated_seconds(ids, quick=quick)
        if expected is not None:
            _say(f"lab: {len(ids)} experiment(s) at {env['scale']} scale, expected about "
                 f"{_duration(expected)} on 2 CPU cores")
    new: list[dict[str, Any]] = []
    results_path, html_path = _write(results, out)
    for n, experiment_id in enumerate(ids, start=1):
        if show:
            _say(f"[{n}/{len(ids)}] {experiment_id}: running")
        ctx = Context(quick=quick, device=torch_device, seed=seed, out_dir=out, threads=threads)
        if show:
            ctx.progress = _progress_for(experiment_id)
        new.append(_run_one(experiment_id, ctx, show, run_info))
        results["experiments"] = _merged(earlier, new)
        results_path, html_path = _write(results, out)
    return LabResult(records=new, results_path=results_path, html_path=html_path)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
