"""Mask-aware operation counts and energy per sample (docs/sd-snn.md section 11).

For every prunable layer whose input is spikes, the synaptic operations (SOPs) are the accumulates
actually performed: each input spike times its live fan-out, summed over time steps.  They are
counted exactly on the layer's real input, captured with a forward hook while the model runs on
the given batches.  A first layer fed analog values (direct encoding) is counted in MACs: live
connections times T (conv: live kernel weights times output positions).  Energy per sample is
``E = e_mac * MACs + e_ac * SOPs``; the ``dense_*`` figures use the same input spikes with full
connectivity (every weight of the architecture alive).

Exact counting, cheaply.  Running the layer with its weight replaced by the binary live mask
``M[o, i, kh, kw]`` and summing the output counts every (input spike, live synapse) pair once.
Summing over the output channel first gives the same number with a single output channel:
``sum_o conv(s, M)[o] = conv(s, sum_o M[o])``, so the count is one conv (or one matrix-vector
product for FC) with the per-input fan-out ``F[i, kh, kw] = sum_o M[o, i, kh, kw]``, with the
layer's own stride, padding and dilation (so border effects are exact).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .config import EnergyConfig
from .structure import LayerInfo, LayerMask

__all__ = ["LayerEnergy", "EnergyReport", "count_operations", "live_connectivity"]


@dataclass
class LayerEnergy:
    """Per-sample operation counts of one layer (masked and dense architecture)."""

    name: str
    kind: str
    spiking_input: bool
    sops: float = 0.0
    macs: float = 0.0
    dense_sops: float = 0.0
    dense_macs: float = 0.0
    energy_pj: float = 0.0
    dense_energy_pj: float = 0.0


@dataclass
class EnergyReport:
    """Per-sample figures over the counted batches; ``layers`` in forward order."""

    layers: dict[str, LayerEnergy]
    samples: int
    e_ac_pj: float
    e_mac_pj: float
    firing_rates: dict[str, float] = field(default_factory=dict)

    def _total(self, attr: str) -> float:
        return float(sum(getattr(le, attr) for le in self.layers.values()))

    @property
    def sops(self) -> float:
        return self._total("sops")

    @property
    def macs(self) -> float:
        return self._total("macs")

    @property
    def dense_sops(self) -> float:
        return self._total("dense_sops")

    @property
    def dense_macs(self) -> float:
        return self._total("dense_macs")

    @property
    def energy_pj(self) -> float:
        return self._total("energy_pj")

    @property
    def dense_energy_pj(self) -> float:
        return self._total("dense_energy_pj")

    @property
    def energy_ratio(self) -> float:
        """Energy of the masked network over the dense architecture's (same input spikes)."""
        d = self.dense_energy_pj
        return self.energy_pj / d if d > 0 else 0.0

    def to_metrics(self, per_layer: bool = False) -> dict[str, float]:
        """Flat metric names: ``sops``, ``macs``, ``energy_pj``, ``dense_energy_pj``, ``energy_ratio``.

        ``per_layer=True`` adds ``sops/<layer>``, ``macs/<layer>`` and ``energy_pj/<layer>``.
        """
        m = {
            "sops": self.sops,
            "macs": self.macs,
            "energy_pj": self.energy_pj,
            "dense_energy_pj": self.dense_energy_pj,
            "energy_ratio": self.energy_ratio,
        }
        if per_layer:
            for name, le in self.layers.items():
                m[f"sops/{name}"] = le.sops
                m[f"macs/{name}"] = le.macs
                m[f"energy_pj/{name}"] = le.energy_pj
        return m

    def firing_metrics(self) -> dict[str, float]:
        """``firing_rate/<layer>``: mean firing rate of each spiking layer over the counted batches."""
        return {f"firing_rate/{k}": v for k, v in self.firing_rates.items()}


def live_connectivity(li: LayerInfo, mask: Optional[LayerMask]) -> torch.Tensor:
    """Binary live-synapse mask of a layer, in the weight's shape (group mask times neuron mask)."""
    w = li.weight
    if mask is None:
        return torch.ones_like(w, dtype=torch.float32)
    g = mask.group.to(w.device) & mask.neuron.to(w.device).reshape(-1, 1)
    return g.reshape(g.shape + (1,) * (w.dim() - 2)).expand_as(w).to(torch.float32)


