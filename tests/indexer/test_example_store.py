from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tributary_indexer.atomic_io import sha256_file
from tributary_indexer.data.batching import TokenizedExample
from tributary_indexer.data.corpus import assign_ids, parse_record
from tributary_indexer.data.example_store import (
    ExampleStore,
    ExampleStoreWriter,
    StoredExample,
    partial_path_for,
)
from tributary_indexer.errors import IndexIntegrityError

CHAT = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]


def make_rows(n: int = 9) -> list[StoredExample]:
    raw: list[dict[str, Any]] = []
    for i in range(n):
        source, provider = (
            ("web", "acme") if i % 3 == 0 else ("sft", None) if i % 3 == 1 else ("chat", "beta")
        )
        if i % 3 == 0:
            raw.append(
                {
                    "text": f"document {i}",
                    "id": f"doc-{i}",
                    "source": source,
                    "provider": provider,
                    "n": i,
                }
            )
        elif i % 3 == 1:
            raw.append({"prompt": f"q{i}", "response": f"a{i}", "source": source})
        else:
            raw.append(
                {"messages": CHAT, "source": source, "provider": provider, "id": f"chat-{i}"}
            )
    rows = []
    for gid, record in assign_ids(
        parse_record(obj, "c.jsonl", line) for line, obj in enumerate(raw, 1)
    ):
        example = TokenizedExample((1, 2, 3), (False, True, True), n_truncated_tokens=gid % 2)
        rows.append(StoredExample.from_record(gid, record, example))
    return rows


def build(path: Path, rows: list[StoredExample], batch_size: int = 4) -> Path:
    with ExampleStoreWriter(path, batch_size=batch_size) as writer:
        writer.add_many(rows)
        return writer.finalize(expected_count=len(rows))


def test_round_trip(tmp_path: Path) -> None:
    rows = make_rows()
    path = build(tmp_path / "examples.sqlite", rows)
    assert not partial_path_for(path).exists()
    with ExampleStore(path) as store:
        assert store.count() == len(rows)
        for row in rows:
            assert store.get(row.id) == row
        assert store.get(999) is None
        got = store.get_many([0, 4, 4, 8, 1000])
        assert sorted(got) == [0, 4, 8] and got[4] == rows[4]
        pr = store.get(1)
        assert pr is not None and pr.kind == "prompt_response" and pr.text == "q1a1"
        assert pr.prompt == "q1" and pr.response == "a1" and pr.external_id is None
        chat = store.get(2)
        assert chat is not None and chat.messages == CHAT and chat.external_id == "chat-2"
        assert store.get(0).metadata == {"n": 0}  # type: ignore[union-attr]
        assert store.get(3).to_record().content_hash == rows[3].content_hash  # type: ignore[union-attr]
        assert [e.id for e in store.get_by_external_id("doc-3")] == [3]


def test_filters(tmp_path: Path) -> None:
    path = build(tmp_path / "examples.sqlite", make_rows())
    with ExampleStore(path) as store:
        assert store.sources() == ["chat", "sft", "web"]
        assert store.providers() == ["acme", "beta"]
        web = store.ids_matching(source="web")
        assert web.dtype == np.int64 and web.tolist() == [0, 3, 6]
        assert store.ids_matching(source=["web", "sft"]).tolist() == [0, 1, 3, 4, 6, 7]
        assert store.ids_matching(provider="beta").tolist() == [2, 5, 8]
        assert store.ids_matching(source="web", provider="beta").tolist() == []
        assert store.ids_matching(source=[]).tolist() == []
        assert len(store.ids_matching()) == 9


def test_read_only_and_threads(tmp_path: Path) -> None:
    path = build(tmp_path / "examples.sqlite", make_rows(50), batch_size=7)
    store = ExampleStore(path)
    with pytest.raises(sqlite3.OperationalError):
        store._conn().execute("DELETE FROM examples")
    errors: list[BaseException] = []

    def reader(offset: int) -> None:
        try:
            for i in range(50):
                example = store.get((i + offset) % 50)
                assert example is not None and example.id == (i + offset) % 50
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.close()
    assert errors == []


def test_resume_is_idempotent_and_byte_identical(tmp_path: Path) -> None:
    rows = make_rows(20)
    (tmp_path / "ref").mkdir()
    reference = build(tmp_path / "ref" / "examples.sqlite", rows)  # an uninterrupted build
    path = tmp_path / "examples.sqlite"
    # a build "killed" after 12 rows: the partial exists, the final store does not
    writer = ExampleStoreWriter(path, batch_size=5)
    writer.add_many(rows[:12])
    writer.flush()
    writer._conn.close()  # simulate the process dying (no finalize, no close)
    assert partial_path_for(path).exists() and not path.exists()
    with pytest.raises(IndexIntegrityError, match="did not finish; rerun"):
        ExampleStore(path)
    # resume: rewrite an overlapping range, then the rest
    with ExampleStoreWriter(path, batch_size=5) as writer:
        assert writer.count() == 12 and writer.count_in_range(10, 20) == 2
        writer.add_many(rows[10:])
        writer.finalize(expected_count=20)
    assert sha256_file(path) == sha256_file(reference)
    assert ExampleStore(path).count() == 20


def test_finalize_checks_counts_and_density(tmp_path: Path) -> None:
    rows = make_rows(5)
    with ExampleStoreWriter(tmp_path / "a.sqlite") as writer:
        writer.add_many(rows)
        with pytest.raises(IndexIntegrityError, match="5 rows but the index has 6"):
            writer.finalize(expected_count=6)
    with ExampleStoreWriter(tmp_path / "b.sqlite") as writer:
        writer.add_many([rows[0], rows[2]])
        with pytest.raises(IndexIntegrityError, match="not dense"):
            writer.finalize()
    assert not (tmp_path / "a.sqlite").exists() and not (tmp_path / "b.sqlite").exists()


def test_reader_refuses_incomplete_or_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(IndexIntegrityError, match="not found"):
        ExampleStore(tmp_path / "missing.sqlite")
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(IndexIntegrityError, match="not a readable example store"):
        ExampleStore(junk)
    partial = partial_path_for(tmp_path / "x.sqlite")
    writer = ExampleStoreWriter(tmp_path / "x.sqlite")
    writer.add_many(make_rows(3))
    writer.close()
    partial.rename(tmp_path / "renamed.sqlite")  # a partial store moved into place by hand
    with pytest.raises(IndexIntegrityError, match="incomplete"):
        ExampleStore(tmp_path / "renamed.sqlite")
