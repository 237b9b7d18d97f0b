"""Energy accounting: counts on hand-built layers checked against numbers worked out by hand."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sdsnn import build_model
from sdsnn.config import EnergyConfig, ModelConfig
from sdsnn.energy import count_operations
from sdsnn.structure import LayerInfo, LayerMask, apply_masks, expand_group_mask


class OneLayer(nn.Module):
    """A single weight layer applied per time step; counting only looks at the layer's input."""

    def __init__(self, module, kind, spiking_input):
        super().__init__()
        self.layer = module
        self.kind = kind
        self.spiking_input = spiking_input

    def prunable_layers(self):
        return [LayerInfo("l", self.layer, self.kind, None, True, self.spiking_input)]

    def forward(self, x):
        T, B = x.shape[:2]
        x = x.flatten(0, 1)
        if self.kind == "fc":
            x = x.flatten(1)
        return self.layer(x).reshape(T, B, -1).mean(0)


def _mask(group, neuron):
    return {"l": LayerMask(torch.tensor(group, dtype=torch.bool), torch.tensor(neuron, dtype=torch.bool))}


E = EnergyConfig(e_ac_pj=0.9, e_mac_pj=4.6, batches=10)


def test_fc_spiking_layer_by_hand():
    # weight [3 out, 2 in]; out0 reads in0, out1 reads both, out2 is a pruned neuron
    net = OneLayer(nn.Linear(2, 3), "fc", spiking_input=True)
    masks = _mask([[1, 0], [1, 1], [0, 1]], [1, 1, 0])
    # live fan-out: in0 -> 2 (out0, out1), in1 -> 1 (out1; out2 is pruned)
    x = torch.zeros(2, 2, 2, 1, 1)  # [T, B, C=2, 1, 1]
    x[0, 0, :, 0, 0] = torch.tensor([1.0, 1.0])  # sample 0, t0: both inputs spike -> 2 + 1 = 3
    x[1, 0, :, 0, 0] = torch.tensor([0.0, 1.0])  # sample 0, t1: in1 -> 1
    x[0, 1, :, 0, 0] = torch.tensor([1.0, 0.0])  # sample 1, t0: in0 -> 2
    r = count_operations(net, masks, [x], E)
    # masked: (3 + 1 + 2) / 2 samples = 3; dense: 4 spikes x 3 outputs / 2 samples = 6
    assert r.samples == 2
    assert r.sops == pytest.approx(3.0)
    assert r.dense_sops == pytest.approx(6.0)
    assert r.macs == 0 and r.dense_macs == 0
    assert r.energy_pj == pytest.approx(0.9 * 3)
    assert r.dense_energy_pj == pytest.approx(0.9 * 6)
    m = r.to_metrics()
    assert m["energy_ratio"] == pytest.approx(0.5)
    assert set(m) == {"sops", "macs", "energy_pj", "dense_energy_pj", "energy_ratio"}
    # masks=None is the dense network
    assert count_operations(net, None, [x], E).sops == pytest.approx(6.0)


def test_conv_spiking_layer_by_hand_including_borders():
    conv = nn.Conv2d(2, 2, 3, padding=1)
    net = OneLayer(conv, "conv", spiking_input=True)
    # out0 reads in0 only; out1 is a pruned neuron -> fan-out in0 = 1 per kernel offset, in1 = 0
    masks = _mask([[1, 0], [1, 1]], [1, 0])
    x = torch.zeros(1, 1, 2, 3, 3)
    x[0, 0, 0, 0, 0] = 1  # corner spike of in0: reaches 2x2 = 4 output positions (padding 1)
    x[0, 0, 0, 1, 1] = 1  # centre spike of in0: reaches all 9 output positions
    x[0, 0, 1, 1, 1] = 1  # centre spike of in1: 9 positions, but no live synapse in the masked net
    r = count_operations(net, masks, [x], E)
    assert r.sops == pytest.approx(4 + 9)
    assert r.dense_sops == pytest.approx((4 + 9 + 9) * 2)


