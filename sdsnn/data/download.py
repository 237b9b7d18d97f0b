"""Small, careful downloads: short timeouts, md5 checks, nothing half-written.

Every failure becomes one :class:`~sdsnn.errors.DatasetUnavailable` line that names the
dataset, the folder and the files expected there.
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import tempfile
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

__all__ = ["CONNECT_TIMEOUT_S", "md5sum", "download_file", "short_reason", "socket_timeout"]

CONNECT_TIMEOUT_S = 5.0


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def short_reason(err: BaseException) -> str:
    """A short, single-line description of a network error."""
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code}"
    reason = getattr(err, "reason", None) or err
    if isinstance(reason, socket.gaierror):
        return "no network: host not found"
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return f"no answer within {CONNECT_TIMEOUT_S:g} s"
    text = " ".join(str(reason).split())
    return text[:120] or type(err).__name__


@contextmanager
def socket_timeout(seconds: float = CONNECT_TIMEOUT_S) -> Iterator[None]:
    """Set the default socket timeout for libraries (tonic) that open URLs without one."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def download_file(url: str, dest: Path, md5: str | None = None, *, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` (via a temporary file; renamed only when complete and verified).

    Raises ``OSError``/``urllib.error.URLError`` on network problems and ``ValueError`` on an md5
    mismatch; the caller turns them into a one-line user error.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp_path = Path(tmp)
    try:
        req = urllib.request.Request(url, headers={"User-Agent": "sdsnn-search"})
        with urllib.request.urlopen(req, timeout=CONNECT_TIMEOUT_S) as resp, open(fd, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, leave=False)
            try:
                shutil.copyfileobj(_Counting(resp, bar), out, 1 << 20)
            finally:
                if bar is not None:
                    bar.close()
        if md5 is not None:
            got = md5sum(tmp_path)
            if got != md5:
                raise ValueError(f"md5 mismatch for {url}: got {got}, expected {md5}")
        tmp_path.replace(dest)
        return dest
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


class _Counting:
    def __init__(self, f, bar) -> None:
        self.f, self.bar = f, bar

    def read(self, n: int = -1) -> bytes:
        b = self.f.read(n)
        if self.bar is not None:
            self.bar.update(len(b))
        return b


def remove_created(paths: Sequence[Path]) -> None:
    """Remove folders this process created (deepest first) when a fetch failed."""
    for p in sorted(paths, key=lambda q: len(q.parts), reverse=True):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


def missing_dirs(folder: Path) -> list[Path]:
    """The ancestors of ``folder`` (itself included) that do not exist yet."""
    out = []
    p = Path(folder)
    while not p.exists():
        out.append(p)
        if p.parent == p:
            break
        p = p.parent
    return out
