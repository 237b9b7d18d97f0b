"""Native CPU kernels for inference, compiled on first use with the system C compiler.

``kernels.c`` holds fused multi-step LIF/PLIF neurons (and LIF + 2x2 max-pool) for stateless CPU
inference (:meth:`sdsnn.SpikingNet.predict`): one pass over a layer's input instead of the four or
five element-wise passes of the torch route, with the same float arithmetic, so the spikes are
bit-identical (tests/test_native.py).  It also holds the convolution of a 1-channel input (the
first layer of MNIST-like networks, :func:`conv1ch`), summed in a fixed order that does not depend
on the number of output channels, so that a compacted first layer computes exactly the values of
the full one; :func:`conv1ch_torch` is the same arithmetic in torch operations (the route without
this library).  They make inference faster (1.04-1.5x for the networks of
benchmarks/bench_compaction.py) and bring a compacted network's time closer to its operation
count, since per-neuron work is a large share of a narrow network's time.

The library is built once per machine, compiler and source version into ``$SDSNN_NATIVE_CACHE``
(default ``$XDG_CACHE_HOME/sdsnn/native`` or ``~/.cache/sdsnn/native``) with ``$CC`` (or
``cc``/``gcc``/``clang``) and ``-march=native`` (without it where the compiler refuses); the build
takes under a second.  Before use it is checked against torch's arithmetic (:func:`_self_test`).
Without a compiler, after a failed build or self-test, or with ``SDSNN_NATIVE=0``, everything
runs on the torch kernels: same results, slower.  :func:`status` says which applies and why.
Training never uses these kernels (no gradients).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Optional

import torch

__all__ = ["load", "status", "set_enabled", "cache_dir", "lif_seq", "lif_channels", "lif_pool_seq", "pixel_stride",
           "conv1ch", "conv1ch_torch", "conv1ch_out_shape", "needs_grad", "SWITCH"]

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("kernels.c")
#: ``-ffp-contract=off``: no fused multiply-add, so every operation rounds as torch's kernels do.
FLAGS = ("-O3", "-ffp-contract=off", "-fno-fast-math", "-std=c99", "-pthread", "-shared", "-fPIC")
#: tuned for the CPU it runs on first; without them where the compiler refuses (some clang versions)
ARCH_FLAGS = (("-march=native",), ())
#: environment variable: ``0`` (or ``off``/``false``) turns the native kernels off
SWITCH = "SDSNN_NATIVE"

_lock = threading.Lock()
_lib: Optional[ctypes.CDLL] = None
_tried = False
_reason = "not loaded yet"


def cache_dir() -> Path:
    """Where built libraries are kept (``$SDSNN_NATIVE_CACHE``, else ``$XDG_CACHE_HOME/sdsnn/native``
    or ``~/.cache/sdsnn/native``)."""
    env = os.environ.get("SDSNN_NATIVE_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sdsnn" / "native"


def find_compiler() -> Optional[str]:
    """The C compiler to build with: `$CC`, else the first of cc, gcc, clang on the PATH."""
    for c in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if c and shutil.which(c):
            return shutil.which(c)
    return None


def _cpu_key() -> str:
    """What ``-march=native`` depends on: the CPU's feature flags (a cache shared by different
    machines must not hand one machine another's build). Where they cannot be read, the host
    name: each machine then builds its own."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("flags", "features", "isa")):
                return platform.machine() + line
    except OSError:
        pass
    return platform.machine() + platform.processor() + platform.node()


