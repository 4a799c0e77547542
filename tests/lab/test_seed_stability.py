"""The quick lab gives every experiment the same verdict at seeds 0, 1 and 2 (slow: about
three quick labs, some 20 minutes on 2 cores). Inconclusive is a legitimate, stable answer;
a verdict that flips with the seed is a defect of the experiment.

Run on purpose: ``make test PYTEST_ARGS="-m slow -k seed_stability -s"``; it prints the
three verdict lists and each experiment's time.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from blocklab.lab import experiments as registry
from blocklab.lab.validate import check_results

SEEDS = (0, 1, 2)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_quick_lab_verdicts_do_not_depend_on_the_seed(tmp_path: Path) -> None:
    ids = registry.EXPERIMENT_IDS
    verdicts: dict[int, dict[str, str]] = {}
    seconds: dict[int, dict[str, float]] = {}
    for seed in SEEDS:
        out = tmp_path / f"seed{seed}"
        # A process per seed, as a user runs it: nothing carries over between runs.
        subprocess.run([sys.executable, "-m", "blocklab", "lab", "--quick", "--quiet",
                        "--seed", str(seed), "--out", str(out)], check=False, timeout=3000)
        results = json.loads((out / "results.json").read_text(encoding="utf-8"))
        assert check_results(results) == [], seed
        records = results["experiments"]
        verdicts[seed] = {r["id"]: r["verdict"] for r in records}
        seconds[seed] = {r["id"]: r["seconds"] for r in records}
    for seed in SEEDS:
        print(f"seed {seed}: " + ", ".join(
            f"{i} {verdicts[seed].get(i)} ({seconds[seed].get(i, 0):.0f} s)" for i in ids))
    errors = {s: [i for i, v in verdicts[s].items() if v == "error"] for s in SEEDS}
    assert not any(errors.values()), errors
    flips = {i: [verdicts[s].get(i) for s in SEEDS] for i in ids
             if len({verdicts[s].get(i) for s in SEEDS}) > 1}
    assert not flips, f"verdicts that change with the seed (seeds {SEEDS}): {flips}"
