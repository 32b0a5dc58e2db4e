from __future__ import annotations

import datetime as dt
import gzip
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tributary_indexer.data.corpus import (
    MAX_BAD_EXAMPLES,
    CorpusStats,
    assign_ids,
    content_hash,
    count_records,
    iter_records,
)
from tributary_indexer.errors import CorpusError, ExampleError

CHAT = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_three_kinds_ids_sources_metadata(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "web.jsonl",
        [
            {"text": "a document", "id": "doc-1", "lang": "en"},
            {"prompt": "Q?", "response": "A.", "source": "sft", "provider": "acme"},
            {"messages": CHAT, "id": 7, "tags": ["x"]},
            {"prompt": "", "completion": "alias"},
        ],
    )
    records = list(iter_records([path]))
    assert [r.kind for r in records] == ["text", "prompt_response", "messages", "prompt_response"]
    assert [r.line for r in records] == [1, 2, 3, 4]
    assert [r.id for r in records] == ["doc-1", None, "7", None]
    assert [r.source for r in records] == ["web", "sft", "web", "web"]
    assert records[1].provider == "acme" and records[0].provider is None
    assert records[0].metadata == {"lang": "en"} and records[2].metadata == {"tags": ["x"]}
    assert records[1].prompt == "Q?" and records[1].response == "A."
    assert records[3].response == "alias"
    assert records[2].messages == CHAT
    assert all(r.file == str(path) for r in records)


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ('{"text": "ok"', "malformed JSON"),
        ('{"title": "no content"}', 'accepted forms are {"text"'),
        ('{"text": "   "}', '"text" is empty'),
        ('{"prompt": "p", "response": ""}', '"response" is empty'),
        ('{"prompt": "p"}', 'no "response"'),
        ('{"text": "t", "prompt": "p", "response": "r"}', "mixes text and prompt/response"),
        ('{"messages": [{"role": "user", "content": "hi"}]}', 'no "assistant" turn'),
        (
            '{"messages": [{"role": "user", "content": [{"type": "image"}]}]}',
            "content must be a string",
        ),
        ("[1, 2]", "expected a JSON object"),
        ('{"text": "t", "id": [1]}', '"id" must be a string'),
    ],
)
def test_errors_name_file_line_and_fix(tmp_path: Path, line: str, fragment: str) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", ['{"text": "fine"}', "", line])
    with pytest.raises(CorpusError) as info:
        list(iter_records([path]))
    err = info.value
    assert err.path == str(path) and err.line == 3
    assert str(err).startswith(f"file {path} line 3: ")
    assert fragment in str(err) and "; fix: " in str(err)
    assert isinstance(err, ExampleError) and isinstance(err, ValueError)


def test_skip_bad_counts(tmp_path: Path) -> None:
    rows: list[Any] = []
    for i in range(30):
        rows.append({"text": f"good {i}"})
        rows.append("{broken")
    rows.append({"prompt": "p", "response": " "})
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    stats = CorpusStats()
    records = list(iter_records(path, skip_bad=True, stats=stats))
    assert len(records) == 30 == stats.records
    assert stats.bad == 31 and stats.files == 1
    assert len(stats.bad_examples) == MAX_BAD_EXAMPLES
    assert stats.bad_examples[0][:2] == (str(path), 2)
    assert stats.bad_by_code == {"malformed_json": 30, "empty_response": 1}
    assert "31 skipped" in stats.summary()
    assert count_records([path], skip_bad=True).records == 30


def test_deterministic_order_across_files_and_dirs(tmp_path: Path) -> None:
    d = tmp_path / "corpus"
    d.mkdir()
    write_jsonl(d / "b.jsonl", [{"text": "b1"}, {"text": "b2"}])
    write_jsonl(d / "a.jsonl", [{"text": "a1"}])
    (d / "notes.txt").write_text("ignored")
    with gzip.open(d / "c.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps({"text": "c1"}) + "\n")
    texts = [r.text for r in iter_records([d])]
    assert texts == ["a1", "b1", "b2", "c1"]
    single = write_jsonl(tmp_path / "z.jsonl", [{"text": "z"}])
    assert [r.text for r in iter_records([single, d / "a.jsonl"])] == ["z", "a1"]
    assert [r.source for r in iter_records([d / "c.jsonl.gz"])] == ["c"]


def test_whole_file_errors_always_raise(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="file not found"):
        list(iter_records([tmp_path / "nope.jsonl"], skip_bad=True))
    csv = tmp_path / "data.csv"
    csv.write_text("a,b\n")
    with pytest.raises(CorpusError, match="unsupported file type.*fix: use one of"):
        list(iter_records([csv], skip_bad=True))
    bad_parquet = tmp_path / "x.parquet"
    bad_parquet.write_bytes(b"not parquet")
    with pytest.raises(CorpusError, match="cannot open as Parquet"):
        list(iter_records([bad_parquet]))


def test_invalid_utf8_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "enc.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "bom ok"}\n{"text": "\xff"}\n')
    with pytest.raises(CorpusError, match="line 2: not valid UTF-8"):
        list(iter_records(path))
    stats = CorpusStats()
    assert [r.text for r in iter_records(path, skip_bad=True, stats=stats)] == ["bom ok"]
    assert stats.bad_by_code == {"bad_encoding": 1}


def test_parquet_streaming_rows_and_types(tmp_path: Path) -> None:
    n = 2500  # more than one read batch (1024 rows)
    table = pa.table(
        {
            "id": [f"r{i}" for i in range(n)],
            "prompt": [f"question {i}" for i in range(n)],
            "response": ["" if i == 1500 else f"answer {i}" for i in range(n)],
            "when": [dt.datetime(2024, 1, 1)] * n,
            "blob": [b"\x00\x01"] * n,
        }
    )
    path = tmp_path / "sft.parquet"
    pq.write_table(table, path, row_group_size=700)
    stats = CorpusStats()
    records = list(iter_records([path], skip_bad=True, stats=stats))
    assert len(records) == n - 1 and stats.bad == 1
    assert stats.bad_examples[0][1] == 1501  # 1-based row number
    assert records[0].id == "r0" and records[0].line == 1 and records[-1].line == n
    assert records[0].metadata == {"when": "2024-01-01T00:00:00", "blob": "AAE="}
    json.dumps(records[0].metadata)  # JSON-serialisable
    assert records[0].source == "sft"


def test_parquet_messages_and_nulls(tmp_path: Path) -> None:
    table = pa.table(
        {
            "text": ["plain", None],
            "messages": [
                None,
                [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}],
            ],
        }
    )
    path = tmp_path / "chat.parquet"
    pq.write_table(table, path)
    records = list(iter_records(path))
    assert [r.kind for r in records] == ["text", "messages"]
    assert records[1].messages == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Yo"},
    ]


def test_content_hash_and_assign_ids(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "h.jsonl",
        [
            {"text": "same", "id": "a", "source": "x"},
            {"text": "same", "id": "b", "source": "y", "extra": 1},
            {"prompt": "", "response": "same"},
        ],
    )
    a, b, c = iter_records(path)
    assert content_hash(a) == content_hash(b) == a.content_hash
    assert content_hash(a) != content_hash(c)
    assert len(content_hash(a)) == 64
    assert [gid for gid, _ in assign_ids([a, b, c])] == [0, 1, 2]
    assert [gid for gid, _ in assign_ids([a, b], start=10)] == [10, 11]
