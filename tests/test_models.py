"""Backbones: shapes, structure (prunable layers), static-input shortcut, widths, firing rates."""

import pytest
import torch
from torch import nn

from sdsnn import build_model
from sdsnn.config import ModelConfig
from sdsnn.errors import UserError
from sdsnn.models import MODELS

SMALL = {
    "mlp": (dict(depth=2, width=16), (1, 8, 8)),
    "convnet": (dict(depth=3, width=4, pool_every=2, fc_width=12), (1, 8, 8)),
    "dvs_convnet": (dict(depth=2, width=4, fc_width=8), (2, 8, 8)),
}


def _run(model, x):
    with torch.no_grad():
        y = model(x)
    model.reset()
    return y


@pytest.mark.parametrize("name", sorted(SMALL))
def test_forward_shape_rates_and_layers(name):
    torch.manual_seed(0)
    kw, shape = SMALL[name]
    m = build_model(ModelConfig(name=name, v_threshold=0.3, **kw), shape, 5)
    x = torch.rand(3, 4, *shape)
    y = m(x)
    assert y.shape == (4, 5)
    # rates are spike counts / T: multiples of 1/3 within [0, 1]
    assert torch.all((y >= 0) & (y <= 1))
    assert torch.allclose(y * 3, (y * 3).round())
    layers = m.prunable_layers()
    assert [li.is_output for li in layers] == [False] * (len(layers) - 1) + [True]
    assert layers[-1].module.out_features == 5
    assert not layers[0].spiking_input and all(li.spiking_input for li in layers[1:])
    assert len({li.name for li in layers}) == len(layers)
    for li in layers:
        assert isinstance(li.module, nn.Conv2d if li.kind == "conv" else nn.Linear)
    # gradients reach the first layer through the surrogate
    y.sum().backward()
    assert layers[0].module.weight.grad is not None
    assert layers[0].module.weight.grad.abs().sum() > 0


def test_convnet_structure_follows_config():
    cfg = ModelConfig(name="convnet", depth=4, width=8, width_growth=2.0, pool_every=2, fc_width=0)
    m = build_model(cfg, (1, 16, 16), 10)
    convs = [li for li in m.prunable_layers() if li.kind == "conv"]
    assert [li.module.out_channels for li in convs] == [8, 8, 16, 16]
    assert all(isinstance(li.norm, nn.BatchNorm2d) and li.module.bias is None for li in convs)
    out = m.prunable_layers()[-1]
    assert out.module.in_features == 16 * 4 * 4  # two pools: 16 -> 4
    assert m.widths == [8, 8, 16, 16]


def test_sdsnn_cifar_is_the_reference_network():
    from spikingjelly.activation_based import neuron

    m = build_model(ModelConfig(name="sdsnn_cifar"), (3, 32, 32), 10)
    layers = m.prunable_layers()
    assert [li.num_neurons for li in layers] == [128, 128, 256, 256, 512, 512, 512, 10]
    assert layers[6].module.in_features == 512 * 8 * 8
    assert all(li.module.bias is None for li in layers[:6])
    assert all(isinstance(b.neuron, neuron.ParametricLIFNode) for b in m.blocks[:6])
    assert m.blocks[6].neuron.v_threshold == 0.5
    assert isinstance(m.blocks[7].neuron, neuron.LIFNode)


@pytest.mark.parametrize("name", ["mlp", "convnet"])
def test_static_input_shortcut_gives_identical_outputs(name):
    torch.manual_seed(1)
    kw, shape = SMALL[name]
    cfg = ModelConfig(name=name, neuron="plif", v_threshold=0.2, **kw)
    m = build_model(cfg, shape, 4, static_input=True)
    x = torch.rand(1, 6, *shape).expand(4, -1, -1, -1, -1)
    for mode in ("train", "eval"):
        getattr(m, mode)()
        y_static = _run(m, x)
        m.static_input = False
        y_full = _run(m, x.contiguous())
        m.static_input = True
        assert torch.equal(y_static, y_full), mode
        assert y_full.sum() > 0


def test_widths_override_and_spec_rebuild():
    cfg = ModelConfig(name="convnet", depth=2, width=6, fc_width=10)
    m = build_model(cfg, (1, 8, 8), 3, widths=[2, 5, 7])
    assert m.widths == [2, 5, 7]
    s = m.spec()
    m2 = build_model(ModelConfig(**s["model"]), s["input_shape"], s["num_classes"], widths=s["widths"],
                     static_input=s["static_input"], spiking_input_first=s["spiking_input_first"])
    assert [p.shape for p in m2.parameters()] == [p.shape for p in m.parameters()]
    with pytest.raises(UserError, match="widths"):
        build_model(cfg, (1, 8, 8), 3, widths=[2, 5])


def test_unknown_model_is_a_user_error():
    with pytest.raises(UserError, match="not a known backbone"):
        build_model(ModelConfig(name="resnet"), (1, 8, 8), 3)
    assert {"mlp", "convnet", "sdsnn_cifar", "dvs_convnet"} <= set(MODELS)


def test_firing_rates_and_reset():
    torch.manual_seed(2)
    m = build_model(ModelConfig(name="mlp", depth=1, width=32, v_threshold=0.1, batch_norm=False), (1, 4, 4), 3,
                    spiking_input_first=True)
    assert m.prunable_layers()[0].spiking_input
    m.record_firing = True
    x = (torch.rand(4, 8, 1, 4, 4) < 0.5).float()
    y1 = _run(m, x)
    rates = m.firing_rates()
    assert set(rates) == {"fc1", "out"}
    assert 0 < rates["fc1"] <= 1
    assert rates["out"] == pytest.approx(float(y1.mean()), abs=1e-6)
    # reset() clears membrane state: the same input gives the same output again
    assert torch.equal(_run(m, x), y1)


@pytest.mark.parametrize("neuron_kind", ["lif", "plif"])
def test_inference_fast_path_gives_the_same_spikes_as_spikingjelly(neuron_kind):
    torch.manual_seed(4)
    kw, shape = SMALL["convnet"]
    m = build_model(ModelConfig(name="convnet", neuron=neuron_kind, v_threshold=0.2, **kw), shape, 4)
    if neuron_kind == "plif":
        with torch.no_grad():
            for b in m.blocks[:3]:  # the convs are PLIF, the FC layers LIF
                b.neuron.w.fill_(0.3)  # a learnt time constant, not the initial one
    m.eval()
    m.record_firing = True
    x = torch.rand(5, 6, *shape)
    with torch.no_grad():  # lean CPU inference loop
        fast = m(x)
    fast_rates = m.firing_rates()
    v_fast = m.blocks[0].neuron.v.clone()
    m.reset()
    slow = m(x)  # grad enabled: spikingjelly's own kernel
    assert torch.equal(fast, slow.detach())
    assert fast_rates == m.firing_rates() and sum(fast_rates.values()) > 0
    assert torch.equal(v_fast, m.blocks[0].neuron.v.detach())
    m.reset()
