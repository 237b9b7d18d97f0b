"""The offline data layer: a registry of datasets and loaders of spike-ready batches.

``build_loaders(cfg: DataConfig, seed) -> DataBundle`` gives train / val / test iterables of
``(x [T, B, C, H, W] float32, y [B] int64)``; see docs/internals.md and the README section
"Datasets". Importing this package does not import torch or tonic; ``build_loaders`` checks that
the files exist before it imports anything heavy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Sequence

from . import images as _images  # noqa: F401  (registers digits, mnist, cifar10)
from . import events as _events  # noqa: F401  (registers nmnist, dvsgesture)
from .check import check_datasets, fetch_dataset, format_status_table
from .events import EventDataset, frame_cache_path
from .images import ImageDataset, read_idx
from .registry import DATASETS, Dataset, DatasetStatus, SplitArrays, get_dataset, register_dataset
from .roots import cache_dir, data_roots, frames_dir

if TYPE_CHECKING:  # pragma: no cover
    from ..config import DataConfig
    from .loaders import BatchLoader, DataBundle

__all__ = [
    "build_loaders",
    "ensure_available",
    "DataBundle",
    "BatchLoader",
    "DATASETS",
    "register_dataset",
    "get_dataset",
    "Dataset",
    "ImageDataset",
    "EventDataset",
    "DatasetStatus",
    "SplitArrays",
    "data_roots",
    "cache_dir",
    "frames_dir",
    "frame_cache_path",
    "read_idx",
    "check_datasets",
    "fetch_dataset",
    "format_status_table",
]


def ensure_available(cfg: "DataConfig") -> None:
    """Raise :class:`sdsnn.errors.DatasetUnavailable` (one line) unless ``cfg.dataset`` is readable.

    Needs neither torch nor tonic: call it first for a fast failure on missing data.
    """
    get_dataset(cfg.dataset).require(data_roots(cfg.data_root))


def build_loaders(cfg: "DataConfig", seed: int, *, download: bool = False, progress: bool = True) -> "DataBundle":
    """Train / validation / test loaders for ``cfg`` (see :func:`sdsnn.data.loaders.build_loaders`).

    Raises :class:`sdsnn.errors.DatasetUnavailable` with one line when the dataset's files are
    missing (checked before torch is imported, so it fails fast).
    """
    ds = get_dataset(cfg.dataset)
    roots = data_roots(cfg.data_root)
    if not download:
        ds.require(roots)  # before torch is imported: a missing dataset fails fast
    from .loaders import build_loaders as _build

    return _build(cfg, seed, download=download, progress=progress)


def __getattr__(name: str) -> Any:
    if name in ("DataBundle", "BatchLoader"):
        from . import loaders

        return getattr(loaders, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
