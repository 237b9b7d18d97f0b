"""Batch loaders over in-memory uint8 arrays, and :func:`build_loaders`.

Batches are cut by index slicing from one tensor (no per-sample ``__getitem__``) and converted
to float per batch, which keeps a 2-core CPU busy with the network rather than the data.

Randomness (shuffling, augmentation, Poisson spikes) comes from a ``torch.Generator`` seeded
by (seed, stream, epoch): the train loader's batches are a pure function of the seed and the
epoch set with :meth:`BatchLoader.set_epoch`, so a resumed run sees identical batches.
Validation and test loaders iterate in fixed order and re-seed on every pass, so Poisson
inputs are the same at every evaluation. Each batch draws its augmentation and spikes from its
own generator, seeded by (seed, stream, epoch, batch index), so batches can be prepared in
background threads (``data.num_workers``) and still come out identical to a single-threaded pass.
"""

from __future__ import annotations

import math
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from typing import Iterator, Optional

import numpy as np
import torch

from ..config import DataConfig
from .augment import rand_augment, random_crop_flip
from .registry import Dataset, SplitArrays, get_dataset
from .roots import data_roots

__all__ = ["BatchLoader", "DataBundle", "build_loaders", "split_train_val", "derive_seed"]

_STREAMS = {"train": 0, "val": 1, "test": 2, "split": 3}


def derive_seed(seed: int, stream: int, epoch: int = 0, batch: Optional[int] = None) -> int:
    """A 63-bit seed that depends on all the numbers given (via numpy's SeedSequence)."""
    words = [int(seed) % (1 << 63), int(stream), int(epoch) % (1 << 63)]
    if batch is not None:
        words.append(int(batch))
    ss = np.random.SeedSequence(words)
    return int(ss.generate_state(1, dtype=np.uint64)[0]) & ((1 << 63) - 1)


