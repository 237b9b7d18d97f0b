"""Backbones: shapes, structure (prunable layers), static-input shortcut, widths, firing rates."""

import os

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


@pytest.mark.parametrize("neuron_kind,tau", [("lif", 2.0), ("lif", 1.7), ("plif", 2.0)])
def test_inference_fast_path_gives_the_same_spikes_as_spikingjelly(neuron_kind, tau):
    torch.manual_seed(4)
    kw, shape = SMALL["convnet"]
    m = build_model(ModelConfig(name="convnet", neuron=neuron_kind, v_threshold=0.2, tau=tau, **kw), shape, 4)
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


@pytest.mark.parametrize("kind", ["conv", "fc"])
def test_eval_mode_folds_batchnorm_into_the_weight_layer(kind):
    """Eval mode runs weight layer + BN as one layer with folded weights: same pre-activations as
    the two layers in sequence (to float rounding); training mode keeps BN's batch statistics."""
    from sdsnn.models import SpikingBlock

    torch.manual_seed(5)
    name = "convnet" if kind == "conv" else "mlp"
    kw, shape = SMALL[name]
    m = build_model(ModelConfig(name=name, **kw), shape, 4)
    block = m.blocks[1]
    assert isinstance(block, SpikingBlock) and block.spec.kind == kind and block.norm is not None
    with torch.no_grad():  # BN with non-trivial running statistics and affine parameters
        n = block.norm
        n.running_mean.uniform_(-1, 1)
        n.running_var.uniform_(0.5, 2)
        n.weight.uniform_(0.5, 1.5)
        n.bias.uniform_(-0.5, 0.5)
        if block.layer.bias is not None:
            block.layer.bias.uniform_(-0.3, 0.3)
    x = torch.rand(6, *block.layer.weight.shape[1:2], *((4, 4) if kind == "conv" else ()))
    m.eval()
    seen = []
    h = block.layer.register_forward_hook(lambda mod, i, o: seen.append(o.shape))
    with torch.no_grad():
        folded = block._analog(x)
        reference = block.norm(block.layer(x))
    h.remove()
    assert block._folded_params() is not None
    assert len(seen) == 2  # the folded call still goes through the module (energy hooks see it)
    assert torch.allclose(folded, reference, atol=1e-5, rtol=1e-5)
    assert not torch.equal(folded, block.layer(x))  # BN really is in there
    m.train()
    assert block._folded_params() is None
    y = block._analog(x)  # batch statistics: per-channel mean ~0
    dims = (0, 2, 3) if kind == "conv" else (0,)
    assert torch.allclose(y.mean(dims), n.bias, atol=1e-4)


def test_channels_last_max_pool_matches_max_pool2d():
    from sdsnn.models import _max_pool2x2_channels_last

    torch.manual_seed(6)
    for shape in [(3, 5, 7, 9), (2, 4, 6, 6), (2, 3, 8, 5), (1, 1, 2, 2)]:
        x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
        y = _max_pool2x2_channels_last(x)
        assert torch.equal(y, nn.functional.max_pool2d(x, 2))
        assert y.is_contiguous(memory_format=torch.channels_last)
        ws = {}  # into reused buffers: the second call overwrites the first's result in place
        first = _max_pool2x2_channels_last(x, ws)
        assert torch.equal(first, y)
        second = _max_pool2x2_channels_last(-x, ws)
        assert torch.equal(second, nn.functional.max_pool2d(-x, 2))
        assert second.data_ptr() == first.data_ptr()


