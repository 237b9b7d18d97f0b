"""Event-camera datasets (N-MNIST, DVS-Gesture) through tonic, with an on-disk frame cache.

Recordings are read with tonic's own dataset classes (subclassed so that a partial copy loads:
tonic's check wants the archive and 10,000 / 100 files) and turned into T frames with tonic's
transforms: optional ``Denoise(filter_time)``, optional spatial ``Downsample`` to
``cfg.resolution``, then ``ToFrame(n_time_bins=T)``. Frames hold event counts per (time bin,
polarity, pixel), saturated at 255 and stored as uint8.

The frames of one split are converted once and cached as ``<cache>/frames/<name>.npz`` (see
:func:`sdsnn.data.roots.frames_dir`), keyed by a hash of everything that changes them: dataset,
split, T, resolution, denoise, the sorted file list with sizes, and a format version. The file is
written atomically, and later epochs, later trials and later processes load it.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Optional, Sequence

import numpy as np

from ..errors import DatasetUnavailable
from .download import missing_dirs, remove_created, short_reason, socket_timeout
from .registry import Dataset, SplitArrays, register_dataset
from .roots import atomic_path, frames_dir, writable_root

__all__ = ["EventDataset", "NMNISTEvents", "DVSGestureEvents", "frame_cache_path", "FRAME_CACHE_VERSION"]

FRAME_CACHE_VERSION = 1


@lru_cache(maxsize=None)
def _partial_tonic_class(tonic_name: str, ext: str) -> type:
    """A subclass of ``tonic.datasets.<tonic_name>`` that accepts partial copies.

    It keeps the class name (tonic looks for a folder named after the class) and only requires
    the split folder to hold at least one recording instead of the archive plus the full count.
    """
    import tonic.datasets

    base = getattr(tonic.datasets, tonic_name)

    def _check_exists(self) -> bool:
        folder = Path(self.location_on_system, self.folder_name)
        return folder.is_dir() and next(folder.rglob(f"*{ext}"), None) is not None

    def download(self) -> None:  # never download from the constructor: callers check first
        raise DatasetUnavailable(f"{tonic_name}: no recordings in {Path(self.location_on_system, self.folder_name)}")

    return type(tonic_name, (base,), {"_check_exists": _check_exists, "download": download, "__module__": __name__})


class EventDataset(Dataset):
    """A tonic event dataset turned into cached frames. Subclasses set the class attributes."""

    kind: ClassVar[str] = "event"
    tonic_name: ClassVar[str] = ""
    ext: ClassVar[str] = ".bin"
    split_folders: ClassVar[dict[str, str]] = {}
    sensor_size: ClassVar[tuple[int, int, int]] = (1, 1, 2)  # tonic order: (W, H, P)
    tonic_kwargs: ClassVar[dict[str, Any]] = {}

    @property
    def folder(self) -> str:  # type: ignore[override]
        return self.tonic_name

    @property
    def input_shape(self) -> tuple[int, int, int]:  # type: ignore[override]
        w, h, p = self.sensor_size
        return (p, h, w)

    def expected_files(self) -> str:
        return " and ".join(f"{f}/.../*{self.ext}" for f in self.split_folders.values())

    def _split_dir(self, root: Path, split: str) -> Path:
        return root / self.tonic_name / self.split_folders[split]

    def _files(self, root: Path, split: str) -> list[Path]:
        d = self._split_dir(root, split)
        return sorted(d.rglob(f"*{self.ext}")) if d.is_dir() else []

    def is_present(self, root: Path) -> bool:
        return all(
            self._split_dir(root, s).is_dir() and next(self._split_dir(root, s).rglob(f"*{self.ext}"), None) is not None
            for s in self.split_folders
        )

    def counts(self, root: Path) -> dict[str, int]:
        return {s: len(self._files(root, s)) for s in self.split_folders}

    def shape_for(self, cfg: Any) -> tuple[int, int, int]:
        p, h, w = self.input_shape
        r = getattr(cfg, "resolution", None)
        if r is None or r == w:
            return (p, h, w)
        return (p, int(round(h * r / w)), int(r))  # resolution is the new width; height keeps the aspect

    # ------------------------------------------------------------------ reading
    def sort_key(self, path: str, target: int) -> Any:
        """Order of samples (``train_limit`` keeps the first N): by default the path."""
        return path

    def groups_for(self, files: Sequence[str]) -> Optional[np.ndarray]:
        """Who recorded each file (see :attr:`SplitArrays.groups`), or None: by default None."""
        return None

    def tonic_dataset(self, root: Path, split: str, transform: Any = None) -> Any:
        cls = _partial_tonic_class(self.tonic_name, self.ext)
        ds = cls(str(root), train=(split == "train"), transform=transform, **self.tonic_kwargs)
        order = sorted(range(len(ds.data)), key=lambda i: self.sort_key(ds.data[i], ds.targets[i]))
        ds.data = [ds.data[i] for i in order]
        ds.targets = [ds.targets[i] for i in order]
        for extra in ("users", "lighting"):
            if isinstance(getattr(ds, extra, None), list) and len(getattr(ds, extra)) == len(order):
                setattr(ds, extra, [getattr(ds, extra)[i] for i in order])
        return ds

    def transform(self, cfg: Any) -> Any:
        import tonic.transforms as tt

        c, h, w = self.shape_for(cfg)
        steps = []
        if getattr(cfg, "denoise_us", None):
            steps.append(tt.Denoise(filter_time=float(cfg.denoise_us)))
        if (h, w) != self.input_shape[1:]:
            steps.append(tt.Downsample(spatial_factor=(w / self.sensor_size[0], h / self.sensor_size[1])))
        steps.append(tt.ToFrame(sensor_size=(w, h, c), n_time_bins=int(cfg.time_steps)))
        return tt.Compose(steps)

    def cache_key(self, root: Path, split: str, cfg: Any, files: Sequence[str]) -> str:
        """Everything the frames depend on: the settings, tonic's version (its binning rules), and
        per recording its place, size and modification time (another data root with the same
        layout, or a recording rewritten in place, gets its own entry)."""
        import tonic

        base = root / self.tonic_name
        desc = {
            "version": FRAME_CACHE_VERSION,
            "dataset": self.name,
            "split": split,
            "time_steps": int(cfg.time_steps),
            "shape": list(self.shape_for(cfg)),
            "denoise_us": getattr(cfg, "denoise_us", None),
            "tonic": self.tonic_kwargs,
            "tonic_version": getattr(tonic, "__version__", "?"),
            "root": str(Path(base).resolve()),
            "files": [[os.path.relpath(f, base), st.st_size, st.st_mtime_ns] for f in files for st in [os.stat(f)]],
        }
        return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:20]

    def load(self, root: Path, split: str, cfg: Any, limit: Optional[int] = None, progress: bool = False) -> SplitArrays:
        ds = self.tonic_dataset(root, split, transform=self.transform(cfg))
        n = len(ds.data) if limit is None else min(limit, len(ds.data))
        files = ds.data[:n]
        groups = self.groups_for(files)
        path = frame_cache_path(self.name, split, cfg, self.cache_key(root, split, cfg, files))
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as z:
                    return SplitArrays(z["frames"], z["labels"], groups)
            except (OSError, ValueError, KeyError):
                path.unlink(missing_ok=True)  # unreadable cache: rebuild it
        c, h, w = self.shape_for(cfg)
        frames = np.empty((n, int(cfg.time_steps), c, h, w), dtype=np.uint8)
        labels = np.asarray(ds.targets[:n], dtype=np.int64)
        it = range(n)
        if progress:
            from tqdm import tqdm

            it = tqdm(it, desc=f"{self.name} {split} -> frames", unit="rec", leave=False)
        for i in it:
            f, _ = ds[i]
            if getattr(getattr(f, "dtype", None), "names", None):
                # tonic's Compose stops at an empty event array (an empty recording, or one that
                # Denoise emptied) and hands back events, not frames: no event, no count
                frames[i] = 0
                continue
            np.clip(f, 0, 255, out=frames[i], casting="unsafe")
        with atomic_path(path, suffix=".npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, frames=frames, labels=labels)
        return SplitArrays(frames, labels, groups)

    # ------------------------------------------------------------------ downloading
    def fetch(self, roots: Sequence[Path]) -> Path:
        root = writable_root(roots)
        if root is None:
            raise DatasetUnavailable(f"{self.name}: no writable data root among {', '.join(map(str, roots))}; pass --data-root DIR with a folder you can write")
        import tonic.datasets

        base = getattr(tonic.datasets, self.tonic_name)
        target = root / self.tonic_name
        created = missing_dirs(target)
        try:
            with socket_timeout():
                for train in (True, False):
                    base(str(root), train=train, **self.tonic_kwargs)
        except Exception as e:  # tonic raises URLError, OSError, RuntimeError on failures
            remove_created(created)
            raise DatasetUnavailable(
                f"{self.name}: download through tonic failed ({short_reason(e)}); place {self.expected_files()} "
                f"in {target}/ (tonic's layout) and run `sdsnn-search data check {self.name}`"
            ) from None
        return root


def frame_cache_path(name: str, split: str, cfg: Any, key: str) -> Path:
    """Where the frames of one split are cached for a given key."""
    res = getattr(cfg, "resolution", None) or "native"
    return frames_dir() / f"{name}-{split}-T{int(cfg.time_steps)}-{res}-{key}.npz"


# ------------------------------------------------------------------------- N-MNIST
@register_dataset("nmnist")
class NMNISTEvents(EventDataset):
    """N-MNIST (Orchard et al. 2015): saccade recordings of MNIST digits, 34x34x2.

    Samples are ordered by recording number (the MNIST index), so ``train_limit`` keeps a mix
    of classes; partial copies (such as the 1,000 / 100 subset in ../shared) load.
    """

    tonic_name = "NMNIST"
    ext = ".bin"
    split_folders = {"train": "Train", "test": "Test"}
    sensor_size = (34, 34, 2)
    num_classes = 10
    full_counts = {"train": 60000, "test": 10000}
    description = "N-MNIST event recordings, 34x34x2"

    def sort_key(self, path: str, target: int) -> Any:
        stem = os.path.splitext(os.path.basename(path))[0]
        return (int(stem) if stem.isdigit() else 1 << 62, path)


# ------------------------------------------------------------------------- DVS-Gesture
@register_dataset("dvsgesture")
class DVSGestureEvents(EventDataset):
    """IBM DVS-Gesture (Amir et al. 2017), tonic's preprocessed layout, 128x128x2, 11 classes.

    ``DVSGesture/ibmGestureTrain/userNN_<lighting>/<label>.npy`` (and ``ibmGestureTest``), each an
    (n, 4) array of x, y, p, t with t in milliseconds. ``cfg.resolution`` (64, 48, 32, ...)
    downsamples the frames spatially. The test set's subjects are not among the training set's,
    so the validation split holds out whole subjects too (the ``userNN`` part of the folder).
    """

    tonic_name = "DVSGesture"
    ext = ".npy"
    split_folders = {"train": "ibmGestureTrain", "test": "ibmGestureTest"}
    sensor_size = (128, 128, 2)
    num_classes = 11
    full_counts = {"train": 1077, "test": 264}
    description = "IBM DVS-Gesture event recordings, 128x128x2"

    def sort_key(self, path: str, target: int) -> Any:
        p = Path(path)
        return (p.parent.name, int(p.stem) if p.stem.isdigit() else 1 << 62)

    def groups_for(self, files: Sequence[str]) -> Optional[np.ndarray]:
        return np.array([Path(f).parent.name.split("_")[0] for f in files])
