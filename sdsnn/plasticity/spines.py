"""Dendritic spines: per-weight allowed ranges, their adaptation, and the synaptic constraint.

docs/sd-snn.md sections 4-6. Every weight ``w`` has a range ``[r_lo, r_hi]`` (its spine). The
state of one layer is a plain ``dict`` of tensors shaped like the weight, so that it can be
checkpointed with ``torch.save`` and loaded with ``weights_only=True``:

- ``r_hi``, ``r_lo``: the range;
- ``c_hi``, ``c_lo``, ``c_shrink`` (int32): consecutive-step counters;
- ``x_hi``, ``x_lo``: accumulated excess beyond the range (both stored as non-negative amounts);
- ``above_prev``, ``below_prev`` (bool): whether ``w >= r_hi`` / ``w <= r_lo`` at the previous step;
- ``w_prev1``, ``w_prev2``: the weight as left by the previous step and the step before
  (after that step's constraint and masks);
- ``cut``: with ``constrain: always``, what the clamps after the optimizer steps of the current
  interval took off the weight (signed sum); ``w + cut`` is where the weight would be without
  them, and that is the weight the next adaptation step reads (see :func:`constrain_`).

How many of ``w_prev1`` / ``w_prev2`` are meaningful is tracked by the caller (``history``:
0, 1 or 2 steps recorded).
"""

from __future__ import annotations

import torch

__all__ = ["init_spines", "adapt_spines", "constrain_", "record_history", "SPINE_KEYS"]

#: The tensors of one layer's spine state (all shaped like the weight).
SPINE_KEYS = (
    "r_hi",
    "r_lo",
    "c_hi",
    "c_lo",
    "c_shrink",
    "x_hi",
    "x_lo",
    "above_prev",
    "below_prev",
    "w_prev1",
    "w_prev2",
    "cut",
)


@torch.no_grad()
def init_spines(w: torch.Tensor) -> dict[str, torch.Tensor]:
    """Step 0 (sd-snn.md 4): ``r_hi = max|w|``, ``r_lo = -max|w|`` of the layer, tracked per weight.

    The weight is recorded as the first history entry and the above/below flags are set for the
    "now and at the previous step" tests of step 1.
    """
    w = w.detach()
    m = w.abs().amax() if w.numel() else torch.zeros((), dtype=w.dtype, device=w.device)
    r_hi = torch.full_like(w, float(m))
    r_lo = -r_hi
    zi = torch.zeros(w.shape, dtype=torch.int32, device=w.device)
    return {
        "r_hi": r_hi,
        "r_lo": r_lo,
        "c_hi": zi.clone(),
        "c_lo": zi.clone(),
        "c_shrink": zi.clone(),
        "x_hi": torch.zeros_like(w),
        "x_lo": torch.zeros_like(w),
        "above_prev": w >= r_hi,
        "below_prev": w <= r_lo,
        "w_prev1": w.clone(),
        "w_prev2": torch.zeros_like(w),
        "cut": torch.zeros_like(w),
    }


