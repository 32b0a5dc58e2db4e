"""Removals (tombstones) and compaction on real tiny indexes: search oracles, crash safety, the
CLI."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from tributary_indexer.build.builder import IndexBuilder
from tributary_indexer.build.manifest import Manifest
from tributary_indexer.build.verification import verify_index
from tributary_indexer.cli import main
from tributary_indexer.config import BuildConfig
from tributary_indexer.data.tombstones import (
    TOMBSTONES_NAME,
    add_removal,
    id_space_of,
    read_tombstones,
)
from tributary_indexer.errors import IndexIntegrityError
from tributary_indexer.query import index as index_reader
from tributary_indexer.query.index import AttributionIndex, IndexChangedError

from tests.index_fixtures import build_model_dir, corpus_records, write_jsonl

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A flat and a compressed (SQfp16, exact vectors beside it) index of 80 examples in 4
    shards."""
    root = tmp_path_factory.mktemp("tomb")
    model = build_model_dir(root / "model", "gpt2")
    corpus = write_jsonl(root / "corpus.jsonl", corpus_records(80))
    out = {}
    for name, factory in (("flat", "Flat"), ("sq", "SQfp16")):
        config = BuildConfig(
            model=str(model),
            corpus=[str(corpus)],
            rank_in=4,
            rank_out=4,
            shard_size=20,
            progress=False,
            index_factory=factory,
        )
        IndexBuilder(config, root / name).build()
        out[name] = root / name
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _brute_topk(
    vectors: np.ndarray, keep: np.ndarray, q: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """float64 top-k over the surviving rows only."""
    scores = q.astype(np.float64) @ vectors[keep].astype(np.float64).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return keep[order], np.take_along_axis(scores, order, axis=1)


@pytest.mark.parametrize("kind", ["flat", "sq"])
@pytest.mark.parametrize("path", ["overfetch", "selector"])
def test_search_with_tombstones_equals_brute_force_over_survivors(
    built, tmp_path, monkeypatch, kind, path
):
    if path == "selector":  # force the FAISS selector branch (many tombstones)
        monkeypatch.setattr(index_reader, "_OVERFETCH_MAX", 0)
    root = _copy(built[kind], tmp_path / "idx")
    index = AttributionIndex(root)
    vectors = index.stored_vectors(np.arange(index.n_examples))
    rng = np.random.default_rng(1)
    removed = np.sort(rng.choice(index.n_examples, size=37, replace=False))
    add_removal(
        root,
        id_space_of(index.manifest),
        removed,
        {"example_id": removed.tolist()},
        "2026-01-01T00:00:00Z",
    )
    keep = np.setdiff1d(np.arange(index.n_examples), removed)
    q = rng.standard_normal((4, index.dim)).astype(np.float32)
    for k in (1, 10, 43, 60):  # 43 = every survivor; 60 asks for more than remain
        found = index.search(q, k)
        want_ids, want_scores = _brute_topk(vectors, keep, q, min(k, len(keep)))
        hits = found.ids[:, : want_ids.shape[1]]
        assert not np.isin(found.ids, removed).any()
        np.testing.assert_allclose(
            found.scores[:, : want_ids.shape[1]], want_scores, rtol=1e-4, atol=1e-5
        )
        assert (hits == want_ids).mean() > 0.99  # ties in float32 may swap neighbours
        if k > len(keep):
            assert (found.ids[:, len(keep) :] == -1).all()
    allowed = np.arange(0, 80, 3, dtype=np.int64)  # a source/provider filter meets the tombstones
    found = index.search(q, 5, allowed_ids=allowed)
    want_ids, _ = _brute_topk(vectors, np.intersect1d(allowed, keep), q, 5)
    assert (found.ids == want_ids).all()
    index.close()


def test_a_loaded_index_sees_a_removal_on_its_next_search(built, tmp_path):
    root = _copy(built["flat"], tmp_path / "idx")
    index = AttributionIndex(root)
    q = np.random.default_rng(2).standard_normal((1, index.dim)).astype(np.float32)
    top = int(index.search(q, 1).ids[0, 0])
    assert (
        main(["remove", "--index", str(root), "--record-id", index.store.get(top).external_id]) == 0
    )
    assert top in index.removed()
    assert int(index.search(q, 1).ids[0, 0]) != top
    # a tombstone file that later loses ids (hand-edited, restored from an old backup) never
    # un-removes them
    data = json.loads((root / TOMBSTONES_NAME).read_text())
    data["ids"], data["removals"], data["generation"] = [], [], 0
    (root / TOMBSTONES_NAME).write_text(json.dumps(data))
    assert top in index.removed()
    index.close()


def test_remove_cli_selectors_and_refusals(built, tmp_path, capsys):
    root = _copy(built["flat"], tmp_path / "idx")
    assert (
        main(
            ["remove", "--index", str(root), "--provider", "acme", "--reason", "consent withdrawn"]
        )
        == 0
    )
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("# takedown list\nqa-1\n\nchat-2\nnot-there\n")
    assert main(["remove", "--index", str(root), "--ids-file", str(ids_file)]) == 0
    assert "not-there" in capsys.readouterr().out
    manifest = Manifest.load(root)
    state = read_tombstones(root, id_space_of(manifest))
    acme = [i for i in range(80) if i % 3 == 0]  # corpus_records: provider = i % 3
    assert set(acme) | {1, 2} == set(state.ids.tolist())
    assert [r.selector for r in state.removals] == [
        {"provider": "acme"},
        {"record_id": ["chat-2", "not-there", "qa-1"]},
    ]
    assert state.removals[0].reason == "consent withdrawn" and state.generation == 2
    assert (
        main(["remove", "--index", str(root), "--provider", "nobody"]) == 1
    )  # nothing matched: says so, changes nothing
    assert read_tombstones(root, id_space_of(manifest)).generation == 2
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    assert main(["remove", "--index", str(root), "--ids-file", str(empty)]) == 2
    with pytest.raises(SystemExit):  # exactly one selector
        main(["remove", "--index", str(root), "--provider", "acme", "--source", "x"])
    assert verify_index(root) == []


def test_verify_reports_damaged_tombstones(built, tmp_path):
    root = _copy(built["flat"], tmp_path / "idx")
    path = root / TOMBSTONES_NAME
    space = id_space_of(Manifest.load(root))
    for bad, words in (
        ("{not json", "not JSON"),
        (
            json.dumps(
                {
                    "format_version": 1,
                    "id_space": space,
                    "generation": 1,
                    "ids": [5, 3],
                    "removals": [{"removed_at": "t", "selector": {}, "count": 2}],
                }
            ),
            "sorted",
        ),
        (
            json.dumps(
                {
                    "format_version": 1,
                    "id_space": space,
                    "generation": 1,
                    "ids": [500],
                    "removals": [{"removed_at": "t", "selector": {}, "count": 1}],
                }
            ),
            "past the index",
        ),
        (
            json.dumps(
                {
                    "format_version": 1,
                    "id_space": "other#0",
                    "generation": 0,
                    "ids": [],
                    "removals": [],
                }
            ),
            "another index state",
        ),
    ):
        path.write_text(bad)
        problems = verify_index(root, check_checksums=False)
        assert any(words in p for p in problems), (words, problems)
        with pytest.raises(IndexIntegrityError):
            AttributionIndex(root)


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "indexer"), str(ROOT)] + env.get("PYTHONPATH", "").split(os.pathsep)
    )
    env["SOURCE_DATE_EPOCH"] = "1790000000"
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def _compact_cmd(root: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tributary_indexer.cli",
        "--log-level",
        "WARNING",
        "compact",
        "--index",
        str(root),
    ]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _with_removals(src: Path, dst: Path) -> Path:
    root = _copy(src, dst)
    space = id_space_of(Manifest.load(root))
    add_removal(
        root, space, np.arange(20, 40), {"example_id": list(range(20, 40))}, "2026-01-01T00:00:00Z"
    )  # all of shard 1
    add_removal(
        root,
        space,
        np.array([3, 47, 79]),
        {"record_id": ["doc-3"]},
        "2026-01-02T00:00:00Z",
        reason="takedown",
    )
    return root


