"""A build that fails on its inputs does not block its fix; repeated ids; the skip report;
`index add` skips what the index already holds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tributary_indexer.build.builder import IndexBuilder
from tributary_indexer.build.verification import verify_index
from tributary_indexer.config import BuildConfig
from tributary_indexer.data.example_store import ExampleStore
from tributary_indexer.errors import CorpusError, ModelLoadError

from tests.index_fixtures import build_model_dir, corpus_records, write_jsonl


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    model = build_model_dir(root / "model", "gpt2")
    corpus = write_jsonl(root / "corpus.jsonl", corpus_records(24))
    return root, model, corpus


def _config(model: Path, corpus: list[Path], **kw) -> BuildConfig:
    base = dict(
        model=str(model),
        corpus=[str(c) for c in corpus],
        rank_in=4,
        rank_out=4,
        shard_size=10,
        progress=False,
        num_threads=1,
    )
    base.update(kw)
    return BuildConfig(**base)


def _ids(index: Path) -> list[str | None]:
    with ExampleStore(index / "examples.sqlite") as store:
        return [store.get(i).external_id for i in range(store.count())]  # type: ignore[union-attr]


def test_a_typo_in_the_corpus_or_model_path_writes_nothing_and_the_fix_builds(inputs, tmp_path):
    root, model, corpus = inputs
    out = tmp_path / "index"
    with pytest.raises(CorpusError, match="file not found"):
        IndexBuilder(_config(model, [root / "corpsu.jsonl"]), out).build()
    assert not out.exists(), "a corpus error must come before anything is written"
    with pytest.raises(ModelLoadError):
        IndexBuilder(_config(root / "modle", [corpus]), out).build()
    assert not (out / "staging").exists(), (
        "a model error must come before the build state is pinned"
    )
    IndexBuilder(_config(model, [corpus]), out).build()
    assert verify_index(out) == [] and len(_ids(out)) == 24


def test_the_summary_names_unread_and_empty_files(inputs, tmp_path, caplog):
    root, model, corpus = inputs
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "part.jsonl").write_bytes(corpus.read_bytes())
    (folder / "README.md").write_text("about")
    (folder / "empty.jsonl").write_text("")
    caplog.set_level("WARNING")
    summary = IndexBuilder(_config(model, [folder]), tmp_path / "index").build()
    lines = summary.lines()
    assert any("not corpus files, not read: 1 (README.md)" in line for line in lines)
    assert any("empty corpus files: " in line and "empty.jsonl" in line for line in lines)
    assert caplog.text.count("README.md") == 1, "warned once, by the corpus check"


def test_an_unfinished_build_without_finished_work_is_started_over(inputs, tmp_path):
    root, model, corpus = inputs
    out = tmp_path / "index"
    IndexBuilder(
        _config(model, [corpus], rank_in=8), out
    )._pin_state()  # as if it failed right after starting
    IndexBuilder(_config(model, [corpus]), out).build()  # another configuration: not refused
    assert verify_index(out) == []
    assert json.loads((out / "build_config.json").read_text())["rank_in"] == 4


def test_repeated_ids_are_refused_or_skipped_and_listed(inputs, tmp_path):
    root, model, _ = inputs
    records = corpus_records(12)
    records[7]["id"] = records[2]["id"]  # "chat-2" twice
    corpus = write_jsonl(tmp_path / "dup.jsonl", records)
    with pytest.raises(
        CorpusError, match=r"record id 'chat-2' is already used at .*dup.jsonl:3"
    ) as err:
        IndexBuilder(_config(model, [corpus]), tmp_path / "refused").build()
    assert err.value.line == 8 and not (tmp_path / "refused").exists()

    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{broken\n', encoding="utf-8")
    out = tmp_path / "skipped"
    summary = IndexBuilder(
        _config(model, [corpus, tmp_path / "bad.jsonl"], skip_bad=True), out
    ).build()
    ids = _ids(out)
    assert len(ids) == 12 and ids.count("chat-2") == 1 and records[7]["id"] not in ids[7:]
    assert summary.skipped_bad == 2 and summary.skip_report == str(out / "skipped_records.jsonl")
    report = [json.loads(line) for line in (out / "skipped_records.jsonl").read_text().splitlines()]
    assert [(Path(r["file"]).name, r["line"], r["code"]) for r in report] == [
        ("dup.jsonl", 8, "duplicate_id"),
        ("bad.jsonl", 2, "malformed_json"),
    ]
    assert "dup.jsonl:3" in report[0]["reason"]
    assert any("skipped_records.jsonl" in line for line in summary.lines())
    assert verify_index(out) == []


def test_add_skips_what_the_index_holds(inputs, tmp_path):
    root, model, corpus = inputs
    out = tmp_path / "index"
    IndexBuilder(_config(model, [corpus]), out).build()
    manifest = (out / "manifest.json").read_bytes()

    # the same file again: nothing added, nothing written
    again = IndexBuilder(
        BuildConfig(corpus=[str(corpus)], progress=False, num_threads=1), out
    ).add()
    assert (
        again.skipped_present == 24
        and again.added == 0
        and (out / "manifest.json").read_bytes() == manifest
    )
    assert any("not added again: 24" in line for line in again.lines())

    # half old, half new; one old id with new content; a repeated id-less document
    old = corpus_records(24)
    new = corpus_records(30)[24:]
    changed = {**old[0], "text": "In year 1000, Alba sells something else entirely."}
    no_id = {"text": "A document without an id."}
    mixed = write_jsonl(tmp_path / "mixed.jsonl", old[1:12] + [changed] + new + [no_id, no_id])
    summary = IndexBuilder(
        BuildConfig(corpus=[str(mixed)], progress=False, num_threads=1), out
    ).add()
    assert (summary.skipped_present, summary.changed_present, summary.added) == (13, 1, 7)
    ids = _ids(out)
    assert len(ids) == 24 + 6 + 1 and ids[24:] == [r["id"] for r in new] + [None]
    assert verify_index(out) == []
    # the id-less document is known now too
    third = IndexBuilder(
        BuildConfig(corpus=[str(write_jsonl(tmp_path / "n.jsonl", [no_id]))], progress=False), out
    ).add()
    assert third.skipped_present == 1 and len(_ids(out)) == 31


def test_add_brings_back_a_removed_record(inputs, tmp_path):
    """A taken-down (tombstoned) record is not 'already in the index': adding it again adds it
    back."""
    import numpy as np
    from tributary_indexer.data.tombstones import add_removal, id_space_of

    root, model, corpus = inputs
    out = tmp_path / "index"
    IndexBuilder(_config(model, [corpus]), out).build()
    manifest = json.loads((out / "manifest.json").read_text())
    add_removal(
        out,
        id_space_of(manifest),
        np.array([3], dtype=np.int64),
        {"record_id": "doc-3"},
        "2026-12-03T00:00:00Z",
    )
    again = IndexBuilder(
        BuildConfig(corpus=[str(corpus)], progress=False, num_threads=1), out
    ).add()
    assert (again.added, again.skipped_present) == (1, 23)
    assert _ids(out)[24] == "doc-3"