class _Counter:
    """Forward hook state for one layer: accumulates counts over every call."""

    def __init__(self, li: LayerInfo, mask: Optional[LayerMask]):
        self.li = li
        w = li.weight.detach()
        live = live_connectivity(li, mask)
        self.live_weights = float(live.sum())
        self.all_weights = float(w.numel())
        # fan-out of every input (channel, kernel offset): masked and dense, stacked as 2 "outputs"
        fan = live.sum(0, keepdim=True)
        self.fan = torch.cat([fan, torch.full_like(fan, float(w.shape[0]))], 0)
        self.sops = 0.0
        self.dense_sops = 0.0
        self.macs = 0.0
        self.dense_macs = 0.0
        self.rows_per_step = 1.0  # set per batch: T*B / rows seen by the layer (T for a static input)
        self.time_steps = 1

    @torch.no_grad()
    def __call__(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        x = inputs[0].detach()
        if self.li.spiking_input:
            # Counts are integers: float32 holds them exactly on the CPU (each output element sums
            # at most in x k x k x out, far below 2**24); on a GPU, cuDNN and cuBLAS may compute
            # float32 in TF32 (10-bit mantissa: counts above 2048 rounded), so count in float64 there.
            dt = torch.float64 if x.device.type == "cuda" else torch.float32
            if self.li.kind == "conv":
                m = module  # type: ignore[assignment]
                if getattr(m, "groups", 1) != 1:
                    raise NotImplementedError("energy counting of grouped convolutions")
                c = F.conv2d(x.to(dt), self.fan.to(x.device, dt), None, m.stride, m.padding, m.dilation)
                c = c.sum(dim=(0, 2, 3), dtype=torch.float64)
            else:
                c = x.reshape(-1, x.shape[-1]).to(dt) @ self.fan.to(x.device, dt).t()
                c = c.sum(0, dtype=torch.float64)
            self.sops += float(c[0]) * self.rows_per_step
            self.dense_sops += float(c[1]) * self.rows_per_step
        else:
            # analog input: MACs = live connections x T (x output positions for conv)
            rows = x.shape[0] * self.rows_per_step  # T*B
            samples = rows / self.time_steps
            positions = float(output[0, 0].numel()) if self.li.kind == "conv" else 1.0
            self.macs += self.live_weights * positions * self.time_steps * samples
            self.dense_macs += self.all_weights * positions * self.time_steps * samples


def _as_input(batch: Any) -> torch.Tensor:
    if isinstance(batch, (tuple, list)):
        return batch[0]
    return batch


@torch.no_grad()
def count_operations(
    model: nn.Module,
    masks: Optional[Mapping[str, LayerMask]],
    batches: Iterable[Any],
    cfg: Optional[EnergyConfig] = None,
) -> EnergyReport:
    """Per-sample SOPs, MACs and energy of ``model`` on ``batches`` (tensors ``[T, B, ...]`` or ``(x, y)``).

    ``masks=None`` counts the dense network.  The model's weights should already carry the masks
    (the spikes are the model's own); only the first ``cfg.batches`` batches are used.  The model
    runs in eval mode (BatchNorm running statistics untouched) and its mode is restored afterwards.
    """
    cfg = cfg or EnergyConfig()
    layers: list[LayerInfo] = model.prunable_layers()  # type: ignore[operator]
    counters = {li.name: _Counter(li, None if masks is None else masks.get(li.name)) for li in layers}
    handles = [li.module.register_forward_hook(counters[li.name]) for li in layers]
    was_training = model.training
    had_record = getattr(model, "record_firing", None)
    device = layers[0].weight.device
    samples = 0
    rate_sums: dict[str, float] = {}
    reset = getattr(model, "reset", None)
    try:
        model.eval()
        if had_record is not None:
            model.record_firing = True  # type: ignore[assignment]
        for i, batch in enumerate(batches):
            if i >= cfg.batches:
                break
            x = _as_input(batch).to(device)
            T, B = int(x.shape[0]), int(x.shape[1])
            for li in layers:
                c = counters[li.name]
                c.time_steps = T
                # a layer sees T*B rows, or B when the model computes a static first layer once
                c.rows_per_step = float(T) if (li is layers[0] and getattr(model, "static_input", False)) else 1.0
            if reset is not None:
                reset()
            model(x)
            if reset is not None:
                reset()
            samples += B
            if had_record is not None:
                for k, v in model.firing_rates().items():  # type: ignore[operator]
                    rate_sums[k] = rate_sums.get(k, 0.0) + v * B
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
        if had_record is not None:
            model.record_firing = had_record  # type: ignore[assignment]
    n = max(samples, 1)
    out: dict[str, LayerEnergy] = {}
    for li in layers:
        c = counters[li.name]
        le = LayerEnergy(
            name=li.name,
            kind=li.kind,
            spiking_input=li.spiking_input,
            sops=c.sops / n,
            macs=c.macs / n,
            dense_sops=c.dense_sops / n,
            dense_macs=c.dense_macs / n,
        )
        le.energy_pj = cfg.e_mac_pj * le.macs + cfg.e_ac_pj * le.sops
        le.dense_energy_pj = cfg.e_mac_pj * le.dense_macs + cfg.e_ac_pj * le.dense_sops
        out[li.name] = le
    return EnergyReport(
        layers=out,
        samples=samples,
        e_ac_pj=cfg.e_ac_pj,
        e_mac_pj=cfg.e_mac_pj,
        firing_rates={k: v / n for k, v in rate_sums.items()},
    )
