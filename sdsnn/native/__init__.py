"""Native CPU kernels for inference, compiled on first use with the system C compiler.

``lif.c`` holds fused multi-step LIF/PLIF neurons (and LIF + 2x2 max-pool) for stateless CPU
inference (:meth:`sdsnn.SpikingNet.predict`): one pass over a layer's input instead of the four or
five element-wise passes of the torch route, with the same float arithmetic, so the spikes are
bit-identical (tests/test_native.py).  They make inference faster for every network and bring a
compacted network's time closer to its operation count, since per-neuron work is a large share of
a narrow network's time (benchmarks/bench_compaction.py).

The library is built once per machine and source version into ``$SDSNN_NATIVE_CACHE`` (default
``~/.cache/sdsnn/native``) with ``$CC`` (or ``cc``/``gcc``/``clang``) and ``-march=native``; the
build takes under a second.  Without a compiler, or with ``SDSNN_NATIVE=0``, everything runs on
the torch kernels: same results, slower.  :func:`status` says which applies and why.
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

__all__ = ["load", "status", "set_enabled", "cache_dir", "lif_seq", "lif_pool_seq", "SWITCH"]

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("lif.c")
#: ``-ffp-contract=off``: no fused multiply-add, so every operation rounds as torch's kernels do.
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-fast-math", "-std=c99", "-pthread",
         "-shared", "-fPIC")
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
    machines must not hand one machine another's build)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return platform.machine() + line
    except OSError:
        pass
    return platform.machine() + platform.processor()


def _build(cc: str) -> Path:
    src = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([src, " ".join(FLAGS).encode(), cc.encode(), _cpu_key().encode()]))
    out_dir = cache_dir()
    lib = out_dir / f"lif-{key.hexdigest()[:16]}.so"
    if lib.is_file():
        return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    # build beside the target, then rename: processes building at once (Ray workers) never see a
    # half-written library
    fd, tmp = tempfile.mkstemp(prefix=lib.stem + ".", suffix=".so.tmp", dir=out_dir)
    os.close(fd)
    try:
        r = subprocess.run([cc, *FLAGS, "-o", tmp, str(SOURCE)], capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise RuntimeError(f"{Path(cc).name} failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
        os.replace(tmp, lib)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return lib


def _declare(lib: ctypes.CDLL) -> None:
    P, L, I, F = ctypes.c_void_p, ctypes.c_long, ctypes.c_int, ctypes.c_float
    lib.sdsnn_lif_seq.argtypes = [P, L, P, L, L, L, I, I, F, F, I]
    lib.sdsnn_lif_seq.restype = I
    lib.sdsnn_lif_pool_seq.argtypes = [P, L, P, L, L, L, L, L, I, I, F, F, I]
    lib.sdsnn_lif_pool_seq.restype = I


def load() -> Optional[ctypes.CDLL]:
    """The native library (built on first use), or None when it is switched off or cannot be
    built; the reason is kept for :func:`status`.  Tried once per process."""
    global _lib, _tried, _reason
    if _tried:
        return _lib
    with _lock:
        if _tried:
            return _lib
        try:
            if os.environ.get(SWITCH, "1").strip().lower() in ("0", "off", "false", "no"):
                _reason = f"switched off ({SWITCH}={os.environ[SWITCH]})"
            elif platform.system() == "Windows":
                _reason = "not built on Windows"
            elif (cc := find_compiler()) is None:
                _reason = "no C compiler found (set CC, or install gcc)"
            else:
                path = _build(cc)
                lib = ctypes.CDLL(str(path))
                _declare(lib)
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
    """Turn the native kernels off (``False``) or on again (``True``: built if needed) for this
    process; ``None`` goes back to the ``SDSNN_NATIVE`` variable.  For benchmarks that compare
    both routes in one run."""
    global _lib, _tried, _reason
    with _lock:
        _lib, _tried, _reason = None, False, "not loaded yet"
    if on is False:
        with _lock:
            _tried, _reason = True, "switched off (set_enabled(False))"
        return
    if on is True:
        saved = os.environ.pop(SWITCH, None)
        try:
            load()
        finally:
            if saved is not None:
                os.environ[SWITCH] = saved


def status() -> str:
    """One line: whether the native kernels are in use, and why not."""
    load()
    return _reason


def lif_seq(lib: ctypes.CDLL, x, out, mode: int, k: float, thr: float, threads: int) -> None:
    """Neurons from rest over ``x`` [T, N, ...] into ``out`` (same shape); each time step of
    ``x`` and ``out`` must be dense with the same strides, samples outermost (the caller checks)."""
    T, N = x.shape[0], x.shape[1]
    per = x[0].numel() // max(N, 1)
    rc = lib.sdsnn_lif_seq(x.data_ptr(), x.stride(0), out.data_ptr(), out.stride(0), N, per, T,
                           mode, k, thr, threads)
    if rc:
        raise MemoryError("sdsnn native LIF kernel: out of memory")


def lif_pool_seq(lib: ctypes.CDLL, x, out, mode: int, k: float, thr: float, threads: int) -> None:
    """Neurons from rest over channels-last ``x`` [T, N, C, H, W], then 2x2 max-pool, into
    channels-last ``out`` [T, N, C, H//2, W//2]."""
    T, N, C, H, W = x.shape
    rc = lib.sdsnn_lif_pool_seq(x.data_ptr(), x.stride(0), out.data_ptr(), out.stride(0), N, H, W, C, T,
                                mode, k, thr, threads)
    if rc:
        raise MemoryError("sdsnn native LIF kernel: out of memory")
