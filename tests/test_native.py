"""The fused C neuron kernels of sdsnn.native: the same spikes as the torch route, bit for bit, in
every layout inference produces; a clean fall-back to torch when they cannot be built."""

import logging
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from spikingjelly.activation_based import neuron as sj_neuron

from sdsnn import build_model, native
from sdsnn.compact import compact
from sdsnn.config import ModelConfig
from sdsnn.models import _lif_inference, _lif_native

from test_models import SMALL


@pytest.fixture(autouse=True)
def _native_default():
    yield
    native.set_enabled(None)  # back to the SDSNN_NATIVE decision for the other tests


def _lib():
    if native.find_compiler() is None:
        pytest.skip("no C compiler on this machine: the native kernels cannot be built here")
    native.set_enabled(True)
    lib = native.load()
    assert lib is not None, native.status()  # a compiler is there, so the build must work
    return lib


def _neuron(kind, tau, thr):
    if kind == "plif":
        n = sj_neuron.ParametricLIFNode(init_tau=tau, v_threshold=thr, v_reset=0.0, step_mode="m")
        with torch.no_grad():
            n.w.fill_(0.37)
        return n
    return sj_neuron.LIFNode(tau=tau, v_threshold=thr, v_reset=0.0, step_mode="m")


def _inputs(shape, gen, on=0.6):
    """Synaptic input with values ``on`` (with tau 2 the first step lands exactly on a threshold
    of on / 2), far above and below the threshold, zeros, and non-finite entries."""
    x = torch.randn(shape, generator=gen) * 1.5
    flat = x.view(-1)
    flat[::7] = on
    flat[::11] = 0.0
    flat[::13] = -4.0
    flat[5] = float("inf")
    flat[9] = float("nan")
    return x


@pytest.mark.parametrize("kind,tau,thr", [("lif", 2.0, 1.0), ("lif", 2.0, 0.3), ("lif", 1.7, 0.3),
                                          ("plif", 2.0, 0.3),
                                          # float32(0.7) < 0.7: tells a float32 comparison from a float64 one
                                          ("lif", 2.0, 0.7)])
@pytest.mark.parametrize("T", [1, 4])
def test_flat_kernel_equals_the_torch_route(kind, tau, thr, T):
    _lib()
    gen = torch.Generator().manual_seed(1)
    n = _neuron(kind, tau, thr)
    on = 2 * thr
    cases = {
        "fc": _inputs((T, 7, 33), gen, on),
        "conv channels-last": _inputs((T * 5, 6, 5, 3), gen, on).contiguous(memory_format=torch.channels_last)
        .view(T, 5, 6, 5, 3),
        "conv contiguous": _inputs((T, 5, 6, 5, 3), gen, on),
        "static (stride 0 over T)": _inputs((5, 33), gen, on).unsqueeze(0).expand(T, 5, 33),
    }
    if kind == "lif" and tau == 2.0:  # some neurons reach the threshold exactly: >= against >
        assert all(bool((y[0] / torch.tensor(tau) == torch.tensor(thr)).any()) for y in cases.values())
    with torch.no_grad():
        for name, y in cases.items():
            ref = _lif_inference(n, y, keep_state=False)
            got, pooled = _lif_native(n, y, pool=False)
            assert got is not None and not pooled, name
            assert got.stride() == ref.stride(), name
            assert torch.equal(got, ref), name
            assert torch.equal(got, n(y.contiguous())), name  # spikingjelly's own kernel
            n.reset()
            assert 0 < float(got.mean()) < 1, name


