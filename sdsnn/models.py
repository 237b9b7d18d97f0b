"""Spiking backbones, built by name from a :class:`~sdsnn.config.ModelConfig`.

Every backbone is a :class:`SpikingNet`: a chain of *blocks*, each one weight layer (conv or FC),
an optional BatchNorm, a spiking neuron layer (spikingjelly LIF or PLIF, multi-step mode, hard
reset, surrogate gradient) and an optional 2x2 max-pool after the neuron.  The last block is the
output layer (FC + LIF); the network's output is its spike rate over the T time steps.

Tensors flow time-first, ``[T, B, ...]``.  Weight layers and BatchNorm are stateless, so a block
folds T into the batch dimension for them (what spikingjelly's ``SeqToANNContainer`` does) and
unfolds it for the neuron, which integrates over time.

Inference (eval mode) takes a leaner route with the same function: BatchNorm with running
statistics is folded into the weight layer's weights and bias, and on CPU convolutions run in
channels-last layout (oneDNN's fast kernels for narrow layers).  Under ``torch.no_grad()`` the LIF
neurons also skip the autograd bookkeeping (:func:`_lif_inference`), and large CPU batches run in
chunks (:attr:`SpikingNet.inference_chunk_bytes`); :meth:`SpikingNet.predict` (forward + reset,
the inference entry point) also skips building the final neuron state and reuses buffers
between chunks; there the neurons (and the max-pool after them) run in the fused C kernels of
:mod:`sdsnn.native` when they build (:func:`_lif_native`, same spikes).  Fewer element-wise
passes over the activations bring a compacted network's inference time closer to its operation
count (per-neuron work still shrinks only linearly with width; see
benchmarks/bench_compaction.py).  Training is untouched.

Backbones (registry :data:`MODELS`, extend with :func:`register_model`):

- ``mlp``: ``depth`` hidden FC layers of ``width`` units, then the classifier.
- ``convnet``: VGG-style; ``depth`` 3x3 conv layers starting at ``width`` channels, a 2x2 max-pool
  after every ``pool_every`` convs, channels multiplied by ``width_growth`` after each pool; then
  an optional hidden FC layer of ``fc_width`` units, then the classifier.
- ``sdsnn_cifar``: the reference CIFAR-10 network of docs/sd-snn.md section 12 (conv 128, 128,
  pool, 256, 256, pool, 512, 512; FC 512 with threshold 0.5; FC classes).  Its topology and
  neuron types are fixed (PLIF convs without bias + BN, LIF FCs); ``tau``, ``v_threshold`` (convs
  and output), ``surrogate`` and ``dropout`` come from the config; ``depth``, ``width``,
  ``width_growth``, ``pool_every``, ``fc_width``, ``neuron`` and ``batch_norm`` are ignored.
- ``dvs_convnet``: ``depth`` blocks of conv3x3-BN-LIF-maxpool2 with ``width`` channels (the
  spikingjelly N-MNIST / DVS-Gesture examples), then an optional FC of ``fc_width``, the classifier.

All builders take the same arguments, see :func:`build_model`.  ``widths`` overrides the output
size of every hidden layer, which is how :mod:`sdsnn.compact` rebuilds a thinner network.
"""

from __future__ import annotations

import logging
import numbers
import os
import sysconfig
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from spikingjelly.activation_based import base as sj_base, layer as sj_layer, neuron as sj_neuron, surrogate

from . import native
from .config import ModelConfig
from .errors import ConfigError, where_raised
from .structure import LayerInfo


#: spikingjelly's switches of its LIF / PLIF CUDA kernels (auto | cuda | triton | torch).
SPIKINGJELLY_KERNEL_VARIABLES = ("SJ_LIF_CUDA_IMPLEMENTATION", "SJ_PLIF_CUDA_IMPLEMENTATION")


def choose_cuda_neuron_kernels() -> None:
    """On a GPU, spikingjelly 2.0 runs LIF/PLIF with Triton kernels whenever triton imports, and
    Triton builds its launcher with the system C compiler and Python's headers at the first
    launch: on a machine without them every training step would fail there. Then ask for
    spikingjelly's pure-torch kernels instead (slower, same arithmetic). Called at import, before
    spikingjelly reads the variables (at its first neuron step); a value you set yourself wins.
    No effect on the CPU, which always runs the torch kernels."""
    compiler = native.find_compiler() is not None
    headers = Path(sysconfig.get_paths()["include"], "Python.h").is_file()
    if not (compiler and headers):
        for var in SPIKINGJELLY_KERNEL_VARIABLES:
            os.environ.setdefault(var, "torch")


choose_cuda_neuron_kernels()

# torch logs "Triton not available, find_triton_kernels = []" (twice) the first time a custom op
# is traced on a machine without Triton, e.g. every CPU training run: noise, not a problem.
logging.getLogger("torch._library.triton").addFilter(lambda r: "Triton not available" not in r.getMessage())

__all__ = [
    "MODELS",
    "register_model",
    "build_model",
    "SpikingNet",
    "SpikingBlock",
    "BlockSpec",
    "output_block",
]

_SURROGATES: dict[str, Callable[[], nn.Module]] = {
    "atan": surrogate.ATan,
    "sigmoid": surrogate.Sigmoid,
    "piecewise_quadratic": surrogate.PiecewiseQuadratic,
}


@dataclass
class BlockSpec:
    """What one block is; a builder returns the list of these for a given input and widths."""

    name: str  # layer name used in masks and metrics: conv1.., fc1.., out
    kind: str  # "conv" | "fc"
    out: int  # output channels / units
    neuron: str  # "lif" | "plif"
    v_threshold: float
    batch_norm: bool
    bias: bool
    pool: bool = False  # 2x2 max-pool after the neuron (conv only)
    dropout: float = 0.0  # dropout on this block's input (FC after a spiking layer only)