@pytest.fixture(scope="module")
def compacted(built, tmp_path_factory):
    out = {}
    for kind in ("flat", "sq"):
        root = _with_removals(built[kind], tmp_path_factory.mktemp("compacted") / kind)
        subprocess.run(_compact_cmd(root), env=_env(), check=True, timeout=300)
        out[kind] = _snapshot(root)
    return out


def test_compaction_drops_removed_examples_and_keeps_scores(built, compacted, tmp_path):
    before = AttributionIndex(_with_removals(built["sq"], tmp_path / "before"))
    after_root = tmp_path / "after"
    for name, data in compacted["sq"].items():
        (after_root / name).parent.mkdir(parents=True, exist_ok=True)
        (after_root / name).write_bytes(data)
    after = AttributionIndex(after_root)
    assert (
        after.n_examples == 80 - 23 and len(after.removed()) == 0 and verify_index(after_root) == []
    )
    assert len(after.manifest.shards) == 3  # shard 1 was emptied and dropped
    entry = after.manifest.build_config["compactions"][0]
    assert (
        entry["removed"] == 23 and entry["examples_before"] == 80 and "frozen" in entry["hessian"]
    )
    assert [r["reason"] for r in entry["removals"]] == [None, "takedown"]
    assert (
        after.manifest.projector == before.manifest.projector
        and after.manifest.damping == before.manifest.damping
    )
    q = np.random.default_rng(3).standard_normal((3, after.dim)).astype(np.float32)
    old, new = before.search(q, 12), after.search(q, 12)
    np.testing.assert_allclose(new.scores, old.scores, rtol=1e-5, atol=1e-6)
    survivors = np.setdiff1d(np.arange(80), before.removed().ids)
    for old_id, new_id in zip(old.ids.ravel(), new.ids.ravel()):  # renumbered in order
        assert survivors[new_id] == old_id
        assert (
            after.store.get(int(new_id)).content_hash == before.store.get(int(old_id)).content_hash
        )
    for i in range(after.n_examples):
        assert after.store.get(i).external_id == before.store.get(int(survivors[i])).external_id