def test_analog_first_layer_counts_macs_by_hand():
    conv = nn.Conv2d(1, 2, 3, padding=1)
    net = OneLayer(conv, "conv", spiking_input=False)
    masks = _mask([[1], [1]], [1, 0])  # one live output channel: 9 live kernel weights
    x = torch.rand(3, 5, 1, 4, 4)  # T = 3, B = 5, 16 output positions
    r = count_operations(net, masks, [x, x], E)
    assert r.samples == 10
    assert r.macs == pytest.approx(9 * 16 * 3)
    assert r.dense_macs == pytest.approx(18 * 16 * 3)
    assert r.sops == 0
    assert r.energy_pj == pytest.approx(4.6 * 9 * 16 * 3)
    # FC analog layer: live weights x T
    fc = OneLayer(nn.Linear(2, 3), "fc", spiking_input=False)
    r = count_operations(fc, _mask([[1, 0], [1, 1], [0, 1]], [1, 1, 0]), [torch.rand(4, 2, 2, 1, 1)], E)
    assert r.macs == pytest.approx(3 * 4)
    assert r.dense_macs == pytest.approx(6 * 4)


def _random_masks(layers, gen, p_group=0.6, p_neuron=0.7):
    masks = {}
    for li in layers:
        out, inn = li.weight.shape[:2]
        neuron = torch.rand(out, generator=gen) < p_neuron
        if li.is_output:
            neuron[:] = True
        masks[li.name] = LayerMask(torch.rand(out, inn, generator=gen) < p_group, neuron)
    return masks


def test_real_network_matches_brute_force_binary_weight_count():
    """The fan-out shortcut equals running each layer with binary weights on its input spikes."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    cfg = ModelConfig(name="convnet", depth=2, width=4, fc_width=6, v_threshold=0.2)
    m = build_model(cfg, (1, 6, 6), 3, static_input=True)
    layers = m.prunable_layers()
    masks = _random_masks(layers, gen)
    apply_masks(layers, masks)
    x = torch.rand(1, 4, 1, 6, 6).expand(3, -1, -1, -1, -1)

    inputs = {}
    hooks = [li.module.register_forward_hook(lambda mod, i, o, n=li.name: inputs.__setitem__(n, i[0]))
             for li in layers]
    m.eval()
    with torch.no_grad():
        m(x)
    m.reset()
    for h in hooks:
        h.remove()

    r = count_operations(m, masks, [x], E)
    for li in layers[1:]:
        s = inputs[li.name]
        wbin = expand_group_mask(masks[li.name].group, li.weight).float() * masks[li.name].neuron.float().reshape(
            (-1,) + (1,) * (li.weight.dim() - 1))
        if li.kind == "conv":
            brute = F.conv2d(s, wbin, None, li.module.stride, li.module.padding).sum()
            dense = F.conv2d(s, torch.ones_like(wbin), None, li.module.stride, li.module.padding).sum()
        else:
            brute = (s @ wbin.t()).sum()
            dense = (s @ torch.ones_like(wbin).t()).sum()
        assert torch.equal(s, (s > 0).float())  # the layer's input really is spikes
        assert r.layers[li.name].sops == pytest.approx(float(brute) / 4)
        assert r.layers[li.name].dense_sops == pytest.approx(float(dense) / 4)
    assert r.sops > 0
    assert r.energy_pj < r.dense_energy_pj
    # the first layer is analog: MACs over T = 3 steps although the model computes it once
    c1 = layers[0]
    live = float((masks[c1.name].group & masks[c1.name].neuron[:, None]).sum()) * 9
    assert r.layers[c1.name].macs == pytest.approx(live * 36 * 3)
    assert set(r.firing_metrics()) == {f"firing_rate/{li.name}" for li in layers}


def test_counting_leaves_model_state_untouched_and_static_equals_full():
    torch.manual_seed(3)
    cfg = ModelConfig(name="mlp", depth=2, width=8, v_threshold=0.3)
    m = build_model(cfg, (1, 4, 4), 3, static_input=True)
    m.train()
    bn = m.blocks[0].norm
    before = bn.running_mean.clone()
    x = torch.rand(1, 6, 1, 4, 4).expand(4, -1, -1, -1, -1)
    r1 = count_operations(m, None, [(x, torch.zeros(6))], E)
    assert m.training and not m.record_firing
    assert torch.equal(bn.running_mean, before)
    m.static_input = False
    r2 = count_operations(m, None, [x.contiguous()], E)
    assert r1.to_metrics(per_layer=True) == pytest.approx(r2.to_metrics(per_layer=True))
    assert r1.sops == r1.dense_sops and r1.energy_ratio == pytest.approx(1.0)