def _make_neuron(kind: str, cfg: ModelConfig, v_threshold: float) -> nn.Module:
    if kind == "none":  # non-spiking readout: the block passes its synaptic input on
        return nn.Identity()
    sg = _SURROGATES[cfg.surrogate]()
    if kind == "plif":
        return sj_neuron.ParametricLIFNode(
            init_tau=float(cfg.tau), v_threshold=float(v_threshold), v_reset=0.0,
            surrogate_function=sg, step_mode="m",
        )
    return sj_neuron.LIFNode(
        tau=float(cfg.tau), v_threshold=float(v_threshold), v_reset=0.0,
        surrogate_function=sg, step_mode="m",
    )


def _fast_path_ok(neuron: nn.Module, x: torch.Tensor) -> bool:
    """Inference on CPU with our neuron settings: the lean loop of :func:`_lif_inference` applies."""
    return (
        not torch.is_grad_enabled()
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and type(neuron) in (sj_neuron.LIFNode, sj_neuron.ParametricLIFNode)
        and neuron.v_reset == 0.0
        and neuron.decay_input
        and not neuron.store_v_seq
        and getattr(neuron, "_neuron_precision", None) is None
        and not neuron._forward_hooks  # a hooked neuron goes through its own forward
        and not neuron._forward_pre_hooks
    )


#: Buffers that one stateless inference call reuses from one chunk of the batch to the next
#: (:meth:`SpikingNet.predict`): a fresh tensor of a few MB costs page faults on every chunk.
#: Keys name a buffer's role; a buffer is only handed out again for the same shape and strides,
#: and only after everything computed from the previous chunk's buffers has been consumed.
Workspace = dict


