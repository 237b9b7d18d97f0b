"""Neuronal pruning by spine size (docs/sd-snn.md section 8)."""

from __future__ import annotations

import math
from typing import Optional

import torch

__all__ = ["spine_size", "neuron_scores", "select_pruned", "num_to_prune"]


@torch.no_grad()
def spine_size(r_hi: torch.Tensor, r_lo: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
    """``z = r_hi + |r_lo|`` min-max normalised to [0, 1] over the live weights (0.5 if all equal).

    Masked weights get 0. ``live``: bool, shaped like the weight.
    """
    z = r_hi + r_lo.abs()
    if not bool(live.any()):
        return torch.zeros_like(z)
    zmin = torch.where(live, z, math.inf).amin()
    zmax = torch.where(live, z, -math.inf).amax()
    span = zmax - zmin
    if float(span) > 0:
        zn = (z - zmin) / span
    else:
        zn = torch.full_like(z, 0.5)
    return torch.where(live, zn, 0.0)


@torch.no_grad()
def neuron_scores(z: torch.Tensor) -> torch.Tensor:
    """Per output neuron: the sum of (normalised, live-only) spine sizes over its input weights."""
    return z.reshape(z.shape[0], -1).sum(dim=1)


def num_to_prune(num_neurons: int, rho: float) -> int:
    """``K = floor(C * rho / 100)``."""
    return int(math.floor(num_neurons * rho / 100.0 + 1e-9))


@torch.no_grad()
def select_pruned(
    scores: torch.Tensor,
    alive: torch.Tensor,
    k: int,
    protect: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The neurons to prune now: bool [C], True for alive neurons among the ``k`` lowest scores.

    Pruned neurons (``alive`` False) are ranked below every alive neuron, so they always count
    toward the cumulative target ``k`` (also when an alive neuron ties at score 0). ``protect``
    (bool [C]) excludes neurons from selection (neurons revived at this development step).
    """
    c = scores.numel()
    s = torch.where(alive, scores.to(torch.float64), -1.0)
    if protect is not None:
        s = torch.where(protect, math.inf, s)
        k = min(k, c - int(protect.sum()))
    k = max(0, min(k, c))
    out = torch.zeros(c, dtype=torch.bool, device=scores.device)
    if k == 0:
        return out
    idx = torch.topk(s, k, largest=False, sorted=False).indices
    out[idx] = True
    return out & alive
