"""The page-cache probes the cold-cache measurements rely on (real files, real mappings)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.page_cache import drop_pages, mapped_resident_bytes, resident_fraction, rss_bytes


def test_dropping_a_mapped_file_empties_its_cache_and_keeps_its_data(tmp_path):
    path = tmp_path / "vectors.npy"
    data = np.arange(1_000_000, dtype=np.float32)
    np.save(path, data)
    mapped = np.load(path, mmap_mode="r")
    total = float(mapped.sum(dtype=np.float64))  # touches every page
    assert resident_fraction(path) == 1.0
    assert mapped_resident_bytes([tmp_path]) >= data.nbytes
    drop_pages([path])
    assert resident_fraction(path) == 0.0
    assert mapped_resident_bytes([tmp_path]) == 0
    assert float(mapped.sum(dtype=np.float64)) == total  # read back from disk, unchanged
    assert resident_fraction(path) == 1.0


def test_a_writable_mapping_is_refused(tmp_path):
    path = tmp_path / "open.npy"
    np.save(path, np.ones(4096, dtype=np.float32))
    writable = np.load(path, mmap_mode="r+")
    writable[0] = 2.0
    with pytest.raises(RuntimeError, match="writable"):
        drop_pages([path])
    assert writable[0] == 2.0


def test_rss_grows_with_touched_memory():
    before = rss_bytes()
    block = np.ones(64 * 2**20 // 8)
    assert rss_bytes() - before >= 0.9 * block.nbytes