def _reuse(ws: Optional[Workspace], key: Any, like: torch.Tensor, make: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``make()``, or the tensor it made for ``key`` in an earlier chunk when ``like`` (the tensor
    the new one is shaped after) has the same shape, strides and dtype as then."""
    if ws is None:
        return make()
    sig = (tuple(like.shape), like.stride(), like.dtype)
    hit = ws.get(key)
    if hit is not None and hit[0] == sig:
        return hit[1]
    t = make()
    ws[key] = (sig, t)
    return t


def _empty_sequence_like(x_seq: torch.Tensor, ws: Optional[Workspace] = None) -> torch.Tensor:
    """An uninitialised tensor shaped like ``x_seq`` whose every time step has the memory layout
    of ``x_seq[0]`` (channels-last stays channels-last even when ``x_seq`` is a static input
    broadcast over T, which ``empty_like`` would turn into a contiguous tensor)."""
    return _reuse(ws, "out", x_seq[0], lambda: _new_sequence_like(x_seq))


def _new_sequence_like(x_seq: torch.Tensor) -> torch.Tensor:
    step = x_seq[0]
    if step.dim() == 4 and step.is_contiguous(memory_format=torch.channels_last):
        flat = torch.empty((x_seq.shape[0] * step.shape[0],) + tuple(step.shape[1:]),
                           dtype=x_seq.dtype, device=x_seq.device, memory_format=torch.channels_last)
        return flat.view(x_seq.shape)
    return torch.empty(x_seq.shape, dtype=x_seq.dtype, device=x_seq.device)


def _lif_inference(neuron: nn.Module, x_seq: torch.Tensor, keep_state: bool = True,
                   ws: Optional[Workspace] = None) -> torch.Tensor:
    """Multi-step LIF/PLIF forward without autograd bookkeeping (CPU inference).

    The same arithmetic as spikingjelly's CPU kernel with hard reset to 0 (``h = v + (x - v) /
    tau``, or ``* sigmoid(w)`` for PLIF; spike ``h >= threshold``; ``v = 0`` where it spiked, else
    ``h``), so the spikes are bit-identical for finite inputs.  It skips storing the charge
    sequence that the backward pass needs and makes few passes over memory per step:

    - from rest (``v`` the scalar 0), ``v + (x - v) / tau`` is exactly ``x / tau``;
    - otherwise ``d = x - v`` then one ``addcdiv`` (``v + (1 * d) / tau``, exact; PLIF multiplies
      and adds in two passes, since ``addcmul`` fuses into an FMA with another rounding), all in
      one buffer reused over the steps;
    - the comparison writes float spikes straight into the output tensor;
    - the reset is ``v = h - h * s`` (one fused pass; exact, since ``h * s`` is ``h`` or ``0``),
      several times cheaper than a masked fill on CPU, also into a reused buffer.

    With ``keep_state`` the final membrane potential is kept in ``neuron.v`` as spikingjelly
    would; without it (stateless inference, :meth:`SpikingNet.predict`) the last step's reset is
    skipped and ``neuron.v`` is left as it was, and the output and working buffers may come from
    the workspace ``ws`` (reused from the previous chunk).
    """
    if keep_state:
        ws = None  # the final potential becomes the neuron's state: never a reused buffer
    v = neuron.v
    q = neuron.w.detach().float().sigmoid() if isinstance(neuron, sj_neuron.ParametricLIFNode) else None
    tau = None if q is not None else torch.tensor(float(neuron.tau), dtype=x_seq.dtype)
    thr = neuron.v_threshold
    out = _empty_sequence_like(x_seq, ws)
    steps = x_seq.shape[0]
    h = v_buf = None
    for t in range(steps):
        x = x_seq[t]
        if h is None:
            h = _reuse(ws, "h", x, lambda: torch.empty_like(x))
        if not isinstance(v, torch.Tensor) and float(v) == 0.0:
            if q is not None:
                torch.mul(x, q, out=h)
            else:
                torch.div(x, tau, out=h)
        else:
            if not isinstance(v, torch.Tensor):
                v = torch.full_like(x, float(v))
            torch.sub(x, v, out=h)
            if q is not None:  # h = v + (x - v) * q (addcmul would fuse into an FMA: other rounding)
                h.mul_(q).add_(v)
            else:
                torch.addcdiv(v, h, tau, out=h)  # h = v + (x - v) / tau
        s = torch.ge(h, thr, out=out[t])
        if keep_state or t < steps - 1:
            if v_buf is None:
                v_buf = _reuse(ws, "v", h, lambda: torch.empty_like(h))
            v = torch.addcmul(h, h, s, value=-1.0, out=v_buf)
    if keep_state:
        neuron.v = v
    return out


def _native_neurons_ok(neuron: nn.Module, x: torch.Tensor) -> bool:
    """The native kernels can take this neuron layer for input ``x``: the lean CPU inference route
    applies (:func:`_fast_path_ok`), the neurons are at rest and the library is built."""
    return (_fast_path_ok(neuron, x) and not isinstance(neuron.v, torch.Tensor) and float(neuron.v) == 0.0
            and native.load() is not None)


def _lif_native(neuron: nn.Module, y: torch.Tensor, pool: bool,
                ws: Optional[Workspace] = None) -> tuple[Optional[torch.Tensor], bool]:
    """Stateless inference of the neuron layer (then the 2x2 max-pool, when ``pool`` and ``y`` is
    channels-last) by the fused C kernels of :mod:`sdsnn.native`: ``(spikes, pooled)``, or
    ``(None, False)`` when they do not apply (not built, neuron not at rest, unusual layout), and
    the caller takes :func:`_lif_inference`.  Same spikes bit for bit; the final potential is not
    kept.  Outputs may come from the workspace ``ws``."""
    if y.dim() < 3 or y.shape[1] == 0 or not _native_neurons_ok(neuron, y):
        return None, False
    step = y[0]
    cs = native.pixel_stride(step)  # channels-last, maybe the first channels of a wider tensor
    cl = cs is not None
    if not (cl or step.is_contiguous()):
        return None, False
    lib = native.load()
    if isinstance(neuron, sj_neuron.ParametricLIFNode):
        mode, k = 1, float(neuron.w.detach().float().sigmoid())
    else:
        mode, k = 0, float(torch.tensor(float(neuron.tau), dtype=torch.float32))
    thr = float(torch.tensor(float(neuron.v_threshold), dtype=torch.float32))
    T, n = y.shape[0], y.shape[1]
    # a thread per 64k neuron updates at least: starting threads costs more than tiny slices gain
    threads = max(1, min(torch.get_num_threads(), T * step.numel() >> 16))
    if pool and cl and step.shape[2] >= 2 and step.shape[3] >= 2:
        c, h, w = step.shape[1:]
        out = _reuse(ws, "native_pool", step,
                     lambda: y.new_empty((T, n, h // 2, w // 2, c))).permute(0, 1, 4, 2, 3)
        native.lif_pool_seq(lib, y, out, mode, k, thr, threads)
        return out, True
    if cl and cs != step.shape[1]:  # channel slice: dense channels-last output
        c, h, w = step.shape[1:]
        out = _reuse(ws, "native_rows", step, lambda: y.new_empty((T, n, h, w, c))).permute(0, 1, 4, 2, 3)
        native.lif_channels(lib, y, out, mode, k, thr, threads)
        return out, False
    out = _empty_sequence_like(y, ws)
    if out[0].stride() != step.stride():
        return None, False
    native.lif_seq(lib, y, out, mode, k, thr, threads)
    return out, False


def _conv_1ch_channels_last(conv: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor,
                            bias: Optional[torch.Tensor], ws: Optional[Workspace] = None) -> torch.Tensor:
    """``conv`` (with these weight and bias) applied to a 1-channel ``[N, 1, H, W]`` input for
    inference, channels-last output.

    Each output is summed in a fixed order (:func:`sdsnn.native.conv1ch_torch`) that does not
    depend on the number of output channels: a compacted first layer then gives its kept channels
    the very values of the full layer, which a GEMM (kernel chosen by width) or oneDNN does not
    promise.  Without gradients it runs as the C kernel :func:`sdsnn.native.conv1ch` (2-6x faster
    than patches x weights as a GEMM, written straight into channels-last order, into the previous
    chunk's buffer from ``ws``); otherwise, or without the native library, as the same arithmetic
    in torch operations (same values, slower).
    """
    geom = (conv.stride, conv.padding, conv.dilation)
    lib = native.load()
    if (lib is None or x.dtype != torch.float32 or weight.dtype != torch.float32
            or native.needs_grad(x, weight, bias)):
        return native.conv1ch_torch(x, weight, bias, *geom)
    shape = native.conv1ch_out_shape(x, weight, *geom)
    y = _reuse(ws, "conv1ch", x, lambda: x.new_empty(shape))
    work = y.numel() * weight[0].numel()
    threads = max(1, min(torch.get_num_threads(), work >> 18))
    return native.conv1ch(lib, x, weight, bias, *geom, out=y, threads=threads)


def _conv1ch_ok(layer: nn.Module, x: torch.Tensor) -> bool:
    """A 1-channel input to a plain conv on CPU, with nobody watching the conv module."""
    return (
        isinstance(layer, nn.Conv2d)
        and x.dim() == 4
        and x.shape[1] == 1
        and x.device.type == "cpu"
        and layer.groups == 1
        and layer.padding_mode == "zeros"
        and not isinstance(layer.padding, str)
        and not layer._forward_hooks  # energy counting hooks the module: it goes through forward
        and not layer._forward_pre_hooks
    )


def _max_pool2x2_channels_last(x: torch.Tensor, ws: Optional[Workspace] = None) -> torch.Tensor:
    """2x2 max-pool (stride 2, odd edges dropped, as ``nn.MaxPool2d(2)``) of a channels-last
    ``[N, C, H, W]`` tensor as two element-wise maxima over neighbouring rows, then columns.

    Same values as ``max_pool2d``; on CPU about twice as fast for channels-last input, because
    each maximum is one contiguous pass (``max_pool2d`` also computes indices it then drops).
    Results go to buffers of the workspace ``ws`` when one is given."""
    n, c, h, w = x.shape
    h2, w2 = h // 2, w // 2
    a = x[:, :, : 2 * h2, : 2 * w2].permute(0, 2, 3, 1)  # [N, H, W, C], contiguous when even
    a = a.reshape(n, h2, 2, 2 * w2, c)
    if ws is None:  # no out= here: out= refuses autograd, and eval mode with gradients comes here too
        rows = torch.maximum(a[:, :, 0], a[:, :, 1]).view(n, h2, w2, 2, c)
        return torch.maximum(rows[:, :, :, 0], rows[:, :, :, 1]).permute(0, 3, 1, 2)
    rows = _reuse(ws, "pool_rows", x, lambda: x.new_empty((n, h2, 2 * w2, c)))
    rows = torch.maximum(a[:, :, 0], a[:, :, 1], out=rows).view(n, h2, w2, 2, c)
    out = _reuse(ws, "pool", x, lambda: x.new_empty((n, h2, w2, c)))
    return torch.maximum(rows[:, :, :, 0], rows[:, :, :, 1], out=out).permute(0, 3, 1, 2)


def _faster(a: Callable[[], Any], b: Callable[[], Any], rounds: int = 3) -> bool:
    """Whether ``a`` runs faster than ``b`` (best of ``rounds`` alternating calls, after one
    warm-up each)."""
    a(), b()
    ta = tb = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        a()
        t1 = time.perf_counter()
        b()
        t2 = time.perf_counter()
        ta, tb = min(ta, t1 - t0), min(tb, t2 - t1)
    return ta < tb


class SpikingBlock(nn.Module):
    """weight layer -> [BatchNorm] -> spiking neuron -> [max-pool 2x2], time-first tensors."""

    #: Stateless CPU inference with the native neuron kernels may compute a convolution with its
    #: output channels rounded up to this multiple (zero filters; oneDNN blocks channels by 16 and
    #: runs e.g. 55 outputs about as slowly as 64) and hand the neurons only the real channels:
    #: the same values bit for bit. ``conv_pad_policy``: "auto" (layers of 32 channels or more,
    #: padding by at most a quarter) checks that both give the same values and times them, once
    #: per input shape, and keeps the faster; "always", "never".
    conv_pad_multiple: int = 16
    conv_pad_policy: str = "auto"

    def __init__(self, spec: BlockSpec, in_features: int, cfg: ModelConfig, flatten_input: bool):
        super().__init__()
        self.spec = spec
        self.flatten_input = flatten_input
        self.dropout = sj_layer.Dropout(spec.dropout, step_mode="m") if spec.dropout > 0 else None
        if spec.kind == "conv":
            self.layer: nn.Module = nn.Conv2d(in_features, spec.out, 3, padding=1, bias=spec.bias)
            self.norm: Optional[nn.Module] = nn.BatchNorm2d(spec.out) if spec.batch_norm else None
        else:
            self.layer = nn.Linear(in_features, spec.out, bias=spec.bias)
            self.norm = nn.BatchNorm1d(spec.out) if spec.batch_norm else None
        self.neuron = _make_neuron(spec.neuron, cfg, spec.v_threshold)
        self.pool = nn.MaxPool2d(2) if spec.pool else None

    def _folded_params(self) -> Optional[dict[str, torch.Tensor]]:
        """Weight and bias of the weight layer with the eval-mode BatchNorm folded in, or None.

        ``BN(Wx + b) = (s * W) x + s * (b - mean) + beta`` with ``s = gamma / sqrt(var + eps)``.
        Computed on every call (one pass over the weights, far less than over the activations),
        so it always reflects the current weights and masks; differentiable, so it also serves a
        forward pass with gradients in eval mode.  In eval mode the BN module itself is not
        called: hook the weight layer or the neuron to watch a block (the regrowth probe on BN
        acts in training mode only).
        """
        n = self.norm
        if self.training or n is None or not n.track_running_stats or n.running_mean is None:
            return None
        w = self.layer.weight
        s = n.running_var.add(n.eps).rsqrt()
        if n.weight is not None:
            s = s * n.weight
        b = -n.running_mean if self.layer.bias is None else self.layer.bias - n.running_mean
        b = b * s
        if n.bias is not None:
            b = b + n.bias
        return {"weight": w * s.reshape((-1,) + (1,) * (w.dim() - 1)), "bias": b}

    def _padded_conv(self, x: torch.Tensor, folded: Optional[dict[str, torch.Tensor]]) -> Optional[torch.Tensor]:
        """The conv (+ folded BN) with its output channels rounded up to ``conv_pad_multiple``,
        sliced back to the real channels (a channels-last view with a wider pixel stride), when
        the policy says it pays; else None."""
        conv, m = self.layer, self.conv_pad_multiple
        if self.conv_pad_policy == "never" or m <= 1 or conv._forward_hooks or conv._forward_pre_hooks:
            return None
        w = conv.weight if folded is None else folded["weight"]
        b = conv.bias if folded is None else folded["bias"]
        oc = w.shape[0]
        padded = -(-oc // m) * m
        if padded == oc or (self.conv_pad_policy == "auto" and (oc < 32 or padded > 1.25 * oc)):
            # narrow layers: the neurons would read short per-pixel runs and lose what the conv
            # gains (measured: 10 -> 16 and 19 -> 32 channels slower end to end)
            return None
        key = (tuple(x.shape), padded)
        choice = self.__dict__.setdefault("_pad_choice", {}) if self.conv_pad_policy == "auto" else None
        if choice is not None and choice.get(key) is False:
            return None  # decided before: not worth it (checked first: no padded weights built)
        wp = torch.cat([w, w.new_zeros((padded - oc,) + tuple(w.shape[1:]))])
        bp = None if b is None else torch.cat([b, b.new_zeros(padded - oc)])
        if choice is not None and key not in choice:
            # padded only where it is faster and gives the very same values
            same = torch.equal(conv._conv_forward(x, wp, bp)[:, :oc], conv._conv_forward(x, w, b))
            choice[key] = same and _faster(lambda: conv._conv_forward(x, wp, bp),
                                           lambda: conv._conv_forward(x, w, b))
            if not choice[key]:
                return None
        return conv._conv_forward(x, wp, bp)[:, :oc]

    def _analog(self, x: torch.Tensor, ws: Optional[Workspace] = None, pad_ok: bool = False) -> torch.Tensor:
        """Weight layer + BN on a [N, ...] tensor (N = T*B, or B for a static input).
        ``pad_ok``: the neurons take channel slices (native kernels, stateless inference), so the
        conv may run with padded output channels (:meth:`_padded_conv`)."""
        folded = self._folded_params()
        if not self.training and _conv1ch_ok(self.layer, x):
            if folded is None:
                folded = {"weight": self.layer.weight, "bias": self.layer.bias}
                if self.norm is not None:  # BN without running statistics: after the conv
                    return self.norm(_conv_1ch_channels_last(self.layer, x, **folded))
            return _conv_1ch_channels_last(self.layer, x, **folded, ws=ws)
        if not self.training and x.dim() == 4 and x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        if pad_ok and isinstance(self.layer, nn.Conv2d) and x.dim() == 4:
            y = self._padded_conv(x, folded)
            if y is not None:
                return y
        if folded is not None:
            # through the module, so that its forward hooks (energy counting) still see the call
            y = functional_call(self.layer, folded, (x,))
        else:
            y = self.layer(x)
            if self.norm is not None:
                y = self.norm(y)
        if not self.training and y.dim() == 4 and y.device.type == "cpu":
            # a 1-channel input leaves the layout ambiguous and the conv then answers NCHW
            y = y.contiguous(memory_format=torch.channels_last)
        return y

    def forward(self, x: torch.Tensor, static: bool = False, keep_state: bool = True,
                ws: Optional[Workspace] = None) -> torch.Tensor:
        """``keep_state=False``: the caller discards the neurons' final state (stateless
        inference); the lean CPU loop then skips computing it, and takes its buffers from the
        workspace ``ws`` when one is given (chunked inference, see :data:`Workspace`)."""
        if self.flatten_input:
            x = x.flatten(2)
        if self.dropout is not None:
            x = self.dropout(x)
        T, B = x.shape[0], x.shape[1]
        # the native neuron kernels will take this block's neurons: they read channel slices
        pad_ok = not keep_state and not self.training and _native_neurons_ok(self.neuron, x)
        if static:
            # Every time step carries the same tensor: the affine layer (and BN, which sees the
            # same batch statistics as for T copies) runs once and is broadcast over T.
            y = self._analog(x[0], ws, pad_ok)
            y = y.unsqueeze(0).expand((T,) + tuple(y.shape))
        else:
            y = self._analog(x.flatten(0, 1), ws, pad_ok)
            y = y.reshape((T, B) + tuple(y.shape[1:]))
        pooled = False
        if _fast_path_ok(self.neuron, y):
            s = None
            if not keep_state:
                s, pooled = _lif_native(self.neuron, y, self.pool is not None and not self.training, ws)
            if s is None:
                s = _lif_inference(self.neuron, y, keep_state, ws)
        else:
            s = self.neuron(y)
        if self.pool is not None and not pooled:
            s = s.flatten(0, 1)
            if not self.training and s.is_contiguous(memory_format=torch.channels_last):
                s = _max_pool2x2_channels_last(s, ws)  # eval mode: the same values, faster
            else:
                s = self.pool(s)
            s = s.reshape((T, B) + tuple(s.shape[1:]))
        return s


def _check_blocks(family: str, blocks: Any, input_shape: tuple[int, int, int], num_classes: int) -> None:
    """The block list a builder returned must describe a network this class can build: one line
    (:class:`ConfigError`) naming the backbone, the block and the fix, instead of a wrong network
    that trains silently or a shape error deep in a forward pass."""
    where = f"model '{family}'"
    if not isinstance(blocks, (list, tuple)) or not blocks or not all(isinstance(b, BlockSpec) for b in blocks):
        raise ConfigError(f"{where}: its builder must return a non-empty list of BlockSpec (got "
                          f"{type(blocks).__name__}); end it with output_block(cfg, num_classes)")
    names: set[str] = set()
    _, h, w = input_shape
    spatial = True  # the tensor is still [C, H, W]: before the first FC block
    for i, b in enumerate(blocks):
        at = f"{where}, block {i} ({b.name!r})"
        if not isinstance(b.name, str) or not b.name or "." in b.name:
            raise ConfigError(f"{at}: a block needs a non-empty name without dots (conv1, fc1, out, ...)")
        if b.name in names:
            raise ConfigError(f"{at}: the name is used twice; every block needs its own name")
        names.add(b.name)
        if b.kind not in ("conv", "fc"):
            raise ConfigError(f"{at}: kind {b.kind!r} is not 'conv' or 'fc'")
        if b.kind == "conv" and not spatial:
            raise ConfigError(f"{where}: a conv layer after an FC layer; check the builder")
        spatial = spatial and b.kind == "conv"
        if b.neuron not in ("lif", "plif", "none"):
            raise ConfigError(f"{at}: neuron {b.neuron!r} is not 'lif', 'plif' or 'none'")
        if isinstance(b.out, bool) or not isinstance(b.out, numbers.Integral) or b.out < 1:
            raise ConfigError(f"{at}: out must be a positive int, got {b.out!r}")
        if b.pool:
            if b.kind != "conv":
                raise ConfigError(f"{at}: pool is for conv blocks only")
            if h < 2 or w < 2:
                raise ConfigError(f"{at}: a 2x2 max-pool on a {h}x{w} map; the {input_shape[1]}x{input_shape[2]} input "
                                  f"allows fewer pooling blocks")
            h, w = h // 2, w // 2
    if blocks[-1].out != num_classes:
        raise ConfigError(f"{where}: the last block ({blocks[-1].name!r}) has {blocks[-1].out} outputs for "
                          f"{num_classes} classes; end the builder with output_block(cfg, num_classes)")


class SpikingNet(nn.Module):
    """A chain of :class:`SpikingBlock`; ``forward(x [T,B,C,H,W]) -> rates [B, classes]``.

    ``spec()`` returns everything needed to rebuild the same architecture (used by
    :func:`sdsnn.compact.save_model` / :func:`sdsnn.load_model`).
    Set ``record_firing = True`` to keep each spiking layer's mean firing rate of the last forward
    pass; read them with :meth:`firing_rates`.
    """

    def __init__(
        self,
        family: str,
        cfg: ModelConfig,
        input_shape: tuple[int, int, int],
        num_classes: int,
        blocks: list[BlockSpec],
        *,
        static_input: bool,
        spiking_input_first: bool,
    ):
        super().__init__()
        self.family = family
        self.cfg = cfg
        self.input_shape = tuple(int(v) for v in input_shape)
        self.num_classes = int(num_classes)
        self.static_input = bool(static_input)
        self.spiking_input_first = bool(spiking_input_first)
        self.block_specs = blocks
        self.record_firing = False
        self._rates: dict[str, torch.Tensor] = {}
        _check_blocks(family, blocks, self.input_shape, self.num_classes)
        c, h, w = self.input_shape
        mods = []
        spatial = True  # the current tensor is [C, H, W]
        feat = c
        self._widest = 1  # most activations of one block per sample and time step (chunking)
        for spec in blocks:
            self._widest = max(self._widest, spec.out * (h * w if spec.kind == "conv" else 1))
            flatten = False
            if spec.kind == "conv":  # never after an FC block (_check_blocks)
                in_f = feat
            else:
                in_f = feat * h * w if spatial else feat
                flatten = spatial
                spatial = False
            mods.append(SpikingBlock(spec, in_f, cfg, flatten))
            feat = spec.out
            if spec.kind == "conv" and spec.pool:
                h, w = h // 2, w // 2
        self.blocks = nn.ModuleList(mods)

    # --- structure -------------------------------------------------------------------------
    @property
    def widths(self) -> list[int]:
        """Output sizes of the hidden layers (every block but the output layer)."""
        return [int(b.spec.out) for b in self.blocks[:-1]]

    @property
    def layer_names(self) -> list[str]:
        return [b.spec.name for b in self.blocks]

    def prunable_layers(self) -> list[LayerInfo]:
        """Every weight layer in forward order, the output layer last (``is_output=True``)."""
        out = []
        n = len(self.blocks)
        for i, b in enumerate(self.blocks):
            out.append(
                LayerInfo(
                    name=b.spec.name,
                    module=b.layer,
                    kind=b.spec.kind,  # type: ignore[arg-type]
                    norm=b.norm,
                    is_output=(i == n - 1),
                    spiking_input=(self.spiking_input_first if i == 0 else True),
                )
            )
        return out

    def spec(self) -> dict[str, Any]:
        """JSON-ready description from which :func:`build_model` rebuilds this architecture."""
        return {
            "family": self.family,
            "model": self.cfg.model_dump(mode="json"),
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "widths": self.widths,
            "static_input": self.static_input,
            "spiking_input_first": self.spiking_input_first,
        }

    # --- running ---------------------------------------------------------------------------
    def reset(self) -> None:
        """Reset every neuron's membrane state and dropout masks (call after each batch).

        Resets the spikingjelly memory modules directly (``functional.reset_net(model)`` also
        works, but it would call this method too and log a warning for it).
        """
        for m in self.modules():
            if m is not self and isinstance(m, sj_base.MemoryModule):
                m.reset()

    #: CPU inference runs the batch in chunks whose widest activation tensor holds at most this
    #: many bytes (0: never chunk).  Small tensors stay in cache and are recycled by the
    #: allocator; a large batch otherwise spends much of its time in page faults on fresh memory.
    inference_chunk_bytes: int = 8 << 20

    def _at_rest_cpu_inference(self, x: torch.Tensor) -> bool:
        """Eval mode, no autograd, CPU, and every neuron at rest (no state carried from a call)."""
        return (
            not self.training
            and not torch.is_grad_enabled()
            and x.device.type == "cpu"
            and not any(isinstance(b.neuron, sj_base.MemoryModule) and isinstance(b.neuron.v, torch.Tensor)
                        for b in self.blocks)
        )

    def _chunk_size(self, x: torch.Tensor) -> int:
        """Samples per chunk for this input (the whole batch when chunking does not apply)."""
        B = int(x.shape[1])
        if self.inference_chunk_bytes <= 0 or not self._at_rest_cpu_inference(x):
            return B
        per_sample = int(x.shape[0]) * self._widest * x.element_size()
        return max(1, min(B, self.inference_chunk_bytes // per_sample))

    def _check_input(self, x: torch.Tensor, where: str) -> None:
        """``x`` must be ``[T, B, *input_shape]`` in the parameters' floating dtype: a ValueError
        in one line otherwise, instead of a shape or dtype error from deep inside a layer.  Only
        the shape and dtype are compared (no pass over the data: forward is on the training path)."""
        dtype = self.blocks[0].layer.weight.dtype
        if x.dim() == 5 and x.shape[2:] == self.input_shape and x.dtype == dtype:
            return
        want = ", ".join(str(v) for v in self.input_shape)
        got = ", ".join(str(v) for v in x.shape)
        name = str(dtype).removeprefix("torch.")
        raise ValueError(
            f"SpikingNet.{where}: expected x [T, B, {want}] {name} (T time steps, B samples), got "
            f"[{got}] {str(x.dtype).removeprefix('torch.')}; images must be scaled to {name} as in training "
            f"and repeated over the T time steps (an exported model's card, \"How to load\", says how)"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Output (spike rates, or mean potential for ``readout: potential``) for ``x [T, B, ...]``,
        continuing from the neurons' current state and leaving their final state in place (the
        spikingjelly convention; call :meth:`reset` between independent batches)."""
        self._check_input(x, "forward")
        n = self._chunk_size(x)
        if n < x.shape[1]:
            return self._forward_chunked(x, n, keep_state=True)
        return self._forward(x)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """``forward(x)`` followed by :meth:`reset`: the output for an independent batch, with the
        network left at rest.  The entry point for inference: in eval mode without autograd on
        CPU, from rest, the neurons' final state is never built (the last step's reset is skipped
        and the chunks' states are not gathered), and each chunk reuses the previous chunk's
        buffers (:data:`Workspace`)."""
        self._check_input(x, "predict")
        if self._at_rest_cpu_inference(x):
            n = self._chunk_size(x)
            y = self._forward_chunked(x, n, keep_state=False) if n < x.shape[1] else self._forward(x, False)
        else:
            y = self.forward(x)
        self.reset()
        return y

    def _forward_chunked(self, x: torch.Tensor, n: int, keep_state: bool) -> torch.Tensor:
        """The forward pass over chunks of ``n`` samples; outputs, firing rates and (with
        ``keep_state``) the final membrane potentials are those of one pass over the whole batch."""
        outs, states, rate_sums = [], [], {}
        neurons = [b.neuron for b in self.blocks if isinstance(b.neuron, sj_base.MemoryModule)]
        ws = None if keep_state else {}  # buffers reused by the next chunk
        for xc in x.split(n, dim=1):
            outs.append(self._forward(xc, keep_state, ws))
            if keep_state:
                states.append([m.v for m in neurons])
            if self.record_firing:
                for k, r in self._rates.items():
                    rate_sums[k] = rate_sums.get(k, 0.0) + r * xc.shape[1]
            self.reset()
        for i, m in enumerate(neurons):
            vs = [st[i] for st in states]
            if vs and all(isinstance(v, torch.Tensor) for v in vs):
                m.v = torch.cat(vs, 0)
        if self.record_firing:
            self._rates = {k: r / x.shape[1] for k, r in rate_sums.items()}
        return torch.cat(outs, 0)

    def _forward(self, x: torch.Tensor, keep_state: bool = True, ws: Optional[Workspace] = None) -> torch.Tensor:
        rec = self.record_firing
        if rec:
            self._rates = {}
        for i, b in enumerate(self.blocks):
            x = b(x, static=(i == 0 and self.static_input), keep_state=keep_state,
                  ws=None if ws is None else ws.setdefault(i, {}))
            if rec and b.spec.neuron != "none":
                self._rates[b.spec.name] = x.detach().float().mean()
        return x.mean(0)

    def firing_rates(self) -> dict[str, float]:
        """Mean firing rate of each layer's neurons in the last forward pass (needs ``record_firing``).

        Measured after the layer's max-pool when it has one (what the next layer receives).
        """
        return {k: float(v) for k, v in self._rates.items()}