@pytest.mark.parametrize("kind", ["lif", "plif"])
@pytest.mark.parametrize("hw", [(6, 4), (7, 5), (2, 3)])
def test_fused_pool_kernel_equals_neuron_then_max_pool(kind, hw):
    """LIF + 2x2 max-pool in one pass, odd edges dropped as max_pool2d drops them; split over
    more threads than samples as well as fewer."""
    lib = _lib()
    gen = torch.Generator().manual_seed(2)
    n = _neuron(kind, 2.0, 0.3)
    T, B, C = 3, 5, 19
    y = _inputs((T * B, C) + hw, gen, 0.6).contiguous(memory_format=torch.channels_last).view(T, B, C, *hw)
    with torch.no_grad():
        ref = F.max_pool2d(_lif_inference(n, y, keep_state=False).flatten(0, 1), 2)
        got, pooled = _lif_native(n, y, pool=True)
    assert pooled and got.shape == (T, B, C, hw[0] // 2, hw[1] // 2)
    assert got.flatten(0, 1).is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got.flatten(0, 1), ref)
    # the batch split over threads: more threads than samples, and fewer
    mode, k = (1, float(n.w.detach().sigmoid())) if kind == "plif" else (0, 2.0)
    for threads in (2, 3, 8):
        out = torch.full_like(got, -1.0)
        native.lif_pool_seq(lib, y, out, mode, k, 0.3, threads)
        assert torch.equal(out, got), threads
        flat = torch.full_like(y, -1.0)
        native.lif_seq(lib, y, flat, mode, k, 0.3, threads)
        assert torch.equal(flat, _lif_inference(n, y, keep_state=False)), threads


def test_layouts_the_kernels_cannot_take_are_declined():
    """Anything but dense float32 CPU time steps goes to the torch route; the wrappers refuse
    mismatched buffers instead of writing past them; an empty batch is no work."""
    lib = _lib()
    n = _neuron("lif", 2.0, 0.5)
    base = torch.rand(2, 4, 6, 5, 5)
    declined = {
        "batch expanded (stride 0)": torch.rand(2, 1, 6, 5, 5).expand(2, 4, 6, 5, 5),
        "channel slice": base[:, :, :3],
        "spatially transposed": base.transpose(3, 4),
        "float64": base.double(),
        "every second sample": base[:, ::2],
    }
    with torch.no_grad():
        for name, y in declined.items():
            assert _lif_native(n, y, pool=True) == (None, False), name
            assert _lif_native(n, y, pool=False) == (None, False), name
    with pytest.raises(ValueError):
        native.lif_seq(lib, base, torch.empty(2, 4, 6, 5, 4), 0, 2.0, 0.5, 1)
    with pytest.raises(ValueError):
        native.lif_seq(lib, base, torch.empty_like(base, dtype=torch.float64), 0, 2.0, 0.5, 1)
    with pytest.raises(ValueError):  # not channels-last
        native.lif_pool_seq(lib, base, torch.empty(2, 4, 6, 2, 2), 0, 2.0, 0.5, 1)
    empty = torch.rand(2, 0, 6)
    out = torch.empty_like(empty)
    native.lif_seq(lib, empty, out, 0, 2.0, 0.5, 4)  # N = 0: returns, touches nothing


def test_kernels_only_run_from_rest():
    _lib()
    n = _neuron("lif", 2.0, 0.5)
    y = torch.rand(2, 3, 8)
    n.v = torch.full((3, 8), 0.25)  # a state carried over: the torch route handles it
    assert _lif_native(n, y, pool=False) == (None, False)


@pytest.mark.parametrize("name,neuron,readout", [("convnet", "lif", "rate"), ("dvs_convnet", "lif", "rate"),
                                                 ("mlp", "plif", "rate"), ("convnet", "plif", "potential")])
def test_predict_and_compaction_are_unchanged_by_the_native_kernels(name, neuron, readout):
    """Whole networks: predict() and firing rates with the native kernels equal those of the torch
    route, and the compacted network still gives the masked network's outputs exactly."""
    _lib()
    torch.manual_seed(3)
    kw, shape = SMALL[name]
    m = build_model(ModelConfig(name=name, neuron=neuron, v_threshold=0.1, readout=readout, **kw), shape, 4).eval()
    m.record_firing = True
    x = torch.rand(4, 9, *shape)
    with torch.no_grad():
        native.set_enabled(False)
        ref, ref_rates = m.predict(x), m.firing_rates()
        native.set_enabled(True)
        got, rates = m.predict(x), m.firing_rates()
    assert torch.equal(got, ref) and rates == ref_rates and sum(rates.values()) > 0

    from test_compact import _random_masks
    from sdsnn.structure import apply_masks

    masks = _random_masks(m, torch.Generator().manual_seed(5))
    apply_masks(m.prunable_layers(), masks)
    small = compact(m, masks).eval()
    with torch.no_grad():
        assert torch.equal(small.predict(x), m.predict(x))


