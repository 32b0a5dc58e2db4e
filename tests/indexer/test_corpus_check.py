"""The corpus as a user hands it over: directories with other files, empty files, gzip under any
name, repeated record ids, and the list of what --skip-bad skipped."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import pytest
from tributary_indexer.data.corpus import CorpusStats, iter_records
from tributary_indexer.data.corpus_check import UniqueIds, check_corpus
from tributary_indexer.errors import CorpusError


def _jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_directory_names_the_files_it_does_not_read_and_the_empty_ones(tmp_path: Path, caplog):
    d = tmp_path / "corpus"
    _jsonl(d / "a.jsonl", [{"text": "a"}])
    (d / "README.md").write_text("about this data")
    (d / "notes" / "b.csv").parent.mkdir()
    (d / "notes" / "b.csv").write_text("text\nb\n")
    (d / ".DS_Store").write_bytes(b"\0")
    (d / "empty.jsonl").write_text("")
    (d / "blank.jsonl").write_text("\n\n")
    caplog.set_level(logging.WARNING)
    stats = CorpusStats()
    assert [r.text for r in iter_records([d], stats=stats)] == ["a"]
    assert sorted(Path(p).name for p in stats.skipped_files) == [
        "README.md",
        "b.csv",
    ]  # hidden files are not named
    assert sorted(Path(p).name for p in stats.empty_files) == ["blank.jsonl", "empty.jsonl"]
    assert (
        "README.md" in caplog.text
        and "notes/b.csv" in caplog.text
        and "empty.jsonl is empty" in caplog.text
    )
    check = check_corpus([d], skip_bad=False)
    assert any("README.md" in line for line in check.lines()) and any(
        "empty.jsonl" in line for line in check.lines()
    )
    # a directory of only other files names what it holds
    other = tmp_path / "other"
    other.mkdir()
    (other / "data.csv").write_text("x")
    with pytest.raises(CorpusError, match=r"no corpus files \(it holds data.csv\)"):
        list(iter_records([other]))


def test_a_corpus_of_empty_files_is_refused_naming_them(tmp_path: Path):
    empty = tmp_path / "e.jsonl"
    empty.write_text("")
    with pytest.raises(CorpusError, match=r"no usable record \(empty files: .*e.jsonl\)") as err:
        check_corpus([empty], skip_bad=False)
    assert err.value.code == "empty_corpus"


def test_gzip_is_detected_by_content(tmp_path: Path, caplog):
    hidden = tmp_path / "logs.jsonl"  # gzip bytes without .gz
    hidden.write_bytes(gzip.compress(b'{"text": "zipped"}\n'))
    plain = tmp_path / "plain.jsonl.gz"  # .gz name, plain bytes
    plain.write_text('{"text": "plain"}\n')
    caplog.set_level(logging.WARNING)
    assert [r.text for r in iter_records([hidden, plain])] == ["zipped", "plain"]
    assert "plain.jsonl.gz is named .gz but is not gzip-compressed" in caplog.text


def test_repeated_ids_are_refused_with_both_places_or_skipped(tmp_path: Path):
    a = _jsonl(
        tmp_path / "a.jsonl",
        [{"id": "r1", "text": "one"}, {"id": "r2", "text": "two"}, {"text": "no id"}],
    )
    b = _jsonl(
        tmp_path / "b.jsonl",
        [
            {"text": "no id"},
            {"id": "r2", "text": "two again"},
            {"id": 7, "text": "x"},
            {"id": "7", "text": "y"},
        ],
    )
    with pytest.raises(CorpusError) as err:
        check_corpus([a, b], skip_bad=False)
    assert err.value.code == "duplicate_id" and err.value.path == str(b) and err.value.line == 2
    assert f"record id 'r2' is already used at {a}:2" in str(err.value)
    check = check_corpus([a, b], skip_bad=True)  # 7 and "7" are the same id (ids are strings)
    assert check.duplicate_ids == frozenset({"r2", "7"})
    unique = UniqueIds(check.duplicate_ids)
    kept = [(r.file, r.line) for r in iter_records([a, b]) if unique.error(r) is None]
    assert kept == [
        (str(a), 1),
        (str(a), 2),
        (str(a), 3),
        (str(b), 1),
        (str(b), 3),
    ]  # records without ids may repeat


def test_skip_bad_lists_every_skipped_record(tmp_path: Path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "ok"}\nnot json\n{"prompt": "p"}\n{"text": ""}\n', encoding="utf-8")
    stats = CorpusStats()
    assert len(list(iter_records([path], skip_bad=True, stats=stats))) == 1
    assert [(s["file"], s["line"], s["code"]) for s in stats.skipped] == [
        (str(path), 2, "malformed_json"),
        (str(path), 3, "missing_response"),
        (str(path), 4, "empty_text"),
    ]
    assert all(s["reason"] for s in stats.skipped)
