from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path

import pytest
from tributary_indexer import atomic_io
from tributary_indexer.atomic_io import (
    atomic_output,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    check_writable_dir,
    sha256_file,
    temp_path_for,
)
from tributary_indexer.errors import OutputDirectoryError, TributaryIndexError


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".tmp-" in p.name)


def test_write_bytes_and_text_replace_content(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    atomic_write_text(target, "héllo")
    assert target.read_bytes() == "héllo".encode()
    assert _leftovers(tmp_path) == []


def test_json_is_canonical_and_byte_identical(tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    atomic_write_json(a, {"b": [1, 2], "a": {"y": 1, "x": "é"}})
    atomic_write_json(b, {"a": {"x": "é", "y": 1}, "b": [1, 2]})
    assert a.read_bytes() == b.read_bytes()
    text = a.read_text(encoding="utf-8")
    assert text.endswith("}\n") and text.index('"a"') < text.index('"b"')
    assert '\n  "a": {' in text  # indent 2
    with pytest.raises(ValueError):
        atomic_write_json(a, {"x": float("nan")})
    assert a.read_bytes() == b.read_bytes()  # failed write left the old file


def test_exception_keeps_old_file_and_removes_temp(tmp_path: Path) -> None:
    target = tmp_path / "index.faiss"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="writer crashed"):
        with atomic_output(target) as tmp:
            assert tmp.parent == tmp_path and tmp.name == f".index.faiss.tmp-{os.getpid()}"
            tmp.write_bytes(b"half")
            raise RuntimeError("writer crashed")
    assert target.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_atomic_output_for_filename_writers(tmp_path: Path) -> None:
    target = tmp_path / "db.sqlite"
    with atomic_output(target) as tmp:
        assert not tmp.exists()
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    with pytest.raises(OutputDirectoryError, match="nothing was written"):
        with atomic_output(target):
            pass
    assert target.read_bytes() == b"new"


def test_stale_temp_from_same_pid_is_replaced(tmp_path: Path) -> None:
    target = tmp_path / "x"
    temp_path_for(target).write_bytes(b"stale")
    atomic_write_bytes(target, b"fresh")
    assert target.read_bytes() == b"fresh" and _leftovers(tmp_path) == []


def test_enospc_gives_clear_error_and_keeps_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "shard-00000.faiss"
    target.write_bytes(b"old")
    real_open = open

    class FullFile:
        def __init__(self, f):  # type: ignore[no-untyped-def]
            self._f = f

        def write(self, data: bytes) -> int:
            self._f.write(data[:1])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
            return getattr(self._f, name)

        def __enter__(self):  # type: ignore[no-untyped-def]
            return self

        def __exit__(self, *exc: object) -> None:
            self._f.close()

    def full_open(path, mode="r", *args, **kwargs):  # type: ignore[no-untyped-def]
        f = real_open(path, mode, *args, **kwargs)
        return FullFile(f) if "w" in mode else f

    monkeypatch.setattr(atomic_io, "open", full_open, raising=False)
    with pytest.raises(OutputDirectoryError) as info:
        atomic_write_bytes(target, b"new content")
    message = str(info.value)
    assert (
        "disk full while writing" in message and str(target) in message and "free space" in message
    )
    assert isinstance(info.value, TributaryIndexError)
    assert target.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_disk_full_from_filename_writer(tmp_path: Path) -> None:
    target = tmp_path / "s.faiss"
    with pytest.raises(OutputDirectoryError, match="disk full"):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"x")
            raise RuntimeError("Error in faiss::FileIOWriter: No space left on device")
    assert not target.exists() and _leftovers(tmp_path) == []


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    data = os.urandom(3000)
    path = tmp_path / "f"
    path.write_bytes(data)
    assert sha256_file(path, chunk=1000) == hashlib.sha256(data).hexdigest() == sha256_file(path)


def test_check_writable_dir(tmp_path: Path) -> None:
    created = check_writable_dir(tmp_path / "new" / "nested")
    assert created.is_dir() and list(created.iterdir()) == []
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(OutputDirectoryError, match="is a file"):
        check_writable_dir(a_file)
    with pytest.raises(OutputDirectoryError, match="parent .* is a file"):
        check_writable_dir(a_file / "sub")
    with pytest.raises(OutputDirectoryError, match="does not exist"):
        check_writable_dir(tmp_path / "missing", create=False)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores permissions")
def test_check_writable_dir_permission_denied(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(OutputDirectoryError, match="permission denied"):
            check_writable_dir(locked)
    finally:
        locked.chmod(stat.S_IRWXU)


def test_check_writable_dir_permission_denied_simulated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(atomic_io, "open", denied, raising=False)
    with pytest.raises(
        OutputDirectoryError, match="permission denied writing to .*fix: choose a directory"
    ):
        check_writable_dir(tmp_path)
