"""Where datasets are read from and where derived data (frame caches) is written.

Data roots, in order of precedence:

1. ``DataConfig.data_root`` (the ``--data-root`` option),
2. the environment variable ``SDSNN_DATA_ROOT``,
3. the per-user folder ``~/.cache/sdsnn/data``.

Options 1 and 2 may name several folders separated by ``os.pathsep`` (``:`` on Linux); they are
searched in order and each dataset is read from the first folder that holds it. Data roots are
only ever read (a shared copy may be read-only); ``data fetch`` writes into the first writable one.

Derived data never goes into a data root: it lives under ``SDSNN_CACHE_DIR`` (default
``~/.cache/sdsnn``), e.g. event frames in ``<cache>/frames/``.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

__all__ = [
    "DEFAULT_DATA_ROOT",
    "data_roots",
    "cache_dir",
    "frames_dir",
    "writable_root",
    "atomic_path",
]

PathLike = Union[str, os.PathLike]

DEFAULT_DATA_ROOT = Path("~/.cache/sdsnn/data")


def _split(spec: str) -> list[Path]:
    return [Path(p).expanduser() for p in spec.split(os.pathsep) if p.strip()]


def data_roots(data_root: Optional[Union[PathLike, Sequence[PathLike]]] = None) -> list[Path]:
    """The data root folders to search, in order (see the module docstring)."""
    if data_root is not None and not isinstance(data_root, (str, os.PathLike)):
        roots = [Path(p).expanduser() for p in data_root]
    elif data_root is not None and str(data_root).strip():
        roots = _split(str(data_root))
    elif os.environ.get("SDSNN_DATA_ROOT", "").strip():
        roots = _split(os.environ["SDSNN_DATA_ROOT"])
    else:
        roots = [DEFAULT_DATA_ROOT.expanduser()]
    return [r.absolute() for r in roots]


def cache_dir() -> Path:
    """Root of derived data: ``$SDSNN_CACHE_DIR`` or ``~/.cache/sdsnn``."""
    env = os.environ.get("SDSNN_CACHE_DIR", "").strip()
    return (Path(env).expanduser() if env else Path("~/.cache/sdsnn").expanduser()).absolute()


def frames_dir() -> Path:
    """Folder of the event-frame caches (``<cache>/frames``)."""
    return cache_dir() / "frames"


def _is_writable(folder: Path) -> bool:
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            return False
        probe = probe.parent
    return probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)


def writable_root(roots: Sequence[Path]) -> Optional[Path]:
    """The first root that exists and is writable, or can be created; None if there is none."""
    for r in roots:
        if _is_writable(r):
            return r
    return None


@contextmanager
def atomic_path(final: PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success rename it to ``final`` atomically.

    On any exception the temporary file is removed, so a reader never sees a half-written file.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix + ".part", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp_path, final)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