# --- registry ---------------------------------------------------------------------------------
Builder = Callable[[ModelConfig, tuple[int, int, int], int], list[BlockSpec]]
MODELS: dict[str, Builder] = {}


def register_model(name: str, *, replace: bool = False) -> Callable[[Builder], Builder]:
    """Register a builder ``fn(cfg, input_shape, num_classes) -> list[BlockSpec]`` under ``name``.

    A name that is taken (a built-in backbone, or another plugin's) is refused unless
    ``replace=True``: a plugin replaces a backbone only on purpose. Registering the same function
    again (a module imported twice) is allowed."""

    def deco(fn: Builder) -> Builder:
        old = MODELS.get(name)
        same = old is not None and (old is fn or (getattr(old, "__module__", None), getattr(old, "__qualname__", None))
                                    == (getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)))
        if old is not None and not same and not replace:
            raise ValueError(f"backbone '{name}' is already registered (by {getattr(old, '__module__', '?')}); "
                             f"pick another name, or replace it on purpose with register_model({name!r}, replace=True)")
        MODELS[name] = fn
        return fn

    return deco


def output_block(cfg: ModelConfig, num_classes: int, after_spikes: bool = True) -> BlockSpec:
    """The classifier block every builder ends with: FC to ``num_classes``, LIF output neurons
    (``readout: rate``) or none (``readout: potential``); ``after_spikes``: its input is spikes,
    so ``model.dropout`` applies to it."""
    neuron = "none" if cfg.readout == "potential" else "lif"
    return BlockSpec("out", "fc", num_classes, neuron, cfg.v_threshold, batch_norm=False, bias=True,
                     dropout=cfg.dropout if after_spikes else 0.0)