def test_no_compiler_falls_back_to_torch(monkeypatch):
    monkeypatch.setattr(native, "find_compiler", lambda: None)
    native.set_enabled(None)
    assert native.load() is None
    assert "no C compiler" in native.status()
    torch.manual_seed(0)
    kw, shape = SMALL["convnet"]
    m = build_model(ModelConfig(name="convnet", v_threshold=0.1, **kw), shape, 4).eval()
    with torch.no_grad():
        y = m.predict(torch.rand(2, 3, *shape))
    assert y.shape == (3, 4)


def test_a_failing_build_warns_once_and_falls_back(monkeypatch, tmp_path, caplog):
    """A compiler that fails: one warning, nothing left in the cache, torch kernels used."""
    fake = tmp_path / "cc"
    fake.write_text("#!/bin/sh\necho 'cc: error: no such option' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    monkeypatch.setenv("SDSNN_NATIVE_CACHE", str(tmp_path / "cache"))
    native.set_enabled(None)
    with caplog.at_level(logging.WARNING, logger="sdsnn.native"):
        assert native.load() is None
        assert native.load() is None
    assert "build failed" in native.status() and "no such option" in native.status()
    assert len([r for r in caplog.records if r.name == "sdsnn.native"]) == 1
    assert list((tmp_path / "cache").iterdir()) == []


def test_switch_off_and_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("SDSNN_NATIVE", "0")
    native.set_enabled(None)
    assert native.load() is None and "switched off" in native.status()
    monkeypatch.delenv("SDSNN_NATIVE")
    monkeypatch.setenv("SDSNN_NATIVE_CACHE", str(tmp_path))
    _lib()
    built = list(tmp_path.glob("kernels-*.so"))
    assert len(built) == 1 and str(built[0]) in native.status()
    native.set_enabled(None)  # a second process finds the library in the cache: no rebuild
    mtime = built[0].stat().st_mtime_ns
    assert native.load() is not None and built[0].stat().st_mtime_ns == mtime


def _fake_cc(tmp_path, body):
    fake = tmp_path / "fakecc"
    fake.write_text("#!/bin/sh\n" + body + "\n")
    fake.chmod(0o755)
    return str(fake)


def test_a_broken_cached_library_is_rebuilt_and_the_build_is_readable_by_all(monkeypatch, tmp_path):
    _lib()
    monkeypatch.setenv("SDSNN_NATIVE_CACHE", str(tmp_path))
    # built by another process (this one must not have the file mapped when it is overwritten)
    subprocess.run([sys.executable, "-c", "import sdsnn.native as n; assert n.load() is not None, n.status()"],
                   check=True, env=os.environ.copy())
    (built,) = tmp_path.glob("kernels-*.so")
    umask = os.umask(0)
    os.umask(umask)
    assert built.stat().st_mode & 0o777 == 0o755 & ~umask  # not mkstemp's private 0600
    built.unlink()
    built.write_bytes(b"not a shared library")  # a truncated or foreign file
    native.set_enabled(None)
    assert native.load() is not None, native.status()
    assert built.read_bytes()[:4] == b"\x7fELF"


def test_a_compiler_without_march_native_still_builds(monkeypatch, tmp_path):
    real = native.find_compiler()
    if real is None:
        pytest.skip("no C compiler on this machine")
    cc = _fake_cc(tmp_path, 'for a in "$@"; do [ "$a" = -march=native ] && { echo "unsupported option -march=native" >&2; '
                            f'exit 1; }}; done; exec {real} "$@"')
    monkeypatch.setenv("CC", cc)
    monkeypatch.setenv("SDSNN_NATIVE_CACHE", str(tmp_path / "cache"))
    native.set_enabled(None)
    assert native.load() is not None, native.status()
    assert len(list((tmp_path / "cache").glob("kernels-*.so"))) == 1


def test_a_compiler_that_changes_the_arithmetic_is_refused(monkeypatch, tmp_path, caplog):
    """fast-math turns x / tau into x * (1 / tau): other spikes. The load-time self-test catches
    it and inference stays on the torch route."""
    real = native.find_compiler()
    if real is None:
        pytest.skip("no C compiler on this machine")
    monkeypatch.setenv("CC", _fake_cc(tmp_path, f'exec {real} "$@" -ffast-math -ffp-contract=fast'))
    monkeypatch.setenv("SDSNN_NATIVE_CACHE", str(tmp_path / "cache"))
    native.set_enabled(None)
    with caplog.at_level(logging.WARNING, logger="sdsnn.native"):
        assert native.load() is None
    assert "self-test" in native.status()


@pytest.mark.parametrize("kind", ["lif", "plif"])
def test_kernels_take_the_first_channels_of_a_wider_tensor(kind):
    """A convolution run with padded output channels hands the neurons a channel slice (pixel
    stride > C): same spikes as the torch route on that slice, flat and pooled, any threads."""
    lib = _lib()
    gen = torch.Generator().manual_seed(6)
    n = _neuron(kind, 2.0, 0.3)
    T, B, C, wide = 3, 4, 11, 16
    y = _inputs((T * B, wide, 6, 5), gen, 0.6).contiguous(memory_format=torch.channels_last)
    y = y.view(T, B, wide, 6, 5)[:, :, :C]
    assert native.pixel_stride(y[0]) == wide
    with torch.no_grad():
        ref = _lif_inference(n, y, keep_state=False)
        flat, pooled = _lif_native(n, y, pool=False)
        assert not pooled and torch.equal(flat, ref)
        assert flat.flatten(0, 1).is_contiguous(memory_format=torch.channels_last)
        got, pooled = _lif_native(n, y, pool=True)
        assert pooled and torch.equal(got.flatten(0, 1), F.max_pool2d(ref.flatten(0, 1), 2))
    mode, k = (1, float(n.w.detach().sigmoid())) if kind == "plif" else (0, 2.0)
    for threads in (2, 5):
        out = torch.full_like(flat, -1.0)
        native.lif_channels(lib, y, out, mode, k, 0.3, threads)
        assert torch.equal(out, ref), threads


@pytest.mark.parametrize("name,shape,static", [("convnet", (1, 8, 8), False), ("convnet", (3, 8, 8), True),
                                               ("dvs_convnet", (2, 8, 8), False)])
def test_padded_convolutions_change_no_output_and_no_operation_count(name, shape, static):
    """Convolutions computed with output channels padded to 16 give the same outputs and firing
    rates as unpadded ones (pooled and unpooled blocks, static input), compaction stays exact,
    and energy counting (which hooks the layers) still counts the real channels only."""
    _lib()
    from sdsnn.energy import count_operations
    from sdsnn.config import EnergyConfig
    from sdsnn.models import SpikingBlock

    torch.manual_seed(7)
    kw = dict(SMALL[name][0], width=55)  # 55 -> 64, 110 -> 112 channels: auto may pad them
    m = build_model(ModelConfig(name=name, v_threshold=0.1, **kw), shape, 4, static_input=static).eval()
    m.record_firing = True
    x = torch.rand(3, 6, *shape)
    results = {}
    try:
        for policy in ("never", "always"):
            SpikingBlock.conv_pad_policy = policy
            with torch.no_grad():
                y = m.predict(x)
            rep = count_operations(m, None, [x], EnergyConfig(batches=1))
            results[policy] = (y, m.firing_rates(), rep.sops, rep.macs, rep.energy_pj)
        assert torch.equal(results["never"][0], results["always"][0])
        assert results["never"][1:] == results["always"][1:] and sum(results["never"][1].values()) > 0

        from test_compact import _random_masks
        from sdsnn.structure import apply_masks

        masks = _random_masks(m, torch.Generator().manual_seed(5))
        apply_masks(m.prunable_layers(), masks)
        small = compact(m, masks).eval()
        with torch.no_grad():
            assert torch.equal(small.predict(x), m.predict(x))
        SpikingBlock.conv_pad_policy = "auto"
        with torch.no_grad():
            assert torch.equal(small.predict(x), m.predict(x))
        choices = [b.__dict__.get("_pad_choice") for b in m.blocks if b.spec.kind == "conv"]
        assert any(choices), "auto: the padded route was timed against the plain one"
    finally:
        SpikingBlock.conv_pad_policy = "auto"


def test_auto_padding_is_refused_where_the_values_would_differ(monkeypatch):
    """Where a padded convolution would not give the very same values (another oneDNN algorithm
    for the wider layer), auto keeps the plain one."""
    _lib()
    torch.manual_seed(8)
    kw = dict(SMALL["dvs_convnet"][0], width=55)
    m = build_model(ModelConfig(name="dvs_convnet", v_threshold=0.1, **kw), (2, 8, 8), 4).eval()
    conv = m.blocks[0].layer
    plain = conv._conv_forward

    def perturbed(x, w, b):
        y = plain(x, w, b)
        return y + 1e-3 if w.shape[0] > conv.out_channels else y

    monkeypatch.setattr(conv, "_conv_forward", perturbed)
    with torch.no_grad():
        m.predict(torch.rand(2, 3, 2, 8, 8))
    assert m.blocks[0].__dict__["_pad_choice"] and not any(m.blocks[0]._pad_choice.values())


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_conv1ch_kernel_is_the_ordered_sum_in_torch(threads):
    """The C convolution of a 1-channel input gives bit for bit what conv1ch_torch (the same sum
    in torch ops) gives, for kernel sizes, strides, paddings, dilations and channel counts around
    the kernel's blocks of 16 channels and 8 pixels, with and without bias; and conv2d's values."""
    lib = _lib()
    g = torch.Generator().manual_seed(7)
    cases = 0
    for c in (1, 10, 16, 17, 33):
        for k in ((3, 3), (5, 5), (3, 2), (1, 1)):
            for stride in ((1, 1), (2, 2), (2, 1)):
                for pad, dil in (((0, 0), (1, 1)), ((1, 1), (1, 1)), ((2, 1), (2, 1))):
                    x = torch.randn(3, 1, 19, 13, generator=g)
                    w = torch.randn(c, 1, *k, generator=g)
                    b = torch.randn(c, generator=g)
                    for bias in (b, None):
                        got = native.conv1ch(lib, x, w, bias, stride, pad, dil, threads=threads)
                        ref = F.conv2d(x, w, bias, stride=stride, padding=pad, dilation=dil)
                        assert got.shape == ref.shape and got.is_contiguous(memory_format=torch.channels_last)
                        assert torch.equal(got, native.conv1ch_torch(x, w, bias, stride, pad, dil)), (c, k, stride, pad)
                        assert torch.allclose(got, ref, atol=1e-4)
                        cases += 1
    assert cases == 5 * 4 * 3 * 3 * 2


def test_conv1ch_kept_channels_get_the_full_layers_values():
    """Why the first layer is summed in a fixed order: a layer with some output channels removed
    (compaction) computes the kept channels exactly as the full layer does, in the C kernel and in
    the torch route alike, and both routes agree; at MNIST size, where a GEMM of 32 and of 10
    channels picks different kernels and differs in the last bits."""
    lib = _lib()
    g = torch.Generator().manual_seed(8)
    x = torch.rand(64, 1, 28, 28, generator=g)
    w, b = torch.randn(32, 1, 3, 3, generator=g), torch.randn(32, generator=g)
    keep = torch.randperm(32, generator=g)[:10].sort().values
    geom = ((1, 1), (1, 1), (1, 1))
    full = native.conv1ch(lib, x, w, b, *geom, threads=2)
    part = native.conv1ch(lib, x, w[keep], b[keep], *geom, threads=1)
    assert torch.equal(full[:, keep], part)
    assert torch.equal(native.conv1ch_torch(x, w[keep], b[keep], *geom), part)
    assert torch.equal(native.conv1ch_torch(x, w, b, *geom), full)
    # the differentiable route (eval mode with gradients) sums the same way
    wg = w.clone().requires_grad_(True)
    y = native.conv1ch_torch(x[:5], wg, b, *geom)
    assert y.requires_grad and torch.equal(y.detach(), full[:5])
