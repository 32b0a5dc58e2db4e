"""Process memory and page-cache probes for the index benchmarks (Linux only, no root needed).

:func:`drop_pages` makes the next read of some files come from disk: this process's read-only
mappings of them lose their page-table entries (``madvise(MADV_DONTNEED)``, which on a file
mapping only unmaps; the data stays in the file) and the kernel is asked to evict the files'
cached pages (``posix_fadvise(POSIX_FADV_DONTNEED)``). Pages that another process maps stay
cached, so a cold measurement wants the files to itself; :func:`resident_fraction` (``mincore``)
reads the cache state back. :func:`rss_bytes` and :func:`mapped_resident_bytes` read
``/proc/self``.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

PAGE = os.sysconf("SC_PAGE_SIZE")
_MADV_DONTNEED = 4
_PROT_READ = 1
_MAP_SHARED = 1
_libc = ctypes.CDLL(None, use_errno=True)
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.mmap.restype = ctypes.c_void_p
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]


@dataclass(frozen=True)
class Mapping:
    """One line of ``/proc/self/maps`` that names a file."""

    start: int
    end: int
    perms: str
    path: str


def file_mappings() -> list[Mapping]:
    """This process's memory mappings of files."""
    out = []
    with open("/proc/self/maps", encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split(maxsplit=5)
            if len(parts) < 6 or not parts[5].startswith("/"):
                continue
            lo, hi = parts[0].split("-")
            out.append(Mapping(int(lo, 16), int(hi, 16), parts[1], parts[5]))
    return out


def drop_pages(files: Sequence[Path]) -> None:
    """Evict ``files`` from the page cache, unmapping this process's read-only maps of them
    first. Raises on a writable mapping of one (unmapping it could lose unsaved writes)."""
    wanted = {str(Path(f).resolve()) for f in files}
    for m in file_mappings():
        if m.path not in wanted:
            continue
        if "w" in m.perms:
            raise RuntimeError(f"{m.path} is mapped writable ({m.perms}); not dropping its pages")
        if _libc.madvise(m.start, m.end - m.start, _MADV_DONTNEED) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"madvise(MADV_DONTNEED) on {m.path}: {os.strerror(err)}")
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)  # dirty pages cannot be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def resident_fraction(path: Path) -> float:
    """The share of ``path``'s pages in the page cache now (``mincore`` on a fresh mapping)."""
    size = Path(path).stat().st_size
    if size == 0:
        return 0.0
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, size, _PROT_READ, _MAP_SHARED, fd, 0)
        if addr is None or addr == ctypes.c_void_p(-1).value:
            raise OSError(ctypes.get_errno(), f"mmap of {path} failed")
        try:
            pages = (size + PAGE - 1) // PAGE
            vec = (ctypes.c_ubyte * pages)()
            if _libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), f"mincore on {path} failed")
            return sum(b & 1 for b in vec) / pages
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)


def rss_bytes() -> int:
    """This process's resident set size."""
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * PAGE


def mapped_resident_bytes(folders: Iterable[Path]) -> int:
    """Resident bytes of this process's mappings of files under ``folders`` (``smaps`` Rss)."""
    roots = tuple(str(Path(d).resolve()) + os.sep for d in folders)
    total, counting = 0, False
    with open("/proc/self/smaps", encoding="utf-8") as f:
        for line in f:
            head = line.split(maxsplit=5)
            if head and "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
                counting = len(head) == 6 and head[5].rstrip("\n").startswith(roots)
            elif counting and line.startswith("Rss:"):
                total += int(line.split()[1]) * 1024
    return total
