"""Card items: every item of a card maps to checks or to a stated reason, every counted
check answers an item, and the runner, the report and ``--check`` carry the mapping."""

from __future__ import annotations

import pytest

from blocklab.lab import experiments as registry
from blocklab.lab.base import CardItem, Context, Experiment, Outcome, card_rows
from blocklab.lab.estimate import Check, exact, mean_ci
from blocklab.lab.report import render_html
from blocklab.lab.runner import run_lab
from blocklab.lab.validate import check_results


def _checks() -> list[Check]:
    return [Check("gain", mean_ci([0.5, 0.6, 0.55]), ">=", 0.1),
            Check("formula", exact(2.0), "in", (1.9, 2.1), counted=False)]


def test_card_item_needs_checks_or_a_reason() -> None:
    with pytest.raises(ValueError, match="needs checks or an untested reason"):
        CardItem("a claim")
    with pytest.raises(ValueError, match="non-empty"):
        CardItem("  ", untested="x")
    with pytest.raises(TypeError, match="tuple of check names"):
        CardItem("a claim", checks="gain")  # type: ignore[arg-type]


def test_rows_carry_status_and_refuse_a_broken_mapping() -> None:
    items = (CardItem("the gain", ("gain",)),
             CardItem("the formula", ("formula",), untested="holds by construction"),
             CardItem("a definition", untested="a definition, nothing to measure"))
    rows = card_rows(items, _checks())
    assert [r["item"] for r in rows] == ["the gain", "the formula", "a definition"]
    assert rows[0]["checks"] == [{"name": "gain", "counted": True, "status": "holds"}]
    assert rows[1]["checks"][0]["counted"] is False and rows[2]["checks"] == []
    assert [c["name"] for c in card_rows((CardItem("any", ("ga*",)),), _checks()[:1])[0]
            ["checks"]] == ["gain"]
    with pytest.raises(ValueError, match="did not produce.*renamed"):
        card_rows((CardItem("x", ("renamed",)),), _checks())
    with pytest.raises(ValueError, match=r"answer no card item: \['gain'\]"):
        card_rows((CardItem("f", ("formula",), untested="construction"),), _checks())
    with pytest.raises(ValueError, match="only context checks"):
        card_rows((CardItem("g", ("gain",)), CardItem("f", ("formula",))), _checks())


def _run(ctx: Context) -> Outcome:
    return Outcome(metrics={}, evidence="", checks=_checks())


@pytest.mark.parametrize("items,error", [
    ((CardItem("the gain", ("gain",)),), None),
    ((CardItem("the gain", ("missing",)),), "did not produce"),
])
def test_runner_reports_the_mapping(items, error, tmp_path, monkeypatch) -> None:
    exp = Experiment(id="mapped", card="X1", title="t", claim="c", run=_run, card_items=items)
    monkeypatch.setitem(registry._REGISTRY_OVERRIDES, "mapped", exp)
    result = run_lab(["mapped"], out_dir=tmp_path, progress=False)
    record = result.records[0]
    results = {"experiments": result.records}
    if error:
        assert record["verdict"] == "error" and error in record["error"]["message"]
        return
    assert record["card_items"][0]["checks"][0]["name"] == "gain"
    assert check_results(results) == []
    html = render_html(results)
    assert "The card, item by item" in html and "the gain" in html
    record["card_items"] = [{"item": "other", "checks": [], "untested": "x"}]
    assert any("answers no card item" in p for p in check_results(results))


@pytest.mark.parametrize("experiment_id", registry.EXPERIMENT_IDS)
def test_every_experiment_maps_its_card(experiment_id: str) -> None:
    exp = registry.load_experiment(experiment_id)
    assert len(exp.card_items) >= 3, "list the card's items"
    names = [n for item in exp.card_items for n in item.checks]
    assert len(names) == len(set(names)), "a check answers one item"