def split_train_val(n: int, val_fraction: float, seed: int,
                    groups: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint (train, val) index arrays covering ``range(n)``; a fixed function of ``seed``.

    Both are returned sorted, so the split does not depend on anything but (n, fraction, seed,
    groups). Without ``groups`` the validation set is ``round(n * val_fraction)`` samples drawn at
    random. With ``groups`` (one id per sample, e.g. the subject of a recording) it is made of
    whole groups: the first groups of a seeded random order, as many as bring the count closest
    to that number (at least one; at least one group stays for training). With few groups (a
    ``train_limit`` that keeps two or three subjects) the fraction is necessarily coarse. With a
    single group there is nothing to hold out, and the samples are split as without groups.
    """
    n_val = int(round(n * val_fraction))
    n_val = min(max(n_val, 1), n - 1) if n >= 2 else 0
    g = torch.Generator().manual_seed(derive_seed(seed, _STREAMS["split"]))
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != (n,):
            raise ValueError(f"groups has shape {groups.shape}, expected ({n},)")
        ids, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
        if len(ids) >= 2 and n_val > 0:
            order = torch.randperm(len(ids), generator=g).numpy()
            # held out: the first k groups of that order, k (1 .. all but one) bringing the count
            # closest to n_val (a tie goes to the larger)
            diff = np.abs(np.cumsum(sizes[order])[: len(ids) - 1] - n_val)
            k = int(np.flatnonzero(diff == diff.min())[-1]) + 1
            held = np.isin(inverse, order[:k])
            return np.flatnonzero(~held), np.flatnonzero(held)
    perm = torch.randperm(n, generator=g).numpy()
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


class BatchLoader:
    """Iterates ``(x [T, B, C, H, W] float32, y [B] int64)`` batches.

    ``x`` holds uint8 images ``[N, C, H, W]`` (``events=False``) or uint8 event frames stored
    time-major, ``[T, N, C, H, W]`` (``events=True``), so a batch is one gather along dim 1. Images are scaled by ``1/max_value``, optionally
    augmented (``augment``: random crop with zero padding 4 and horizontal flip, per sample; then
    ``randaugment_ops > 0``: RandAugment with that many ops at ``randaugment_magnitude``, see
    :mod:`sdsnn.data.augment`), then either
    repeated over T (``direct``, normalised by mean/std when given; returned as an expanded view,
    no copy) or turned into Bernoulli spikes with probability equal to the intensity (``poisson``).

    ``num_workers > 0`` prepares up to ``2 * num_workers`` batches ahead in that many background
    threads (gather, conversion, augmentation and spikes run in torch ops that release the GIL),
    so the data work overlaps the training step, which matters when the step runs on a GPU.
    The batches are the same, in the same order, for any number of workers.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        batch_size: int,
        time_steps: int,
        seed: int,
        stream: str,
        shuffle: bool,
        encoding: str = "direct",
        events: bool = False,
        max_value: float = 255.0,
        mean: Optional[tuple[float, ...]] = None,
        std: Optional[tuple[float, ...]] = None,
        augment: bool = False,
        randaugment_ops: int = 0,
        randaugment_magnitude: int = 9,
        num_workers: int = 0,
    ) -> None:
        if x.dtype != torch.uint8:
            raise TypeError("BatchLoader expects uint8 data")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.num_workers = int(num_workers)
        self.x, self.y = x, y
        self.batch_size = int(batch_size)
        self.time_steps = int(time_steps)
        self.seed = int(seed)
        self.stream = stream
        self.shuffle = shuffle
        self.encoding = encoding
        self.events = events
        self.scale = 1.0 / float(max_value)
        c = x.shape[2] if events else x.shape[1]
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1) if mean else None
        self.std = torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1) if std else None
        self.augment = augment
        self.randaugment_ops = int(randaugment_ops)
        self.randaugment_magnitude = int(randaugment_magnitude)
        self.epoch = 0
        # Training with BatchNorm fails on a final batch of one sample: drop it (a different
        # sample each epoch, since the order is shuffled).
        n = len(self.y)
        self._n_used = n - 1 if (shuffle and n > 1 and n % self.batch_size == 1) else n

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose shuffling/augmentation/spikes the next iteration produces."""
        self.epoch = int(epoch)

    @property
    def num_samples(self) -> int:
        return self._n_used

    def __len__(self) -> int:
        return math.ceil(self._n_used / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        stream, epoch = _STREAMS.get(self.stream, 9), (self.epoch if self.shuffle else 0)
        order = None
        if self.shuffle:
            g = torch.Generator().manual_seed(derive_seed(self.seed, stream, epoch))
            order = torch.randperm(len(self.y), generator=g)[: self._n_used]
        starts = range(0, self._n_used, self.batch_size)

        def make(j: int, start: int) -> tuple[torch.Tensor, torch.Tensor]:
            stop = start + self.batch_size
            if order is None:
                xb = self.x[:, start:stop] if self.events else self.x[start:stop]
                yb = self.y[start:stop]
            else:
                idx = order[start:stop]
                xb = self.x.index_select(1 if self.events else 0, idx)
                yb = self.y[idx]
            g = torch.Generator().manual_seed(derive_seed(self.seed, stream, epoch, batch=j))
            return self._convert(xb, g), yb

        if self.num_workers == 0:
            for j, start in enumerate(starts):
                yield make(j, start)
            return
        # Background threads, results handed out in order; at most 2 * num_workers in flight.
        pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="sdsnn-batches")
        try:
            jobs = iter(enumerate(starts))
            pending = deque(pool.submit(make, j, s) for j, s in islice(jobs, 2 * self.num_workers))
            while pending:
                batch = pending.popleft().result()
                for j, s in islice(jobs, 1):
                    pending.append(pool.submit(make, j, s))
                yield batch
        finally:  # also when the consumer stops early: drop what was not started
            pool.shutdown(wait=True, cancel_futures=True)

    # ------------------------------------------------------------------ conversion
    def _convert(self, xb: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if self.events:  # [T, B, C, H, W] uint8 counts -> float
            return xb.to(torch.float32, memory_format=torch.contiguous_format)
        x = xb.to(torch.float32).mul_(self.scale)
        if self.augment:
            x = random_crop_flip(x, g, pad=4)
        if self.randaugment_ops:  # on [0, 1] images, before normalisation or spikes
            x = rand_augment(x, g, self.randaugment_ops, self.randaugment_magnitude)
        T = self.time_steps
        if self.encoding == "poisson":
            return (torch.rand((T, *x.shape), generator=g) < x.unsqueeze(0)).to(torch.float32)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x.unsqueeze(0).expand(T, *x.shape)


@dataclass
class DataBundle:
    """What :func:`build_loaders` returns (see docs/internals.md)."""

    train: BatchLoader
    val: BatchLoader
    test: BatchLoader
    num_classes: int
    input_shape: tuple[int, int, int]
    static_input: bool
    sizes: dict[str, int] = field(default_factory=dict)
    dataset: str = ""
    time_steps: int = 1


def build_loaders(cfg: DataConfig, seed: int, *, download: bool = False, progress: bool = True) -> DataBundle:
    """Train / validation / test loaders for ``cfg.dataset``.

    The validation set is ``cfg.val_fraction`` of the (limited) training set, chosen with
    ``seed`` (whole subjects where the dataset names them, see :func:`split_train_val`); the test
    set is the dataset's own. Raises :class:`~sdsnn.errors.DatasetUnavailable`
    (one line, before anything is written) when the files are missing, unless ``download`` is
    True and the download succeeds.
    """
    ds: Dataset = get_dataset(cfg.dataset)
    roots = data_roots(cfg.data_root)
    root = ds.find(roots)
    if root is None:
        if download:
            ds.fetch(roots)
        root = ds.require(roots)
    tr = ds.load(root, "train", cfg, limit=cfg.train_limit, progress=progress)
    te = ds.load(root, "test", cfg, limit=cfg.test_limit, progress=progress)
    idx_tr, idx_val = split_train_val(len(tr), cfg.val_fraction, seed, groups=tr.groups)

    events = ds.kind == "event"
    common = dict(
        time_steps=cfg.time_steps,
        seed=seed,
        encoding="direct" if events else cfg.encoding,
        events=events,
        max_value=getattr(ds, "max_value", 255.0),
        mean=None if events else getattr(ds, "mean", None),
        std=None if events else getattr(ds, "std", None),
        num_workers=cfg.num_workers,
    )

    def tensors(a: SplitArrays, idx: Optional[np.ndarray] = None) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = (a.x, a.y) if idx is None else (a.x[idx], a.y[idx])
        if events:  # frames [N, T, C, H, W] -> time-major [T, N, C, H, W] (one copy)
            x = np.ascontiguousarray(x.transpose(1, 0, 2, 3, 4))
        # read-only arrays (the per-process cache) are copied so that torch owns writable memory
        x = np.ascontiguousarray(x) if x.flags.writeable else np.array(x, copy=True)
        y = np.array(y, dtype=np.int64, copy=not y.flags.writeable or y.dtype != np.int64)
        return torch.from_numpy(x), torch.from_numpy(y)

    xt, yt = tensors(tr, idx_tr)
    xv, yv = tensors(tr, idx_val)
    xs, ys = tensors(te)
    # augmentation applies to natural images only (ignored for digits, MNIST, events), train only
    augmentable = bool(getattr(ds, "augmentable", False))
    augment = dict(augment=bool(cfg.augment and augmentable),
                   randaugment_ops=cfg.randaugment_ops if augmentable else 0,
                   randaugment_magnitude=cfg.randaugment_magnitude)
    train = BatchLoader(xt, yt, batch_size=cfg.batch_size, stream="train", shuffle=True, **augment, **common)
    val = BatchLoader(xv, yv, batch_size=cfg.eval_batch_size, stream="val", shuffle=False, **common)
    test = BatchLoader(xs, ys, batch_size=cfg.eval_batch_size, stream="test", shuffle=False, **common)
    return DataBundle(
        train=train,
        val=val,
        test=test,
        num_classes=ds.num_classes,
        input_shape=tuple(ds.shape_for(cfg)),
        static_input=(not events) and cfg.encoding == "direct",
        sizes={"train": len(yt), "val": len(yv), "test": len(ys)},
        dataset=ds.name,
        time_steps=cfg.time_steps,
    )