@register_model("mlp")
def _mlp(cfg: ModelConfig, input_shape: tuple[int, int, int], num_classes: int) -> list[BlockSpec]:
    bn = cfg.batch_norm
    blocks = [
        BlockSpec(f"fc{i + 1}", "fc", cfg.width, cfg.neuron, cfg.v_threshold, batch_norm=bn, bias=not bn,
                  dropout=cfg.dropout if i > 0 else 0.0)
        for i in range(cfg.depth)
    ]
    return blocks + [output_block(cfg, num_classes)]


def _conv_stack(cfg: ModelConfig, input_shape: tuple[int, int, int], channels: Sequence[int],
                pools: Sequence[bool], neuron: str, bn: bool) -> list[BlockSpec]:
    blocks = []
    h = min(input_shape[1], input_shape[2])
    for i, (ch, pool) in enumerate(zip(channels, pools)):
        pool = bool(pool) and h >= 2  # never pool a 1x1 map
        if pool:
            h //= 2
        blocks.append(BlockSpec(f"conv{i + 1}", "conv", int(ch), neuron, cfg.v_threshold,
                                batch_norm=bn, bias=not bn, pool=pool))
    return blocks


@register_model("convnet")
def _convnet(cfg: ModelConfig, input_shape: tuple[int, int, int], num_classes: int) -> list[BlockSpec]:
    channels, pools = [], []
    ch = float(cfg.width)
    for i in range(cfg.depth):
        channels.append(max(1, int(round(ch))))
        pool = (i + 1) % cfg.pool_every == 0
        pools.append(pool)
        if pool:
            ch *= cfg.width_growth
    blocks = _conv_stack(cfg, input_shape, channels, pools, cfg.neuron, cfg.batch_norm)
    if cfg.fc_width > 0:
        blocks.append(BlockSpec("fc1", "fc", cfg.fc_width, cfg.neuron, cfg.v_threshold,
                                batch_norm=False, bias=True, dropout=cfg.dropout))
    return blocks + [output_block(cfg, num_classes)]


