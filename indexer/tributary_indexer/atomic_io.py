"""Crash-safe file writes: temp file in the same directory, fsync, rename, fsync the directory.

Every file of an index is written through this module, so a build killed at any
moment leaves either the old file or the new one, never half of one. The temporary name is
``.<name>.tmp-<pid>`` in the destination's directory (same filesystem, so ``os.replace`` is
atomic); on any exception it is removed and the destination is left untouched.

Files are created with the mode an ordinary ``open()`` gives (``0666`` less the umask, ``0644``
by default), whatever the writer used for its temp file (safetensors writes ``0600``), so an index
written by one uid can be served by another.

Test hook: ``TRIBUTARY_CRASH_AFTER_TEMP=N`` SIGKILLs the process right after its ``N``-th temp file
is complete, before the rename: the crash window a resumed build must clean up after
(:func:`stale_temp_files`).

A full disk (``ENOSPC``/``EDQUOT``, or the equivalent messages raised by FAISS and SQLite) is
turned into :class:`~tributary_indexer.errors.OutputDirectoryError` with a message that says to
free space and rerun.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import OutputDirectoryError

logger = logging.getLogger(__name__)

__all__ = [
    "atomic_output",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "dumps_canonical_json",
    "sha256_file",
    "sha256_bytes",
    "check_writable_dir",
    "temp_path_for",
    "stale_temp_files",
    "FILE_MODE",
]

_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK
"""The mode of every file written here: what ``open()`` gives a new file under this umask."""
_TEMP_NAME = re.compile(r"^\..+\.tmp-\d+$")
_temps_completed = 0

_DISK_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_DISK_FULL_MESSAGES = ("no space left on device", "database or disk is full", "disk quota exceeded")


def temp_path_for(path: str | os.PathLike[str]) -> Path:
    """The temporary name used while writing ``path``: ``.<name>.tmp-<pid>`` beside it."""
    target = Path(path)
    return target.with_name(f".{target.name}.tmp-{os.getpid()}")


def stale_temp_files(directory: str | os.PathLike[str]) -> list[Path]:
    """Temp files (``.<name>.tmp-<pid>``) in ``directory`` and below: what a killed writer left."""
    root = Path(directory)
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob(".*.tmp-*") if p.is_file() and _TEMP_NAME.match(p.name))


def _crash_hook(tmp: Path) -> None:
    """``TRIBUTARY_CRASH_AFTER_TEMP=N``: SIGKILL right after the ``N``-th complete temp file
    (tests)."""
    global _temps_completed
    wanted = os.environ.get("TRIBUTARY_CRASH_AFTER_TEMP")
    if not wanted:
        return
    _temps_completed += 1
    if _temps_completed == int(wanted):
        logger.warning(
            "TRIBUTARY_CRASH_AFTER_TEMP=%s: killing this process with %s written", wanted, tmp
        )
        os.kill(os.getpid(), signal.SIGKILL)


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS:
        return True
    # FAISS raises RuntimeError and sqlite3 raises OperationalError with the strerror text only.
    if isinstance(exc, (RuntimeError, OSError)) or type(exc).__module__ == "sqlite3":
        return any(m in str(exc).lower() for m in _DISK_FULL_MESSAGES)
    return False


def _disk_full_error(path: Path, exc: BaseException) -> OutputDirectoryError:
    return OutputDirectoryError(
        f"disk full while writing {path} ({exc}); fix: free space on that filesystem (or choose "
        "another output directory) and rerun; the build resumes from its last completed shard"
    )


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable; a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories; the rename still happened
        pass
    finally:
        os.close(fd)


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write; on success it atomically becomes ``path``.

    For writers that need a filename (``faiss.write_index``, ``sqlite3``, safetensors). The
    temporary file does not exist when yielded (a stale one from an earlier crash of the same pid
    is removed). On exit without error the temp file is fsynced, renamed over ``path`` and the
    directory fsynced; on any exception the temp file is removed and ``path`` is untouched.
    """
    target = Path(path)
    tmp = temp_path_for(target)
    _remove_quietly(tmp)
    try:
        yield tmp
        if not tmp.exists():
            raise OutputDirectoryError(
                f"nothing was written to the temporary file {tmp} for {target}; fix: write to the "
                "path yielded by atomic_output() (not to the final name)"
            )
        os.chmod(tmp, FILE_MODE)
        _fsync_file(tmp)
        _crash_hook(tmp)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException as exc:
        _remove_quietly(tmp)
        if _is_disk_full(exc):
            raise _disk_full_error(target, exc) from exc
        if isinstance(exc, PermissionError):
            raise OutputDirectoryError(
                f"permission denied writing {target} ({exc}); fix: choose a directory you can "
                "write to or fix its permissions"
            ) from exc
        raise
    logger.debug("wrote %s atomically", target)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_output`)."""
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically, encoded as ``encoding`` (UTF-8 by default)."""
    atomic_write_bytes(path, text.encode(encoding))


def dumps_canonical_json(obj: Any) -> str:
    """The JSON text :func:`atomic_write_json` writes: sorted keys, indent 2, trailing newline.

    Equal content gives byte-identical text. NaN and infinity are refused (they are not JSON).
    """
    return json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as canonical JSON (:func:`dumps_canonical_json`) atomically."""
    atomic_write_text(path, dumps_canonical_json(obj))


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in ``chunk``-byte pieces (constant memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_writable_dir(path: str | os.PathLike[str], create: bool = True) -> Path:
    """Make sure ``path`` is a directory this process can write files into; return it.

    Creates it (with parents) when ``create`` is true. Probes with a real temp file, because
    ``os.access`` misses read-only mounts and ACLs. Raises :class:`OutputDirectoryError` saying
    what is wrong (a file in the way, permission denied, read-only filesystem, disk full).
    """
    directory = Path(path)
    if directory.exists() and not directory.is_dir():
        raise OutputDirectoryError(
            f"output path {directory} is a file, not a directory; fix: pass a directory path "
            "(or move the file out of the way)"
        )
    if not directory.exists():
        if not create:
            raise OutputDirectoryError(
                f"output directory {directory} does not exist; fix: create it or pass an existing "
                "one"
            )
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _dir_error(directory, exc, "creating") from exc
    probe = directory / f".tributary-write-probe-{os.getpid()}"
    try:
        with open(probe, "wb") as f:
            f.write(b"ok")
    except OSError as exc:
        raise _dir_error(directory, exc, "writing to") from exc
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return directory


def _dir_error(directory: Path, exc: OSError, doing: str) -> OutputDirectoryError:
    if _is_disk_full(exc):
        return _disk_full_error(directory, exc)
    if exc.errno in (errno.EACCES, errno.EPERM):
        return OutputDirectoryError(
            f"permission denied {doing} {directory}; fix: choose a directory you can write to "
            "or fix its permissions"
        )
    if exc.errno == errno.EROFS:
        return OutputDirectoryError(
            f"{directory} is on a read-only filesystem; fix: choose an output directory on a "
            "writable volume"
        )
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        return OutputDirectoryError(
            f"a parent of {directory} is a file, not a directory; fix: choose another path"
        )
    return OutputDirectoryError(
        f"cannot use {directory} as an output directory ({exc}); fix: check the path"
    )
