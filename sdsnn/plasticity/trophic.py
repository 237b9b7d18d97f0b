"""Neurotrophic pruning-rate update (docs/sd-snn.md section 9)."""

from __future__ import annotations

import math

import torch

__all__ = ["trophic_alpha", "surviving_neurons", "update_rho"]


def trophic_alpha(s: int, window: int, a: float, tau: float, floor: float) -> float:
    """``alpha(s) = max(a * exp(-(s - 2N - 1) / tau), floor)``."""
    return float(max(a * math.exp(-(s - 2 * window - 1) / tau), floor))


@torch.no_grad()
def surviving_neurons(group: torch.Tensor, neuron: torch.Tensor, group_size: int, min_live_fraction: float) -> int:
    """``S_l``: alive neurons with at least ``min_live_fraction * fan_in`` live input weights.

    ``fan_in`` counts weights (``in * k * k`` for conv); ``group`` bool [out, in].
    """
    fan_in = group.shape[1] * group_size
    live_w = group.sum(dim=1) * group_size
    ok = (live_w.to(torch.float64) >= min_live_fraction * fan_in) & neuron
    return int(ok.sum())


def update_rho(rho: float, alpha: float, s_l: int, s_next: int, rho_max: float) -> float:
    """``rho += alpha * S_l / S_next``, capped at ``rho_max`` (``S_next`` of 0 counts as 1)."""
    return float(min(rho + alpha * s_l / max(s_next, 1), rho_max))