@register_model("sdsnn_cifar")
def _sdsnn_cifar(cfg: ModelConfig, input_shape: tuple[int, int, int], num_classes: int) -> list[BlockSpec]:
    channels = [128, 128, 256, 256, 512, 512]
    pools = [False, True, False, True, False, False]
    blocks = _conv_stack(cfg, input_shape, channels, pools, "plif", bn=True)
    blocks.append(BlockSpec("fc1", "fc", 512, "lif", 0.5, batch_norm=False, bias=True, dropout=cfg.dropout))
    return blocks + [output_block(cfg, num_classes)]


@register_model("dvs_convnet")
def _dvs_convnet(cfg: ModelConfig, input_shape: tuple[int, int, int], num_classes: int) -> list[BlockSpec]:
    blocks = _conv_stack(cfg, input_shape, [cfg.width] * cfg.depth, [True] * cfg.depth, cfg.neuron,
                         cfg.batch_norm)
    if cfg.fc_width > 0:
        blocks.append(BlockSpec("fc1", "fc", cfg.fc_width, cfg.neuron, cfg.v_threshold,
                                batch_norm=False, bias=True, dropout=cfg.dropout))
    return blocks + [output_block(cfg, num_classes)]


def build_model(
    cfg: ModelConfig,
    input_shape: Sequence[int],
    num_classes: int,
    *,
    static_input: bool = False,
    widths: Optional[Sequence[int]] = None,
    spiking_input_first: bool = False,
) -> SpikingNet:
    """Build the backbone ``cfg.name`` for inputs ``[T, B, *input_shape]`` and ``num_classes`` outputs.

    ``static_input``: every time step of x is the same tensor (direct encoding); the first layer
    is then computed once and broadcast over T (same outputs, T times cheaper first layer; in
    training, BatchNorm's running variance gets the unbiased correction of B*H*W rather than
    T*B*H*W values, a negligible difference).
    ``widths``: explicit output sizes of the hidden layers (all but the output layer).
    ``spiking_input_first``: the first layer's input is spikes/events (Poisson coding, event data)
    rather than analog values; decides whether energy accounting counts its SOPs or MACs.
    """
    from .plugins import load_plugins

    load_plugins()  # before any lookup: a plugin may add or replace a backbone
    if cfg.name not in MODELS:
        raise ConfigError(
            f"model.name '{cfg.name}' is not a known backbone; choose one of {sorted(MODELS)}, or name the "
            f"plugin that registers it (--plugin FILE before the command, or SDSNN_PLUGINS)"
        )
    if len(input_shape) != 3 or any(int(v) < 1 for v in input_shape):
        raise ConfigError(f"model '{cfg.name}': input_shape must be (C, H, W) with positive sizes, got {tuple(input_shape)}")
    if num_classes < 1:
        raise ConfigError(f"model '{cfg.name}': num_classes must be positive, got {num_classes}")
    shape = (int(input_shape[0]), int(input_shape[1]), int(input_shape[2]))
    builder = MODELS[cfg.name]
    try:
        blocks = builder(cfg, shape, int(num_classes))
    except ConfigError:
        raise
    except Exception as e:  # a bug in a builder (a plugin's, most likely): where it is, in one line
        raise ConfigError(f"model '{cfg.name}': its builder {getattr(builder, '__module__', '?')}."
                          f"{getattr(builder, '__qualname__', builder)} raised {type(e).__name__}: {e} "
                          f"({where_raised(e, builder)})") from None
    if widths is not None:
        widths = [int(v) for v in widths]
        if len(widths) != len(blocks) - 1 or any(v < 1 for v in widths):
            raise ConfigError(
                f"model '{cfg.name}': widths must list {len(blocks) - 1} positive hidden-layer sizes, got {widths}"
            )
        for b, wdt in zip(blocks[:-1], widths):
            b.out = wdt
    return SpikingNet(cfg.name, cfg, shape, num_classes, blocks,
                      static_input=static_input, spiking_input_first=spiking_input_first)
