"""Sparsity: L1 penalty, magnitude pruning with lasting masks, gradual schedules,
lottery-ticket rewinding, structured pruning and sparse formats, and a report of
weight and activation sparsity (DL0051)."""

from blocklab.sparsity.penalty import l1_penalty
from blocklab.sparsity.prune import (
    Pruner,
    compute_mask,
    keep_pruned,
    magnitude_prune,
    mask_zeros,
    prunable_layers,
)
from blocklab.sparsity.report import (
    SparsityReport,
    activation_sparsity,
    effective_weight,
    sparsity_report,
)
from blocklab.sparsity.schedule import GradualPruner, cubic_sparsity, rewind, snapshot_weights
from blocklab.sparsity.structured import (
    CSRLinear,
    neuron_scores,
    prune_ffn_neurons,
    prune_linear_pair,
    semi_structured_available,
    shrink_linear_pair,
    to_csr,
    to_semi_structured,
)

__all__ = [
    "l1_penalty",
    "Pruner",
    "compute_mask",
    "keep_pruned",
    "magnitude_prune",
    "mask_zeros",
    "prunable_layers",
    "SparsityReport",
    "activation_sparsity",
    "effective_weight",
    "sparsity_report",
    "GradualPruner",
    "cubic_sparsity",
    "rewind",
    "snapshot_weights",
    "CSRLinear",
    "neuron_scores",
    "prune_ffn_neurons",
    "prune_linear_pair",
    "semi_structured_available",
    "shrink_linear_pair",
    "to_csr",
    "to_semi_structured",
]
