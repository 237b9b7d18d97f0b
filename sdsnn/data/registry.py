"""The dataset registry: every dataset is one small registered class.

A dataset class says where its files live under a data root, how to count and read them, and
how to fetch them. ``build_loaders`` only talks to this interface, so adding a dataset is::

    @register_dataset("fashion")
    class Fashion(ImageDataset):
        folder = "FashionMNIST/raw"
        files = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
        num_classes, input_shape = 10, (1, 28, 28)

        def read(self, folder, split):          # -> (uint8 [N, C, H, W], int64 [N])
            return read_idx_pair(folder, "train" if split == "train" else "t10k")

Nothing here imports torch or tonic, so ``sdsnn-search data check`` stays fast.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional, Sequence, TypeVar

import numpy as np

from ..errors import ConfigError, DatasetUnavailable

__all__ = [
    "DATASETS",
    "register_dataset",
    "get_dataset",
    "Dataset",
    "DatasetStatus",
    "SplitArrays",
]


@dataclass
class SplitArrays:
    """One split held in memory.

    ``x``: uint8 images ``[N, C, H, W]`` (image datasets) or uint8 event-frame counts
    ``[N, T, C, H, W]`` (event datasets, saturated at 255); ``y``: int64 labels ``[N]``;
    ``groups``: optional ``[N]`` ids of who or what recorded each sample (DVS-Gesture's subjects).
    When given, the validation split takes whole groups, so that validation accuracy is measured on
    subjects the network never trained on, as the test set's are.
    """

    x: np.ndarray
    y: np.ndarray
    groups: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass
class DatasetStatus:
    """What ``data check`` reports for one dataset."""

    name: str
    state: str  # "present" | "partial" | "absent" | "built-in"
    where: Optional[Path]
    counts: dict[str, int] = field(default_factory=dict)
    note: str = ""


class Dataset(abc.ABC):
    """Base class of registered datasets (see :class:`ImageDataset` and :class:`EventDataset`).

    Subclasses set the class attributes and implement :meth:`is_present`, :meth:`counts`,
    :meth:`load` and optionally :meth:`fetch`.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "image"  # "image" | "event"
    num_classes: ClassVar[int] = 0
    input_shape: ClassVar[tuple[int, int, int]] = (1, 1, 1)  # native (C, H, W)
    folder: ClassVar[str] = ""  # relative to a data root
    needs_files: ClassVar[bool] = True  # False: built in (generated or bundled), always present
    full_counts: ClassVar[dict[str, int]] = {}  # split sizes of the complete dataset
    description: ClassVar[str] = ""

    # ---- locating
    def expected_files(self) -> str:
        """Human-readable description of the files expected under ``<root>/<folder>``."""
        return "its files"

    @abc.abstractmethod
    def is_present(self, root: Path) -> bool:
        """Whether ``root`` holds a usable (possibly partial) copy."""

    @abc.abstractmethod
    def counts(self, root: Path) -> dict[str, int]:
        """Sample counts per split of the copy under ``root``."""

    def find(self, roots: Sequence[Path]) -> Optional[Path]:
        """The first data root holding this dataset, or None (``.`` for a built-in dataset,
        ``needs_files = False``, which reads no files)."""
        if not self.needs_files:
            return Path(".")
        for r in roots:
            if self.is_present(r):
                return r
        return None

    def absent_note(self, roots: Sequence[Path]) -> str:
        """What ``data check`` says of an absent dataset."""
        return f"expected {self.expected_files()} in <root>/{self.folder}/"

    def missing_message(self, roots: Sequence[Path]) -> str:
        where = ", ".join(str(r) for r in roots)
        return (
            f"dataset '{self.name}' not found in data root {where}: expected {self.expected_files()} "
            f"in <root>/{self.folder}/; run `sdsnn-search data fetch {self.name}`, or copy the files "
            f"there, or point --data-root / SDSNN_DATA_ROOT at a folder that has them"
        )

    def require(self, roots: Sequence[Path]) -> Path:
        """The root to read from; raises :class:`DatasetUnavailable` (one line) when absent."""
        root = self.find(roots)
        if root is None:
            raise DatasetUnavailable(self.missing_message(roots))
        return root

    def status(self, roots: Sequence[Path]) -> DatasetStatus:
        if not self.needs_files:
            return DatasetStatus(self.name, "built-in", None, self.counts(Path(".")), note=self.description)
        root = self.find(roots)
        if root is None:
            return DatasetStatus(self.name, "absent", None, note=self.absent_note(roots))
        counts = self.counts(root)
        full = self.full_counts
        partial = bool(full) and any(counts.get(k, 0) < v for k, v in full.items())
        where = root / self.folder if self.folder else root
        return DatasetStatus(self.name, "partial" if partial else "present", where, counts)

    # ---- reading
    def shape_for(self, cfg: Any) -> tuple[int, int, int]:
        """Input shape (C, H, W) of the tensors produced for ``cfg``."""
        return self.input_shape

    @abc.abstractmethod
    def load(self, root: Path, split: str, cfg: Any, limit: Optional[int] = None, progress: bool = False) -> SplitArrays:
        """Read ``split`` ("train" | "test") into memory; only the first ``limit`` samples if given."""

    # ---- downloading
    def fetch(self, roots: Sequence[Path]) -> Path:
        """Download into the first writable root; raises DatasetUnavailable (one line) on failure."""
        raise DatasetUnavailable(
            f"dataset '{self.name}' cannot be downloaded automatically: place {self.expected_files()} "
            f"in <root>/{self.folder}/ under one of {', '.join(map(str, roots))}"
        )


#: name -> dataset instance
DATASETS: dict[str, Dataset] = {}

D = TypeVar("D", bound=type)


def register_dataset(name: str) -> Callable[[D], D]:
    """Class decorator: register a :class:`Dataset` subclass under ``name``."""

    def deco(cls: D) -> D:
        if name in DATASETS:
            raise ValueError(f"dataset '{name}' is already registered")
        cls.name = name
        DATASETS[name] = cls()
        return cls

    return deco


def get_dataset(name: str) -> Dataset:
    """The registered dataset ``name``; :class:`ConfigError` listing the known names otherwise."""
    from ..plugins import load_plugins

    load_plugins()  # before any lookup (each plugin once per process)
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join(sorted(DATASETS))
        raise ConfigError(f"data.dataset: unknown dataset '{name}' (known: {known})") from None
