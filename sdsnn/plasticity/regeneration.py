"""Regeneration of masked synapse groups (docs/sd-snn.md section 7).

The regrowth signal of a group is ``g = sum over the group of |accumulated gradient|``, where
the gradient of the loss with respect to the effective (masked) weight is summed over all
optimizer steps since the previous development step. A masked group above the ``P(s)``-th
percentile of ``g`` over all the layer's groups is a candidate; its counter ``c_grow`` counts
consecutive candidate steps, and the group is unmasked when ``c_grow > regrow_window``.

Behind a BatchNorm, a pruned neuron's zeroed BN weight blocks the gradient to its (masked) input
weights, so their accumulated gradient is exactly 0. For those rows the signal is the gradient the
weights would get if the neuron were alive with the BN acting as the identity (scale 1, shift 0):
``dL/dW[rows] = grad at the BN output[:, rows] (x) layer input``, computed by
:func:`rows_weight_grad` from what :class:`NormBypassProbe` captures during the forward and
backward passes. It ranks the masked groups by how hard the loss pulls on them.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "regrow_percentile",
    "percentile",
    "group_signal",
    "update_regrowth",
    "rows_weight_grad",
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


@torch.no_grad()
def rows_weight_grad(module: nn.Module, x: torch.Tensor, grad_out: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``dL/dW[rows]`` of an ``nn.Conv2d`` / ``nn.Linear`` from its input and its output's gradient.

    Args:
        module: the weight layer.
        x: its input (``[N, C_in, H, W]`` or ``[N, in]``).
        grad_out: the gradient at its output, only the channels ``rows`` (``[N, P, H', W']`` or
            ``[N, P]``).
        rows: long ``[P]``, the output channels / units.

    Returns the gradient of the selected weight rows, shaped ``[P, *weight.shape[1:]]``. The work
    is proportional to ``P`` (one weight-gradient convolution / one matmul restricted to the rows).
    """
    w = module.weight
    g = grad_out.to(x.dtype)
    if isinstance(module, nn.Conv2d):
        padding = module.padding
        if isinstance(padding, str) or module.padding_mode != "zeros":
            mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
            x = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)
            padding = (0, 0)
        if module.groups == 1:
            size = (int(rows.numel()),) + tuple(w.shape[1:])
            return torch.nn.grad.conv2d_weight(x, size, g, module.stride, padding, module.dilation, 1)
        # grouped convolution: rows cut across the groups, so compute the full gradient
        full = g.new_zeros((g.shape[0], w.shape[0]) + tuple(g.shape[2:]))
        full.index_copy_(1, rows, g)
        gw = torch.nn.grad.conv2d_weight(x, tuple(w.shape), full, module.stride, padding, module.dilation, module.groups)
        return gw.index_select(0, rows)
    if isinstance(module, nn.Linear):
        return g.reshape(-1, g.shape[-1]).t() @ x.reshape(-1, x.shape[-1])
    raise TypeError(f"rows_weight_grad supports nn.Conv2d and nn.Linear, got {type(module).__name__}")


class NormBypassProbe:
    """Regrowth signal of pruned neurons behind a BatchNorm (see the module docstring).

    Registers a forward hook on ``module`` that keeps a reference to its input, and a forward hook
    on ``norm`` that puts a tensor hook on the norm's output capturing the gradient of the channels
    ``rows`` only. Hooks do nothing when autograd is off (evaluation). :meth:`take` turns what was
    captured since the last call into ``dL/dW[rows]`` and drops the references; :meth:`remove`
    unregisters the hooks. A layer run several times before one backward pass contributes the sum.

    The first layer of a static-input network runs once on ``x[0]`` and its output is broadcast
    over T, so the gradient captured there is already summed over the time steps.
    """

    def __init__(self, module: nn.Module, norm: nn.Module, rows: torch.Tensor):
        self.module = module
        self.rows = rows
        self._slots: list[list] = []  # [input, captured grad or None, output hooked?]
        self._handles = [
            module.register_forward_hook(self._on_layer),
            norm.register_forward_hook(self._on_norm),
        ]

    def _on_layer(self, mod: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if torch.is_grad_enabled():
            self._slots.append([inputs[0].detach(), None, False])

    def _on_norm(self, mod: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if not (torch.is_grad_enabled() and output.requires_grad and self._slots):
            return
        slot = self._slots[-1]
        if slot[2]:
            return
        slot[2] = True
        rows = self.rows

        def grab(grad: torch.Tensor) -> None:
            part = grad.detach().index_select(1, rows)
            slot[1] = part if slot[1] is None else slot[1] + part

        output.register_hook(grab)

    def take(self) -> Optional[torch.Tensor]:
        """``dL/dW[rows]`` (``[P, *weight.shape[1:]]``) summed over the captured passes, or None."""
        slots, self._slots = self._slots, []
        out = None
        for x, g, _ in slots:
            if g is None:
                continue
            gw = rows_weight_grad(self.module, x, g, self.rows)
            out = gw if out is None else out + gw
        return out

    def clear(self) -> None:
        self._slots = []

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._slots = []