def test_a_loaded_index_refuses_after_compaction_under_it(built, tmp_path):
    root = _with_removals(built["flat"], tmp_path / "idx")
    index = AttributionIndex(root)
    subprocess.run(_compact_cmd(root), env=_env(), check=True, timeout=300)
    with pytest.raises(IndexChangedError, match="restart"):
        index.search(np.zeros((1, index.dim), np.float32), 3)


POINTS = {
    "flat": [
        "compact_after_shard_0",
        "compact_before_swap",
        "compact_swap_3",
        "compact_before_manifest",
        "compact_before_cleanup",
    ],
    "sq": ["compact_after_shard_2", "compact_after_store", "compact_swap_0"],
}  # every crash point, once


@pytest.mark.parametrize("kind", ["flat", "sq"])
def test_compaction_killed_at_crash_points_then_rerun_is_byte_identical(
    built, compacted, tmp_path, kind
):
    for point in POINTS[kind]:
        root = _with_removals(built[kind], tmp_path / point)
        killed = subprocess.run(_compact_cmd(root), env=_env(TRIBUTARY_CRASH_AT=point), timeout=300)
        assert killed.returncode == -signal.SIGKILL, point
        if (
            point != "compact_before_cleanup"
        ):  # there the index is whole; only the work folder is left
            assert (
                verify_index(root, check_checksums=False) != []
            )  # an unfinished compaction is reported
        subprocess.run(_compact_cmd(root), env=_env(), check=True, timeout=300)
        assert _snapshot(root) == compacted[kind], point


def test_compaction_killed_at_a_random_moment_then_rerun_is_byte_identical(
    built, compacted, tmp_path
):
    rng = random.Random(5)
    for attempt in range(3):
        root = _with_removals(built["sq"], tmp_path / f"r{attempt}")
        proc = subprocess.Popen(_compact_cmd(root), env=_env())
        deadline = time.time() + 120
        while time.time() < deadline and not (root / "compaction").exists() and proc.poll() is None:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        subprocess.run(_compact_cmd(root), env=_env(), check=True, timeout=300)
        assert _snapshot(root) == compacted["sq"]


def test_removals_made_between_a_kill_and_the_rerun_survive_compaction(built, tmp_path):
    root = _with_removals(built["flat"], tmp_path / "idx")
    killed = subprocess.run(
        _compact_cmd(root), env=_env(TRIBUTARY_CRASH_AT="compact_after_store"), timeout=300
    )
    assert killed.returncode == -signal.SIGKILL
    add_removal(
        root,
        id_space_of(Manifest.load(root)),
        np.array([79, 60]),
        {"record_id": ["x"]},
        "2026-01-03T00:00:00Z",
    )
    subprocess.run(_compact_cmd(root), env=_env(), check=True, timeout=300)
    index = AttributionIndex(root)
    # 60 was a survivor of the first compaction (old ids 20-39, 3, 47, 79 went): 60 - 20 - 2 = 38
    assert index.removed().ids.tolist() == [38] and verify_index(root) == []
    assert main(["compact", "--index", str(root)]) == 0
    assert AttributionIndex(root).n_examples == 80 - 24


def test_a_loaded_index_refuses_only_while_ids_are_renumbered(built, tmp_path):
    root = _copy(built["flat"], tmp_path / "idx")
    index = AttributionIndex(root)
    q = np.zeros((1, index.dim), np.float32)
    manifest = Manifest.load(
        root
    )  # `index add` rewrites the manifest but keeps every id: still served
    manifest.build_config["additions"] = [
        {"corpus": ["more.jsonl"], "id_start": 80, "id_end": 80, "added_at": "t"}
    ]
    manifest.save(root)
    assert index.search(q, 3).ids.shape == (1, 3)
    (root / "compaction").mkdir()
    (root / "compaction" / "swapping").touch()  # a compaction is moving its files in
    with pytest.raises(IndexChangedError, match="retry when it has finished"):
        index.search(q, 3)
    (root / "compaction" / "swapping").unlink()
    assert index.search(q, 3).ids.shape == (1, 3)
    index.close()