def test_eval_route_computes_the_same_network_as_the_plain_layers():
    """Eval mode (folded BN, channels-last, lean LIF, fast pooling) against the plain sequence of
    modules (conv, BatchNorm, spikingjelly neuron, max_pool2d on NCHW tensors): same outputs."""
    torch.manual_seed(7)
    kw, shape = SMALL["convnet"]
    m = build_model(ModelConfig(name="convnet", v_threshold=0.05, readout="potential", **kw), shape, 4)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 2)
                mod.weight.uniform_(0.5, 1.5)
    m.eval()
    m.record_firing = True
    x = torch.rand(4, 8, *shape)
    with torch.no_grad():
        fast = m(x)
        m.reset()
    rates = m.firing_rates()
    assert all(0.02 < rates[n] < 0.98 for n in m.layer_names[:-1])  # hidden layers really spike
    with torch.no_grad():
        h = x
        for b in m.blocks:  # the reference: each module on its own, time folded into the batch
            if b.flatten_input:
                h = h.flatten(2)
            T, B = h.shape[:2]
            y = b.layer(h.flatten(0, 1))
            y = b.norm(y) if b.norm is not None else y
            y = y.reshape((T, B) + tuple(y.shape[1:]))
            with torch.enable_grad():
                s = b.neuron(y.requires_grad_()).detach()  # spikingjelly's own kernel
            if b.pool is not None:
                s = nn.functional.max_pool2d(s.flatten(0, 1), 2).reshape((T, B) + (s.shape[2], s.shape[3] // 2, s.shape[4] // 2))
            h = s
        m.reset()
    assert torch.allclose(fast, h.mean(0), atol=1e-5)


@pytest.mark.parametrize("name", ["convnet", "mlp"])
def test_chunked_cpu_inference_equals_one_pass(name):
    """Eval-mode CPU inference in chunks of the batch: same outputs, firing rates and final
    membrane potentials as one pass; never chunked with gradients or with state carried over."""
    torch.manual_seed(8)
    kw, shape = SMALL[name]
    m = build_model(ModelConfig(name=name, v_threshold=0.1, readout="potential", **kw), shape, 4).eval()
    m.record_firing = True
    x = torch.rand(3, 10, *shape)
    m.inference_chunk_bytes = 0
    with torch.no_grad():
        whole = m(x)
    rates_whole = m.firing_rates()
    v_whole = [b.neuron.v.clone() for b in m.blocks[:-1]]
    m.reset()
    per_sample = 3 * m._widest * 4
    m.inference_chunk_bytes = 3 * per_sample  # chunks of 3, 3, 3, 1 samples
    with torch.no_grad():
        assert m._chunk_size(x) == 3
        chunked = m(x)
    assert torch.allclose(chunked, whole, atol=1e-6)
    assert m.firing_rates() == pytest.approx(rates_whole, abs=1e-6) and sum(rates_whole.values()) > 0
    for b, v in zip(m.blocks[:-1], v_whole):
        assert b.neuron.v.shape == v.shape and torch.allclose(b.neuron.v, v, atol=1e-6)
    # state carried over from the previous call: one pass, like spikingjelly
    with torch.no_grad():
        assert m._chunk_size(x) == 10
    m.reset()
    assert m._chunk_size(x) == 10  # gradients enabled


@pytest.mark.parametrize("name", ["convnet", "dvs_convnet", "mlp"])
def test_predict_is_forward_then_reset(name):
    """predict(x) gives forward's output and firing rates and leaves every neuron at rest, chunked
    or not, from rest or from a carried-over state, with or without autograd."""
    torch.manual_seed(9)
    kw, shape = SMALL[name]
    m = build_model(ModelConfig(name=name, v_threshold=0.1, **kw), shape, 4).eval()
    m.record_firing = True
    x = torch.rand(3, 10, *shape)
    neurons = [b.neuron for b in m.blocks if hasattr(b.neuron, "v")]

    def at_rest():
        return all(not isinstance(n.v, torch.Tensor) and float(n.v) == 0.0 for n in neurons)

    for chunk in (0, 3 * 3 * m._widest * 4):  # one pass; chunks of 3 samples
        m.inference_chunk_bytes = chunk
        with torch.no_grad():
            ref = m(x)
            rates = m.firing_rates()
            m.reset()
            got = m.predict(x)
        assert torch.equal(got, ref) and m.firing_rates() == rates and sum(rates.values()) > 0
        assert at_rest()
    with torch.no_grad():  # a state carried over from an earlier call is used, then dropped
        m(x[:1])
        ref = m(x)
        m.reset()
        m(x[:1])
        got = m.predict(x)
    assert torch.equal(got, ref) and at_rest()
    m.train()
    torch.manual_seed(1)
    ref = m(x)
    m.reset()
    torch.manual_seed(1)
    got = m.predict(x)
    assert torch.equal(got, ref) and got.requires_grad and at_rest()


def test_one_channel_conv_runs_in_a_fixed_order_with_channels_last_output():
    """A 1-channel input (layout ambiguous for oneDNN) is convolved by sdsnn.native.conv1ch (or
    its torch twin): conv2d's values, channels-last output; a hooked conv still goes through its
    module."""
    from sdsnn.models import SpikingBlock, _conv_1ch_channels_last

    torch.manual_seed(10)
    x = torch.randn(5, 1, 11, 9)
    for conv in [nn.Conv2d(1, 6, 3, padding=1), nn.Conv2d(1, 4, 5, padding=2, stride=2, bias=False),
                 nn.Conv2d(1, 3, 3, padding=(0, 1), dilation=2)]:
        with torch.no_grad():
            y = _conv_1ch_channels_last(conv, x, conv.weight, conv.bias)
            assert torch.allclose(y, conv(x), atol=1e-5)
        assert y.is_contiguous(memory_format=torch.channels_last)
    kw, shape = SMALL["convnet"]
    m = build_model(ModelConfig(name="convnet", **kw), shape, 4).eval()
    block = m.blocks[0]
    assert isinstance(block, SpikingBlock) and block.layer.in_channels == 1
    xb = torch.rand(4, *shape)
    with torch.no_grad():
        fast = block._analog(xb)
        seen = []
        h = block.layer.register_forward_hook(lambda mod, i, o: seen.append(o.shape))
        hooked = block._analog(xb)
        h.remove()
        reference = block.norm(block.layer(xb))
    assert seen == [fast.shape] and fast.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(fast, hooked, atol=1e-5) and torch.allclose(fast, reference, atol=1e-5)


def test_cuda_neuron_kernels_fall_back_to_torch_without_a_compiler(monkeypatch):
    """Without a C compiler (or Python's headers) Triton cannot build its launcher, so spikingjelly
    is asked for its torch kernels; a value the user set is kept; with both, nothing is set."""
    import shutil

    import sdsnn.models as models

    for var in models.SPIKINGJELLY_KERNEL_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(models.Path, "is_file", lambda self: True)
    models.choose_cuda_neuron_kernels()
    assert all(v not in os.environ for v in models.SPIKINGJELLY_KERNEL_VARIABLES)

    monkeypatch.setenv("SJ_PLIF_CUDA_IMPLEMENTATION", "triton")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    models.choose_cuda_neuron_kernels()
    assert os.environ["SJ_LIF_CUDA_IMPLEMENTATION"] == "torch"
    assert os.environ["SJ_PLIF_CUDA_IMPLEMENTATION"] == "triton"  # the user's choice


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("static", [False, True])
def test_predict_and_forward_refuse_a_wrong_input_in_one_line(name, static):
    """x must be [T, B, *input_shape] in the parameters' dtype: a wrong image size, dtype or rank is
    a ValueError in one line that names what was expected and what was given (not a shape or dtype
    error from inside a layer); the right input, also a direct-encoding view repeating one frame
    over T (static_input), and events with 2 polarity channels (dvs_convnet) still run."""
    kw, shape = SMALL[name]
    m = build_model(ModelConfig(name=name, **kw), shape, 4, static_input=static).eval()
    want = "[T, B, " + ", ".join(map(str, shape)) + "] float32"
    c, h, w = shape
    frame = torch.rand(5, c, h, w)
    good = frame.unsqueeze(0).expand(3, -1, -1, -1, -1) if static else torch.rand(3, 5, *shape)
    bad = {
        "image size": torch.rand(3, 5, c, 2 * h, 2 * w),
        "channels": torch.rand(3, 5, c + 1, h, w),
        "float64": good.double(),
        "uint8": (good * 255).to(torch.uint8),
        "rank 4": frame,
        "rank 6": good.unsqueeze(0),
    }
    for call in (m.predict, m):
        with torch.no_grad():
            assert call(good).shape == (5, 4)
        m.reset()
        for what, x in bad.items():
            with pytest.raises(ValueError) as info:
                call(x)
            msg = str(info.value)
            assert want in msg and "\n" not in msg, (what, msg)
            got = "[" + ", ".join(map(str, x.shape)) + "] " + str(x.dtype).removeprefix("torch.")
            assert got in msg and "repeated over the T time steps" in msg, (what, msg)
    with torch.no_grad():  # a double model takes double input
        m.double()
        assert m.predict(good.double()).dtype == torch.float64
        with pytest.raises(ValueError, match=r"\] float64 \(T time steps"):
            m.predict(good)