@torch.no_grad()
def adapt_spines(
    st: dict[str, torch.Tensor],
    w: torch.Tensor,
    live: torch.Tensor,
    history: int,
    window: int,
    shrink_factor: float,
    min_range: float = 0.0,
) -> dict[str, int]:
    """One spine-adaptation step (sd-snn.md 5), in place on ``st``; returns change counts.

    ``w``: the weight read after the interval's training; ``live``: bool, shaped like ``w``
    (masked synapses do not exist, so their counters stay at 0 and their ranges do not move);
    ``history``: how many previous weights ``st`` holds (shrinkage needs 2); ``window``: N.

    1. upward growth: ``w >= r_hi`` now and at the previous step -> ``c_hi += 1``,
       ``x_hi += w - r_hi``; otherwise both reset. When ``c_hi >= N``: ``r_hi += x_hi / N``, reset.
    2. downward growth: the mirror image with ``w <= r_lo``; ``r_lo -= x_lo / N``.
    3. shrinkage: ``|w|`` fell compared with the previous step and also at the step before ->
       ``c_shrink += 1``, else reset. When ``c_shrink >= N``: both ends times ``shrink_factor``
       (kept at least ``min_range`` away from 0), reset.

    The range comparisons use the range as it was before this step's changes.
    """
    w = w.detach()
    r_hi, r_lo = st["r_hi"], st["r_lo"]
    above = w >= r_hi
    below = w <= r_lo

    # 1. upward growth
    up = above & st["above_prev"] & live
    c_hi = torch.where(up, st["c_hi"] + 1, 0).to(torch.int32)
    x_hi = torch.where(up, st["x_hi"] + (w - r_hi), 0.0)
    grow_hi = c_hi >= window
    new_hi = torch.where(grow_hi, r_hi + x_hi / window, r_hi)
    st["c_hi"] = torch.where(grow_hi, 0, c_hi).to(torch.int32)
    st["x_hi"] = torch.where(grow_hi, 0.0, x_hi)

    # 2. downward growth (mirror image)
    down = below & st["below_prev"] & live
    c_lo = torch.where(down, st["c_lo"] + 1, 0).to(torch.int32)
    x_lo = torch.where(down, st["x_lo"] + (r_lo - w), 0.0)
    grow_lo = c_lo >= window
    new_lo = torch.where(grow_lo, r_lo - x_lo / window, r_lo)
    st["c_lo"] = torch.where(grow_lo, 0, c_lo).to(torch.int32)
    st["x_lo"] = torch.where(grow_lo, 0.0, x_lo)

    # 3. shrinkage (long-term depression): |w| fell twice in a row
    if history >= 2:
        a0, a1, a2 = w.abs(), st["w_prev1"].abs(), st["w_prev2"].abs()
        fell = (a0 < a1) & (a1 < a2) & live
    else:
        fell = torch.zeros_like(live)
    c_sh = torch.where(fell, st["c_shrink"] + 1, 0).to(torch.int32)
    shrink = c_sh >= window
    # the floor only stops a shrink at min_range; it never widens a range already inside it
    new_hi = torch.where(shrink, torch.minimum(new_hi, torch.clamp(new_hi * shrink_factor, min=min_range)), new_hi)
    new_lo = torch.where(shrink, torch.maximum(new_lo, torch.clamp(new_lo * shrink_factor, max=-min_range)), new_lo)
    st["c_shrink"] = torch.where(shrink, 0, c_sh).to(torch.int32)

    st["r_hi"], st["r_lo"] = new_hi, new_lo
    st["above_prev"], st["below_prev"] = above, below
    return {
        "grown_hi": int(grow_hi.sum()),
        "grown_lo": int(grow_lo.sum()),
        "shrunk": int(shrink.sum()),
    }


@torch.no_grad()
def constrain_(w: torch.Tensor, st: dict[str, torch.Tensor], record_cut: bool = False) -> None:
    """Synaptic constraint (sd-snn.md 6): ``w = clamp(w, r_lo, r_hi)`` in place.

    ``r_lo <= 0 <= r_hi`` always holds, so a masked (zero) weight stays zero.

    ``record_cut`` (``constrain: always``, after every optimizer step): add what the clamp takes
    off to ``st["cut"]``. Without it a weight pressing against its range would be read at exactly
    ``r_hi`` at every development step, its excess ``w - r_hi`` would always be 0, and its spine
    could never grow (5.1); with it the adaptation reads ``w + cut``, the weight as the interval's
    training would have left it, as with ``constrain: step``.
    """
    if record_cut:
        before = w.clone()
        torch.clamp(w, min=st["r_lo"], max=st["r_hi"], out=w)
        st["cut"].add_(before.sub_(w))
    else:
        torch.clamp(w, min=st["r_lo"], max=st["r_hi"], out=w)


@torch.no_grad()
def record_history(st: dict[str, torch.Tensor], w: torch.Tensor) -> None:
    """Shift the weight history: the step before <- the previous step <- ``w``."""
    st["w_prev2"] = st["w_prev1"]
    st["w_prev1"] = w.detach().clone()
