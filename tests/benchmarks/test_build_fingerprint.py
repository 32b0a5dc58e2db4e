"""The refactor check's digests: timestamps never count, any other byte does."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.build_fingerprint import digest_tree


def _index(root: Path, created_at: str, shard: bytes) -> Path:
    (root / "shards").mkdir(parents=True)
    (root / "shards" / "shard-00000.faiss").write_bytes(shard)
    manifest = {"created_at": created_at, "n_examples": 3, "additions": [{"added_at": created_at}]}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_digests_ignore_timestamps_and_see_every_other_change(tmp_path: Path) -> None:
    a = digest_tree(_index(tmp_path / "a", "2026-01-01T00:00:00Z", b"\x00\x01"))
    b = digest_tree(_index(tmp_path / "b", "2026-12-31T23:59:59Z", b"\x00\x01"))
    assert a == b and sorted(a) == ["manifest.json", "shards/shard-00000.faiss"]
    c = digest_tree(_index(tmp_path / "c", "2026-01-01T00:00:00Z", b"\x00\x02"))
    assert c["shards/shard-00000.faiss"] != a["shards/shard-00000.faiss"]
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    manifest["n_examples"] = 4
    (tmp_path / "a" / "manifest.json").write_text(json.dumps(manifest))
    assert digest_tree(tmp_path / "a")["manifest.json"] != a["manifest.json"]
