"""``data check`` and ``data fetch``: status of each dataset and downloads, as plain functions."""

from __future__ import annotations

from typing import Optional, Sequence

from .registry import DATASETS, DatasetStatus, get_dataset
from .roots import data_roots

__all__ = ["check_datasets", "fetch_dataset", "format_status_table"]


def check_datasets(names: Optional[Sequence[str]] = None, data_root: Optional[str] = None) -> list[DatasetStatus]:
    """Status (present / partial / absent / built-in, where, sample counts) of each dataset."""
    from ..plugins import load_plugins

    load_plugins()
    roots = data_roots(data_root)
    return [get_dataset(n).status(roots) for n in (names or list(DATASETS))]


def fetch_dataset(name: str, data_root: Optional[str] = None) -> DatasetStatus:
    """Make ``name`` available: nothing to do when it is already there, else download it.

    Raises :class:`sdsnn.errors.DatasetUnavailable` (one line; nothing left half-written) when
    the download fails, for example without network.
    """
    ds = get_dataset(name)
    roots = data_roots(data_root)
    if ds.find(roots) is None:
        ds.fetch(roots)
    return ds.status(roots)


def _counts(s: DatasetStatus) -> str:
    c = s.counts
    if not c:
        return "-"
    if "total" in c:
        return f"{c['total']:,} ({c.get('train', 0):,} train / {c.get('test', 0):,} test)"
    return f"{c.get('train', 0):,} / {c.get('test', 0):,}"


def format_status_table(statuses: Sequence[DatasetStatus]) -> list[str]:
    """Aligned lines: name, state, train / test counts, where (or what is expected)."""
    rows = [("dataset", "state", "train / test", "where")]
    for s in statuses:
        where = str(s.where) if s.where is not None else (s.note or "-")
        rows.append((s.name, s.state, _counts(s), where))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return ["  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3] for r in rows]
