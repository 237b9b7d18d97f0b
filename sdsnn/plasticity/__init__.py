"""SD-SNN structural development (docs/sd-snn.md sections 3-10).

:class:`StructuralDevelopment` is what the training loop uses; the rule functions are public so
that they can be tested and reused one by one.
"""

from .development import StructuralDevelopment, reset_optimizer_state
from .pruning import neuron_scores, num_to_prune, select_pruned, spine_size
from .regeneration import (
    NormBypassProbe,
    group_signal,
    percentile,
    regrow_percentile,
    update_regrowth,
)
from .spines import SPINE_KEYS, adapt_spines, constrain_, init_spines, record_history
from .trophic import surviving_neurons, trophic_alpha, update_rho

__all__ = [
    "StructuralDevelopment",
    "reset_optimizer_state",
    "init_spines",
    "adapt_spines",
    "constrain_",
    "record_history",
    "SPINE_KEYS",
    "regrow_percentile",
    "percentile",
    "group_signal",
    "update_regrowth",
    "NormBypassProbe",
    "spine_size",
    "neuron_scores",
    "num_to_prune",
    "select_pruned",
    "trophic_alpha",
    "surviving_neurons",
    "update_rho",
]