def _compile(cc: str, flags: tuple[str, ...], lib: Path) -> None:
    """Build into a temporary file beside ``lib``, then rename: processes building at once (Ray
    workers) never see a half-written library."""
    fd, tmp = tempfile.mkstemp(prefix=lib.stem + ".", suffix=".so.tmp", dir=lib.parent)
    os.close(fd)
    try:
        r = subprocess.run([cc, *flags, "-o", tmp, str(SOURCE)], capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise RuntimeError(f"{Path(cc).name} failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o755 & ~umask)  # mkstemp makes it private: other users of the cache load it too
        os.replace(tmp, lib)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _open(cc: str) -> tuple[ctypes.CDLL, Path]:
    """Load the cached build for this compiler, flags and CPU, building it first when needed; a
    cached file that does not load (truncated, foreign) is rebuilt once."""
    src = SOURCE.read_bytes()
    out_dir = cache_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    errors = []
    for arch in ARCH_FLAGS:
        flags = (*FLAGS, *arch)
        key = hashlib.sha256(b"\0".join([src, " ".join(flags).encode(), cc.encode(), _cpu_key().encode()]))
        lib = out_dir / f"kernels-{key.hexdigest()[:16]}.so"
        try:
            if lib.is_file():
                try:
                    return ctypes.CDLL(str(lib)), lib
                except OSError:
                    lib.unlink()
            _compile(cc, flags, lib)
            return ctypes.CDLL(str(lib)), lib
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            errors.append(str(e))
    raise RuntimeError("; ".join(errors))


def _declare(lib: ctypes.CDLL) -> None:
    P, L, I, F = ctypes.c_void_p, ctypes.c_long, ctypes.c_int, ctypes.c_float
    lib.sdsnn_lif_seq.argtypes = [P, L, P, L, L, L, I, I, F, F, I]
    lib.sdsnn_lif_seq.restype = I
    lib.sdsnn_lif_pool_seq.argtypes = [P, L, P, L, L, L, L, L, L, I, I, F, F, I]
    lib.sdsnn_lif_pool_seq.restype = I
    lib.sdsnn_lif_rows.argtypes = [P, L, P, L, L, L, L, I, I, F, F, I]
    lib.sdsnn_lif_rows.restype = I
    lib.sdsnn_conv1ch.argtypes = [P, L, L, L, P, P, L, I, I, I, I, I, I, I, I, P, L, L, I]
    lib.sdsnn_conv1ch.restype = I


def _self_test(lib: ctypes.CDLL) -> None:
    """The library against torch's element-wise operations on awkward values (exactly on the
    threshold, a non-dyadic tau, PLIF, inf, NaN), flat and pooled, on one and on three threads:
    a compiler that fuses or reorders float operations (``$CC`` set to one with fast-math
    defaults) must not silently change spikes."""
    g = torch.Generator().manual_seed(0)
    wide = torch.randn(3, 2, 7, 6, 6, generator=g) * 1.5  # [T, N, C, H, W]
    wide.view(-1)[::5] = 0.6
    wide.view(-1)[7], wide.view(-1)[11] = float("inf"), float("nan")
    wide = wide.flatten(0, 1).contiguous(memory_format=torch.channels_last).view(wide.shape)
    dense = wide[:, :, :4].flatten(0, 1).contiguous(memory_format=torch.channels_last).view(3, 2, 4, 6, 6)
    for mode, k, thr in ((0, 2.0, 0.3), (0, 1.7, 0.7), (1, 0.4378234, 0.3)):
        kt, tt = torch.tensor(k), torch.tensor(thr)
        for x in (dense, wide[:, :, :4]):  # dense steps; the first channels of wider ones
            v = None
            ref = torch.empty_like(dense)
            for t in range(x.shape[0]):
                if v is None:
                    h = x[t] * kt if mode else x[t] / kt
                else:
                    h = (x[t] - v) * kt + v if mode else v + (x[t] - v) / kt
                s = (h >= tt).float()
                ref[t] = s
                v = h - h * s
            pooled = torch.nn.functional.max_pool2d(ref.flatten(0, 1), 2).view(3, 2, 4, 3, 3)
            for threads in (1, 3):
                out = torch.full_like(dense, -1.0)
                (lif_seq if x is dense else lif_channels)(lib, x, out, mode, k, thr, threads)
                got = x.new_full((3, 2, 3, 3, 4), -1.0).permute(0, 1, 4, 2, 3)
                lif_pool_seq(lib, x, got, mode, k, thr, threads)
                if not (torch.equal(out, ref) and torch.equal(got, pooled)):
                    raise RuntimeError(f"self-test: spikes differ from torch's (mode {mode}, tau/q {k}, "
                                       f"threshold {thr}); is the compiler using fast-math?")
    img = torch.randn(3, 1, 9, 7, generator=g)
    w = torch.randn(5, 1, 3, 2, generator=g) / 3
    b = torch.randn(5, generator=g)
    for geom in (((1, 1), (1, 1), (1, 1)), ((2, 1), (0, 2), (1, 2))):
        for threads in (1, 2):
            got = conv1ch(lib, img, w, b, *geom, threads=threads)
            if not torch.equal(got, conv1ch_torch(img, w, b, *geom)):
                raise RuntimeError(f"self-test: the 1-channel convolution {geom} differs from the same sum in torch "
                                   "ops; is the compiler using fast-math?")


def load(force: bool = False) -> Optional[ctypes.CDLL]:
    """The native library (built on first use), or None when it is switched off or cannot be
    built; the reason is kept for :func:`status`.  Tried once per process.  ``force``: ignore
    ``SDSNN_NATIVE``."""
    global _lib, _tried, _reason
    if _tried:
        return _lib
    with _lock:
        if _tried:
            return _lib
        try:
            if not force and os.environ.get(SWITCH, "1").strip().lower() in ("0", "off", "false", "no"):
                _reason = f"switched off ({SWITCH}={os.environ[SWITCH]})"
            elif platform.system() == "Windows":
                _reason = "not built on Windows"
            elif (cc := find_compiler()) is None:
                _reason = "no C compiler found (set CC, or install gcc)"
            else:
                lib, path = _open(cc)
                _declare(lib)
                _self_test(lib)
                _lib, _reason = lib, f"on ({path})"
        except Exception as e:  # any failure: fall back to the torch kernels, say why
            _lib, _reason = None, f"build failed: {e}"
            log.warning("sdsnn native kernels unavailable, inference uses torch kernels (same results, "
                        "slower): %s", e)
        _tried = True
        if _lib is None:
            log.debug("sdsnn native kernels off: %s", _reason)
        return _lib


def set_enabled(on: Optional[bool]) -> None:
    """Turn the native kernels off (``False``) or on again (``True``: built if needed, whatever
    ``SDSNN_NATIVE`` says) for this process; ``None`` goes back to the ``SDSNN_NATIVE`` variable.
    For benchmarks that compare both routes in one run."""
    global _lib, _tried, _reason
    with _lock:
        _lib, _tried, _reason = None, False, "not loaded yet"
        if on is False:
            _tried, _reason = True, "switched off (set_enabled(False))"
    if on is True:
        load(force=True)


def status() -> str:
    """One line: whether the native kernels are in use, and why not."""
    load()
    return _reason


def _check(x, out, what: str) -> None:
    if x.dtype != torch.float32 or out.dtype != torch.float32 or x.device.type != "cpu" or out.device.type != "cpu":
        raise ValueError(f"{what}: float32 CPU tensors only, got {x.dtype} on {x.device} -> {out.dtype} on {out.device}")


def _raise_for(rc: int, what: str) -> None:
    """The kernels' return codes: 1 out of memory (output incomplete), 2 arguments refused."""
    if rc == 1:
        raise MemoryError(f"sdsnn native {what}: out of memory")
    if rc:
        raise ValueError(f"sdsnn native {what}: arguments refused by the kernel (code {rc})")


def lif_seq(lib: ctypes.CDLL, x, out, mode: int, k: float, thr: float, threads: int) -> None:
    """Neurons from rest over ``x`` [T, N, ...] into ``out`` (same shape); each time step of
    ``x`` and ``out`` must be dense with the same strides (the caller checks the layout,
    see ``sdsnn.models._lif_native``)."""
    _check(x, out, "lif_seq")
    if out.shape != x.shape or out[0].stride() != x[0].stride():
        raise ValueError(f"lif_seq: out {tuple(out.shape)} {out.stride()} does not match x {tuple(x.shape)} {x.stride()}")
    T, N = x.shape[0], x.shape[1]
    per = x[0].numel() // max(N, 1)
    rc = lib.sdsnn_lif_seq(x.data_ptr(), x.stride(0), out.data_ptr(), out.stride(0), N, per, T,
                           mode, k, thr, threads)
    _raise_for(rc, "lif_seq")


def pixel_stride(step) -> Optional[int]:
    """Floats per pixel of a channels-last ``[N, C, H, W]`` step: ``C`` when it is dense, more when
    it is the first ``C`` channels of a wider channels-last tensor; None for any other layout."""
    if step.dim() != 4:
        return None
    n, c, h, w = step.shape
    if step.is_contiguous(memory_format=torch.channels_last):
        return c
    cs = step.stride(3)
    if step.stride(1) == 1 and cs > c and step.stride(2) == w * cs and (n == 1 or step.stride(0) == h * w * cs):
        return cs
    return None


def _cl_dense(t) -> bool:
    return t.is_contiguous(memory_format=torch.channels_last)


def lif_channels(lib: ctypes.CDLL, x, out, mode: int, k: float, thr: float, threads: int) -> None:
    """Neurons from rest over ``x`` [T, N, C, H, W] whose steps are channels-last with a pixel
    stride of at least C (:func:`pixel_stride`), into dense channels-last ``out`` (same shape)."""
    _check(x, out, "lif_channels")
    T, N, C, H, W = x.shape
    cs = pixel_stride(x[0])
    if cs is None or out.shape != x.shape or not _cl_dense(out[0]):
        raise ValueError(f"lif_channels: needs channels-last steps, got x {x.stride()} -> out {out.stride()}")
    rc = lib.sdsnn_lif_rows(x.data_ptr(), x.stride(0), out.data_ptr(), out.stride(0), N * H * W, C, cs, T,
                            mode, k, thr, threads)
    _raise_for(rc, "lif_channels")


def lif_pool_seq(lib: ctypes.CDLL, x, out, mode: int, k: float, thr: float, threads: int) -> None:
    """Neurons from rest over ``x`` [T, N, C, H, W] (H, W >= 2; steps channels-last with a pixel
    stride of at least C, :func:`pixel_stride`), then 2x2 max-pool, into dense channels-last
    ``out`` [T, N, C, H//2, W//2]."""
    _check(x, out, "lif_pool_seq")
    T, N, C, H, W = x.shape
    cs = pixel_stride(x[0])
    if out.shape != (T, N, C, H // 2, W // 2) or H < 2 or W < 2 or cs is None or not _cl_dense(out[0]):
        raise ValueError(f"lif_pool_seq: needs channels-last x [T, N, C, H>=2, W>=2] and out [T, N, C, H//2, W//2], "
                         f"got {tuple(x.shape)} -> {tuple(out.shape)}")
    rc = lib.sdsnn_lif_pool_seq(x.data_ptr(), x.stride(0), out.data_ptr(), out.stride(0), N, H, W, C, cs, T,
                                mode, k, thr, threads)
    _raise_for(rc, "lif_pool_seq")


def conv1ch_out_shape(x, weight, stride, padding, dilation) -> tuple[int, int, int, int]:
    """``(N, OH, OW, C)``: the channels-last output shape of :func:`conv1ch` for ``x`` [N, 1, H, W]
    and ``weight`` [C, 1, kh, kw], as torch computes a convolution's output size."""
    sizes = (
        (size + 2 * p - d * (k - 1) - 1) // s + 1
        for size, k, s, p, d in zip(x.shape[2:], weight.shape[2:], stride, padding, dilation)
    )
    oh, ow = sizes
    return x.shape[0], oh, ow, weight.shape[0]


def needs_grad(*tensors) -> bool:
    """Whether autograd records an operation on these tensors (None entries ignored)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def conv1ch_torch(x, weight, bias, stride, padding, dilation, group: int = 8):
    """The convolution of a 1-channel input ``x`` [N, 1, H, W] with ``weight`` [C, 1, kh, kw] (and
    ``bias`` [C] or None), zero padding, as :func:`conv1ch` computes it: each output is
    ``((w_0 x_0 + w_1 x_1) + ... + w_{K-1} x_{K-1}) + b``, kernel positions in row-major order,
    every product and sum rounded to float32 on its own.  No output value depends on how many
    output channels there are, so a first layer with pruned channels removed computes the kept
    ones exactly (unlike a GEMM, whose kernel choice depends on the width).  Differentiable;
    returns a channels-last [N, C, OH, OW] tensor.  Without gradients it works through ``group``
    images at a time in reused buffers, which stay in cache."""
    n, oh, ow, C = conv1ch_out_shape(x, weight, stride, padding, dilation)
    kh, kw = weight.shape[2:]
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    xp = torch.nn.functional.pad(x, (pw, pw, ph, ph))
    taps = [(ky, kx) for ky in range(kh) for kx in range(kw)]

    def tap(xg, ky, kx):  # the inputs kernel position (ky, kx) reads, [g, 1, OH, OW]
        return xg[:, :, ky * dh: ky * dh + (oh - 1) * sh + 1: sh, kx * dw: kx * dw + (ow - 1) * sw + 1: sw]

    def w_at(ky, kx):
        return weight[:, :, ky, kx].reshape(1, C, 1, 1)

    if needs_grad(x, weight, bias):
        acc = None
        for ky, kx in taps:
            t = tap(xp, ky, kx) * w_at(ky, kx)  # [N, C, OH, OW]: products, rounded
            acc = t if acc is None else acc.add_(t)
        if bias is not None:
            acc = acc.add_(bias.reshape(1, C, 1, 1))
        return acc.contiguous(memory_format=torch.channels_last)
    out = x.new_empty((n, oh, ow, C))
    acc = x.new_empty((min(group, n), C, oh, ow))
    tmp = torch.empty_like(acc)
    for i in range(0, n, group):
        xg = xp[i:i + group]
        a, t = acc[:xg.shape[0]], tmp[:xg.shape[0]]
        for j, (ky, kx) in enumerate(taps):
            if j == 0:
                torch.mul(tap(xg, ky, kx), w_at(ky, kx), out=a)
            else:
                a.add_(torch.mul(tap(xg, ky, kx), w_at(ky, kx), out=t))
        if bias is not None:
            a.add_(bias.reshape(1, C, 1, 1))
        out[i:i + group].copy_(a.permute(0, 2, 3, 1))
    return out.permute(0, 3, 1, 2)


def conv1ch(lib: ctypes.CDLL, x, weight, bias, stride, padding, dilation, out=None, threads: int = 1):
    """:func:`conv1ch_torch` by the C kernel, without gradients: ``x`` [N, 1, H, W] dense float32;
    returns a channels-last [N, C, OH, OW] tensor, written into ``out`` ([N, OH, OW, C], dense)
    when given."""
    n, oh, ow, C = conv1ch_out_shape(x, weight, stride, padding, dilation)
    kh, kw = weight.shape[2:]
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    H, W = x.shape[2:]
    if out is None:
        out = x.new_empty((n, oh, ow, C))
    _check(x, out, "conv1ch")
    x = x.contiguous()
    wt = weight.detach().to(torch.float32).reshape(C, kh * kw).t().contiguous()  # [kh*kw, C]
    b = None if bias is None else bias.detach().to(torch.float32).contiguous()
    if x.shape[1] != 1 or out.shape != (n, oh, ow, C) or not out.is_contiguous() or min(oh, ow) < 1:
        raise ValueError(f"conv1ch: needs x [N, 1, H, W] and out [N, {oh}, {ow}, {C}], got {tuple(x.shape)} -> "
                         f"{tuple(out.shape)}")
    rc = lib.sdsnn_conv1ch(x.data_ptr(), n, H, W, wt.data_ptr(), None if b is None else b.data_ptr(), C,
                           kh, kw, sh, sw, ph, pw, dh, dw, out.data_ptr(), oh, ow, threads)
    _raise_for(rc, "conv1ch")
    return out.permute(0, 3, 1, 2)
