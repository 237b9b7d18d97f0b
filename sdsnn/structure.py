"""What the rest of the library knows about a network's structure.

:class:`LayerInfo` describes one weight layer (conv or FC) of a spiking backbone, in forward
order; :class:`LayerMask` is its structural state (which synapse groups and which neurons are
alive). :func:`apply_masks` imposes masks on the weights in place: masked synapse groups are
exactly zero and pruned neurons have zero bias and zero BatchNorm affine parameters, so their
pre-activation is exactly zero for any input and they can never spike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping, Optional

import torch
from torch import nn

__all__ = ["LayerInfo", "LayerMask", "apply_masks", "expand_group_mask", "full_masks"]


@dataclass
class LayerInfo:
    """One weight layer of a spiking backbone (forward order; the output layer is last)."""

    name: str
    module: nn.Module  # nn.Conv2d or nn.Linear
    kind: Literal["conv", "fc"]
    norm: Optional[nn.Module] = None  # BatchNorm applied to this layer's output, if any
    is_output: bool = False
    spiking_input: bool = True  # False for a first layer fed analog values (direct encoding)

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight  # type: ignore[return-value]

    @property
    def num_neurons(self) -> int:
        return int(self.module.weight.shape[0])

    @property
    def fan_in_groups(self) -> int:
        return int(self.module.weight.shape[1])

    @property
    def group_size(self) -> int:
        """Weights per synapse group: k*k for conv (one kernel), 1 for FC."""
        w = self.module.weight
        return int(w[0, 0].numel())


@dataclass
class LayerMask:
    """Structural state of one layer: live synapse groups ``group`` [out, in], live neurons ``neuron`` [out]."""

    group: torch.Tensor  # bool [out, in]
    neuron: torch.Tensor  # bool [out]

    def clone(self) -> "LayerMask":
        return LayerMask(self.group.clone(), self.neuron.clone())


def expand_group_mask(group: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Broadcast a group mask [out, in] to the weight's shape ([out, in] or [out, in, k, k])."""
    extra = weight.dim() - 2
    return group.reshape(group.shape + (1,) * extra).expand_as(weight)


def full_masks(layers: list[LayerInfo]) -> dict[str, LayerMask]:
    """All-alive masks (the dense network)."""
    out = {}
    for li in layers:
        w = li.weight
        out[li.name] = LayerMask(
            torch.ones(w.shape[0], w.shape[1], dtype=torch.bool, device=w.device),
            torch.ones(w.shape[0], dtype=torch.bool, device=w.device),
        )
    return out


@torch.no_grad()
def apply_masks(layers: list[LayerInfo], masks: Mapping[str, LayerMask]) -> None:
    """Zero masked weights, and bias / BatchNorm affine parameters of pruned neurons, in place."""
    for li in layers:
        m = masks.get(li.name)
        if m is None:
            continue
        w = li.weight
        w.mul_(expand_group_mask(m.group, w).to(w.dtype))
        dead = ~m.neuron
        bias = getattr(li.module, "bias", None)
        if bias is not None:
            bias[dead] = 0
        if li.norm is not None:
            if getattr(li.norm, "weight", None) is not None:
                li.norm.weight[dead] = 0
            if getattr(li.norm, "bias", None) is not None:
                li.norm.bias[dead] = 0
