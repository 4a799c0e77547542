"""Validate a lab report's ``results.json``: every verdict is one of the lab's, every
check's status follows from its estimate and threshold, and every verdict follows from
its checks by the lab's rule. ``blocklab lab --check DIR`` runs it on a report."""

from __future__ import annotations

import math
from typing import Any

from blocklab.lab.base import VERDICTS
from blocklab.lab.estimate import Check, Estimate, verdict_of

__all__ = ["check_results"]


def _number(x: Any, default: float) -> float:
    return default if x is None else float(x)


def _check_from_json(data: dict[str, Any]) -> Check:
    est = data["estimate"]
    value = est.get("value")
    estimate = Estimate(math.nan if value is None else float(value),
                        _number(est.get("low"), -math.inf), _number(est.get("high"), math.inf),
                        tuple(est.get("samples") or ()), est.get("method", ""))
    threshold = data["threshold"]
    if isinstance(threshold, list):
        threshold = (float(threshold[0]), float(threshold[1]))
    return Check(data["name"], estimate, data["op"], threshold, data.get("why", ""),
                 data.get("counted", True))


def check_results(results: dict[str, Any]) -> list[str]:
    """The problems found in ``results`` (the content of ``results.json``), one line
    each; an empty list means the report is consistent."""
    problems: list[str] = []
    records = results.get("experiments")
    if not isinstance(records, list):
        return ["'experiments' is missing or not a list"]
    for record in records:
        rid = record.get("id", "?")
        verdict = record.get("verdict")
        if verdict == "error":
            problems.append(f"{rid}: ended in an error: "
                            f"{(record.get('error') or {}).get('message', '')}")
            continue
        if verdict not in VERDICTS:
            problems.append(f"{rid}: verdict {verdict!r} is not one of {VERDICTS}")
        raw = record.get("checks") or []
        if not raw:
            problems.append(f"{rid}: no checks behind the verdict")
            continue
        checks = []
        for data in raw:
            try:
                check = _check_from_json(data)
            except (KeyError, TypeError, ValueError) as err:
                problems.append(f"{rid}: check {data.get('name', '?')!r} is malformed "
                                f"({type(err).__name__}: {err})")
                continue
            checks.append(check)
            if check.status != data.get("status"):
                problems.append(f"{rid}: check {check.name!r} says {data.get('status')!r} but "
                                f"its estimate and threshold give {check.status!r}")
            if check.counted and check.estimate.n < 1:
                problems.append(f"{rid}: check {check.name!r} has no raw repetitions")
        mapped = {c.get("name") for row in record.get("card_items") or []
                  for c in row.get("checks") or []}
        if record.get("card_items"):
            for check in checks:
                if check.counted and check.name not in mapped:
                    problems.append(f"{rid}: counted check {check.name!r} answers no card item")
        if checks and verdict in VERDICTS:
            try:
                expected = verdict_of(checks)
            except ValueError as err:
                problems.append(f"{rid}: {err}")
                continue
            if expected != verdict:
                problems.append(f"{rid}: verdict {verdict!r} does not follow from its checks "
                                f"(the rule gives {expected!r})")
    return problems
