"""The registry of lab experiments: one module per concept, imported on demand.

Each experiment lives in ``blocklab/lab/experiments/<id>.py`` and defines a
module-level ``EXPERIMENT = Experiment(...)``. Modules are imported lazily, so
listing the lab or running one experiment never imports the others.

``_REGISTRY_OVERRIDES`` maps an id to an :class:`Experiment` that takes the place of
(or is added after) the modules; tests put fake experiments there with
``monkeypatch.setitem``.
"""

from __future__ import annotations

import importlib
import importlib.util

from blocklab.lab.base import Experiment

EXPERIMENT_IDS: tuple[str, ...] = (
    "rope",
    "sparsity",
    "distillation",
    "focal",
    "ffn",
    "mqa",
    "cost",
    "hierarchical",
    "dot_product",
    "dilated",
)

_REGISTRY_OVERRIDES: dict[str, Experiment] = {}


def known_ids() -> tuple[str, ...]:
    """Every experiment id, in registry order (overrides not in the registry last)."""
    extra = tuple(i for i in _REGISTRY_OVERRIDES if i not in EXPERIMENT_IDS)
    return EXPERIMENT_IDS + extra


def _module_name(experiment_id: str) -> str:
    return f"{__name__}.{experiment_id}"


def check_id(experiment_id: str) -> None:
    """Raise ``ValueError`` if ``experiment_id`` is not a known experiment."""
    if experiment_id not in known_ids():
        raise ValueError(
            f"experiment id ({experiment_id!r}) is unknown; known ids: {', '.join(known_ids())}"
        )


def is_available(experiment_id: str) -> bool:
    """True if the experiment is implemented (its module exists or it is overridden)."""
    check_id(experiment_id)
    if experiment_id in _REGISTRY_OVERRIDES:
        return True
    return importlib.util.find_spec(_module_name(experiment_id)) is not None


def available_experiments() -> list[str]:
    """The ids of the implemented experiments, in registry order."""
    return [i for i in known_ids() if is_available(i)]


def load_experiment(experiment_id: str) -> Experiment:
    """Import ``blocklab.lab.experiments.<id>`` and return its ``EXPERIMENT``.

    Raises:
        ValueError: the id is unknown.
        NotImplementedError: the id is known but its module does not exist yet.
        TypeError: the module's ``EXPERIMENT`` is missing, not an ``Experiment``, or
            carries another id.
    """
    if experiment_id in _REGISTRY_OVERRIDES:
        return _REGISTRY_OVERRIDES[experiment_id]
    if not is_available(experiment_id):
        raise NotImplementedError(
            f"experiment {experiment_id!r} is not yet implemented "
            f"(no module {_module_name(experiment_id)})"
        )
    module = importlib.import_module(_module_name(experiment_id))
    experiment = getattr(module, "EXPERIMENT", None)
    if not isinstance(experiment, Experiment):
        raise TypeError(
            f"{module.__name__}.EXPERIMENT must be an Experiment, got {type(experiment).__name__}"
        )
    if experiment.id != experiment_id:
        raise TypeError(
            f"{module.__name__}.EXPERIMENT.id ({experiment.id!r}) must equal its module name "
            f"({experiment_id!r})"
        )
    return experiment
