"""Image datasets: scikit-learn digits (built in), MNIST (idx files) and CIFAR-10 (pickles).

Images are read with numpy into uint8 arrays ``[N, C, H, W]`` and kept in memory; the loaders
slice batches out of them and convert to float per batch.
"""

from __future__ import annotations

import abc

import gzip
import os
import pickle
import shutil
import tarfile
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Optional, Sequence

import numpy as np

from ..errors import ConfigError, DatasetUnavailable, UserError, where_raised
from .download import download_file, missing_dirs, remove_created, short_reason
from .registry import Dataset, SplitArrays, register_dataset
from .roots import atomic_path, writable_root

__all__ = ["ImageDataset", "Digits", "MNIST", "CIFAR10", "read_idx"]


class ImageDataset(Dataset):
    """A dataset of uint8 images held in memory. Subclasses implement :meth:`read`.

    ``max_value`` maps stored values to [0, 1] (255 for 8-bit images). ``mean``/``std`` (per
    channel, on the [0, 1] scale) normalise direct-encoded inputs; Poisson coding uses the raw
    [0, 1] intensities as firing probabilities.
    """

    kind: ClassVar[str] = "image"
    files: ClassVar[tuple[str, ...]] = ()
    max_value: ClassVar[float] = 255.0
    mean: ClassVar[Optional[tuple[float, ...]]] = None
    std: ClassVar[Optional[tuple[float, ...]]] = None
    augmentable: ClassVar[bool] = False  # random crop + flip make sense (natural images)

    def expected_files(self) -> str:
        return ", ".join(self.files)

    def _file(self, folder: Path, name: str) -> Optional[Path]:
        for cand in (folder / name, folder / (name + ".gz")):
            if cand.is_file():
                return cand
        return None

    def is_present(self, root: Path) -> bool:
        folder = root / self.folder
        return all(self._file(folder, f) is not None for f in self.files)

    def _incomplete(self, roots: Sequence[Path]) -> Optional[tuple[Path, list[str]]]:
        """The first root's folder that holds some of the files but not all, and the missing ones."""
        for r in roots:
            folder = Path(r) / self.folder
            missing = [f for f in self.files if self._file(folder, f) is None]
            if 0 < len(missing) < len(self.files):
                return folder, missing
        return None

    def absent_note(self, roots: Sequence[Path]) -> str:
        part = self._incomplete(roots)
        if part is None:
            return super().absent_note(roots)
        return f"incomplete in {part[0]}: missing {', '.join(part[1])}"

    def missing_message(self, roots: Sequence[Path]) -> str:
        part = self._incomplete(roots)
        if part is None:
            return super().missing_message(roots)
        return (f"dataset '{self.name}' is incomplete in {part[0]}: missing {', '.join(part[1])}; run "
                f"`sdsnn-search data fetch {self.name}` or copy the missing files there")

    def counts(self, root: Path) -> dict[str, int]:
        return {s: len(self._read_cached(str(root / self.folder), s)[1]) for s in ("train", "test")}

    def _download_root(self, roots: Sequence[Path]) -> Path:
        """Where ``fetch`` puts the files: the first writable data root."""
        root = writable_root(roots)
        if root is None:
            raise DatasetUnavailable(
                f"{self.name}: no writable data root among {', '.join(map(str, roots))}; "
                "pass --data-root DIR with a folder you can write"
            )
        return root

    @abc.abstractmethod
    def read(self, folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Return (uint8 images [N, C, H, W], int64 labels [N]) of ``split``."""

    def _read_cached(self, folder: str, split: str) -> tuple[np.ndarray, np.ndarray]:
        return _cached_read(type(self), folder, split)

    def load(self, root: Path, split: str, cfg: Any, limit: Optional[int] = None, progress: bool = False) -> SplitArrays:
        x, y = self._read_cached(str(root / self.folder), split)
        if limit is not None:
            x, y = x[:limit], y[:limit]
        return SplitArrays(x, y)


def _checked_arrays(ds: "ImageDataset", out: Any, split: str) -> tuple[np.ndarray, np.ndarray]:
    """What ``read`` returned must be what the loaders assume (uint8 images [N, C, H, W] of the
    declared ``input_shape``, int labels in [0, num_classes), one per image); a silent cast
    would wrap or zero the values and train on garbage. ConfigError naming the dataset otherwise."""
    where = f"dataset '{ds.name}': read({split!r})"
    if not isinstance(out, tuple) or len(out) != 2:
        raise ConfigError(f"{where} must return a tuple (images, labels), got {type(out).__name__}")
    x, y = np.asarray(out[0]), np.asarray(out[1])
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(ds.input_shape):
        raise ConfigError(f"{where} returned images of shape {tuple(x.shape)}; input_shape {tuple(ds.input_shape)} "
                          f"asks for [N, {', '.join(map(str, ds.input_shape))}]")
    if x.dtype != np.uint8:
        lossless = np.issubdtype(x.dtype, np.integer) and (not x.size or (int(x.min()) >= 0 and int(x.max()) <= 255))
        if not lossless:
            raise ConfigError(f"{where} returned {x.dtype} images (values {x.min() if x.size else '-'}.."
                              f"{x.max() if x.size else '-'}); return uint8 values 0..255, and set max_value "
                              f"when they do not run to 255 (e.g. 16 for 0..16)")
    if y.ndim != 1 or len(y) != len(x):
        raise ConfigError(f"{where} returned labels of shape {tuple(y.shape)} for {len(x)} images; give one label per image")
    if not np.issubdtype(y.dtype, np.integer):
        raise ConfigError(f"{where} returned {y.dtype} labels; return integers 0..{ds.num_classes - 1}")
    if y.size and (int(y.min()) < 0 or int(y.max()) >= ds.num_classes):
        raise ConfigError(f"{where} returned labels {int(y.min())}..{int(y.max())}; with num_classes "
                          f"{ds.num_classes} they must lie in 0..{ds.num_classes - 1}")
    return x, y


@lru_cache(maxsize=6)
def _cached_read(cls: type, folder: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    # One read per process and split: later trials in the same process reuse the arrays.
    ds = cls()
    try:
        out = ds.read(Path(folder), split)
    except UserError:
        raise
    except Exception as e:  # a bug in a dataset's read() (a plugin's, most likely): where it is, in one line
        raise ConfigError(f"dataset '{ds.name}': its read({split!r}) raised {type(e).__name__}: {e} "
                          f"({where_raised(e, type(ds).read)})") from None
    x, y = _checked_arrays(ds, out, split)
    x = np.ascontiguousarray(x, dtype=np.uint8)
    y = np.ascontiguousarray(y, dtype=np.int64)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


# ------------------------------------------------------------------------- digits
@register_dataset("digits")
class Digits(ImageDataset):
    """scikit-learn's bundled 8x8 digits (1,797 images, values 0-16): always available.

    The test set is a fixed stratified 20 % (360 images, independent of the run seed).
    """

    num_classes = 10
    input_shape = (1, 8, 8)
    needs_files = False
    max_value = 16.0
    description = "scikit-learn"

    def expected_files(self) -> str:
        return "nothing (bundled with scikit-learn)"

    def counts(self, root: Path) -> dict[str, int]:
        tr = len(self._read_cached("", "train")[1])
        te = len(self._read_cached("", "test")[1])
        return {"total": tr + te, "train": tr, "test": te}

    def load(self, root: Path, split: str, cfg: Any, limit: Optional[int] = None, progress: bool = False) -> SplitArrays:
        x, y = self._read_cached("", split)
        if limit is not None:
            x, y = x[:limit], y[:limit]
        return SplitArrays(x, y)

    def read(self, folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        d = load_digits()
        x = d.images.astype(np.uint8)[:, None]  # values 0..16, exact
        y = d.target.astype(np.int64)
        idx_tr, idx_te = train_test_split(np.arange(len(y)), test_size=0.2, stratify=y, random_state=0)
        idx = np.sort(idx_tr if split == "train" else idx_te)
        return x[idx], y[idx]

    def fetch(self, roots: Sequence[Path]) -> Path:
        return Path(".")


# ------------------------------------------------------------------------- MNIST
def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (optionally gzip-compressed) of unsigned bytes into a numpy array."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    if magic >> 8 != 0x08:  # 0x00000803 images, 0x00000801 labels: unsigned byte data
        raise DatasetUnavailable(f"{path}: not an idx file of unsigned bytes (magic {magic:#x}); replace it with the original file")
    ndim = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise DatasetUnavailable(f"{path}: truncated idx file ({arr.size} of {int(np.prod(dims))} values); download it again")
    return arr.reshape(dims)


def _idx_count(path: Path) -> int:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        head = f.read(8)
    return int.from_bytes(head[4:8], "big")


MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
MNIST_GZ_MD5 = {
    "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
}


@register_dataset("mnist")
class MNIST(ImageDataset):
    """MNIST from the four idx files in ``<root>/MNIST/raw/`` (uncompressed or .gz)."""

    folder = "MNIST/raw"
    files = tuple(MNIST_GZ_MD5)
    num_classes = 10
    input_shape = (1, 28, 28)
    full_counts = {"train": 60000, "test": 10000}
    description = "MNIST handwritten digits, 28x28"

    def _prefix(self, split: str) -> str:
        return "train" if split == "train" else "t10k"

    def counts(self, root: Path) -> dict[str, int]:
        folder = root / self.folder
        return {s: _idx_count(self._file(folder, f"{self._prefix(s)}-labels-idx1-ubyte")) for s in ("train", "test")}

    def read(self, folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
        p = self._prefix(split)
        x = read_idx(self._file(folder, f"{p}-images-idx3-ubyte"))[:, None]
        y = read_idx(self._file(folder, f"{p}-labels-idx1-ubyte")).astype(np.int64)
        if len(x) != len(y):
            raise DatasetUnavailable(f"{folder}: {p} images ({len(x)}) and labels ({len(y)}) differ in count; replace the files")
        return x, y

    def fetch(self, roots: Sequence[Path]) -> Path:
        root = self._download_root(roots)
        folder = root / self.folder
        how = (f"mnist: download from {MNIST_URL} failed ({{reason}}); place {', '.join(self.files)} "
               f"(uncompressed or .gz) in {folder}/ and run `sdsnn-search data check mnist`")
        with tempfile.TemporaryDirectory(prefix="sdsnn-mnist-") as tmp:
            try:
                for name, md5 in MNIST_GZ_MD5.items():
                    download_file(MNIST_URL + name + ".gz", Path(tmp) / (name + ".gz"), md5)
            except (OSError, ValueError) as e:
                raise DatasetUnavailable(how.format(reason=short_reason(e))) from None
            folder.mkdir(parents=True, exist_ok=True)
            for name in self.files:
                with gzip.open(Path(tmp) / (name + ".gz"), "rb") as src, atomic_path(folder / name) as dst:
                    with open(dst, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
        _cached_read.cache_clear()
        return root


# ------------------------------------------------------------------------- CIFAR-10
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR_MD5 = "c58f30108f718f92721af3b95e74349a"


@register_dataset("cifar10")
class CIFAR10(ImageDataset):
    """CIFAR-10 from the standard python pickles in ``<root>/cifar-10-batches-py/``."""

    folder = "cifar-10-batches-py"
    files = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
    num_classes = 10
    input_shape = (3, 32, 32)
    full_counts = {"train": 50000, "test": 10000}
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    augmentable = True
    description = "CIFAR-10 natural images, 32x32 RGB"

    def expected_files(self) -> str:
        return "data_batch_1..data_batch_5, test_batch"

    def _file(self, folder: Path, name: str) -> Optional[Path]:
        p = folder / name
        return p if p.is_file() else None

    @staticmethod
    def _unpickle(path: Path) -> dict:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")

    def read(self, folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
        names = self.files[:5] if split == "train" else self.files[5:]
        xs, ys = [], []
        for n in names:
            d = self._unpickle(folder / n)
            d = {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}  # py2 or py3 pickles
            if "data" not in d or "labels" not in d:
                raise DatasetUnavailable(f"{folder / n}: not a CIFAR-10 python batch (no 'data'/'labels'); replace it with the original file")
            xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(d["labels"], dtype=np.int64))
        return np.concatenate(xs), np.concatenate(ys)

    def fetch(self, roots: Sequence[Path]) -> Path:
        root = self._download_root(roots)
        folder = root / self.folder
        how = (f"cifar10: download from {CIFAR_URL} failed ({{reason}}); place {self.expected_files()} "
               f"(the python version, extracted) in {folder}/ and run `sdsnn-search data check cifar10`")
        with tempfile.TemporaryDirectory(prefix="sdsnn-cifar-") as tmp:
            archive = Path(tmp) / "cifar-10-python.tar.gz"
            try:
                download_file(CIFAR_URL, archive, CIFAR_MD5)
            except (OSError, ValueError) as e:
                raise DatasetUnavailable(how.format(reason=short_reason(e))) from None
            created = missing_dirs(root)
            root.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".cifar-", dir=root))
            try:
                with tarfile.open(archive, "r:gz") as tar:
                    tar.extractall(staging, filter="data")
                os.replace(staging / self.folder, folder)
            except BaseException:
                remove_created(created)
                raise
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        _cached_read.cache_clear()
        return root
