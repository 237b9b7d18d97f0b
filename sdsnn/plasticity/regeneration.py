"""Regeneration of masked synapse groups (docs/sd-snn.md section 7).

The regrowth signal of a group is ``g = sum over the group of |accumulated gradient|``, where
the gradient of the loss with respect to the effective (masked) weight is summed over all
optimizer steps since the previous development step. A masked group above the ``P(s)``-th
percentile of ``g`` over all the layer's groups is a candidate; its counter ``c_grow`` counts
consecutive candidate steps, and the group is unmasked when ``c_grow > regrow_window``.

Behind a BatchNorm, a pruned neuron's zeroed BN weight blocks the gradient to its (masked) input
weights, so their accumulated gradient is exactly 0. For those rows the signal is the gradient the
weights would get if the neuron were alive with the BN acting as the identity (scale 1, shift 0):
``dL/dW[rows] = grad at the BN output[:, rows] (x) layer input``, obtained by
:class:`NormBypassProbe` inside the ordinary backward pass. It ranks the masked groups by how hard
the loss pulls on them.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import nn

__all__ = [
    "regrow_percentile",
    "percentile",
    "group_signal",
    "update_regrowth",
    "NormBypassProbe",
]


def regrow_percentile(s: int, window: int, p0: float, b: float, p_max: float) -> float:
    """``P(s) = min(P_max, P0 + b ** (s - 2N - 1))`` (sd-snn.md 7)."""
    e = s - 2 * window - 1
    try:
        grow = b**e
    except OverflowError:
        grow = math.inf
    return float(min(p_max, p0 + grow))


@torch.no_grad()
def percentile(x: torch.Tensor, p: float) -> torch.Tensor:
    """The ``p``-th percentile (0..100) of all elements, linear interpolation.

    Same value as ``torch.quantile(x.flatten(), p / 100)``, computed with ``kthvalue`` so it also
    works for tensors above ``torch.quantile``'s size limit (large FC layers).
    """
    flat = x.reshape(-1)
    n = flat.numel()
    if n == 0:
        raise ValueError("percentile of an empty tensor")
    pos = min(max(p, 0.0), 100.0) / 100.0 * (n - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    v_lo = torch.kthvalue(flat, lo + 1).values
    if frac == 0.0 or hi == lo:
        return v_lo
    v_hi = torch.kthvalue(flat, hi + 1).values
    return v_lo + (v_hi - v_lo) * frac


def group_signal(grad_acc: torch.Tensor) -> torch.Tensor:
    """``g`` [out, in]: |accumulated gradient| summed over each group (a conv kernel, or one FC weight)."""
    a = grad_acc.abs()
    if a.dim() > 2:
        a = a.sum(dim=tuple(range(2, a.dim())))
    return a


@torch.no_grad()
def update_regrowth(
    g: torch.Tensor,
    group: torch.Tensor,
    c_grow: torch.Tensor,
    cand_prev: torch.Tensor,
    p: float,
    regrow_window: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One regeneration decision for a layer.

    Returns ``(regrow, c_grow, cand)``: bool [out, in] groups to unmask now, the new counters
    and this step's candidates (the caller keeps ``cand`` as next step's ``cand_prev``).
    ``c_grow`` increments where a group is a candidate now and was one at the previous step,
    else it resets to 0; unmasked groups have their counter reset.
    """
    thr = percentile(g, p)
    cand = (~group) & (g > thr)
    c = torch.where(cand & cand_prev, c_grow + 1, 0).to(torch.int32)
    regrow = c > regrow_window
    c = torch.where(regrow, 0, c).to(torch.int32)
    return regrow, c, cand



class NormBypassProbe:
    """Regrowth signal of pruned neurons behind a BatchNorm (see the module docstring).

    A forward hook on ``norm`` puts two tensor hooks on each pass that autograd records: one on
    the norm's output, keeping the gradient of the channels ``rows`` (the gradient at the spiking
    neuron's input), and one on the norm's input (the weight layer's output) that substitutes
    that gradient for the exact zeros the BN backward gives those channels (their BN weight is
    0). The weight layer's own backward then yields, for ``rows``, ``dL/dW = grad at the BN
    output (x) layer input``: the gradient with the BN acting as the identity. No extra
    convolution or matmul is run; the cost is copying ``rows`` channels of one gradient.

    Because the pruned neurons' weights are exactly 0 (hard masks), the substituted channels add
    nothing to the gradient of the layer's input, so nothing upstream changes. The pruned rows of
    ``weight.grad`` become nonzero; :meth:`StructuralDevelopment.after_backward` adds them to the
    regrowth accumulator and then zeroes them like every masked entry. Evaluation (autograd
    off) is untouched. The first layer of a static-input network runs once on ``x[0]`` and is
    broadcast over T, so the gradient captured there is already summed over the time steps.
    """

    def __init__(self, norm: nn.Module, rows: torch.Tensor):
        self.rows = rows
        self._handle: Optional[Any] = norm.register_forward_hook(self._on_norm)

    def _on_norm(self, mod: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        z = inputs[0]
        if not (torch.is_grad_enabled() and output.requires_grad and z.requires_grad):
            return
        rows = self.rows
        grads: list[torch.Tensor] = []

        def grab(g: torch.Tensor) -> None:  # gradient at the BN output (neuron input)
            grads.append(g.index_select(1, rows))

        def substitute(gz: torch.Tensor) -> Optional[torch.Tensor]:  # gradient at the BN input
            if not grads:
                return None
            return gz.index_copy(1, rows, grads.pop().to(gz.dtype))

        output.register_hook(grab)
        z.register_hook(substitute)

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
